#!/usr/bin/env bash
# Simulates an on-prem overload with real requests: `start` sends RATE requests/s (default 200)
# to the HAProxy frontend, `stop` stops them. While running, it also publishes how many requests
# the on-prem server has served, as HAProxy counts them (`show stat`, stot of server onprem),
# as `http_requests_total` on the on-prem API's /metrics: the counter the onprem_overloaded rule
# (prometheus/rules/onprem.yml, > 100 req/s) reads. Nothing is faked past that: Prometheus,
# Alertmanager, the responder, HAProxy and the burst containers all act for real.
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
  rate=${2:-200}
  python3 - "$rate" "$FRONTEND_PORT" "$DEMO_DIR/haproxy.sock" "$DEMO_DIR/onprem-www/metrics" \
    >"$DEMO_DIR/overload.log" 2>&1 <<'EOF' &
import os, socket, sys, threading, time, urllib.request

rate, port, sock_path, metrics = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
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

def served_by_onprem():
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.sendall(b"show stat\n")
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    lines = out.decode().splitlines()
    cols = lines[0].lstrip("# ").split(",")
    px, sv, stot = cols.index("pxname"), cols.index("svname"), cols.index("stot")
    for line in lines[1:]:
        f = line.split(",")
        if len(f) > stot and f[px] == "api" and f[sv] == "onprem":
            return int(f[stot])
    return None

def exporter():
    while True:
        try:
            n = served_by_onprem()
        except OSError:
            n = None
        if n is not None:
            tmp = metrics + ".tmp"
            with open(tmp, "w") as fh:
                fh.write("# TYPE onprem_api_info gauge\nonprem_api_info 1\n")
                fh.write("# TYPE http_requests_total counter\n")
                fh.write(f"http_requests_total {n}\n")
            os.replace(tmp, metrics)
        time.sleep(0.5)

for _ in range(THREADS):
    threading.Thread(target=client, daemon=True).start()
exporter()
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
