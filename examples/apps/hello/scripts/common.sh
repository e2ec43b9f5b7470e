# Sourced by every hook. Hooks get the agent's environment: on a real host HELLO_PORT (and HELLO_HOME, if
# not the appspec's /srv/hello) come from /etc/fleetshift/agent.env, which the agent's systemd unit reads;
# the demo sets them per simulated host. FLEETSHIFT_HOST_ROOT is "" on a real host and the agent's
# --host-root when several agents share a machine, so the default finds the files wherever they landed.
HELLO_HOME="${HELLO_HOME:-${FLEETSHIFT_HOST_ROOT:-}/srv/hello}"
HELLO_PORT="${HELLO_PORT:-8080}"
HELLO_RUN="${HELLO_RUN:-$HELLO_HOME.run}"
PIDFILE="$HELLO_RUN/hello.pid"
log() { echo "[$LIFECYCLE_EVENT] $*"; }
