"""What a plan says about a group's monitoring gates (docs/gates.md): the health check each host runs, the alarms a
deployment watches, the analysis gates and the checkpoints of this deployment where they run.

Where the gates run comes from the engine's own dry run (`reconciler.core.simulate`, which assumes every gate
passes and no alarm fires), never from a second copy of the checkpoint rules. Like traffic, computed from the
manifests and the engine alone: a plan in CI neither has nor needs Prometheus or CloudWatch.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.core.simulate import PreviewCheckpoint
from reconciler.desired.gates_spec import AlarmConfigurationSpec, AnalysisGateSpec, HealthCheckSpec
from reconciler.desired.manifests import AutoRollbackSpec
from reconciler.plan.model import AlarmsPlan, AnalysisGatePlan, GateCheckpoint, GroupRollout, HealthCheckPlan
from reconciler.plan.words import duration

STOP_ON_ALARM = "DEPLOYMENT_STOP_ON_ALARM"


def health_check_plan(spec: HealthCheckSpec) -> HealthCheckPlan:
    return HealthCheckPlan(
        url=spec.url,
        expected_status=list(spec.expected_status),
        body_match=spec.body_match,
        interval_seconds=spec.interval.total_seconds(),
        min_healthy_seconds=spec.min_healthy_time.total_seconds(),
        healthy_deadline_seconds=spec.healthy_deadline.total_seconds(),
    )


def alarms_plan(spec: AlarmConfigurationSpec, rollback: AutoRollbackSpec) -> AlarmsPlan:
    return AlarmsPlan(
        alarms=list(spec.alarms),
        enabled=spec.enabled,
        ignore_poll_alarm_failure=spec.ignore_poll_alarm_failure,
        rolls_back=rollback.enabled and STOP_ON_ALARM in rollback.events,
    )


def analysis_plans(
    gates: Sequence[AnalysisGateSpec], checkpoints: Sequence[PreviewCheckpoint] | None
) -> list[AnalysisGatePlan]:
    """Each gate with the checkpoints of the dry run it ran at (None: no dry run with batches to say)."""
    return [
        AnalysisGatePlan(
            name=gate.name,
            address=gate.prometheus.address,
            query=gate.prometheus.query,
            success_condition=gate.success_condition,
            count=gate.count,
            interval_seconds=gate.interval.total_seconds(),
            initial_delay_seconds=gate.initial_delay.total_seconds(),
            failure_limit=gate.failure_limit,
            inconclusive_limit=gate.inconclusive_limit,
            on_inconclusive=gate.on_inconclusive,
            at=list(gate.at),
            run_seconds=gate.run_time().total_seconds(),
            checkpoints=None if checkpoints is None else [p.where for p in checkpoints if gate.name in p.gates],
        )
        for gate in gates
    ]


def gate_checkpoints(checkpoints: Sequence[PreviewCheckpoint]) -> list[GateCheckpoint]:
    return [
        GateCheckpoint(batch=point.batch + 1, where=point.where, gates=list(point.gates),
                       wait_seconds=round(point.waited.total_seconds(), 1))
        for point in checkpoints
    ]


# --------------------------------------------------------------------------------------------------
# In words, for the text and Markdown renderers


def health_check_line(check: HealthCheckPlan) -> str:
    expecting = ", ".join(str(code) for code in check.expected_status)
    body = f", body matching {check.body_match!r}" if check.body_match else ""
    return (f"GET {check.url} on each host after ValidateService, every {duration(check.interval_seconds)} "
            f"(expecting {expecting}{body}); a host counts once healthy for {duration(check.min_healthy_seconds)}, "
            f"failed if not within {duration(check.healthy_deadline_seconds)} (healthyDeadline)")


def alarms_line(alarms: AlarmsPlan) -> str:
    names = ", ".join(alarms.alarms)
    if not alarms.enabled:
        return f"{names}: not watched (enabled: false)"
    if alarms.rolls_back:
        stop = f"one in ALARM stops the deployment and rolls it back ({STOP_ON_ALARM})"
    else:
        stop = f"one in ALARM stops the deployment, no rollback (autoRollback lacks {STOP_ON_ALARM})"
    if alarms.ignore_poll_alarm_failure:
        unreadable = "alarms that cannot be read are ignored (ignorePollAlarmFailure: true)"
    else:
        unreadable = "alarms that cannot be read hold the rollout (ignorePollAlarmFailure: false)"
    return f"{names}: {stop}; {unreadable}"


def gate_line(gate: AnalysisGatePlan) -> str:
    """`error-rate: result < 0.01, 3 measurements 10s apart (20s a run), after the canary batch, after batch 2`."""
    if gate.count == 1:
        run = "1 measurement" + (f" after {duration(gate.initial_delay_seconds)}" if gate.initial_delay_seconds else "")
    else:
        run = f"{gate.count} measurements {duration(gate.interval_seconds)} apart"
        if gate.initial_delay_seconds:
            run += f", the first after {duration(gate.initial_delay_seconds)}"
    text = f"{gate.name}: {gate.success_condition}, {run} ({duration(gate.run_seconds)} a run)"
    if gate.failure_limit or gate.inconclusive_limit or gate.on_inconclusive != "Fail":
        text += (f", failureLimit {gate.failure_limit}, inconclusiveLimit {gate.inconclusive_limit} "
                 f"then {gate.on_inconclusive}")
    if gate.checkpoints is None:
        return f"{text}, at {', '.join(gate.at)}"
    if not gate.checkpoints:
        return f"{text}, at no checkpoint of this deployment (at: {', '.join(gate.at)})"
    return f"{text}, {', '.join(gate.checkpoints)}"


def gate_detail_lines(rollout: GroupRollout) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    if rollout.health_check is not None:
        lines.append(("health check", health_check_line(rollout.health_check)))
    if rollout.alarms is not None:
        lines.append(("alarms", alarms_line(rollout.alarms)))
    for gate in rollout.analysis or []:
        lines.append(("gate", gate_line(gate)))
    return lines


def batch_gates(rollout: GroupRollout, number: int, *, baking: bool) -> str:
    """`gates error-rate, latency 20s` after batch `number` (how long the rollout waits for them), or empty."""
    for point in rollout.gate_checkpoints or []:
        if point.batch == number:
            wait = ""
            if point.wait_seconds >= 1:
                wait = f" {duration(point.wait_seconds)}" + (" more" if baking else "")
            elif baking:
                wait = " (within the bake)"
            return f"gates {', '.join(point.gates)}{wait}"
    return ""


__all__ = [
    "alarms_line",
    "alarms_plan",
    "analysis_plans",
    "batch_gates",
    "gate_checkpoints",
    "gate_detail_lines",
    "gate_line",
    "health_check_line",
    "health_check_plan",
]
