"""Monitoring gates in the core: analysis checkpoints after batches and the CloudWatch alarms of a deployment,
decided from observed data (docs/gates.md).

What the core sees, never fetches:
- `Observed.analysis[deployment id]`: the gate measurements the shell took and recorded (`analysis/<id>.json`),
  each with its checkpoint, index, due time and result;
- `Observed.alarms[group key]`: this pass's read of the group's alarms (OK, ALARM, or ERROR when unreadable).

The rules:
- A **checkpoint** opens when a user deployment's last batch has finished and nothing is in flight:
  `batch-<n>`, at the latest finish of that batch's hosts. Its gates are those whose `at` names `batch`, `canary`
  (batch 0 of a config with a canary) or `final` (no host left pending). Rollbacks and catch-up deployments
  redeploy a proven revision and are not gated, as they skip canaries and bakes.
- Each gate takes `count` measurements: the first `initialDelay` after the checkpoint opened, each next one
  `interval` after the later of its schedule and the previous measurement. It fails as soon as more than
  `failureLimit` are Failed (or more than `inconclusiveLimit` Inconclusive with `onInconclusive: Fail`), and
  passes once `count` are in without failing.
- The gates **hold progress, not waiting**: only a step that would dispatch the next batch or declare success
  waits for them; a bake runs meanwhile, and a failure or stop ends the deployment without them.
- A failed gate fails the deployment (`ANALYSIS_FAILED`), so `autoRollback` on `DEPLOYMENT_FAILURE` rolls back
  and the revision is quarantined, exactly as for a failed host.
- An alarm in ALARM stops a user deployment at once (`ALARM_ACTIVE`, CodeDeploy's code): hosts in flight are
  counted failed (their commands finish on their own; a rollback reaches them when their slot is free), the
  revision is quarantined, and `DEPLOYMENT_STOP_ON_ALARM` rolls back. Alarms that cannot be read hold the rollout
  unless `ignorePollAlarmFailure` (CodeDeploy stops instead; docs/gates.md says why holding is safer here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from contract.models import (
    AlarmCheck,
    Deployment,
    DeploymentAnalysis,
    DeploymentStatus,
    GateMeasurement,
    GateResult,
    GroupState,
)
from reconciler.core.identity import same_revision
from reconciler.core.quarantine import ALARM_ACTIVE, is_quarantined
from reconciler.core.rollout import FAILED, IN_PROGRESS, PENDING, SKIPPED, SUCCEEDED, Outcome, Step, host_sort_key
from reconciler.desired.gates_spec import AnalysisGateSpec, host_regex
from reconciler.desired.manifests import DesiredGroup, EffectiveConfig

ANALYSIS_FAILED = "ANALYSIS_FAILED"
WAITING_FOR_ANALYSIS: Final = "WAITING_FOR_ANALYSIS"
WAITING_FOR_ALARMS: Final = "WAITING_FOR_ALARMS"


@dataclass(frozen=True)
class Checkpoint:
    """Where a deployment waits for its gates: after batch `batch`, opened at `opened_at`."""

    name: str
    batch: int
    opened_at: datetime
    canary: bool
    final: bool
    gates: tuple[AnalysisGateSpec, ...]

    def describe(self) -> str:
        if self.canary:
            return "after the canary batch"
        if self.final:
            return f"after the last batch (batch {self.batch + 1})"
        return f"after batch {self.batch + 1}"


@dataclass(frozen=True)
class GateRun:
    """One gate at one checkpoint: its measurements so far and what they add up to."""

    gate: AnalysisGateSpec
    measurements: tuple[GateMeasurement, ...]
    #: "running", "passed" or "failed".
    verdict: str
    message: str
    #: When the next measurement is due (running only).
    next_due: datetime | None = None
    #: Failed only: the measurement that decided it, in its own words (the end of `message`).
    cause: str | None = None

    @property
    def last(self) -> GateMeasurement | None:
        return self.measurements[-1] if self.measurements else None


@dataclass(frozen=True)
class DueMeasurement:
    """A measurement the shell should take now: which query, with which variables, recorded under which index."""

    deployment_id: str
    group: str
    checkpoint: str
    gate: AnalysisGateSpec
    index: int
    due_at: datetime
    variables: Mapping[str, str] = field(default_factory=dict)


def checkpoint(deployment: Deployment, group: DesiredGroup | None, config: EffectiveConfig) -> Checkpoint | None:
    """The open checkpoint of a deployment, if it is at one that has gates."""
    if group is None or not group.analysis or deployment.creator != "user" or deployment.status.finished:
        return None
    if not deployment.batches:
        return None
    hosts = deployment.hosts
    if any(state.status is IN_PROGRESS for state in hosts.values()):
        return None
    last = len(deployment.batches) - 1
    ends = [hosts[h].finished_at for h in deployment.batches[last] if h in hosts]
    known = [end for end in ends if end is not None]
    if not known:
        return None
    canary = config.canary is not None and last == 0
    final = not any(state.status is PENDING for state in hosts.values())
    points = {"batch"} | ({"canary"} if canary else set()) | ({"final"} if final else set())
    gates = tuple(gate for gate in group.analysis if points.intersection(gate.at))
    if not gates:
        return None
    return Checkpoint(checkpoint_name(last), last, max(known), canary, final, gates)


def checkpoint_name(batch: int) -> str:
    """The name a checkpoint is recorded under: `batch-<n>`, after batch n (0 is the canary's)."""
    return f"batch-{batch}"


def checkpoint_batch(name: str) -> int:
    """The batch of a recorded checkpoint name; -1 for a name this version does not write."""
    number = name.removeprefix("batch-")
    return int(number) if name.startswith("batch-") and number.isdigit() else -1


def gate_runs(point: Checkpoint, analysis: DeploymentAnalysis | None) -> list[GateRun]:
    return [gate_run(point, gate, analysis) for gate in point.gates]


def gate_run(point: Checkpoint, gate: AnalysisGateSpec, analysis: DeploymentAnalysis | None) -> GateRun:
    """What one gate's measurements at `point` add up to."""
    seen: dict[int, GateMeasurement] = {}
    for measurement in analysis.measurements if analysis is not None else ():
        if measurement.checkpoint == point.name and measurement.gate == gate.name:
            seen.setdefault(measurement.index, measurement)  # the first record of an index wins
    taken = tuple(seen[index] for index in sorted(seen))
    failed = [m for m in taken if m.result is GateResult.FAILED]
    inconclusive = [m for m in taken if m.result is GateResult.INCONCLUSIVE]
    where = f"gate {gate.name} {point.describe()}"
    if len(failed) > gate.failure_limit:
        message = (
            f"{where} failed: {len(failed)} of {len(taken)} measurement(s) failed (failureLimit "
            f"{gate.failure_limit}); {failed[-1].message}"
        )
        return GateRun(gate, taken, "failed", message, cause=failed[-1].message)
    if len(inconclusive) > gate.inconclusive_limit and gate.on_inconclusive == "Fail":
        cause = (
            f"{inconclusive[-1].message}. This says nothing about the service's health: the metric could not be "
            "read"
        )
        message = (
            f"{where} could not be evaluated: {len(inconclusive)} inconclusive measurement(s) (inconclusiveLimit "
            f"{gate.inconclusive_limit}, onInconclusive Fail); {cause}"
        )
        return GateRun(gate, taken, "failed", message, cause=cause)
    if len(taken) >= gate.count:
        note = ""
        if len(inconclusive) > gate.inconclusive_limit:
            note = f", {len(inconclusive)} inconclusive let through (onInconclusive Pass)"
        shown = _shown(taken[-1])
        return GateRun(gate, taken, "passed", f"{where} passed: {len(taken)} measurement(s){note}; last {shown}")
    due = point.opened_at + gate.initial_delay + gate.interval * len(taken)
    if taken:
        due = max(due, taken[-1].measured_at + gate.interval)
    progress = f"{len(taken)} of {gate.count} measured" + (f", last {_shown(taken[-1])}" if taken else "")
    return GateRun(gate, taken, "running", f"{where}: {progress}", next_due=due)


def _shown(measurement: GateMeasurement) -> str:
    if measurement.value is None:
        return measurement.result.value.lower()
    return f"{measurement.value:.6g} ({measurement.result.value.lower()})"


def due_measurements(
    deployment: Deployment,
    group: DesiredGroup | None,
    config: EffectiveConfig,
    analysis: DeploymentAnalysis | None,
    *,
    now: datetime,
) -> list[DueMeasurement]:
    """The measurements the shell takes this pass: for each running gate of the open checkpoint, its next one
    once due. One per gate and pass, so a reconciler that was down does not take a run's samples all at once."""
    point = checkpoint(deployment, group, config)
    if point is None or group is None:
        return []
    variables = query_variables(deployment, point)
    due: list[DueMeasurement] = []
    for run in gate_runs(point, analysis):
        if run.verdict == "running" and run.next_due is not None and run.next_due <= now:
            due.append(
                DueMeasurement(
                    deployment_id=deployment.deployment_id,
                    group=group.key,
                    checkpoint=point.name,
                    gate=run.gate,
                    index=len(run.measurements),
                    due_at=run.next_due,
                    variables=variables,
                )
            )
    return due


def query_variables(deployment: Deployment, point: Checkpoint) -> dict[str, str]:
    """The values of a query's `{{ name }}` placeholders at a checkpoint (docs/gates.md lists them)."""
    hosts = deployment.hosts
    batch = sorted(deployment.batches[point.batch], key=host_sort_key)
    deployed = sorted((h for h, s in hosts.items() if s.status in (SUCCEEDED, SKIPPED)), key=host_sort_key)
    baseline = sorted((h for h, s in hosts.items() if s.status is PENDING), key=host_sort_key)
    return {
        "application": deployment.application,
        "group": deployment.deployment_group,
        "deploymentId": deployment.deployment_id,
        "revision": deployment.revision.short(),
        "checkpoint": point.name,
        "batchHosts": host_regex(batch),
        "deployedHosts": host_regex(deployed),
        "baselineHosts": host_regex(baseline),
    }


def alarms_wanted(group: DesiredGroup, group_state: GroupState | None, deployment: Deployment | None) -> bool:
    """Whether this pass must read the group's alarms: a user deployment is in flight, or one may start now (a
    new desired revision that is not quarantined, also in place of a rollback or catch-up it supersedes), since a
    deployment dispatches its first batch in the pass that starts it. A quiet, suspended or quarantined group
    costs CloudWatch nothing."""
    if not group.watches_alarms:
        return False
    if deployment is not None and not deployment.status.finished and deployment.creator == "user":
        return True
    if group.suspend:
        return False
    if group_state is None:
        return True
    if same_revision(group.revision, group_state.effective_revision):
        return False
    return group_state.desired_commit is None or is_quarantined(group_state, group.revision) is None


def hold_for_gates(
    step: Step,
    deployment: Deployment,
    group: DesiredGroup | None,
    config: EffectiveConfig,
    *,
    analysis: DeploymentAnalysis | None,
    alarms: AlarmCheck | None,
    now: datetime,
) -> Step:
    """`step` as the gates allow it.

    - A gate that has failed at the open checkpoint fails the deployment now, whatever the step was doing (a
      bake, a wait): a bad canary must not keep serving until its bake ends. A failure or stop the step already
      decided wins (a failed host's rollback rules stay as they are).
    - A step that would make progress (dispatch a batch, or succeed) holds while the alarms are unread or
      unreadable (or in ALARM before any host got the revision), while the open checkpoint's gates are still
      measuring, or while the batch before it is still in flight and gates run after every batch.
    """
    if group is None or deployment.creator != "user":
        return step
    succeeding = step.outcome is not None and step.outcome.status is DeploymentStatus.SUCCEEDED
    if step.outcome is not None and not succeeding:
        return step
    # Hosts failed offline in this very step count as finished: the last batch may have become the final one.
    judged = _with_offline_failed(deployment, step.offline, now)
    point = checkpoint(judged, group, config)
    runs = gate_runs(point, analysis) if point is not None else []
    failed = [run for run in runs if run.verdict == "failed"]
    if failed:
        message = "; ".join(run.message for run in failed)
        return Step(offline=step.offline, outcome=Outcome(DeploymentStatus.FAILED, ANALYSIS_FAILED, message))
    if not (step.dispatch or succeeding):
        return step
    unwatched = _alarms_hold(group, deployment, alarms)
    if unwatched is not None:
        return Step(offline=step.offline, waiting=unwatched, waiting_code=WAITING_FOR_ALARMS)
    running = [run for run in runs if run.verdict == "running"]
    if running:
        due = min(run.next_due for run in running if run.next_due is not None)
        reason = "analysis: " + "; ".join(run.message for run in running)
        return Step(offline=step.offline, waiting=reason, waiting_code=WAITING_FOR_ANALYSIS, waiting_until=due)
    if step.dispatch and _batch_in_flight(deployment, group, config):
        reason = (
            f"analysis: gates run after every batch, so the next one waits for batch {len(deployment.batches)} "
            "to finish"
        )
        return Step(offline=step.offline, waiting=reason, waiting_code=WAITING_FOR_ANALYSIS)
    return step


def _with_offline_failed(deployment: Deployment, offline: list[str], now: datetime) -> Deployment:
    if not offline:
        return deployment
    hosts = dict(deployment.hosts)
    for host in offline:
        hosts[host] = hosts[host].model_copy(update={"status": FAILED, "finished_at": now})
    return deployment.model_copy(update={"hosts": hosts})


def _batch_in_flight(deployment: Deployment, group: DesiredGroup, config: EffectiveConfig) -> bool:
    """A batch is still in flight and gates run after every batch (or after this one, the canary): dispatching
    now would skip its checkpoint."""
    if not any(state.status is IN_PROGRESS for state in deployment.hosts.values()):
        return False
    canary_now = config.canary is not None and len(deployment.batches) == 1
    return any("batch" in gate.at or (canary_now and "canary" in gate.at) for gate in group.analysis)


def _alarms_hold(group: DesiredGroup, deployment: Deployment, alarms: AlarmCheck | None) -> str | None:
    """Why progress waits on the alarms, if it does."""
    if not group.watches_alarms:
        return None
    assert group.alarms is not None
    if alarms is None:
        return "holding: the alarms were not read in this pass; no host gets the revision unwatched"
    if alarms.state == "ERROR" and not group.alarms.ignore_poll_alarm_failure:
        return (
            f"holding: the alarms could not be read ({alarms.message}); no host gets the revision unwatched "
            "(set ignorePollAlarmFailure to go on regardless)"
        )
    if alarms.state == "ALARM" and not deployment.batches:
        return (
            f"holding: {alarms.message} before any host got the revision; the deployment starts when the alarm "
            "clears (set alarmConfiguration.enabled: false to deploy while it fires)"
        )
    return None


def alarm_outcome(group: DesiredGroup | None, deployment: Deployment, alarms: AlarmCheck | None) -> Outcome | None:
    """How a user deployment ends because one of its group's alarms is in ALARM (None: it does not). Not before
    its first batch: a revision no host has is held, not stopped and quarantined (`hold_for_gates`)."""
    if group is None or not group.watches_alarms or alarms is None or alarms.state != "ALARM":
        return None
    if deployment.creator != "user" or deployment.status.finished or not deployment.batches:
        return None
    return Outcome(DeploymentStatus.STOPPED, ALARM_ACTIVE, f"stopped on alarm: {alarms.message}")


def stop_hosts_in_flight(deployment: Deployment, outcome: Outcome, now: datetime) -> tuple[Deployment, list[str]]:
    """Hosts still deploying when an alarm stops the deployment count failed, with why."""
    stopped = sorted((h for h, s in deployment.hosts.items() if s.status is IN_PROGRESS), key=host_sort_key)
    if not stopped:
        return deployment, []
    hosts = dict(deployment.hosts)
    for host in stopped:
        message = f"still deploying when the deployment was {outcome.message}"
        hosts[host] = hosts[host].model_copy(update={"status": FAILED, "finished_at": now, "message": message})
    return deployment.model_copy(update={"hosts": hosts, "updated_at": now}), stopped


__all__ = [
    "ALARM_ACTIVE",
    "ANALYSIS_FAILED",
    "WAITING_FOR_ALARMS",
    "WAITING_FOR_ANALYSIS",
    "Checkpoint",
    "DueMeasurement",
    "GateRun",
    "alarm_outcome",
    "alarms_wanted",
    "checkpoint",
    "checkpoint_batch",
    "checkpoint_name",
    "due_measurements",
    "gate_run",
    "gate_runs",
    "hold_for_gates",
    "query_variables",
    "stop_hosts_in_flight",
]
