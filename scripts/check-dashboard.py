#!/usr/bin/env python3
"""Checks every query of a Grafana dashboard against a real Prometheus that scrapes a real
responder: each panel target and each template variable's selector must parse and run
(Prometheus' /api/v1/query answers success), and every failover_responder_* metric it names
must be one the responder exports (a TYPE line of its /metrics in the text format 0.0.4, with a
histogram's _bucket/_sum/_count).

Usage: check-dashboard.py DASHBOARD.json PROMETHEUS_URL METRICS.txt
Run by scripts/check-metrics.sh (from scripts/check-deploy.sh), on loopback only.
"""
import json
import re
import sys
import urllib.parse
import urllib.request

dashboard_path, prometheus, metrics_path = sys.argv[1:4]

# What Grafana puts in place of its variables; `.*` selects every job and service.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$job": ".*",
    "$service": ".*",
}
NAME = re.compile(r"\bfailover_responder_[A-Za-z0-9_]+")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)$")


def exported(metrics_text):
    names = set()
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            name, kind = parts[2], parts[3]
            names.add(name)
            if kind == "histogram":
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def queries(dashboard):
    for p in dashboard.get("panels", []):
        for t in p.get("targets", []):
            yield f'panel "{p["title"]}" {t["refId"]}', t["expr"]
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = LABEL_VALUES.match(q or "")
        if m:
            yield f'variable ${v["name"]}', m.group(1)


def run(expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    return body.get("status") == "success", body.get("error", "")


with open(dashboard_path) as f:
    dashboard = json.load(f)
with open(metrics_path) as f:
    known = exported(f.read())
inputs = [i["name"] for i in dashboard.get("__inputs", [])]
problems = []
if inputs != ["DS_PROMETHEUS"]:
    problems.append(f"__inputs: want the one datasource input DS_PROMETHEUS, got {inputs}")
checked = 0
for where, expr in queries(dashboard):
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    if "$" in expr:
        problems.append(f"{where}: a variable this check does not know: {expr}")
        continue
    checked += 1
    ok, error = run(expr)
    if not ok:
        problems.append(f"{where}: Prometheus refused {expr!r}: {error}")
    for name in sorted(set(NAME.findall(expr)) - known):
        problems.append(f"{where}: {name} is not a metric the responder exports")
for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"{checked} dashboard queries parse and run, every metric they name is exported")
