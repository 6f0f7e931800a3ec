#!/usr/bin/env bash
# Prints the responder's ingest figures on this machine: notifications/s and p50/p99 ack latency
# for the real Alertmanager fixture bodies at 1, 16 and 64 connections, journaling on (every
# 202 is on disk), and RSS idle and after the load. Then, when HAProxy and Docker are here,
# the reaction time (webhook -> HAProxy server ready) from `cargo bench --bench reaction`, the
# cluster takeover, the scale run, and the fast path (kill -> first cloud answer, with and without).
#
# Targets (issue 6): >= 30,000 notifications/s with journaling, p99 ack <= 5 ms at 16
# connections, RSS <= 20 MB idle and <= 50 MB under load.
# Usage: scripts/bench.sh   (env DURATION=10s per run; SKIP_REACTION=1; BIN=path to measure a
#        binary already built, e.g. one from `cargo build --release --no-default-features`)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/failover-responder/target}
duration=${DURATION:-10s}

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --locked --bin failover-responder
  bin=$CARGO_TARGET_DIR/release/failover-responder
fi

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
printf 'bench-token\n' >"$work/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Backends point at sockets that do not exist: this measures ingest (auth, parse, journal with
# fsync, wake), not Docker or HAProxy.
cat >"$work/bench.yaml" <<YAML
auth: {bearer_token_file: $work/token, max_failures_per_minute: 0}
storage: {path: $work/data}
services:
  onprem-api:
    failover_on: ['alertname="onprem_down"', 'service="onprem-api"']
    failback_on: ['alertname="onprem_recovered"', 'service="onprem-api"']
    haproxy: {runtime_api: ['unix:$work/none.sock'], backend: api, cloud_servers: [cloud1]}
YAML
"$bin" serve --config.file "$work/bench.yaml" --web.listen-address "127.0.0.1:$port" --log.level warn >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/-/healthy" 2>/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$pid/status"; }
sleep 1
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); responder release build"
echo "RSS idle: $(rss)"
export BENCH_FIXTURES=$repo/tests/fixtures/alertmanager-0.25 BENCH_TOKEN=bench-token
printf '%-12s %14s %10s %10s %10s\n' connections notifications/s p50_ms p99_ms errors
for c in 1 16 64; do
  line=$(wrk -t "$(( c < 2 ? 1 : 2 ))" -c "$c" -d "$duration" -s scripts/bench/post.lua "http://127.0.0.1:$port" | grep '^BENCH')
  # The Lua script prints `BENCH rps=... p50_ms=... p99_ms=... errors=...`: its fields become
  # the variables below.
  rps="" p50_ms="" p99_ms="" errors=""
  eval "${line#BENCH }"
  printf '%-12s %14s %10s %10s %10s\n' "$c" "$rps" "$p50_ms" "$p99_ms" "$errors"
done
echo "RSS after load: $(rss)"
echo "journal entries: $(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^failover_responder_journal_entries / {print $2}')"

if [ "${SKIP_REACTION:-0}" != 1 ]; then
  echo
  echo "reaction (webhook -> HAProxy server ready), 20 runs against real HAProxy and Docker:"
  cargo bench --locked --bench reaction 2>/dev/null | grep -E '^(reaction|SKIPPED)' || true
  echo "takeover of a responder cluster (kill -9 of the leader), 10 runs, three etcd members:"
  cargo bench --locked --bench takeover 2>/dev/null | grep -E '^(takeover|SKIPPED)' || true
  echo "scale: 100 services x 2 HAProxy, one notification, standalone and with cluster:"
  cargo bench --locked --bench scale 2>/dev/null | grep -E '^(scale|SKIPPED)' || true
  echo "fast path: on-prem killed -> first answer from the cloud, 10 runs each with and without it, and its polling cost:"
  cargo bench --locked --bench fastpath 2>/dev/null | grep -E '^(fastpath|run|SKIPPED)' || true
fi
