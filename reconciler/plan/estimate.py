"""How long a rollout will take: its batches times the median batch of the group's recent deployments, plus
the bakes and the analysis gates the engine waits for."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
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
    gate_waits: Sequence[timedelta] = (),
    min_healthy: timedelta | None = None,
) -> Estimate | None:
    """batches x the median batch time of the group's recent deployments, plus the bakes and gates the engine
    waits.

    - Traffic control (`drain`: the group's drainTimeout): the basis says how much of a batch draining may take
      at most: past batches include the real drains, so nothing is added to a timed estimate; without history,
      the drains count into the lower bound (a drain with no open connections ends at once, so the bound says
      "up to").
    - Analysis gates (`gate_waits`: per checkpoint of the dry run, how long it waited for its gates beyond any
      bake running meanwhile): added, as bakes are; past batch times end at their hosts' last finish, before
      the gates.
    - Health check (`min_healthy`: its minHealthyTime): a batch takes at least that long, as its hosts check in
      parallel after ValidateService; so a batch counts max(median, minHealthyTime), and without history
      minHealthyTime per batch is the lower bound."""
    if not batches:
        return None
    drain_note = ""
    if drain is not None:
        drain_note = f"; each batch waits up to {duration(drain.total_seconds())} for its hosts to drain (drainTimeout)"
    history = [deployments[i] for i in (group_state.history if group_state else []) if i in deployments]
    recent = sorted(history, key=lambda d: d.created_at)[-ESTIMATE_HISTORY:]
    durations = batch_durations(recent)
    bakes = sum(b.bake_after_seconds or 0.0 for b in batches)
    gates = round(sum(wait.total_seconds() for wait in gate_waits), 1)
    waits = _waits_text(bakes, gates, len(gate_waits))
    healthy = min_healthy.total_seconds() if min_healthy is not None else 0.0
    batch_count = count(len(batches), "batch", "batches")
    if not durations:
        if not (bakes or gates or healthy):
            return None
        if healthy:
            known = f"{batch_count} x {duration(healthy)} of health check (minHealthyTime; a batch's hosts check in " \
                    "parallel)" + (f" plus {waits}" if waits else "")
        else:
            known = "the bake times alone" if not gates else waits
        return Estimate(seconds=round(healthy * len(batches) + bakes + gates, 3), lower_bound=True,
                        basis=f"{known}; no finished deployment of this group to time batches from{drain_note}")
    median = statistics.median(durations)
    used = len({d.deployment_id for d in recent if d.status.finished})
    past = f"{count(len(durations), 'batch', 'batches')} in the last {count(used, 'deployment')}"
    if healthy > median:
        batch_time = healthy
        basis = (f"{batch_count} x {duration(healthy)}, the health check's minHealthyTime (the median of {past} is "
                 f"{duration(median)})")
    else:
        batch_time = median
        basis = f"{batch_count} x {duration(median)}, the median of {past}"
        if healthy:
            basis += f" (at least the health check's minHealthyTime, {duration(healthy)})"
    if waits:
        basis += f", plus {waits}"
    return Estimate(seconds=round(batch_time * len(batches) + bakes + gates, 3), basis=basis + drain_note)


def _waits_text(bakes: float, gates: float, checkpoints: int) -> str:
    parts = []
    if bakes:
        parts.append(f"{duration(bakes)} of bake time")
    if gates:
        parts.append(f"{duration(gates)} of analysis gates at {count(checkpoints, 'checkpoint')}")
    return " and ".join(parts)
