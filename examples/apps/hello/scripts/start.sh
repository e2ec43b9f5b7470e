#!/usr/bin/env bash
# ApplicationStart: start the service detached. Its output goes to a log file, never to this script's
# stdout, otherwise the agent would wait for the pipe to close (CodeDeploy's "outputs left open").
set -euo pipefail
source "$(dirname "$0")/common.sh"
mkdir -p "$HELLO_RUN"
HELLO_PORT="$HELLO_PORT" nohup python3 "$HELLO_HOME/server.py" >>"$HELLO_RUN/hello.log" 2>&1 </dev/null &
echo $! >"$PIDFILE"
log "started hello on 127.0.0.1:$HELLO_PORT (pid $!)"
