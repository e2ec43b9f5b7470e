#!/usr/bin/env bash
# ValidateService: the deployment only counts when the new version answers. Retries for up to 10 s.
set -euo pipefail
source "$(dirname "$0")/common.sh"
want=$(cat "$HELLO_HOME/VERSION")
for _ in $(seq 100); do
  if body=$(python3 - "$HELLO_PORT" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1) as response:
    print(json.load(response)["version"])
PY
  ); then
    if [[ "$body" == "$want" ]]; then
      log "hello answers with version $body"
      exit 0
    fi
  fi
  sleep 0.1
done
log "hello did not answer with version $want on port $HELLO_PORT; last lines of its log:"
tail -n 5 "$HELLO_RUN/hello.log" 2>/dev/null || true
exit 1
