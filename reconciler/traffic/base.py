"""What every load balancer provider offers the reconciler: read where hosts stand, take one out, put one back.

The core never calls a provider: the shell reads observations (`TargetObservation`, reconciler/core/observed.py)
for the hosts that matter this pass, the core decides from them, and the shell carries out the calls it asks
for. So every call here must be idempotent (a crash between a call and the write that records it repeats the
call on the next pass) and quick (a pass must not wait for a drain: draining is observed pass after pass).

Providers: HAProxy's runtime API (reconciler/traffic/haproxy.py), ELBv2 target groups
(reconciler/traffic/elbv2.py), a command for anything else (reconciler/traffic/command.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.core.observed import TargetObservation


@dataclass(frozen=True)
class HostEndpoint:
    """What a provider may use to find a host's target: from the agent's registration."""

    host_id: str
    #: agent.yaml `address` (an IP or DNS name): IP targets, the command provider.
    address: str | None = None
    #: agent.yaml `instanceId`: ELBv2 targets of type `instance`.
    instance_id: str | None = None


class TrafficError(Exception):
    """A load balancer could not be read or changed. The message is for the operator, in the load balancer's
    terms: which API (and where), which target, and what it answered, e.g.
    `haproxy runtime API unix:/run/haproxy/admin.sock: set server web/host-1 state drain: No such server.`"""


class LoadBalancer(Protocol):
    """One load balancer of a group's `trafficControl.loadBalancers`."""

    @property
    def name(self) -> str:
        """For status, plans and messages: `haproxy backend web (unix:/run/haproxy/admin.sock)`."""
        ...

    def target_name(self, host: HostEndpoint) -> str:
        """The host's target in this load balancer's terms (`web/host-1`, `i-0abc:80`, `10.0.0.5:8080`).
        Raises TrafficError when the host cannot be mapped (an IP target group and no address)."""
        ...

    def observe(self, hosts: Sequence[HostEndpoint]) -> dict[str, TargetObservation]:
        """Where each host stands, keyed by host id, in as few calls as the API allows (one `show stat`, one
        `describe_target_health`). Never raises: a host that cannot be read is `UNKNOWN` with `error` set
        (the API unreachable, the target not found), so one bad host does not blind the pass to the others."""
        ...

    def block(self, host: HostEndpoint) -> str:
        """Stop sending new requests to the host and let open ones finish (HAProxy `state drain`, ELBv2
        `deregister_targets`). Returns what was done, in the load balancer's words. Raises TrafficError."""
        ...

    def finish_block(self, host: HostEndpoint) -> str:
        """The drain is over (or timed out): take the host fully out (HAProxy `state maint`; nothing to do for
        ELBv2, whose deregistration ends by itself). Raises TrafficError."""
        ...

    def allow(self, host: HostEndpoint) -> str:
        """Put the host back (HAProxy `state ready`, ELBv2 `register_targets`); it counts as back only once the
        load balancer's own health checks call it healthy, which `observe` reports. Raises TrafficError."""
        ...

    def drain_hint_seconds(self) -> float | None:
        """How long this load balancer drains a target by its own settings (an ELBv2 target group's
        deregistration delay), for plan estimates; None when it has no such setting or it cannot be read."""
        ...

    def close(self) -> None:
        """Release connections and clients."""
        ...
