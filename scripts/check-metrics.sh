#!/usr/bin/env bash
# Lints what a running responder exports: starts BINARY on loopback with a config that uses
# every feature exporting metrics (burst, fast path, resync, a cluster), lets it take a
# notification and a refused one and run its passes, then runs `promtool check metrics` on
# /metrics in the Prometheus text format (what a plain scrape without an Accept header gets)
# and checks that a scraper asking for OpenMetrics gets it.
#
# Usage: scripts/check-metrics.sh BINARY
# Run by scripts/check-deploy.sh inside a private network namespace (it brings loopback up
# there); every address it uses is 127.0.0.1, the unreachable ones on port 1.
set -euo pipefail
bin="$1"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh network namespace has its loopback down.
if ! ip -o link show lo | grep -q 'UP'; then
  ip link set lo up
fi

port=19195
token="metrics-lint-token-0123456789abcdef"
printf '%s\n' "$token" >"$work/token"
cat >"$work/config.yaml" <<EOF
listen_address: 127.0.0.1:$port
auth: {bearer_token_file: $work/token}
storage: {path: $work/data}
reconcile: {interval: 200ms, retry_initial: 100ms, retry_max: 200ms}
alertmanager: {url: 'http://127.0.0.1:1', resync_interval: 1s}
cluster: {name: lint, etcd: {endpoints: ['http://127.0.0.1:1']}}
services:
  onprem-api:
    failover_on: ['alertname="onprem_down"', 'service="onprem-api"']
    failback_on: ['alertname="onprem_recovered"', 'service="onprem-api"']
    docker:
      host: unix://$work/no-docker.sock
      containers: [{name: lint-cloud-api, image: lint:latest}]
    haproxy: {runtime_api: ['unix:$work/no-haproxy.sock'], backend: api, cloud_servers: [cloud1]}
    fast_path: {onprem_servers: [onprem1]}
    drill: {every: 24h}
    burst:
      on: ['alertname="onprem_overloaded"', 'service="onprem-api"']
      scale_in_on: ['alertname="onprem_underloaded"', 'service="onprem-api"']
      max: 2
      address: '127.0.0.1:{port}'
      port_base: 18100
      haproxy: {server_prefix: burst}
      container: {name: lint-burst, image: lint:latest}
EOF
"$bin" check-config --config.file "$work/config.yaml" >/dev/null
"$bin" serve --config.file "$work/config.yaml" >"$work/log" 2>&1 &
pid=$!
url="http://127.0.0.1:$port"

# wait_for WHAT CMD...: polls CMD every 100 ms for up to 15 s.
wait_for() {
  local what="$1"
  shift
  for _ in $(seq 150); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "the responder exited:"; cat "$work/log"; exit 1; }
    sleep 0.1
  done
  echo "timed out waiting for $what"
  cat "$work/log"
  exit 1
}
wait_for "/-/healthy" curl -sf "$url/-/healthy"
post() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
  -H 'content-type: application/json' "$@" "$url/api/v1/alerts"; }
[ "$(post --data-binary "@$repo/tests/fixtures/alertmanager-0.25/onprem_down-firing.json")" = 202 ]
[ "$(post --data-binary '{}')" = 400 ]
passed() { curl -sf "$url/api/v1/status" | grep -q '"last_reconcile_at":"'; }
wait_for "a reconcile pass" passed
resynced() { curl -sf "$url/metrics" | grep -q '^failover_responder_resyncs_total{result="failure"}'; }
wait_for "a resync attempt" resynced

curl -sf "$url/metrics" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt"
families=$(grep -c '^# TYPE ' "$work/metrics.txt")
series=$(grep -vc '^#' "$work/metrics.txt")
if grep -q '^# EOF' "$work/metrics.txt"; then
  echo "the text format has an OpenMetrics # EOF line"
  exit 1
fi
type=$(curl -sf -o /dev/null -w '%{content_type}' \
  -H 'Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' "$url/metrics")
case "$type" in
  application/openmetrics-text*) ;;
  *) echo "asked for OpenMetrics, got $type"; exit 1 ;;
esac
echo "$families metric families, $series series: promtool check metrics has nothing to say"

# The Grafana dashboard: a real Prometheus scrapes this responder, then every query runs there.
prom_port=19196
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: failover-responder
    static_configs: [{targets: ['127.0.0.1:$port']}]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
trap 'kill "$prom_pid" 2>/dev/null; wait "$prom_pid" 2>/dev/null; cleanup' EXIT
scraped() {
  curl -sf "http://127.0.0.1:$prom_port/api/v1/query?query=up%7Bjob%3D%22failover-responder%22%7D" |
    grep -q '"value":\[[0-9.]*,"1"\]'
}
wait_for "Prometheus scraping the responder" scraped
python3 "$repo/scripts/check-dashboard.py" "$repo/deploy/grafana/failover-responder.json" \
  "http://127.0.0.1:$prom_port" "$work/metrics.txt"
