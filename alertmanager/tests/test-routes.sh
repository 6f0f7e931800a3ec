#!/usr/bin/env bash
# Routing tests for alertmanager/alertmanager.yml, offline (amtool reads the file; it does
# not talk to any Alertmanager when --config.file is given).
#
#   alertmanager/tests/test-routes.sh [CONFIG] [TABLE]
#
# 1. Every row of routes.tsv: `amtool config routes test --verify.receivers` must resolve the
#    labels to exactly the expected receivers.
# 2. Every alertname defined in prometheus/rules/*.yml appears in routes.tsv.
# 3. No inhibit rule can mute an alert that routes to the responder (inhibition silences an
#    alert for every receiver, so it would silently disable failover or failback).
# 2 and 3 need Python with PyYAML: $PYTHON (scripts/check-deploy.sh passes its venv's),
# else python3.
#
# Prints one line per case and `N passed, N failed`; exits 1 on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
config="${1:-$repo/alertmanager/alertmanager.yml}"
table="${2:-$here/routes.tsv}"
python="${PYTHON:-python3}"
amtool="${AMTOOL:-amtool}"
responder_receiver="failover-responder"

passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok    $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }

if ! command -v "$amtool" >/dev/null 2>&1; then
  echo "test-routes: amtool not found (Debian package prometheus-alertmanager)" >&2
  exit 2
fi

# 1. The table. amtool exits non-zero when the resolved receivers differ from the expected
# ones; its stdout is the resolved list, shown on failure.
while read -r expected labels; do
  case "$expected" in ''|'#'*) continue ;; esac
  # shellcheck disable=SC2086  # labels are deliberately split into name=value arguments
  if got="$("$amtool" config routes test --config.file="$config" \
        --verify.receivers="$expected" $labels 2>/dev/null)"; then
    ok "$labels -> $expected"
  else
    fail "$labels -> expected $expected, got ${got%%$'\n'*}"
  fi
done < "$table"

# 2 and 3 in Python (YAML parsing and matcher evaluation).
if ! "$python" -c 'import yaml' >/dev/null 2>&1; then
  fail "PyYAML not available to $python: rule coverage and inhibition checks not run"
else
  out="$("$python" - "$config" "$table" "$repo/prometheus/rules" "$responder_receiver" <<'PY'
import glob, os, re, sys, yaml

config_path, table_path, rules_dir, responder = sys.argv[1:5]
cfg = yaml.safe_load(open(config_path))

# Alert names routed in the table, and the label sets that reach the responder.
routed, to_responder = set(), []
for line in open(table_path):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    receivers, *labels = line.split()
    ls = dict(l.split("=", 1) for l in labels)
    routed.add(ls.get("alertname", ""))
    if responder in receivers.split(","):
        to_responder.append(ls)

# 2. Coverage of the rule files.
defined = set()
for f in sorted(glob.glob(os.path.join(rules_dir, "*.yml"))):
    for g in (yaml.safe_load(open(f)) or {}).get("groups", []):
        for r in g.get("rules", []):
            if "alert" in r:
                defined.add(r["alert"])
for name in sorted(defined):
    if name in routed:
        print(f"ok    alert {name} has a routing expectation")
    else:
        print(f"FAIL  alert {name} (prometheus/rules) has no row in {os.path.basename(table_path)}")

# 3. Inhibition. Alertmanager matchers: name op "value", op in = != =~ !~; regexes anchored;
# a missing label has the value "".
MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')
def matches(m, labels):
    mm = MATCHER.match(m)
    if not mm:
        raise SystemExit(f"FAIL  cannot parse matcher {m!r}")
    name, op, value = mm.groups()
    v = labels.get(name, "")
    if op == "=":  return v == value
    if op == "!=": return v != value
    full = re.fullmatch(value, v) is not None
    return full if op == "=~" else not full

def target_sets(rule):
    # New-style target_matchers, and the legacy target_match / target_match_re maps.
    ms = list(rule.get("target_matchers") or [])
    ms += [f'{k}="{v}"' for k, v in (rule.get("target_match") or {}).items()]
    ms += [f'{k}=~"{v}"' for k, v in (rule.get("target_match_re") or {}).items()]
    return ms

for i, rule in enumerate(cfg.get("inhibit_rules") or []):
    ms = target_sets(rule)
    hits = [ls for ls in to_responder if all(matches(m, ls) for m in ms)]
    if hits:
        print(f"FAIL  inhibit rule {i} can mute {hits[0].get('alertname')}, which drives the responder")
    else:
        print(f"ok    inhibit rule {i} never mutes an alert routed to the responder")
PY
)"
  status=$?
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    echo "$line"
    case "$line" in ok*) passed=$((passed + 1)) ;; FAIL*) failed=$((failed + 1)) ;; esac
  done <<< "$out"
  if [ "$status" -ne 0 ]; then fail "rule coverage / inhibition check crashed (exit $status)"; fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
