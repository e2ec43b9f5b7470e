# Sourced by every hook. Hooks get the agent's environment: on a real host HELLO_HOME and HELLO_PORT
# come from the agent's service unit; the demo sets them per simulated host.
HELLO_HOME="${HELLO_HOME:-/srv/hello}"
HELLO_PORT="${HELLO_PORT:-8080}"
HELLO_RUN="${HELLO_RUN:-$HELLO_HOME.run}"
PIDFILE="$HELLO_RUN/hello.pid"
log() { echo "[$LIFECYCLE_EVENT] $*"; }
