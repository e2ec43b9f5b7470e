#!/usr/bin/env bash
# AfterInstall: check the installed tree is complete before anything starts.
set -euo pipefail
source "$(dirname "$0")/common.sh"
test -x "$HELLO_HOME/server.py" || { log "server.py is missing or not executable"; exit 1; }
test -s "$HELLO_HOME/etc/hello.conf" || { log "etc/hello.conf is missing"; exit 1; }
log "installed version $(cat "$HELLO_HOME/VERSION")"
