"""How long a rollout will take: its batches times the median batch of the group's recent deployments, plus
the bakes the engine waits."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from datetime import timedelta

from contract.models import Deployment, GroupState
from reconciler.plan.model import Batch, Estimate
from reconciler.plan.words import count, duration

#: Recent deployments of a group whose batch durations feed the estimate.
ESTIMATE_HISTORY = 5


def batch_durations(deployments: Iterable[Deployment]) -> list[float]:
    """Seconds each past batch took, first dispatch to last finish, from deployments that finished."""
    durations = []
    for deployment in deployments:
        if not deployment.status.finished:
            continue
        for batch in deployment.batches:
            states = [deployment.hosts[h] for h in batch if h in deployment.hosts]
            starts = [s.dispatched_at for s in states if s.dispatched_at]
            ends = [s.finished_at for s in states if s.finished_at]
            if starts and ends and len(ends) == len(states):
                durations.append(max(0.0, (max(ends) - min(starts)).total_seconds()))
    return durations


def estimate_duration(
    group_state: GroupState | None,
    deployments: Mapping[str, Deployment],
    batches: list[Batch],
    *,
    drain: timedelta | None = None,
) -> Estimate | None:
    """batches x the median batch time of the group's recent deployments, plus the bakes the engine waits.
    With traffic control (`drain`: the group's drainTimeout), the basis says how much of a batch draining may
    take at most: past batches include the real drains, so nothing is added to a timed estimate; without
    history, the drains count into the lower bound (a drain with no open connections ends at once, so the
    bound says "up to")."""
    if not batches:
        return None
    drain_note = ""
    if drain is not None:
        drain_note = f"; each batch waits up to {duration(drain.total_seconds())} for its hosts to drain (drainTimeout)"
    history = [deployments[i] for i in (group_state.history if group_state else []) if i in deployments]
    recent = sorted(history, key=lambda d: d.created_at)[-ESTIMATE_HISTORY:]
    durations = batch_durations(recent)
    bakes = sum(b.bake_after_seconds or 0.0 for b in batches)
    if not durations:
        if bakes:
            return Estimate(seconds=bakes, lower_bound=True,
                            basis="the bake times alone; no finished deployment of this group to time batches from"
                            + drain_note)
        return None
    median = statistics.median(durations)
    seconds = median * len(batches) + bakes
    used = len({d.deployment_id for d in recent if d.status.finished})
    basis = (f"{count(len(batches), 'batch', 'batches')} x {duration(median)}, the median of "
             f"{count(len(durations), 'batch', 'batches')} in the last {count(used, 'deployment')}")
    if bakes:
        basis += f", plus {duration(bakes)} of bake time"
    return Estimate(seconds=round(seconds, 3), basis=basis + drain_note)
