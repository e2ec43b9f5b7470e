#!/usr/bin/env bash
# ValidateService: the deployment only counts when the new version answers on its port.
# Gives the service up to 10 s, but fails at once if its process has died (no point waiting).
set -euo pipefail
source "$(dirname "$0")/common.sh"
want=$(cat "$HELLO_HOME/VERSION")
pid=$(cat "$PIDFILE" 2>/dev/null || echo "")
if python3 - "$HELLO_PORT" "$want" "$pid" <<'PY'
import json, os, sys, time, urllib.request

port, want, pid = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
            got = json.load(response)["version"]
        if got == want:
            sys.exit(0)
    except OSError:
        pass
    if pid:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            print(f"hello (pid {pid}) exited during start-up")
            sys.exit(1)
    time.sleep(0.05)
print(f"hello did not answer with version {want} within 10 s")
sys.exit(1)
PY
then
  log "hello answers with version $want on port $HELLO_PORT"
else
  log "hello is not healthy on port $HELLO_PORT; last lines of its log:"
  tail -n 5 "$HELLO_RUN/hello.log" 2>/dev/null || true
  exit 1
fi
