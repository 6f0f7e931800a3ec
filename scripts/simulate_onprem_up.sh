#!/usr/bin/env bash
# Brings the on-prem API back: starts busybox httpd serving the on-prem page again.
# Reads DEMO_DIR/env written by demo.sh (or pass DEMO_DIR).
set -euo pipefail
: "${DEMO_DIR:?set DEMO_DIR to the work directory of demo.sh}"
# shellcheck disable=SC1091
. "$DEMO_DIR/env"
if [ -f "$DEMO_DIR/onprem.pid" ] && kill -0 "$(cat "$DEMO_DIR/onprem.pid")" 2>/dev/null; then
  echo "on-prem API already running"
  exit 0
fi
/bin/busybox httpd -f -p "127.0.0.1:$ONPREM_PORT" -h "$DEMO_DIR/onprem-www" &
echo $! >"$DEMO_DIR/onprem.pid"
echo "on-prem API on 127.0.0.1:$ONPREM_PORT started"
