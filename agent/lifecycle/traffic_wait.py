"""BlockTraffic and AllowTraffic on the agent: no script runs; the command waits for the reconciler.

With a load balancer, CodeDeploy's service (not its agent) takes an instance out before it deploys and puts it
back after. Here the reconciler does (docs/traffic.md says why): the agent reports the step InProgress, and a
`TrafficGate` (the daemon's reads `traffic/<host>.json`, agent/daemon/traffic_gate.py) blocks until the
reconciler recorded that step for this very command generation as Succeeded or Failed. The lifecycle layer only
knows the gate's shape, so `deploy-agent local`, which has no reconciler, runs the steps as no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from contract.vocabulary import BLOCK_TRAFFIC
from contract.wire import HostCommand


@dataclass(frozen=True)
class TrafficOutcome:
    succeeded: bool
    #: The reconciler's words (what the load balancers said), or why waiting ended.
    message: str


#: `(command, step, should_stop, deadline)` -> outcome. `deadline` is on the monotonic clock (None: none).
TrafficGate = Callable[[HostCommand, str, Callable[[], bool] | None, float | None], TrafficOutcome]


def waiting_message(step: str) -> str:
    if step == BLOCK_TRAFFIC:
        return "waiting for the reconciler to take this host out of its load balancers"
    return "waiting for the reconciler to put this host back in its load balancers and for their health checks"


NO_RECONCILER = "nothing to wait for: no reconciler runs this command, so no load balancer was changed"
