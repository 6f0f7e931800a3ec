#!/usr/bin/env bash
# The whole failover on one machine, on loopback only: an on-prem API behind HAProxy, Prometheus
# probing it with the rules in prometheus/rules/, Alertmanager routing to the responder, the
# responder starting a cloud container and opening it in HAProxy. A client requests the frontend
# all along; the on-prem API is really stopped and started again (simulate_onprem_*.sh).
# Prints a timeline with the measured RTO and failed requests. Cleans up on exit and Ctrl-C.
#
# Usage: scripts/demo.sh            (installs what is missing, builds, runs; about a minute)
# Env:   DEMO_RELEASE=1 builds the release binary; DEMO_KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/failover-responder/target}
ONPREM_PORT=15000      # on-prem API
FRONTEND_PORT=18080    # HAProxy frontend: the address clients use
CLOUD_PORT=18081       # cloud container, published on loopback
RESPONDER_PORT=19095
PROMETHEUS_PORT=19090
ALERTMANAGER_PORT=19093
CONTAINER=fr-demo-cloud-api
IMAGE=onprem-api:latest

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
now_ms() { date +%s%3N; }

for p in $ONPREM_PORT $FRONTEND_PORT $CLOUD_PORT $RESPONDER_PORT $PROMETHEUS_PORT $ALERTMANAGER_PORT; do
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

DEMO_DIR=$(mktemp -d /tmp/failover-demo.XXXXXX)
export DEMO_DIR
pids=()
cleanup() {
  trap - EXIT INT TERM
  say "cleaning up"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$DEMO_DIR/onprem.pid" ] && kill "$(cat "$DEMO_DIR/onprem.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  curl -fsS --unix-socket /var/run/docker.sock -X DELETE \
    "http://localhost/containers/$CONTAINER?force=true" >/dev/null 2>&1 || true
  if [ "${DEMO_KEEP:-0}" = 1 ]; then say "kept $DEMO_DIR"; else rm -rf "$DEMO_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$DEMO_DIR/env" <<EOF
ONPREM_PORT=$ONPREM_PORT
EOF
# A leftover container from an interrupted run would hide the failover.
curl -fsS --unix-socket /var/run/docker.sock -X DELETE \
  "http://localhost/containers/$CONTAINER?force=true" >/dev/null 2>&1 || true

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
backend api
  option httpchk GET /health
  default-server inter 500ms fall 2 rise 2
  server onprem 127.0.0.1:$ONPREM_PORT check
  # The cloud copy: a backup server that starts in maint; the responder opens it.
  server cloud1 127.0.0.1:$CLOUD_PORT check backup disabled
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
EOF
prometheus --config.file="$DEMO_DIR/prometheus.yml" --storage.tsdb.path="$DEMO_DIR/prom" \
  --web.listen-address=127.0.0.1:$PROMETHEUS_PORT >"$DEMO_DIR/prometheus.log" 2>&1 &
pids+=($!)

wait_for() { # what url
  local i
  for i in $(seq 1 100); do
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

# The client: one request every 100 ms, logging time, HTTP code and body.
(
  while :; do
    t=$(now_ms)
    # Body without its newline, then the HTTP code (000 when the connection failed).
    out=$(curl -s --max-time 1 -w ' %{http_code}' "http://127.0.0.1:$FRONTEND_PORT/" 2>/dev/null | tr -d '\n' || true)
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
svc = st["services"]["onprem-api"]
steps = svc["last_steps"]
notes = st["notifications"]
def first(pred, seq):
    return next((x for x in seq if pred(x)), None)
webhook = first(lambda n: "onprem_down" in n["group_key"] and n["status"] == "firing", notes)
resolved = first(lambda n: n["received_at"] and ts(n["received_at"]) > t_rec and ("onprem_down" in n["group_key"] or "onprem_recovered" in n["group_key"]), notes)
healthy = first(lambda s: s["action"] == "wait_healthy" and s["outcome"] == "success", steps)
ready = first(lambda s: s["action"] == "server_ready" and s["outcome"] == "success", steps)
first_cloud = first(lambda c: c[0] > t_out and c[2] == "cloud" and c[1] == "200", client)
drain = first(lambda s: s["action"] == "server_drain" and ts(s["at"]) > t_rec, steps)
stop = first(lambda s: s["action"] == "stop_container" and ts(s["at"]) > t_rec, steps)
failed_out = sum(1 for c in client if t_out <= c[0] < t_rec and c[1] != "200")
failed_back = sum(1 for c in client if c[0] >= t_rec and c[1] != "200")
rows = [
    ("on-prem API stopped (outage)", t_out),
    ("webhook onprem_down received", ts(webhook["received_at"]) if webhook else None),
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
for name, t in rows:
    print(f"  {'   -   ' if t is None else f'{(t - t_out) / 1000:7.2f}'}  {name}")
rto = (first_cloud[0] - t_out) / 1000 if first_cloud else float("nan")
print(f"\n  RTO (outage -> first answer from the cloud): {rto:.2f} s")
print(f"  requests: {len(client)} in all; failed during the outage: {failed_out}; failed during failback: {failed_back}")
EOF
say "done"
