#!/usr/bin/env bash
# Simulates an on-prem outage: stops the on-prem API process (a real outage, not a posted alert).
# Reads DEMO_DIR/env written by demo.sh (or pass DEMO_DIR).
set -euo pipefail
: "${DEMO_DIR:?set DEMO_DIR to the work directory of demo.sh}"
# shellcheck disable=SC1091
. "$DEMO_DIR/env"
if [ -f "$DEMO_DIR/onprem.pid" ] && kill -0 "$(cat "$DEMO_DIR/onprem.pid")" 2>/dev/null; then
  kill "$(cat "$DEMO_DIR/onprem.pid")"
  rm -f "$DEMO_DIR/onprem.pid"
  echo "on-prem API on 127.0.0.1:$ONPREM_PORT stopped"
else
  echo "on-prem API was not running"
fi
