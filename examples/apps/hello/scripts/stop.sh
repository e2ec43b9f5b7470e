#!/usr/bin/env bash
# ApplicationStop: runs from the *previously installed* revision. Idempotent: nothing running is fine.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  pid=$(cat "$PIDFILE")
  log "stopping hello (pid $pid)"
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
else
  log "hello is not running"
fi
rm -f "$PIDFILE"
