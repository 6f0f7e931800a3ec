#!/usr/bin/env bash
# Simulates an on-prem overload with real requests: `start` sends RATE requests/s (default 180)
# to the HAProxy frontend, `stop` stops them. Nothing is faked: HAProxy's own Prometheus exporter
# counts them at the frontend (haproxy_frontend_http_requests_total), Prometheus divides that
# rate by the units serving (prometheus/rules/onprem.yml: over 100/s per unit fires
# onprem_overloaded, under 50/s onprem_underloaded), and Alertmanager, the responder, HAProxy and
# the burst containers all act for real.
# Reads DEMO_DIR/env written by demo.sh (or pass DEMO_DIR).
#
# Usage: scripts/simulate_onprem_overload.sh start [RATE] | stop
set -euo pipefail
: "${DEMO_DIR:?set DEMO_DIR to the work directory of demo.sh}"
# shellcheck disable=SC1091
. "$DEMO_DIR/env"
pidfile=$DEMO_DIR/overload.pid

case "${1:-}" in
start)
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "overload already running"
    exit 0
  fi
  rate=${2:-180}
  python3 - "$rate" "$FRONTEND_PORT" >"$DEMO_DIR/overload.log" 2>&1 <<'EOF' &
import sys, threading, time, urllib.request

rate, port = float(sys.argv[1]), int(sys.argv[2])
url = f"http://127.0.0.1:{port}/"
THREADS = 8

def client():
    # Each thread paces itself to rate/THREADS requests per second.
    period = THREADS / rate
    nxt = time.monotonic()
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            pass
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))

threads = [threading.Thread(target=client, daemon=True) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
EOF
  echo $! >"$pidfile"
  echo "overload: $rate requests/s to 127.0.0.1:$FRONTEND_PORT"
  ;;
stop)
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    echo "overload stopped"
  else
    echo "no overload was running"
  fi
  rm -f "$pidfile"
  ;;
*)
  echo "usage: $0 start [RATE] | stop" >&2
  exit 2
  ;;
esac
