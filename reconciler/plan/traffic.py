"""What a plan says about a group's load balancers: which ones, and each host's target in their terms.

Computed from the manifest and the hosts' registrations only: a plan runs in a pull request's CI, which should
not need (and usually has no) access to the load balancers themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from contract.durations import format_duration
from reconciler.core import Observed
from reconciler.desired.traffic_spec import LoadBalancerSpec, TrafficControlSpec
from reconciler.plan.describe import host_list

#: Targets listed per load balancer before "and N more".
TARGETS_SHOWN = 6


def traffic_lines(spec: TrafficControlSpec, hosts: Sequence[str] | None, observed: Observed) -> list[str]:
    timing = (f"hosts leave before they deploy, drain up to {format_duration(spec.drain_timeout)}, and must be "
              f"healthy within {format_duration(spec.healthy_timeout)} of coming back")
    lines = [_balancer_line(entry, hosts, observed) for entry in spec.load_balancers]
    return [*lines, timing]


def _balancer_line(entry: LoadBalancerSpec, hosts: Sequence[str] | None, observed: Observed) -> str:
    if entry.haproxy is not None:
        spec = entry.haproxy
        name = f"haproxy backend {spec.backend} ({spec.runtime_api})"
        targets = [f"{spec.backend}/{spec.servers.get(h, h)}" for h in hosts or []]
    elif entry.target_group is not None:
        group = entry.target_group
        name = f"target group {group.name or group.arn}"
        targets = [_target(h, observed, group.port) for h in hosts or []]
    else:
        assert entry.command is not None
        command = entry.command
        name = f"command {command.name or command.run[0]}"
        targets = [f"{h} {observed.registrations[h].address}" if h in observed.registrations
                   and observed.registrations[h].address else h for h in hosts or []]
    if not targets:
        return name
    return f"{name}: {host_list(targets, TARGETS_SHOWN)}"


def _target(host: str, observed: Observed, port: int | None) -> str:
    registration = observed.registrations.get(host)
    where = (registration.instance_id or registration.address) if registration is not None else None
    suffix = f":{port}" if port else ""
    return f"{where}{suffix} ({host})" if where else f"{host} (no instanceId or address registered)"
