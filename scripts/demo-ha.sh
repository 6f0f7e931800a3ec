#!/usr/bin/env bash
# Two responders, one actor, on one machine and loopback only: three etcd members, two
# responders (site-a, site-b) sharing the leader lease, a real Alertmanager notifying both, an
# on-prem API behind HAProxy and a client requesting the frontend all along. The on-prem API
# is stopped and the failover alert fired; the leader dies in the middle of the failover, right
# before it opens the cloud server (the crash point the crash tests use: it aborts as kill -9
# would, with the container started); the other responder takes over and finishes it. Prints a
# timeline of both nodes' steps. Cleans up on exit and Ctrl-C.
#
# Usage: scripts/demo.sh --ha   (or scripts/demo-ha.sh; installs what is missing, builds, runs;
#                                about half a minute once built)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/failover-responder/target}
ONPREM_PORT=15100
FRONTEND_PORT=18180
CLOUD_PORT=18181
A_PORT=19195
B_PORT=19196
ALERTMANAGER_PORT=19193
ETCD_PORTS=(12379 12381 12383)   # client ports; peer port = client + 1
CONTAINER=fr-demo-ha-cloud-api
IMAGE=onprem-api:latest
LEASE_TTL=2s

say() { printf '\033[1m[demo --ha]\033[0m %s\n' "$*"; }
now_ms() { date +%s%3N; }

for p in $ONPREM_PORT $FRONTEND_PORT $CLOUD_PORT $A_PORT $B_PORT $ALERTMANAGER_PORT \
  "${ETCD_PORTS[@]}" $((ETCD_PORTS[0] + 1)) $((ETCD_PORTS[1] + 1)) $((ETCD_PORTS[2] + 1)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port 127.0.0.1:$p is in use; stop what uses it and run again" >&2
    exit 1
  fi
done

say "installing components if missing"
scripts/install-deps.sh
say "building the responder"
cargo build --locked
bin=$CARGO_TARGET_DIR/debug/failover-responder
scripts/build-image.sh "$IMAGE" cloud

DIR=$(mktemp -d /tmp/failover-demo-ha.XXXXXX)
declare -A pid_of
pids=()
remove_container() {
  curl -fsS --unix-socket /var/run/docker.sock -X DELETE \
    "http://localhost/containers/$CONTAINER?force=true" >/dev/null 2>&1 || true
}
cleanup() {
  trap - EXIT INT TERM
  say "cleaning up"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  remove_container
  if [ "${DEMO_KEEP:-0}" = 1 ]; then say "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
remove_container
start() { # name command...
  local name=$1
  shift
  "$@" >"$DIR/$name.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
  disown # its death (the leader's, on purpose) is the demo's to tell, not bash's
}

# On-prem API and HAProxy in front of it, with the cloud copy as a backup server in maint.
mkdir -p "$DIR/www"
echo onprem >"$DIR/www/index.html"
echo ok >"$DIR/www/health"
start onprem /bin/busybox httpd -f -p "127.0.0.1:$ONPREM_PORT" -h "$DIR/www"
cat >"$DIR/haproxy.cfg" <<EOF
global
  stats socket $DIR/haproxy.sock mode 600 level admin
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
  server cloud1 127.0.0.1:$CLOUD_PORT check backup disabled
EOF
start haproxy haproxy -db -f "$DIR/haproxy.cfg"

# Three etcd members: losing one keeps quorum.
cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_PORTS[i] + 1))"; done
for i in 0 1 2; do
  c=${ETCD_PORTS[i]}
  start "etcd$i" etcd --name "e$i" --data-dir "$DIR/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$((c + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((c + 1))" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token demo-ha \
    --heartbeat-interval 100 --election-timeout 1000
done
endpoints=$(printf "'http://127.0.0.1:%s', " "${ETCD_PORTS[@]}")

# Two responders: the same services, each its own name, port and storage.
token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$token" >"$DIR/token"
chmod 600 "$DIR/token"
for node in a b; do
  port=$A_PORT
  [ $node = b ] && port=$B_PORT
  cat >"$DIR/site-$node.yaml" <<EOF
listen_address: 127.0.0.1:$port
auth: {bearer_token_file: $DIR/token}
reconcile: {interval: 1s, retry_initial: 300ms, retry_max: 3s}
storage: {path: $DIR/state-$node}
cluster:
  name: site-$node
  lease_ttl: $LEASE_TTL
  prefix: /failover-demo/
  etcd: {endpoints: [${endpoints%, }], timeout: 500ms}
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
      runtime_api: ['unix:$DIR/haproxy.sock']
      backend: api
      cloud_servers: [cloud1]
    timeouts: {healthy: 30s, drain: 2s, stop: 2s}
    hold_down: 0s
EOF
done

# Alertmanager notifies both responders: one webhook_configs entry each.
cat >"$DIR/alertmanager.yml" <<EOF
route:
  receiver: responders
  group_by: [alertname, service]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: responders
    webhook_configs:
      - url: http://127.0.0.1:$A_PORT/api/v1/alerts
        send_resolved: true
        http_config: {authorization: {type: Bearer, credentials_file: $DIR/token}}
      - url: http://127.0.0.1:$B_PORT/api/v1/alerts
        send_resolved: true
        http_config: {authorization: {type: Bearer, credentials_file: $DIR/token}}
EOF
start alertmanager prometheus-alertmanager --config.file="$DIR/alertmanager.yml" --storage.path="$DIR/am" \
  --web.listen-address=127.0.0.1:$ALERTMANAGER_PORT --cluster.listen-address=

wait_for() { # what url
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$1 did not come up; logs in $DIR" >&2
  DEMO_KEEP=1
  exit 1
}
for i in 0 1 2; do wait_for "etcd e$i" "http://127.0.0.1:${ETCD_PORTS[i]}/health"; done
# site-a dies right before opening the cloud server (test-only crash point; never in production).
start site-a env FAILOVER_RESPONDER_CRASH_BEFORE=server_ready "$bin" serve --config.file "$DIR/site-a.yaml" --log.format json
wait_for "responder site-a" "http://127.0.0.1:$A_PORT/-/healthy"
role() { # port -> role
  curl -fsS "http://127.0.0.1:$1/api/v1/status" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"]["role"])' 2>/dev/null || true
}
for _ in $(seq 1 100); do [ "$(role $A_PORT)" = leader ] && break; sleep 0.1; done
start site-b "$bin" serve --config.file "$DIR/site-b.yaml"
wait_for "responder site-b" "http://127.0.0.1:$B_PORT/-/healthy"
for _ in $(seq 1 100); do [ "$(role $B_PORT)" = follower ] && break; sleep 0.1; done
wait_for "Alertmanager" "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready"
wait_for "HAProxy frontend" "http://127.0.0.1:$FRONTEND_PORT/"
"$bin" ctl --url "http://127.0.0.1:$B_PORT" status | sed -n 1p | sed 's/^/  /'

# The client: one request every 100 ms.
(
  while :; do
    t=$(now_ms)
    out=$(curl -s --max-time 1 -w ' %{http_code}' "http://127.0.0.1:$FRONTEND_PORT/" 2>/dev/null | tr -d '\n' || true)
    echo "$t $out"
    sleep 0.1
  done
) >"$DIR/client.log" &
pids+=($!)
sleep 1

say "on-prem stops; the failover alert fires in Alertmanager, which notifies both responders"
t_outage=$(now_ms)
kill "${pid_of[onprem]}"
curl -fsS -X POST -H 'content-type: application/json' "http://127.0.0.1:$ALERTMANAGER_PORT/api/v2/alerts" \
  -d '[{"labels": {"alertname": "onprem_down", "service": "onprem-api", "severity": "critical"}}]' >/dev/null

# The leader dies in the middle of the failover: right before it opens the cloud server.
for _ in $(seq 1 600); do
  kill -0 "${pid_of[site-a]}" 2>/dev/null || break
  sleep 0.02
done
t_kill=$(now_ms)
say "site-a (the leader) died in the middle of the failover, its container started, cloud1 still closed"
for _ in $(seq 1 200); do [ "$(role $B_PORT)" = leader ] && break; sleep 0.05; done
t_lead=$(now_ms)
for _ in $(seq 1 600); do
  grep -q ' cloud 200$' "$DIR/client.log" && break
  sleep 0.1
done
grep -q ' cloud 200$' "$DIR/client.log" || { say "the cloud never answered; logs kept in $DIR"; DEMO_KEEP=1; exit 1; }
sleep 1
curl -fsS "http://127.0.0.1:$B_PORT/api/v1/events?service=onprem-api" >"$DIR/events-b.json"
curl -fsS "http://127.0.0.1:$B_PORT/api/v1/status" >"$DIR/status-b.json"
"$bin" ctl --url "http://127.0.0.1:$B_PORT" status | sed 's/^/  /'

python3 - "$DIR" "$t_outage" "$t_kill" "$t_lead" <<'EOF'
import json, sys, datetime
d, t_out, t_kill, t_lead = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def ts(iso):
    base, _, frac = iso.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1000) + int((frac + "000")[:3] or 0)
rows = [(t_out, "", "on-prem stopped, onprem_down fired")]
# Each node keeps its own events; site-a is dead, so its steps come from its JSON log.
for line in open(f"{d}/site-a.log"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    f = e.get("fields", e)  # --log.format json flattens the fields into the line
    if f.get("message") == "step done" and ts(e["timestamp"]) >= t_out:
        rows.append((ts(e["timestamp"]), "site-a", f"step: {f.get('step')}: {f.get('outcome')}"))
for node in ("b",):
    for e in json.load(open(f"{d}/events-{node}.json"))["events"]:
        if e["kind"] in ("step", "fenced", "resume") and ts(e["at"]) >= t_out:
            rows.append((ts(e["at"]), e.get("node", ""), e["kind"] + ": " + e["message"]))
rows.append((t_kill, "site-a", "died right before opening cloud1 (crash point, as kill -9)"))
since = json.load(open(f"{d}/status-b.json"))["cluster"].get("leader_since")
t_lead = ts(since) if since else t_lead
rows.append((t_lead, "site-b", "leads: site-a's lease expired in etcd, site-b won the election"))
client = [l.split() for l in open(f"{d}/client.log")]
first_cloud = next((int(c[0]) for c in client if int(c[0]) > t_out and len(c) == 3 and c[1] == "cloud" and c[2] == "200"), None)
if first_cloud:
    rows.append((first_cloud, "", "first answer from the cloud"))
rows.sort()
print("\n  timeline (seconds after the outage; each step as its node recorded it, when it ended)")
for t, node, what in rows:
    print(f"  {(t - t_out) / 1000:7.2f}  {node:7} {what}")
print(f"\n  takeover: kill -9 -> site-b leads {(t_lead - t_kill) / 1000:.2f} s (lease_ttl 2s)")
if first_cloud:
    print(f"  RTO (outage -> first answer from the cloud): {(first_cloud - t_out) / 1000:.2f} s")
EOF
say "done"
