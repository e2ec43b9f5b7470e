"""One step of one deployment: which hosts get the revision now, or why not, or how the deployment ends.

This is CodeDeploy's minimum-healthy-hosts scheduler (reference codedeploy.md §4.1-4.3) written as a step
with a budget that every pass re-runs, never as a loop that sleeps:

    N        = hosts in the deployment (targets plus the group members it skips)
    minimum  = HOST_COUNT value | ceil(FLEET_PERCENT x N / 100) | N - 1 for OneAtATime
    budget   = healthy hosts not in flight - minimum

- Pending hosts go in the order unhealthy -> unknown revision -> old revision -> current revision (by host
  id within a rank). Unhealthy hosts take no budget: updating them cannot lower the healthy count. A
  healthy host takes one unit of budget; with none left it waits.
- An offline target (silent past the heartbeat timeout, or an explicit host that never registered) fails
  when its turn comes, as a stopped EC2 instance does in CodeDeploy.
- Once any host has failed, the rest proceeds batch by batch: a new batch waits until the previous one
  has finished, then the health check decides whether to go on.
- When nothing is in flight and the next healthy host would take the group to or below its minimum, the
  deployment fails: HEALTH_CONSTRAINTS_INVALID if nothing was attempted yet, HEALTH_CONSTRAINTS otherwise.
- The end: succeeded when at least one host succeeded and, if any host failed, the healthy hosts are still
  at least the minimum (which gives OneAtATime's "a failure on the last host does not fail it" and
  HalfAtATime's "needs half, rounded up").

Beyond CodeDeploy, from the DeploymentConfig: a canary first batch and its bake, one zone at a time with a
bake between zones and a per-zone minimum. Rollbacks and catch-up deployments redeploy a revision that
already proved itself, so they keep the minimum and zone rules but skip canary and bake waits.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from contract.durations import format_duration
from contract.models import Deployment, DeploymentStatus, HostDeploymentState, HostDeploymentStatus
from reconciler.desired.manifests import CanarySpec, EffectiveConfig, ZonalSpec

if TYPE_CHECKING:
    from reconciler.core.actions import BlockedCode

PENDING = HostDeploymentStatus.PENDING
IN_PROGRESS = HostDeploymentStatus.IN_PROGRESS
SUCCEEDED = HostDeploymentStatus.SUCCEEDED
FAILED = HostDeploymentStatus.FAILED
SKIPPED = HostDeploymentStatus.SKIPPED

#: Revision health ranks, in scheduling order after "unhealthy".
REVISION_UNKNOWN = 0
REVISION_OLD = 1
REVISION_CURRENT = 2


class HostFacts(NamedTuple):
    """What the step needs to know about one host, judged by the caller from Observed and State.

    A named tuple, not a frozen dataclass: as immutable, and built in half the time (a frozen dataclass sets each
    field through `object.__setattr__`). One is built for every host of every deployment in flight at each pass, and
    at each simulated pass of `plan`'s dry run: 55,000 for a 10,000-host plan (issue 18)."""

    online: bool
    #: Its one command slot is free (last command reported finished) and no other group booked it this pass.
    free: bool
    #: Instance health before this deployment: its last attempt in this group succeeded, or it reports the
    #: group's revision installed and was never attempted. Offline hosts are never healthy.
    healthy: bool
    revision_rank: int = REVISION_UNKNOWN
    zone: str | None = None
    #: Why an offline host is offline, for the failure message.
    offline_reason: str = "offline"
    #: Counted failed in this deployment (timed out, went offline) but its agent later reported success:
    #: the deployment keeps the failure, health counts the host as the agent found it.
    recovered: bool = False


@dataclass(frozen=True)
class Outcome:
    status: DeploymentStatus
    error_code: str | None
    message: str


@dataclass
class Step:
    """The decision for one deployment in one pass. At most one of dispatch/outcome/baking is the point,
    but offline hosts may be failed in the same step as any of them."""

    dispatch: list[str] = field(default_factory=list)
    #: Pending hosts that are offline at their turn: they fail without a command.
    offline: list[str] = field(default_factory=list)
    zone: str | None = None
    canary: bool = False
    outcome: Outcome | None = None
    baking_until: datetime | None = None
    bake_reason: str = ""
    #: Why nothing moves although the deployment could (busy command slots, stopping while hosts finish).
    waiting: str | None = None
    waiting_code: BlockedCode = "WAITING_FOR_HOSTS"
    #: When the wait ends by itself (the next gate measurement), if known.
    waiting_until: datetime | None = None


@functools.lru_cache(maxsize=1 << 18)
def host_sort_key(host: str) -> tuple[tuple[int, str], ...]:
    """Natural order, so web-2 comes before web-10 in batches and messages.

    Cached (a pure function of the id): every pass sorts the same hosts again, and `plan`'s dry run sorts
    them at every simulated tick, 50,000 regex splits for a 10,000-host plan (issue 18). Bounded, so a
    long-running `watch` over a churning fleet keeps at most 262,144 keys."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", host) if part)


def scheduling_order(hosts: Iterable[str], facts: Mapping[str, HostFacts]) -> list[str]:
    """CodeDeploy's order: unhealthy first, then unknown, old and current revision, by host id within a rank."""
    return sorted(
        hosts, key=lambda h: (facts[h].online and facts[h].healthy, facts[h].revision_rank, host_sort_key(h))
    )


def zone_sort_key(zone: str | None) -> tuple[bool, str]:
    """Zones in name order, hosts without a zone last."""
    return (zone is None, zone or "")


def _healthy(state: HostDeploymentState, facts: HostFacts) -> bool:
    """Healthy and not in flight, judged now: this deployment's own result wins over earlier history."""
    if not facts.online:
        return False
    if state.status is SUCCEEDED:
        return True
    if state.status is FAILED:
        return facts.recovered
    if state.status is IN_PROGRESS:
        return False
    return facts.healthy


def counted(deployment: Deployment) -> dict[str, HostDeploymentState]:
    """The hosts a deployment's size N counts: all but those that left the group (their EC2 instance was
    terminated mid-deployment, scale-in), which are neither healthy nor failed: simply no longer there."""
    return {h: s for h, s in deployment.hosts.items() if s.left_group is None}


def minimum_healthy(config: EffectiveConfig, host_count: int) -> int:
    return config.minimum_for(host_count)


def _zone_minimum(config: EffectiveConfig, zone_size: int) -> int:
    if config.zonal is None or config.zonal.minimum_healthy_hosts_per_zone is None:
        return 0  # CodeDeploy's default: 0 percent per zone
    return config.zonal.minimum_healthy_hosts_per_zone.minimum_for(zone_size)


def final_outcome(deployment: Deployment, facts: Mapping[str, HostFacts], config: EffectiveConfig) -> Outcome:
    """How a deployment with nothing pending and nothing in flight ends."""
    hosts = counted(deployment)
    targets = [h for h, s in hosts.items() if s.status is not SKIPPED]
    succeeded = [h for h in targets if hosts[h].status is SUCCEEDED]
    failed = [h for h in targets if hosts[h].status is FAILED]
    if not targets:
        if len(hosts) < len(deployment.hosts):
            return Outcome(DeploymentStatus.SUCCEEDED, None, "every other host left the group (scale-in) or already "
                           "runs this revision")
        return Outcome(DeploymentStatus.SUCCEEDED, None, "every host already runs this revision")
    if not succeeded:
        return Outcome(
            DeploymentStatus.FAILED,
            "HEALTH_CONSTRAINTS",
            f"no host succeeded: {len(failed)} of {len(targets)} failed ({_list(failed)})",
        )
    minimum = minimum_healthy(config, len(hosts))
    healthy = sum(1 for h, s in hosts.items() if _healthy(s, facts[h]))
    if failed and healthy < minimum:
        return Outcome(
            DeploymentStatus.FAILED,
            "HEALTH_CONSTRAINTS",
            f"{len(failed)} host(s) failed ({_list(failed)}), leaving {healthy} healthy of {len(hosts)}; "
            f"the minimum is {minimum}",
        )
    note = f"; {len(failed)} failed ({_list(failed)}) within the minimum healthy of {minimum}" if failed else ""
    return Outcome(DeploymentStatus.SUCCEEDED, None, f"{len(succeeded)} of {len(targets)} host(s) succeeded{note}")


def _list(hosts: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(hosts, key=host_sort_key)[:limit])
    return shown + (f" and {len(hosts) - limit} more" if len(hosts) > limit else "")


def _latest_finish(deployment: Deployment, hosts: list[str]) -> datetime | None:
    ends = [deployment.hosts[h].finished_at for h in hosts]
    known = [end for end in ends if end is not None]
    return max(known) if known else None


def decide_step(
    deployment: Deployment,
    facts: Mapping[str, HostFacts],
    config: EffectiveConfig,
    *,
    now: datetime,
    canary_and_bakes: bool,
    stop: Outcome | None = None,
) -> Step:
    """Decide what `deployment` does this pass. `facts` must cover every host in the deployment; `stop`
    is how it ends if it is being stopped (on request, superseded, group removed)."""
    hosts = deployment.hosts
    pending = [h for h, s in hosts.items() if s.status is PENDING]
    in_flight = [h for h, s in hosts.items() if s.status is IN_PROGRESS]
    if not pending and not in_flight:
        return Step(outcome=final_outcome(deployment, facts, config))
    if stop is not None:
        return _stopping(stop, in_flight)
    canary = config.canary if canary_and_bakes else None
    if canary is not None and len(deployment.batches) == 1:
        held = _after_canary(deployment, canary, now)
        if held is not None:
            return held
    current_zone: str | None = None
    if config.zonal is not None:
        current_zone = _current_zone(facts, pending, in_flight)
        if not in_flight and canary_and_bakes:
            held = _zone_bake(deployment, facts, config.zonal, current_zone, now)
            if held is not None:
                return held
    if in_flight and any(s.status is FAILED for s in hosts.values()):
        return Step()  # a failure pauses new batches until the hosts in flight have finished

    budget = _Budget.of(deployment, facts, config, current_zone)
    limit = canary.hosts if canary is not None and not deployment.batches else math.inf
    step = Step(zone=current_zone, canary=limit != math.inf)
    candidates = scheduling_order((h for h in pending if config.zonal is None or facts[h].zone == current_zone), facts)
    waiting_busy, needs_budget = _pick_batch(step, candidates, facts, budget, limit)
    if step.dispatch or in_flight:
        return step
    if step.offline:
        return _again_with_offline(deployment, facts, config, step, now=now, canary_and_bakes=canary_and_bakes)
    if waiting_busy:
        step.waiting = f"{_list(waiting_busy)} still busy with another command"
        return step
    if needs_budget:
        step.outcome = _health_failure(deployment, facts, budget, offline=step.offline, remaining=pending)
    return step  # with neither list set every pending host went out or is offline (both returned above)


def _stopping(stop: Outcome, in_flight: list[str]) -> Step:
    """A stopped deployment lets its hosts in flight finish, then ends as `stop` says."""
    if in_flight:
        return Step(
            waiting=f"{stop.message}; waiting for {len(in_flight)} host(s) in flight to finish",
            waiting_code="STOPPING",
        )
    return Step(outcome=stop)


def _after_canary(deployment: Deployment, canary: CanarySpec, now: datetime) -> Step | None:
    """The canary batch goes alone, all of it must succeed, then it bakes before anything else goes.
    None: the canary is over, go on."""
    hosts = deployment.hosts
    canary_hosts = deployment.batches[0]
    if any(hosts[h].status is IN_PROGRESS for h in canary_hosts):
        return Step()
    canary_failed = [h for h in canary_hosts if hosts[h].status is FAILED]
    if canary_failed:
        return Step(
            outcome=Outcome(
                DeploymentStatus.FAILED,
                "CANARY_FAILED",
                f"the canary batch failed on {_list(canary_failed)}",
            )
        )
    finished = _latest_finish(deployment, canary_hosts)
    if canary.bake_time > timedelta(0) and finished is not None and now < finished + canary.bake_time:
        return Step(
            baking_until=finished + canary.bake_time,
            bake_reason=f"canary bake of {format_duration(canary.bake_time)}",
        )
    return None


def _current_zone(facts: Mapping[str, HostFacts], pending: list[str], in_flight: list[str]) -> str | None:
    """Only one zone is in flight at a time; with none in flight, the first zone with pending hosts."""
    return min((facts[h].zone for h in (in_flight or pending)), key=zone_sort_key)


def _zone_bake(
    deployment: Deployment, facts: Mapping[str, HostFacts], zonal: ZonalSpec, zone: str | None, now: datetime
) -> Step | None:
    """The next zone starts after the previous one finished and baked (longer after the first zone)."""
    started = [h for h, s in deployment.hosts.items() if s.status in (SUCCEEDED, FAILED)]
    started_zones = {facts[h].zone for h in started}
    if not started_zones or zone in started_zones:
        return None
    bake = zonal.bake_time
    if len(started_zones) == 1 and zonal.first_zone_bake_time is not None:
        bake = zonal.first_zone_bake_time
    finished = _latest_finish(deployment, started)
    if bake > timedelta(0) and finished is not None and now < finished + bake:
        return Step(
            baking_until=finished + bake,
            bake_reason=f"bake of {format_duration(bake)} before zone {zone or '(none)'}",
        )
    return None


@dataclass
class _Budget:
    """How many healthy hosts may go out of service now, in the fleet and in the current zone."""

    minimum: int
    healthy_idle: int
    budget: float
    zone_budget: float = math.inf
    zone_members: list[str] = field(default_factory=list)
    zone_min: int = 0
    zone: str | None = None
    zonal: bool = False

    @classmethod
    def of(
        cls, deployment: Deployment, facts: Mapping[str, HostFacts], config: EffectiveConfig, zone: str | None
    ) -> _Budget:
        hosts = counted(deployment)
        minimum = minimum_healthy(config, len(hosts))
        healthy_idle = sum(1 for h, s in hosts.items() if _healthy(s, facts[h]))
        found = cls(minimum=minimum, healthy_idle=healthy_idle, budget=healthy_idle - minimum, zone=zone)
        if config.zonal is not None:
            found.zonal = True
            found.zone_members = [h for h in hosts if facts[h].zone == zone]
            found.zone_min = _zone_minimum(config, len(found.zone_members))
            healthy_in_zone = sum(1 for h in found.zone_members if _healthy(hosts[h], facts[h]))
            found.zone_budget = healthy_in_zone - found.zone_min
        return found


def _pick_batch(
    step: Step, candidates: list[str], facts: Mapping[str, HostFacts], budget: _Budget, limit: float
) -> tuple[list[str], list[str]]:
    """Fill `step.dispatch` (and `step.offline`) in scheduling order; returns the hosts left waiting for a
    busy command slot and those left waiting for budget."""
    waiting_busy: list[str] = []
    needs_budget: list[str] = []
    for host in candidates:
        f = facts[host]
        if not f.online:
            step.offline.append(host)
            continue
        if len(step.dispatch) >= limit:
            continue
        if f.healthy:
            if budget.budget <= 0 or budget.zone_budget <= 0:
                needs_budget.append(host)
                continue
            if not f.free:
                waiting_busy.append(host)
                continue
            budget.budget -= 1
            budget.zone_budget -= 1
        elif not f.free:
            waiting_busy.append(host)
            continue
        step.dispatch.append(host)
    return waiting_busy, needs_budget


def _again_with_offline(
    deployment: Deployment,
    facts: Mapping[str, HostFacts],
    config: EffectiveConfig,
    step: Step,
    *,
    now: datetime,
    canary_and_bakes: bool,
) -> Step:
    """Nothing went out, but offline hosts just failed: decide again with them counted (the deployment may
    end, move to the next zone, or fail its health check) so this pass is complete by itself."""
    hosts = deployment.hosts
    marked = {h: hosts[h].model_copy(update={"status": FAILED, "finished_at": now}) for h in step.offline}
    again = decide_step(
        deployment.model_copy(update={"hosts": {**hosts, **marked}}),
        facts,
        config,
        now=now,
        canary_and_bakes=canary_and_bakes,
    )
    again.offline = [*step.offline, *again.offline]
    return again


def _health_failure(
    deployment: Deployment,
    facts: Mapping[str, HostFacts],
    budget: _Budget,
    *,
    offline: list[str],
    remaining: list[str],
) -> Outcome:
    """Nothing in flight and the next healthy host would take the group (or its zone) below the minimum."""
    hosts = counted(deployment)
    attempted = any(s.generation is not None for s in hosts.values())
    unhealthy = sorted(h for h, s in hosts.items() if not _healthy(s, facts[h]) or h in offline)
    in_zone = budget.zonal and budget.zone_budget <= 0 and budget.budget > 0
    where = f" in zone {budget.zone}" if in_zone else ""
    if where:
        detail = (
            f"zone {budget.zone} has {int(budget.zone_budget) + budget.zone_min} healthy host(s) of "
            f"{len(budget.zone_members)} and its minimum is {budget.zone_min}"
        )
    else:
        detail = f"{budget.healthy_idle} of {len(hosts)} host(s) are healthy and the minimum is {budget.minimum}"
    unhealthy_note = f" (not healthy: {_list(unhealthy)})" if unhealthy else ""
    if attempted:
        message = (
            f"too many hosts failed to continue{where}: {detail}{unhealthy_note}; "
            f"{len(remaining)} host(s) not deployed"
        )
        return Outcome(DeploymentStatus.FAILED, "HEALTH_CONSTRAINTS", message)
    message = (
        f"the deployment cannot start{where}: {detail}{unhealthy_note}, so no healthy host can be "
        f"updated without going below the minimum"
    )
    return Outcome(DeploymentStatus.FAILED, "HEALTH_CONSTRAINTS_INVALID", message)
