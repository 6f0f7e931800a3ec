#!/usr/bin/env bash
# The whole failover on one machine, on loopback only: an on-prem API behind HAProxy, Prometheus
# probing it with the rules in prometheus/rules/, Alertmanager routing to the responder, the
# responder starting a cloud container and opening it in HAProxy. A client requests the frontend
# all along; the on-prem API is really stopped and started again (simulate_onprem_*.sh).
# Before the outage, the readiness check and a drill prove the failover works (the client keeps
# getting on-prem). Prints a timeline with the measured RTO and failed requests. Cleans up on
# exit and Ctrl-C.
#
# Then, with --burst (or DEMO_BURST=1), cloud bursting: a steady 250 requests/s at the frontend
# (simulate_onprem_overload.sh), counted by HAProxy's own Prometheus exporter and divided by the
# units serving, makes onprem_overloaded fire; the responder adds burst containers in
# server-template slots until the load per unit falls inside the band (50..100/s), where the count
# holds; when the load stops, onprem_underloaded fires and the units leave. Prints the count
# over time.
#
# With --ha instead: two responders on an etcd lease, the leader killed in the middle of a
# failover and the other finishing it (scripts/demo-ha.sh).
#
# Usage: scripts/demo.sh [--burst | --ha]   (installs what is missing, builds, runs; about a
#                                           minute, about two more with --burst)
# Env:   DEMO_RELEASE=1 builds the release binary; DEMO_KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
[ "${1:-}" = "--ha" ] && exec scripts/demo-ha.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/failover-responder/target}
ONPREM_PORT=15000      # on-prem API
FRONTEND_PORT=18080    # HAProxy frontend: the address clients use
CLOUD_PORT=18081       # cloud container, published on loopback
RESPONDER_PORT=19095
PROMETHEUS_PORT=19090
ALERTMANAGER_PORT=19093
BURST_PORT_BASE=18082 # burst units 1 to 3: 18082, 18083, 18084
HAPROXY_EXPORTER_PORT=18404 # HAProxy's own Prometheus exporter
CONTAINER=fr-demo-cloud-api
BURST=fr-demo-burst    # burst unit i is container fr-demo-burst-<i>
IMAGE=onprem-api:latest
burst_act=${DEMO_BURST:-0}
[ "${1:-}" = "--burst" ] && burst_act=1

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
now_ms() { date +%s%3N; }

for p in $ONPREM_PORT $FRONTEND_PORT $CLOUD_PORT $BURST_PORT_BASE $((BURST_PORT_BASE + 1)) \
  $((BURST_PORT_BASE + 2)) $HAPROXY_EXPORTER_PORT $RESPONDER_PORT $PROMETHEUS_PORT $ALERTMANAGER_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port 127.0.0.1:$p is in use; stop what uses it and run again" >&2
    exit 1
  fi
done

say "installing components if missing"
scripts/install-deps.sh
say "building the responder"
if [ "${DEMO_RELEASE:-0}" = 1 ]; then
  cargo build --release --locked
  bin=$CARGO_TARGET_DIR/release/failover-responder
else
  cargo build --locked
  bin=$CARGO_TARGET_DIR/debug/failover-responder
fi
say "building the cloud image $IMAGE (busybox httpd answering 'cloud')"
scripts/build-image.sh "$IMAGE" cloud

remove_containers() {
  local c
  for c in "$CONTAINER" "$BURST-1" "$BURST-2" "$BURST-3"; do
    curl -fsS --unix-socket /var/run/docker.sock -X DELETE \
      "http://localhost/containers/$c?force=true" >/dev/null 2>&1 || true
  done
}

DEMO_DIR=$(mktemp -d /tmp/failover-demo.XXXXXX)
export DEMO_DIR
pids=()
cleanup() {
  trap - EXIT INT TERM
  say "cleaning up"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in onprem overload; do
    if [ -f "$DEMO_DIR/$f.pid" ]; then kill "$(cat "$DEMO_DIR/$f.pid")" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  remove_containers
  if [ "${DEMO_KEEP:-0}" = 1 ]; then say "kept $DEMO_DIR"; else rm -rf "$DEMO_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$DEMO_DIR/env" <<EOF
ONPREM_PORT=$ONPREM_PORT
FRONTEND_PORT=$FRONTEND_PORT
EOF
# A leftover container from an interrupted run would hide the failover.
remove_containers

# On-prem API: busybox httpd with a page, /health and a /metrics page Prometheus scrapes (its
# `up` series is the probe).
mkdir -p "$DEMO_DIR/onprem-www"
echo onprem >"$DEMO_DIR/onprem-www/index.html"
echo ok >"$DEMO_DIR/onprem-www/health"
printf '# TYPE onprem_api_info gauge\nonprem_api_info 1\n' >"$DEMO_DIR/onprem-www/metrics"
scripts/simulate_onprem_up.sh >/dev/null

cat >"$DEMO_DIR/haproxy.cfg" <<EOF
global
  stats socket $DEMO_DIR/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 10s
  timeout server 10s
  retries 1
  option redispatch
frontend fe
  bind 127.0.0.1:$FRONTEND_PORT
  default_backend api
# HAProxy's built-in Prometheus exporter: the frontend's request count for the burst rules.
frontend prometheus
  bind 127.0.0.1:$HAPROXY_EXPORTER_PORT
  http-request use-service prometheus-exporter if { path /metrics }
backend api
  option httpchk GET /health
  default-server inter 500ms fall 2 rise 2
  server onprem 127.0.0.1:$ONPREM_PORT check weight 100
  # The cloud copy: a backup server that starts in maint; the responder opens it.
  server cloud1 127.0.0.1:$CLOUD_PORT check backup disabled
  # Burst slots: normal servers, in maint until the responder points one at a unit and opens it.
  server-template burst 1-3 127.0.0.1:9 check disabled
EOF
haproxy -db -f "$DEMO_DIR/haproxy.cfg" >"$DEMO_DIR/haproxy.log" 2>&1 &
pids+=($!)

token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$token" >"$DEMO_DIR/token"
chmod 600 "$DEMO_DIR/token"
cat >"$DEMO_DIR/responder.yaml" <<EOF
listen_address: 127.0.0.1:$RESPONDER_PORT
auth: {bearer_token_file: $DEMO_DIR/token}
reconcile: {interval: 2s, retry_initial: 500ms, retry_max: 5s}
storage: {path: $DEMO_DIR/data}
alertmanager: {url: 'http://127.0.0.1:$ALERTMANAGER_PORT', resync_interval: 5s, receiver: responder}
services:
  onprem-api:
    failover_on: ['alertname="onprem_down"', 'service="onprem-api"']
    failback_on: ['alertname="onprem_recovered"', 'service="onprem-api"']
    docker:
      containers:
        - name: $CONTAINER
          image: $IMAGE
          ports: ['127.0.0.1:$CLOUD_PORT:8080']
          health_url: http://127.0.0.1:$CLOUD_PORT/health
    haproxy:
      runtime_api: ['unix:$DEMO_DIR/haproxy.sock']
      backend: api
      cloud_servers: [cloud1]
    timeouts: {healthy: 30s, drain: 5s, stop: 2s}
    # Demo damping: fail back no sooner than 5 s after failing over, and only once the
    # responder's own probe has seen on-prem healthy for 3 s.
    hold_down: 5s
    onprem_health_url: http://127.0.0.1:$ONPREM_PORT/health
    healthy_for: 3s
    # The fast path: HAProxy checks on-prem every 500 ms (fall 2), so it sees the outage about
    # a second in, before the alert can; onprem_down then confirms the failover and, as the
    # authority, decides the failback.
    fast_path: {onprem_servers: [onprem], down_for: 0s, poll: 200ms, confirm_within: 2m}
    # Bursting (demo timings): one unit as soon as onprem_overloaded fires, another every 3 s
    # while it still fires; removed one every 3 s only while onprem_underloaded fires (and the
    # overload has been gone for 5 s). Between the two alerts the count holds.
    burst:
      on: ['alertname="onprem_overloaded"', 'service="onprem-api"']
      scale_in_on: ['alertname="onprem_underloaded"', 'service="onprem-api"']
      min: 1
      max: 3
      step: 1
      scale_up_every: 3s
      cooldown: 5s
      address: '127.0.0.1:{port}'
      port_base: $BURST_PORT_BASE
      haproxy: {server_prefix: burst, weight: 100}
      container:
        name: $BURST
        image: $IMAGE
        ports: ['127.0.0.1:{port}:8080']
        health_url: 'http://127.0.0.1:{port}/health'
    cost: {container_hourly_price: 0.05}
EOF
"$bin" check-config --config.file "$DEMO_DIR/responder.yaml" >/dev/null
"$bin" serve --config.file "$DEMO_DIR/responder.yaml" --log.format json >"$DEMO_DIR/responder.log" 2>&1 &
pids+=($!)

cat >"$DEMO_DIR/alertmanager.yml" <<EOF
route:
  receiver: responder
  group_by: [alertname, service]
  # Demo timings: notify at once, re-notify quickly. See alertmanager/alertmanager.yml for
  # production values and why.
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: responder
    webhook_configs:
      - url: http://127.0.0.1:$RESPONDER_PORT/api/v1/alerts
        send_resolved: true
        http_config:
          authorization: {type: Bearer, credentials_file: $DEMO_DIR/token}
EOF
prometheus-alertmanager --config.file="$DEMO_DIR/alertmanager.yml" --storage.path="$DEMO_DIR/am" \
  --web.listen-address=127.0.0.1:$ALERTMANAGER_PORT --cluster.listen-address= \
  >"$DEMO_DIR/alertmanager.log" 2>&1 &
pids+=($!)

cat >"$DEMO_DIR/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}
rule_files: ['$repo/prometheus/rules/*.yml']
alerting:
  alertmanagers: [{static_configs: [{targets: ['127.0.0.1:$ALERTMANAGER_PORT']}]}]
scrape_configs:
  - job_name: onprem-api
    static_configs: [{targets: ['127.0.0.1:$ONPREM_PORT'], labels: {service: onprem-api}}]
  - job_name: failover-responder
    static_configs: [{targets: ['127.0.0.1:$RESPONDER_PORT']}]
  - job_name: haproxy
    static_configs: [{targets: ['127.0.0.1:$HAPROXY_EXPORTER_PORT']}]
    metric_relabel_configs:
      - {source_labels: [proxy], regex: fe, target_label: service, replacement: onprem-api}
EOF
prometheus --config.file="$DEMO_DIR/prometheus.yml" --storage.tsdb.path="$DEMO_DIR/prom" \
  --web.listen-address=127.0.0.1:$PROMETHEUS_PORT >"$DEMO_DIR/prometheus.log" 2>&1 &
pids+=($!)

wait_for() { # what url
  local _
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$1 did not come up; logs in $DEMO_DIR" >&2
  DEMO_KEEP=1
  exit 1
}
wait_for "HAProxy frontend" "http://127.0.0.1:$FRONTEND_PORT/"
wait_for "responder" "http://127.0.0.1:$RESPONDER_PORT/-/ready"
wait_for "Alertmanager" "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready"
wait_for "Prometheus" "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
say "stack up: frontend http://127.0.0.1:$FRONTEND_PORT, responder http://127.0.0.1:$RESPONDER_PORT/api/v1/status"

# The client: one request every 100 ms, logging time, HTTP code and body. Stamped when the
# answer arrives (not when the request left), on the same wall clock the responder stamps its
# events with, so "first answer from the cloud" can never sort before "cloud1 ready".
(
  while :; do
    # Body without its newline, then the HTTP code (000 when the connection failed).
    out=$(curl -s --max-time 1 -w ' %{http_code}' "http://127.0.0.1:$FRONTEND_PORT/" 2>/dev/null | tr -d '\n' || true)
    t=$(now_ms)
    echo "$t $out"
    sleep 0.1
  done
) >"$DEMO_DIR/client.log" &
pids+=($!)

# Wait until Prometheus has seen on-prem up, so the outage is a real transition.
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query?query=up%7Bjob%3D%22onprem-api%22%7D" 2>/dev/null \
    | grep -q '"value":\[[0-9.]*,"1"\]' && break
  sleep 0.2
done
sleep 2

# Before the outage, prove the failover: the readiness check, then a drill (the real failover
# steps while on-prem serves; cloud1 is a backup server, so the client keeps getting on-prem).
say "before the outage: would a failover work? (readiness check, then a drill while on-prem serves)"
ctl() { "$bin" ctl --url "http://127.0.0.1:$RESPONDER_PORT" --token-file "$DEMO_DIR/token" "$@"; }
ctl check onprem-api | sed 's/^/  /'
t_drill=$(now_ms)
ctl drill onprem-api | sed 's/^/  /' || { say "the drill failed; logs kept in $DEMO_DIR"; DEMO_KEEP=1; exit 1; }
t_drilled=$(now_ms)
awk -v a="$t_drill" -v b="$t_drilled" '$1 >= a && $1 <= b { n++; if ($2 != "onprem" || $3 != "200") bad++ }
  END { printf "  during the drill: %d requests, %d not answered by on-prem\n", n, bad }' "$DEMO_DIR/client.log"

say "simulating the outage"
t_outage=$(now_ms)
scripts/simulate_onprem_down.sh

status() { curl -fsS "http://127.0.0.1:$RESPONDER_PORT/api/v1/status"; }
mode_converged() { # mode
  status | python3 -c 'import json,sys; s=json.load(sys.stdin)["services"]["onprem-api"]; sys.exit(0 if s["desired"] and s["desired"]["mode"]==sys.argv[1] and s["converged"] else 1)' "$1"
}
for _ in $(seq 1 600); do
  grep -q ' cloud 200$' "$DEMO_DIR/client.log" && break
  sleep 0.1
done
grep -q ' cloud 200$' "$DEMO_DIR/client.log" || { say "the cloud never answered; logs kept in $DEMO_DIR"; DEMO_KEEP=1; exit 1; }
say "the cloud container is answering; holding for 3 s"
sleep 3

say "on-prem recovers"
t_recover=$(now_ms)
scripts/simulate_onprem_up.sh
container_running() {
  curl -fsS --unix-socket /var/run/docker.sock "http://localhost/containers/$CONTAINER/json" 2>/dev/null |
    grep -q '"Running":true'
}
for _ in $(seq 1 600); do
  if mode_converged onprem 2>/dev/null && ! container_running; then break; fi
  sleep 0.1
done
t_failback=$(now_ms)
sleep 1
kill "${pids[-1]}" 2>/dev/null || true

status >"$DEMO_DIR/status.json"
curl -fsS "http://127.0.0.1:$RESPONDER_PORT/api/v1/events?service=onprem-api&limit=1000" >"$DEMO_DIR/events.json"
curl -fsS "http://127.0.0.1:$ALERTMANAGER_PORT/api/v2/alerts" >"$DEMO_DIR/am-alerts.json" || echo '[]' >"$DEMO_DIR/am-alerts.json"

python3 - "$DEMO_DIR" "$t_outage" "$t_recover" "$t_failback" <<'EOF'
import json, sys, datetime
d, t_out, t_rec, t_fb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def ts(iso):
    # RFC 3339 with up to nanoseconds -> epoch ms
    base, _, frac = iso.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1000) + int((frac + "000")[:3] or 0)
client = []
for line in open(f"{d}/client.log"):
    parts = line.split()
    if len(parts) >= 2:
        client.append((int(parts[0]), parts[-1], parts[1] if len(parts) == 3 else ""))
st = json.load(open(f"{d}/status.json"))
events = json.load(open(f"{d}/events.json"))
events = events.get("events", events) if isinstance(events, dict) else events
svc = st["services"]["onprem-api"]
steps = svc["last_steps"]
notes = st["notifications"]
def first(pred, seq):
    return next((x for x in seq if pred(x)), None)
webhook = first(lambda n: "onprem_down" in n["group_key"] and n["status"] == "firing", notes)
resolved = first(lambda n: n["received_at"] and ts(n["received_at"]) > t_rec and ("onprem_down" in n["group_key"] or "onprem_recovered" in n["group_key"]), notes)
# The failover's steps, not the drill's before the outage.
healthy = first(lambda s: s["action"] == "wait_healthy" and s["outcome"] == "success" and ts(s["at"]) > t_out, steps)
ready = first(lambda s: s["action"] == "server_ready" and s["outcome"] == "success" and ts(s["at"]) > t_out, steps)
first_cloud = first(lambda c: c[0] > t_out and c[2] == "cloud" and c[1] == "200", client)
drain = first(lambda s: s["action"] == "server_drain" and ts(s["at"]) > t_rec, steps)
stop = first(lambda s: s["action"] == "stop_container" and ts(s["at"]) > t_rec, steps)
# Which signal failed over: the fast path (HAProxy's checks) or the alert.
triggered = first(lambda e: e["kind"] == "fast_path" and e["message"].startswith("triggered") and ts(e["at"]) > t_out, events)
confirmed = first(lambda e: e["kind"] == "fast_path" and e["message"].startswith("confirmed") and ts(e["at"]) > t_out, events)
failed_out = sum(1 for c in client if t_out <= c[0] < t_rec and c[1] != "200")
failed_back = sum(1 for c in client if c[0] >= t_rec and c[1] != "200")
rows = [
    ("on-prem API stopped (outage)", t_out),
    ("fast path: HAProxy sees on-prem DOWN, failing over", ts(triggered["at"]) if triggered else None),
    ("webhook onprem_down received", ts(webhook["received_at"]) if webhook else None),
    ("fast path confirmed by onprem_down", ts(confirmed["at"]) if confirmed else None),
    ("cloud container healthy", ts(healthy["at"]) if healthy else None),
    ("HAProxy cloud1 ready", ts(ready["at"]) if ready else None),
    ("first answer from the cloud", first_cloud[0] if first_cloud else None),
    ("on-prem API started (recovery)", t_rec),
    ("webhook after recovery received", ts(resolved["received_at"]) if resolved else None),
    ("cloud1 drained", ts(drain["at"]) if drain else None),
    ("cloud container stopped (failback done)", ts(stop["at"]) if stop else None),
    ("responder reports on-prem mode converged", t_fb),
]
print("\n  timeline (seconds after the outage)")
# In time order; a row that did not happen is left out.
for name, t in sorted((r for r in rows if r[1] is not None), key=lambda r: r[1]):
    print(f"  {'   -   ' if t is None else f'{(t - t_out) / 1000:7.2f}'}  {name}")
rto = (first_cloud[0] - t_out) / 1000 if first_cloud else float("nan")
print(f"\n  RTO (outage -> first answer from the cloud): {rto:.2f} s")
if triggered:
    print("  signal that acted: the fast path (HAProxy's own health checks), "
          + ("confirmed by the alert" if confirmed else "not confirmed by the alert"))
else:
    print("  signal that acted: the alert (onprem_down through Alertmanager)")
print(f"  requests: {len(client)} in all; failed during the outage: {failed_out}; failed during failback: {failed_back}")
EOF

if [ "$burst_act" = 1 ]; then
  say "act 2, cloud bursting: a steady 250 requests/s through the frontend"
  say "  (overload above 100/s per serving unit, underload below 50/s: between them the count holds)"
  burst_field() { # field of services.onprem-api.burst in the status (booleans as true/false)
    status | python3 -c 'import json,sys; b=json.load(sys.stdin)["services"]["onprem-api"].get("burst") or {}; v=b.get(sys.argv[1], ""); print(str(v).lower() if isinstance(v, bool) else v)' "$1"
  }
  unit_running() { # container
    curl -fsS --unix-socket /var/run/docker.sock "http://localhost/containers/$1/json" 2>/dev/null |
      grep -q '"Running":true'
  }
  # The count over time: every 500 ms, the status's burst target, open slots and alerts, and
  # the load per serving unit as Prometheus computes it.
  python3 - "$RESPONDER_PORT" "$PROMETHEUS_PORT" >"$DEMO_DIR/burst-samples.txt" 2>/dev/null <<'SAMPLER' &
import json, sys, time, urllib.parse, urllib.request
rp, pp = sys.argv[1], sys.argv[2]
q = urllib.parse.quote("service:haproxy_frontend_http_requests:rate_per_serving_unit")
while True:
    try:
        b = json.load(urllib.request.urlopen(f"http://127.0.0.1:{rp}/api/v1/status", timeout=2))["services"]["onprem-api"]["burst"]
        r = json.load(urllib.request.urlopen(f"http://127.0.0.1:{pp}/api/v1/query?query={q}", timeout=2))["data"]["result"]
        per_unit = float(r[0]["value"][1]) if r else float("nan")
        print(int(time.time() * 1000), b["target"], b["open"], int(b["overloaded"]),
              int(bool(b.get("underloaded"))), f"{per_unit:.0f}", flush=True)
    except (OSError, KeyError, ValueError):
        pass
    time.sleep(0.5)
SAMPLER
  pids+=($!)
  t_load=$(now_ms)
  scripts/simulate_onprem_overload.sh start 250
  # Settled: units open and the overload alert resolved with them serving.
  settled=""
  for _ in $(seq 1 900); do
    if [ "$(burst_field overloaded)" = false ] && [ "$(burst_field open)" != 0 ] &&
      [ "$(burst_field open)" = "$(burst_field target)" ]; then
      settled=$(burst_field target)
      break
    fi
    sleep 0.2
  done
  [ -n "$settled" ] || { say "bursting never settled; logs kept in $DEMO_DIR"; DEMO_KEEP=1; exit 1; }
  t_settled=$(now_ms)
  say "settled at $settled burst unit(s) beside on-prem; holding the load for 3 cooldowns (15 s)"
  sleep 15
  [ "$(burst_field target)" = "$settled" ] ||
    { say "the count moved under a steady load; logs kept in $DEMO_DIR"; DEMO_KEEP=1; exit 1; }
  status >"$DEMO_DIR/status-burst.json"
  say "the load stops: onprem_underloaded fires once the load per unit falls under 50/s"
  t_stop=$(now_ms)
  scripts/simulate_onprem_overload.sh stop
  for _ in $(seq 1 1500); do
    if [ "$(burst_field target)" = 0 ] && [ "$(burst_field open)" = 0 ] &&
      ! unit_running "$BURST-1" && ! unit_running "$BURST-2" && ! unit_running "$BURST-3"; then
      break
    fi
    sleep 0.2
  done
  t_idle=$(now_ms)
  status >"$DEMO_DIR/status-final.json"
  curl -fsS "http://127.0.0.1:$RESPONDER_PORT/api/v1/events?service=onprem-api" >"$DEMO_DIR/events.json"
  python3 - "$DEMO_DIR/haproxy.sock" >"$DEMO_DIR/served.txt" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
lines = out.decode().splitlines()
cols = lines[0].lstrip("# ").split(",")
px, sv, stot = cols.index("pxname"), cols.index("svname"), cols.index("stot")
for line in lines[1:]:
    f = line.split(",")
    if len(f) > stot and f[px] == "api" and f[sv] in ("onprem", "burst1", "burst2", "burst3"):
        print(f[sv], f[stot])
PY
  python3 - "$DEMO_DIR" "$t_load" "$t_settled" "$t_stop" "$t_idle" <<'PY'
import json, sys, datetime
d = sys.argv[1]
t_load, t_settled, t_stop, t_idle = map(int, sys.argv[2:6])
def ts(iso):
    base, _, frac = iso.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1000) + int((frac + "000")[:3] or 0)
events = [e for e in json.load(open(f"{d}/events.json"))["events"] if ts(e["at"]) >= t_load]
rows = [("load starts: 250 requests/s", t_load)]
for e in events:
    m = e["message"]
    if e["kind"] == "scale":
        rows.append((m.split(":")[0] + " (" + m.split(": ", 1)[1] + ")", ts(e["at"])))
    elif e["kind"] == "step" and m.split(" ")[0] in ("ready", "drain", "stop") and "burst" in m:
        rows.append((m.replace(": success", ""), ts(e["at"])))
for n in json.load(open(f"{d}/status-final.json"))["notifications"]:
    for name in ("onprem_overloaded", "onprem_underloaded"):
        if f'"{name}"' in n["group_key"] and ts(n["received_at"]) >= t_load:
            rows.append((f"webhook {name} {n['status']} received", ts(n["received_at"])))
rows.append(("count settled (overload resolved with the units serving)", t_settled))
rows.append(("load stops", t_stop))
rows.append(("no burst unit left running", t_idle))
rows.sort(key=lambda r: r[1])
print("\n  bursting timeline (seconds after the load began)")
for name, t in rows:
    print(f"  {(t - t_load) / 1000:7.2f}  {name}")

# The count over time: one row whenever the count, the open slots or the alerts change.
samples = [l.split() for l in open(f"{d}/burst-samples.txt") if len(l.split()) == 6]
print("\n  burst count over time (wanted / open, alerts firing, requests/s per serving unit as Prometheus last computed it)")
last = None
for t, target, opened, over, under, per_unit in samples:
    if int(t) < t_load:
        continue
    if (target, opened, over, under) != last:
        alerts = "overload" if over == "1" else "underload" if under == "1" else "neither (band)" if target != "0" else "neither"
        print(f"  {(int(t) - t_load) / 1000:7.2f}  {target} / {opened}   {alerts:<15} {per_unit:>4}/s per unit")
        last = (target, opened, over, under)
held = [s for s in samples if t_settled <= int(s[0]) <= t_stop]
counts = sorted({s[1] for s in held})
verdict = "unchanged" if len(counts) == 1 else "MOVED"
print(f"\n  under the steady load after settling: {len(held)} samples over "
      f"{(t_stop - t_settled) / 1000:.0f} s, count {', '.join(counts)} ({verdict})")
if len(counts) != 1:
    sys.exit("the burst count moved under a steady load")
cost = json.load(open(f"{d}/status-burst.json"))["services"]["onprem-api"]["cost"]
print(f"  settled: {len(cost['running'])} cloud units running, estimate {cost['estimated_cost_per_hour']:.2f}/h")
served = dict(line.split() for line in open(f"{d}/served.txt"))
print("  requests served over the whole demo: " + ", ".join(f"{k} {v}" for k, v in served.items()))
PY
fi
say "done"
