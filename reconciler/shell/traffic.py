"""The shell's side of traffic control: read the load balancers for the hosts that matter this pass, and make
the calls the core's `TrafficStep` actions ask for (docs/traffic.md).

Where it sits: `PassRunner.run_pass` calls `observe` between reading the store and deciding, so the core sees
load balancer state as observed data like everything else; the executor calls `call` for each `TrafficStep`
with a `call`, before writing its record. Only hosts at a traffic step or left out of rotation by one are read
(`hosts_needing_traffic`), so an idle fleet costs its load balancers nothing.

Load balancer clients are built once per group and kept while the group's `trafficControl` is unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import structlog

from contract.models import GroupState, HostRegistration, Revision
from reconciler.core import Observed, State, TrafficStep
from reconciler.core.membership import group_members
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.core.traffic import hosts_needing_traffic
from reconciler.desired.manifests import Desired, DesiredGroup
from reconciler.desired.traffic_spec import LoadBalancerSpec, TrafficControlSpec
from reconciler.traffic.base import HostEndpoint, LoadBalancer, TrafficError
from reconciler.traffic.factory import build_balancer

log = structlog.get_logger(__name__)

Builder = Callable[[LoadBalancerSpec], LoadBalancer]


def endpoint(host: str, registration: HostRegistration | None) -> HostEndpoint:
    if registration is None:
        return HostEndpoint(host)
    return HostEndpoint(host, address=registration.address, instance_id=registration.instance_id)


class TrafficShell:
    """Load balancer clients per group, the observations of a pass, and the calls of its actions."""

    def __init__(self, build: Builder = build_balancer) -> None:
        self._build = build
        self._balancers: dict[str, tuple[TrafficControlSpec, list[LoadBalancer]]] = {}
        self._specs: dict[str, TrafficControlSpec] = {}
        self._registrations: Mapping[str, HostRegistration] = {}

    def balancers(self, key: str, spec: TrafficControlSpec) -> list[LoadBalancer]:
        cached = self._balancers.get(key)
        if cached is not None and cached[0] == spec:
            return cached[1]
        if cached is not None:
            for balancer in cached[1]:
                balancer.close()
        built = [self._build(entry) for entry in spec.load_balancers]
        self._balancers[key] = (spec, built)
        return built

    def observe(self, desired: Desired, observed: Observed, state: State) -> Observed:
        """`observed` with `traffic` filled for every host at a traffic step or that a step left out."""
        groups = self._prepare(desired, observed)
        wanted = hosts_needing_traffic(observed.statuses, state.traffic)
        wanted.update(self._never_deployed(groups, observed, state, wanted))
        by_group: dict[str, list[str]] = {}
        for host, key in wanted.items():
            by_group.setdefault(key, []).append(host)
        traffic = {key: self.read(key, hosts) for key, hosts in by_group.items() if key in self._specs}
        return dataclasses.replace(observed, traffic=traffic)

    def _prepare(self, desired: Desired, observed: Observed) -> Mapping[str, DesiredGroup]:
        """What this pass's reads and calls go by: the groups' traffic specs and the hosts' registrations."""
        groups = desired.desired_groups()
        self._specs = {key: group.traffic for key, group in groups.items() if group.traffic}
        self._registrations = observed.registrations
        return groups

    def _never_deployed(
        self, groups: Mapping[str, DesiredGroup], observed: Observed, state: State, wanted: Mapping[str, str]
    ) -> dict[str, str]:
        """Members of a group with traffic control that it never deployed to, while a deployment of the group
        is due or in flight: whether their load balancers have them in service decides if they count as
        healthy (`PassView.serving_unknown`). Hosts that never reported, or that the group already deployed to
        (successfully or not), are not read, so a fleet already adopted costs its load balancers nothing."""
        found: dict[str, str] = {}
        for key, group in groups.items():
            recorded = state.groups.get(key)
            if group.traffic is None or not _deploying(group.revision, recorded):
                continue
            tried = _attempted_hosts(recorded, state)
            for host in group_members(group, observed):
                status = observed.statuses.get(host)
                if (status is not None and key not in status.installed and host not in tried
                        and host not in wanted and host not in found):
                    found[host] = key
        return found

    def read(self, key: str, hosts: Iterable[str]) -> dict[str, tuple[TargetObservation, ...]]:
        """Every load balancer of the group, asked about these hosts (one call per load balancer)."""
        spec = self._specs[key]
        endpoints = [endpoint(host, self._registrations.get(host)) for host in sorted(hosts)]
        balancers = self.balancers(key, spec)
        answers = [_observe(balancer, endpoints) for balancer in balancers]
        return {
            target.host_id: tuple(
                _naming_target(balancer, target, answer.get(target.host_id) or _unanswered(target), answer)
                for balancer, answer in zip(balancers, answers, strict=True)
            )
            for target in endpoints
        }

    def observe_all(self, desired: Desired, observed: Observed, members: Mapping[str, Sequence[str]]) -> dict[
        str, dict[str, tuple[TargetObservation, ...]]
    ]:
        """For `reconcile status`: every member host of every group with traffic control."""
        self._prepare(desired, observed)
        return {key: self.read(key, hosts) for key, hosts in members.items() if key in self._specs and hosts}

    def call(self, action: TrafficStep) -> str | None:
        """Make the action's call on every load balancer of its group; None when all agreed, else what each
        that refused said (the others were still called: a half-done block is finished by the next pass)."""
        if action.call is None:
            return None
        spec = self._specs.get(action.group)
        if spec is None:
            return f"the group {action.group} has no trafficControl to {action.call} {action.host} with"
        target = endpoint(action.host, self._registrations.get(action.host))
        errors: list[str] = []
        for balancer in self.balancers(action.group, spec):
            try:
                done = _method(balancer, action.call)(target)
                log.info("traffic.call", group=action.group, host=action.host, call=action.call,
                         balancer=balancer.name, result=done)
            except TrafficError as exc:
                log.warning("traffic.call_failed", group=action.group, host=action.host, call=action.call,
                            balancer=balancer.name, error=str(exc))
                errors.append(str(exc))
            except Exception as exc:  # a provider bug must fail this host's step, not the whole pass
                log.exception("traffic.call_internal_error", group=action.group, host=action.host,
                              call=action.call, balancer=balancer.name)
                errors.append(f"{balancer.name}: internal error while calling {action.call}: {exc!r}")
        return "; ".join(errors) or None

    def close(self) -> None:
        for _, balancers in self._balancers.values():
            for balancer in balancers:
                balancer.close()
        self._balancers.clear()


def _method(balancer: LoadBalancer, call: str) -> Callable[[HostEndpoint], str]:
    """The provider method for a core's `TrafficStep.call`."""
    methods = {"block": balancer.block, "finish": balancer.finish_block, "allow": balancer.allow}
    return methods[call]


def _observe(balancer: LoadBalancer, endpoints: Sequence[HostEndpoint]) -> dict[str, TargetObservation]:
    """`observe`, which must not raise; if a provider does anyway (a bug, an answer it cannot parse), every host
    it was asked about is Unknown with the reason, and the pass goes on for the other load balancers."""
    try:
        return balancer.observe(endpoints)
    except Exception as exc:
        log.exception("traffic.observe_internal_error", balancer=balancer.name)
        error = f"{balancer.name}: internal error while reading it: {exc!r}"
        return {e.host_id: TargetObservation(TargetState.UNKNOWN, error, error=error) for e in endpoints}


def _naming_target(
    balancer: LoadBalancer,
    target: HostEndpoint,
    found: TargetObservation,
    answer: Mapping[str, TargetObservation],
) -> TargetObservation:
    """An error says which target it is about, whatever the provider put in it (an unreachable API is the same
    answer for every host; the step that fails is one host's). When every host got the same error (the API is
    away), the host id names it: asking the provider for target names could then cost one failing API call per
    host (an ELBv2 target group that cannot be resolved)."""
    if found.error is None:
        return found
    shared = len(answer) > 1 and all(o.error == found.error for o in answer.values())
    name = f"{balancer.name}, host {target.host_id}" if shared else _target_name(balancer, target)
    if target.host_id in found.error or name in found.error:
        return found
    return dataclasses.replace(found, error=f"target {name}: {found.error}")


def _target_name(balancer: LoadBalancer, target: HostEndpoint) -> str:
    try:
        return balancer.target_name(target)
    except Exception:  # the name is only for the message; the error it goes with says what is wrong
        return target.host_id


def _unanswered(target: HostEndpoint) -> TargetObservation:
    return TargetObservation(TargetState.UNKNOWN, f"{target.host_id}: no answer", error="the load balancer did not "
                             f"report on {target.host_id}")



def _deploying(revision: Revision, recorded: GroupState | None) -> bool:
    """A deployment of the group is in flight, or due (its desired revision is not its last good one)."""
    if recorded is None or recorded.deployment_in_flight:
        return True
    effective = recorded.effective_revision
    return effective is None or effective.identity() != revision.identity()


def _attempted_hosts(recorded: GroupState | None, state: State) -> set[str]:
    """Hosts the group's recorded deployments sent a command to."""
    if recorded is None:
        return set()
    ids = [*recorded.history, *([recorded.deployment_in_flight] if recorded.deployment_in_flight else [])]
    return {host for deployment_id in ids if (d := state.deployments.get(deployment_id)) is not None
            for host, h in d.hosts.items() if h.generation is not None}
