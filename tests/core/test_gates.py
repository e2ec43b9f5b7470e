"""The core's monitoring gates (reconciler/core/gates.py): analysis checkpoints and alarm stops, decided from
observed measurements and alarm reads, driven pass after pass through the real `reconcile()` with agents that
answer at once (reconciler/core/simulate.py) and measurements scripted per checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.models import (
    AlarmCheck,
    Deployment,
    DeploymentAnalysis,
    DeploymentStatus,
    GateMeasurement,
    GateResult,
    GroupState,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from reconciler.core import Action, Blocked, CoreSettings, Observed, State, apply_actions, reconcile
from reconciler.core.actions import DispatchBatch, FinishDeployment, StartRollback
from reconciler.core.gates import Checkpoint, checkpoint, due_measurements, gate_run, query_variables
from reconciler.core.simulate import run_agents
from reconciler.core.view import deployment_config
from reconciler.desired.gates_spec import AnalysisGateSpec, Condition, host_regex, judge, render_query
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = "shop/web"
V1 = Revision.model_validate({"local": {"path": "bundles/v1.zip", "bundleType": "zip"}})
HOSTS = [f"web-{n}" for n in range(1, 7)]

MANIFESTS = """
apiVersion: deploy/v1
kind: Application
metadata: {{name: shop}}
---
apiVersion: deploy/v1
kind: DeploymentConfig
metadata: {{name: canary-then-thirds}}
spec:
  minimumHealthyHosts: {{type: HOST_COUNT, value: 4}}
  canary: {{hosts: 1, bakeTime: {bake}}}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: shop
  revision: {{local: {{path: bundles/v2.zip, bundleType: zip}}}}
  targets: {{tagSets: [[{{key: app, value: web}}]]}}
  deploymentConfig: {config}
  autoRollback: {{enabled: true, events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]}}
{extra}
"""
ANALYSIS = """  analysis:
    - name: error-rate
      prometheus:
        address: http://prometheus:9090
        query: 'sum(rate(errors{{host=~"{{{{ batchHosts }}}}"}}[1m]))'
      successCondition: result < 0.01
      interval: 10s
      count: {count}
      failureLimit: {failure_limit}
      inconclusiveLimit: {inconclusive_limit}
      onInconclusive: {on_inconclusive}
      at: {at}
"""
ALARMS = """  alarmConfiguration:
    alarms: [web-5xx, web-latency]
    ignorePollAlarmFailure: {ignore}
"""


def desired(
    *,
    config: str = "canary-then-thirds",
    bake: str = "0s",
    count: int = 3,
    failure_limit: int = 0,
    inconclusive_limit: int = 0,
    on_inconclusive: str = "Fail",
    at: str = "[batch]",
    analysis: bool = True,
    alarms: bool | None = None,
) -> Desired:
    extra = ""
    if analysis:
        extra += ANALYSIS.format(count=count, failure_limit=failure_limit, inconclusive_limit=inconclusive_limit,
                                 on_inconclusive=on_inconclusive, at=at)
    if alarms is not None:
        extra += ALARMS.format(ignore=str(alarms).lower())
    text = MANIFESTS.format(bake=bake, config=config, extra=extra)
    return load_files([ManifestFile("web.yaml", text.encode())], commit="c2")


def fleet() -> tuple[Observed, State]:
    """Six hosts running v1, which is the group's last good revision; the manifests now ask for v2."""
    registrations = {
        h: HostRegistration(host_id=h, platform="linux", hostname=h, agent_version="t", registered_at=T0,
                            tags={"app": "web"})
        for h in HOSTS
    }
    installed = {KEY: InstalledRevision(application="shop", deployment_group="web", revision=V1,
                                        deployment_id="d-v1", installed_at=T0)}
    statuses = {h: HostStatus(host_id=h, heartbeat_at=T0, agent_version="t", installed=installed) for h in HOSTS}
    group = GroupState(application="shop", deployment_group="web", desired_revision=V1, desired_commit="c1",
                       effective_revision=V1, effective_commit="c1", updated_at=T0)
    return Observed(registrations=registrations, statuses=statuses), State(groups={KEY: group})


#: (checkpoint name, measurement index) -> the value Prometheus answers (None: the query cannot be run).
Script = Callable[[str, int], float | None]


@dataclasses.dataclass
class Run:
    """A rollout driven to its end, with everything it did."""

    desired: Desired
    observed: Observed
    state: State
    now: datetime = T0
    actions: list[Action] = dataclasses.field(default_factory=list)
    analysis: dict[str, DeploymentAnalysis] = dataclasses.field(default_factory=dict)
    alarm: Callable[[datetime, list[Action]], AlarmCheck | None] = lambda now, actions: None

    def measure(self, script: Script) -> None:
        """What GateShell does: take each due measurement with the script's value, judged like the shell does."""
        for group_state in self.state.groups.values():
            deployment = self.state.deployments.get(group_state.deployment_in_flight or "")
            group = self.desired.desired_groups().get(KEY)
            if deployment is None or group is None:
                continue
            record = self.analysis.get(deployment.deployment_id)
            config = deployment_config(self.desired, deployment, group)
            for due in due_measurements(deployment, group, config, record, now=self.now):
                value = script(due.checkpoint, due.index)
                if value is None:
                    result, message = GateResult.INCONCLUSIVE, "the query could not be run: connection refused"
                else:
                    passed, _, _ = judge(due.gate.condition, [("{}", value)])
                    result = GateResult.SUCCESSFUL if passed else GateResult.FAILED
                    message = f"error-rate = {value}"
                measurement = GateMeasurement(gate=due.gate.name, checkpoint=due.checkpoint, index=due.index,
                                              due_at=due.due_at, measured_at=self.now, result=result,
                                              value=value, message=message)
                before = record.measurements if record is not None else []
                record = DeploymentAnalysis(deployment_id=deployment.deployment_id, application="shop",
                                            deployment_group="web", measurements=[*before, measurement],
                                            updated_at=self.now)
                self.analysis[deployment.deployment_id] = record

    def drive(self, script: Script, *, passes: int = 200, tick: timedelta = timedelta(seconds=5)) -> None:
        for _ in range(passes):
            self.observed = run_agents(self.observed, self.state, now=self.now, alive=HOSTS)
            self.measure(script)
            alarms = {}
            check = self.alarm(self.now, self.actions)
            if check is not None:
                alarms[KEY] = check
            observed = dataclasses.replace(self.observed, analysis=dict(self.analysis), alarms=alarms)
            actions = reconcile(self.desired, observed, self.state, now=self.now)
            self.actions.extend(actions)
            self.state = apply_actions(self.state, actions)
            group = self.state.groups[KEY]
            if group.deployment_in_flight is None and not any(isinstance(a, Blocked) and a.code.startswith("WAITING")
                                                              for a in actions):
                return
            self.now += tick
        raise AssertionError("the rollout did not end")

    def user_deployment(self) -> Deployment:
        return next(d for d in self.state.deployments.values() if d.creator == "user")

    def dispatches(self, deployment_id: str) -> list[DispatchBatch]:
        return [a for a in self.actions if isinstance(a, DispatchBatch) and a.deployment_id == deployment_id]


def dispatched(deployment: Deployment, hosts: list[str]) -> list[datetime]:
    times = [deployment.hosts[h].dispatched_at for h in hosts]
    return [t for t in times if t is not None]


def start(**options: object) -> Run:
    observed, state = fleet()
    return Run(desired(**options), observed, state)  # type: ignore[arg-type]


def good(checkpoint: str, index: int) -> float | None:
    return 0.001


def test_good_revision_passes_every_checkpoint_with_count_measurements_before_the_next_batch() -> None:
    run = start()
    run.drive(good)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.SUCCEEDED
    record = run.analysis[deployment.deployment_id]
    batches = len(deployment.batches)
    # The canary alone, then two at a time (4 of 6 must stay healthy), then the last one.
    assert [len(batch) for batch in deployment.batches] == [1, 2, 2, 1]
    per_checkpoint: dict[str, list[int]] = {}
    for measurement in record.measurements:
        per_checkpoint.setdefault(measurement.checkpoint, []).append(measurement.index)
    assert per_checkpoint == {f"batch-{n}": [0, 1, 2] for n in range(batches)}
    # Each next batch went out only after the third measurement of the checkpoint before it.
    for dispatch in run.dispatches(deployment.deployment_id)[1:]:
        before = f"batch-{dispatch.batch - 1}"
        last = max(m.measured_at for m in record.measurements if m.checkpoint == before)
        first_of_batch = min(dispatched(deployment, dispatch.hosts))
        assert first_of_batch >= last
    # The measurements of one checkpoint are `interval` apart.
    times = [m.measured_at for m in record.measurements if m.checkpoint == "batch-0"]
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(seconds=10)] * 2


def test_a_bad_canary_fails_the_deployment_rolls_back_and_quarantines_without_touching_other_hosts() -> None:
    run = start()
    run.drive(lambda checkpoint, index: 0.2)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.FAILED
    assert deployment.error_code == "ANALYSIS_FAILED"
    assert "gate error-rate after the canary batch failed" in (deployment.error_message or "")
    assert "error-rate = 0.2" in (deployment.error_message or "")
    assert [len(b) for b in deployment.batches] == [1]  # no host outside the canary batch got v2
    canary = deployment.batches[0][0]
    assert all(s.status is HostDeploymentStatus.PENDING for h, s in deployment.hosts.items() if h != canary)
    # failureLimit 0: the first failed measurement decides, no waiting for the other two.
    assert len(run.analysis[deployment.deployment_id].measurements) == 1
    rollbacks = [a for a in run.actions if isinstance(a, StartRollback)]
    assert len(rollbacks) == 1
    rollback = run.state.deployments[rollbacks[0].deployment_id]
    assert rollback.status is DeploymentStatus.SUCCEEDED
    assert [h for h, s in rollback.hosts.items() if s.status is HostDeploymentStatus.SUCCEEDED] == [canary]
    group = run.state.groups[KEY]
    assert group.effective_revision == V1
    assert [q.deployment_id for q in group.quarantined] == [deployment.deployment_id]


def test_failure_limit_tolerates_that_many_failed_measurements() -> None:
    run = start(failure_limit=1)
    run.drive(lambda checkpoint, index: 0.2 if index == 1 else 0.0)
    assert run.user_deployment().status is DeploymentStatus.SUCCEEDED
    run = start(failure_limit=1)
    run.drive(lambda checkpoint, index: 0.2 if index >= 1 and checkpoint == "batch-1" else 0.0)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.FAILED
    assert "gate error-rate after batch 2 failed: 2 of 3 measurement(s) failed (failureLimit 1)" in (
        deployment.error_message or ""
    )


def test_inconclusive_fails_by_default_and_says_the_query_could_not_be_run() -> None:
    run = start()
    run.drive(lambda checkpoint, index: None)
    deployment = run.user_deployment()
    assert deployment.error_code == "ANALYSIS_FAILED"
    message = deployment.error_message or ""
    assert "could not be evaluated" in message and "the query could not be run: connection refused" in message
    assert "says nothing about the service's health" in message
    assert "failed: 1 of" not in message


def test_inconclusive_within_the_limit_then_pass_policy_goes_on() -> None:
    run = start(inconclusive_limit=1)
    run.drive(lambda checkpoint, index: None if index == 0 else 0.0)
    assert run.user_deployment().status is DeploymentStatus.SUCCEEDED
    run = start(on_inconclusive="Pass")
    run.drive(lambda checkpoint, index: None)
    assert run.user_deployment().status is DeploymentStatus.SUCCEEDED


def test_gates_at_final_only_hold_the_success_not_the_batches() -> None:
    run = start(at="[final]")
    run.drive(lambda checkpoint, index: 0.5)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.FAILED
    assert "after the last batch" in (deployment.error_message or "")
    assert all(s.status is HostDeploymentStatus.SUCCEEDED for s in deployment.hosts.values())
    assert {m.checkpoint for m in run.analysis[deployment.deployment_id].measurements} == {
        f"batch-{len(deployment.batches) - 1}"
    }


def test_canary_gate_runs_during_the_bake_and_both_must_be_over() -> None:
    run = start(bake="60s", at="[canary]")
    run.drive(good)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.SUCCEEDED
    record = run.analysis[deployment.deployment_id]
    canary_end = deployment.hosts[deployment.batches[0][0]].finished_at
    assert canary_end is not None
    # Measured during the bake, not after it: the first at the pass after the canary's result was recorded (a
    # 5 s tick here), the next ones an interval apart.
    assert [m.measured_at - canary_end for m in record.measurements] == [timedelta(seconds=s) for s in (5, 15, 25)]
    second = run.dispatches(deployment.deployment_id)[1]
    assert min(dispatched(deployment, second.hosts)) >= canary_end + timedelta(seconds=60)


def test_rollbacks_and_catch_up_deployments_are_not_gated() -> None:
    run = start()
    run.drive(lambda checkpoint, index: 0.9)
    rollback = next(d for d in run.state.deployments.values() if d.creator == "rollback")
    assert rollback.status is DeploymentStatus.SUCCEEDED
    assert rollback.deployment_id not in run.analysis


def test_an_alarm_stops_the_deployment_at_once_rolls_back_and_quarantines() -> None:
    def alarm(now: datetime, actions: list[Action]) -> AlarmCheck:
        dispatched = sum(1 for a in actions if isinstance(a, DispatchBatch))
        state = "ALARM" if dispatched >= 2 else "OK"
        return AlarmCheck(checked_at=now, state=state, alarms=["web-5xx"] if state == "ALARM" else [],
                          message="alarm in ALARM: web-5xx: Threshold Crossed" if state == "ALARM" else "no alarm")

    run = start(analysis=False, alarms=False)
    run.alarm = alarm
    # Hosts of the second batch are still running when the alarm fires: the agents answer a tick later.
    run.drive(good)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.STOPPED
    assert deployment.error_code == "ALARM_ACTIVE"
    assert "web-5xx: Threshold Crossed" in (deployment.error_message or "")
    assert len(deployment.batches) == 2
    rollback = next(d for d in run.state.deployments.values() if d.creator == "rollback")
    assert rollback.status is DeploymentStatus.SUCCEEDED
    group = run.state.groups[KEY]
    assert group.effective_revision == V1
    assert [q.deployment_id for q in group.quarantined] == [deployment.deployment_id]
    finished = [a for a in run.actions if isinstance(a, FinishDeployment)]
    assert finished[0].deployment_id == deployment.deployment_id and finished[0].quarantined


def test_hosts_in_flight_when_the_alarm_fires_count_failed_with_the_reason() -> None:
    observed, state = fleet()
    run = Run(desired(analysis=False, alarms=False), observed, state)
    quiet = AlarmCheck(checked_at=T0, state="OK", message="no alarm in ALARM")
    actions = reconcile(run.desired, dataclasses.replace(run.observed, alarms={KEY: quiet}), run.state, now=T0)
    run.state = apply_actions(run.state, actions)
    in_flight = run.state.groups[KEY].deployment_in_flight
    assert in_flight is not None
    check = AlarmCheck(checked_at=T0, state="ALARM", alarms=["web-5xx"], message="alarm in ALARM: web-5xx: high")
    observed = dataclasses.replace(run.observed, alarms={KEY: check})
    actions = reconcile(run.desired, observed, run.state, now=T0 + timedelta(seconds=1))
    stopped = next(a for a in actions if isinstance(a, FinishDeployment))
    canary = stopped.deployment.batches[0][0]
    host = stopped.deployment.hosts[canary]
    assert host.status is HostDeploymentStatus.FAILED
    assert host.message == "still deploying when the deployment was stopped on alarm: alarm in ALARM: web-5xx: high"
    assert any(isinstance(a, StartRollback) for a in actions)


def test_without_stop_on_alarm_in_the_events_an_alarm_stops_without_rollback() -> None:
    text = MANIFESTS.format(bake="0s", config="canary-then-thirds", extra=ALARMS.format(ignore="false")).replace(
        "events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]", "events: [DEPLOYMENT_FAILURE]"
    )
    observed, state = fleet()
    run = Run(load_files([ManifestFile("web.yaml", text.encode())], commit="c2"), observed, state)

    def alarm(now: datetime, actions: list[Action]) -> AlarmCheck:
        firing = any(isinstance(a, DispatchBatch) for a in actions)  # from the pass after the canary went out
        return AlarmCheck(checked_at=now, state="ALARM" if firing else "OK", alarms=["web-5xx"] if firing else [],
                          message="in ALARM" if firing else "quiet")

    run.alarm = alarm
    run.drive(good)
    assert run.user_deployment().status is DeploymentStatus.STOPPED
    assert not any(d.creator == "rollback" for d in run.state.deployments.values())


def test_unreadable_alarms_hold_the_rollout_unless_ignored() -> None:
    def unreadable(now: datetime, actions: list[Action]) -> AlarmCheck:
        return AlarmCheck(checked_at=now, state="ERROR", alarms=["web-5xx"], message="cloudwatch: unreachable")

    run = start(analysis=False, alarms=False)
    run.alarm = unreadable
    with pytest.raises(AssertionError, match="did not end"):
        run.drive(good, passes=30)
    deployment = run.user_deployment()
    assert deployment.batches == []  # not even the canary goes out unwatched
    held = [a for a in run.actions if isinstance(a, Blocked) and a.code == "WAITING_FOR_ALARMS"]
    assert held and "cloudwatch: unreachable" in held[-1].reason
    assert run.state.groups[KEY].quarantined == []

    run = start(analysis=False, alarms=True)
    run.alarm = unreadable
    run.drive(good)
    assert run.user_deployment().status is DeploymentStatus.SUCCEEDED


def test_query_variables_name_the_batch_the_deployed_and_the_baseline_hosts() -> None:
    run = start()
    run.drive(lambda checkpoint, index: 0.0 if checkpoint == "batch-0" else 0.5)
    deployment = run.user_deployment()
    group = run.desired.desired_groups()[KEY]
    point = checkpoint(deployment.model_copy(update={"status": DeploymentStatus.IN_PROGRESS}), group,
                       deployment_config(run.desired, deployment, group))
    assert point is not None and point.name == "batch-1"
    variables = query_variables(deployment, point)
    batch = deployment.batches[1]
    assert variables["batchHosts"] == "|".join(batch)
    assert set(variables["deployedHosts"].split("|")) == set(deployment.batches[0]) | set(batch)
    assert variables["revision"] == deployment.revision.short()
    assert variables["baselineHosts"] == "|".join(h for h in HOSTS if h not in variables["deployedHosts"].split("|"))
    query = render_query('errors{host=~"{{ batchHosts }}", dg="{{group}}"}', variables)
    assert query == f'errors{{host=~"{"|".join(batch)}", dg="web"}}'


def test_host_regex_escapes_for_a_promql_string() -> None:
    assert host_regex([]) == "__none__"
    assert host_regex(["web-1", "db.2"]) == "web-1|db\\\\.2"


@given(st.lists(st.sampled_from(["ok", "bad", "none"]), min_size=1, max_size=12), st.integers(1, 4),
       st.integers(0, 3), st.integers(0, 3), st.sampled_from(["Fail", "Pass"]))
@settings(max_examples=150, deadline=None)
def test_a_gate_run_never_passes_over_its_limits_and_never_decides_early_without_cause(
    results: list[str], count: int, failure_limit: int, inconclusive_limit: int, policy: str
) -> None:
    failure_limit = min(failure_limit, count - 1)
    inconclusive_limit = min(inconclusive_limit, count - 1)
    d = desired(count=count, failure_limit=failure_limit, inconclusive_limit=inconclusive_limit,
                on_inconclusive=policy)
    gate = d.desired_groups()[KEY].analysis[0]
    opened = T0
    point = checkpoint_of(gate, opened)
    measured: list[GateMeasurement] = []
    verdicts = []
    for index, kind in enumerate(results):
        result = {"ok": GateResult.SUCCESSFUL, "bad": GateResult.FAILED, "none": GateResult.INCONCLUSIVE}[kind]
        measured.append(GateMeasurement(gate=gate.name, checkpoint=point.name, index=index, due_at=opened,
                                        measured_at=opened + timedelta(seconds=10 * index), result=result,
                                        message=kind))
        record = DeploymentAnalysis(deployment_id="d", application="shop", deployment_group="web",
                                    measurements=measured, updated_at=opened)
        run = gate_run(point, gate, record)
        verdicts.append(run.verdict)
        failed = sum(1 for m in measured if m.result is GateResult.FAILED)
        unknown = sum(1 for m in measured if m.result is GateResult.INCONCLUSIVE)
        if run.verdict == "passed":
            assert len(measured) >= count and failed <= failure_limit
            assert unknown <= inconclusive_limit or policy == "Pass"
        if run.verdict == "failed":
            assert failed > failure_limit or (unknown > inconclusive_limit and policy == "Fail")
        if run.verdict == "running":
            assert len(measured) < count and run.next_due is not None
            assert run.next_due >= measured[-1].measured_at + gate.interval
        if run.verdict != "running":
            break
    # A failed run stays failed whatever is measured after it (the shell takes no more, but a record written by
    # a reconciler that had not seen the verdict yet must not turn it around).
    if verdicts[-1] == "failed":
        for extra in range(3):
            measured.append(GateMeasurement(gate=gate.name, checkpoint=point.name, index=len(measured) + extra,
                                            due_at=opened, measured_at=opened, result=GateResult.SUCCESSFUL,
                                            message="ok"))
        record = DeploymentAnalysis(deployment_id="d", application="shop", deployment_group="web",
                                    measurements=measured, updated_at=opened)
        assert gate_run(point, gate, record).verdict == "failed"


def checkpoint_of(gate: AnalysisGateSpec, opened: datetime) -> Checkpoint:
    return Checkpoint("batch-0", 0, opened, canary=True, final=False, gates=(gate,))


CONDITIONS = ["result < 0.01", "result >= 0.5 and result <= 2", "result < 1 or result > 10"]


@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(CONDITIONS))
def test_conditions_judge_like_python_and_nan_is_inconclusive(value: float, text: str) -> None:
    condition = Condition.parse(text)
    passed, shown, _ = judge(condition, [("{}", value)])
    if value != value or value in (float("inf"), float("-inf")):
        assert passed is None
    else:
        expected = eval(text.replace("result", repr(value)))  # the test's own three conditions
        assert passed is expected and shown == value


def test_an_agent_clock_running_ahead_does_not_hold_the_checkpoint() -> None:
    """The canary's agent reports its end ten minutes in the future (its clock is off): the checkpoint opens on
    the reconciler's clock, so the first measurement is due at once, not ten minutes later."""
    observed, state = fleet()
    d = desired()
    actions = reconcile(d, observed, state, now=T0)
    state = apply_actions(state, actions)
    skewed = run_agents(observed, state, now=T0 + timedelta(minutes=10), alive=HOSTS)
    actions = reconcile(d, skewed, state, now=T0 + timedelta(seconds=5))
    state = apply_actions(state, actions)
    deployment = next(iter(state.deployments.values()))
    canary = deployment.batches[0][0]
    assert deployment.hosts[canary].finished_at == T0 + timedelta(seconds=5)
    group = d.desired_groups()[KEY]
    due = due_measurements(deployment, group, deployment_config(d, deployment, group), None,
                           now=T0 + timedelta(seconds=6))
    assert [(m.checkpoint, m.index) for m in due] == [("batch-0", 0)]


# -- cases a review found (each failed before its fix) ---------------------------------------------------------


def test_a_final_gate_still_runs_when_the_last_pending_hosts_are_offline() -> None:
    """No canary, batches of two (4 of 6 stay healthy); web-5 and web-6 go quiet after the first batch, so the
    step that fails them offline is also the one that would end the deployment: the final gate must still run."""
    text = MANIFESTS.replace("  canary: {{hosts: 1, bakeTime: {bake}}}\n", "").format(
        bake="0s", config="canary-then-thirds",
        extra=ANALYSIS.format(count=3, failure_limit=0, inconclusive_limit=0, on_inconclusive="Fail", at="[final]"))
    observed, state = fleet()
    statuses = {h: s.model_copy(update={"heartbeat_interval_seconds": 1}) for h, s in observed.statuses.items()}
    run = Run(load_files([ManifestFile("web.yaml", text.encode())], commit="c2"),
              dataclasses.replace(observed, statuses=statuses), state)
    settings = CoreSettings(heartbeat_timeout=timedelta(seconds=7))
    quiet = AlarmCheck(checked_at=T0, state="OK", message="quiet")
    for _ in range(60):
        alive = HOSTS if run.now < T0 + timedelta(seconds=4) else HOSTS[:4]
        run.observed = run_agents(run.observed, run.state, now=run.now, alive=alive)
        run.measure(lambda checkpoint, index: 0.5)  # every measurement fails
        observed = dataclasses.replace(run.observed, analysis=dict(run.analysis), alarms={KEY: quiet})
        actions = reconcile(run.desired, observed, run.state, now=run.now, settings=settings)
        run.state = apply_actions(run.state, actions)
        if run.state.groups[KEY].deployment_in_flight is None:
            break
        run.now += timedelta(seconds=5)
    deployment = run.user_deployment()
    assert [deployment.hosts[h].status for h in ("web-5", "web-6")] == [HostDeploymentStatus.FAILED] * 2
    assert deployment.status is DeploymentStatus.FAILED and deployment.error_code == "ANALYSIS_FAILED"
    assert run.analysis[deployment.deployment_id].measurements


def test_a_gate_that_fails_during_a_bake_ends_the_deployment_at_once() -> None:
    run = start(bake="30m", at="[canary]")
    run.drive(lambda checkpoint, index: 0.5, tick=timedelta(seconds=30))
    deployment = run.user_deployment()
    assert deployment.error_code == "ANALYSIS_FAILED"
    canary_end = deployment.hosts[deployment.batches[0][0]].finished_at
    assert deployment.ended_at is not None and canary_end is not None
    assert deployment.ended_at - canary_end <= timedelta(minutes=1)  # not 30 minutes later, at the bake's end


def test_a_host_failure_and_an_alarm_in_the_same_pass_end_as_a_failure_with_its_rollback() -> None:
    text = MANIFESTS.format(bake="0s", config="canary-then-thirds", extra=ALARMS.format(ignore="false")).replace(
        "events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]", "events: [DEPLOYMENT_FAILURE]"
    )
    d = load_files([ManifestFile("web.yaml", text.encode())], commit="c2")
    observed, state = fleet()
    quiet = AlarmCheck(checked_at=T0, state="OK", message="quiet")
    state = apply_actions(state, reconcile(d, dataclasses.replace(observed, alarms={KEY: quiet}), state, now=T0))
    failing = run_agents(observed, state, now=T0 + timedelta(seconds=5), alive=HOSTS, outcome=lambda command: False)
    firing = AlarmCheck(checked_at=T0, state="ALARM", alarms=["web-5xx"], message="alarm in ALARM: web-5xx")
    actions = reconcile(d, dataclasses.replace(failing, alarms={KEY: firing}), state, now=T0 + timedelta(seconds=5))
    finished = next(a for a in actions if isinstance(a, FinishDeployment))
    assert finished.status is DeploymentStatus.FAILED and finished.error_code == "CANARY_FAILED"
    assert any(isinstance(a, StartRollback) for a in actions)


def test_an_alarm_already_firing_holds_a_new_revision_instead_of_quarantining_it() -> None:
    observed, state = fleet()
    d = desired(analysis=False, alarms=False)
    firing = AlarmCheck(checked_at=T0, state="ALARM", alarms=["web-5xx"], message="alarm in ALARM: web-5xx")
    actions = reconcile(d, dataclasses.replace(observed, alarms={KEY: firing}), state, now=T0)
    state = apply_actions(state, actions)
    held = [a for a in actions if isinstance(a, Blocked) and a.code == "WAITING_FOR_ALARMS"]
    assert held and "before any host got the revision" in held[0].reason
    assert not any(isinstance(a, DispatchBatch | FinishDeployment) for a in actions)
    assert state.groups[KEY].quarantined == []
    quiet = AlarmCheck(checked_at=T0, state="OK", message="quiet")
    actions = reconcile(d, dataclasses.replace(observed, alarms={KEY: quiet}), state, now=T0 + timedelta(seconds=5))
    assert any(isinstance(a, DispatchBatch) for a in actions)


def test_alarms_are_read_when_a_new_revision_supersedes_a_catch_up() -> None:
    from reconciler.core.gates import alarms_wanted

    _, state = fleet()
    d = desired(analysis=False, alarms=False)
    group = d.desired_groups()[KEY]
    catch_up = Deployment(deployment_id="d-catchup", application="shop", deployment_group="web", revision=V1,
                          deployment_config="CodeDeployDefault.OneAtATime", creator="outdated",
                          status=DeploymentStatus.IN_PROGRESS, created_at=T0, updated_at=T0)
    assert alarms_wanted(group, state.groups[KEY], catch_up)
    assert not alarms_wanted(group.__class__(**{**group.__dict__, "suspend": True}), state.groups[KEY], None)


def test_a_deployment_whose_alarms_were_not_read_does_not_dispatch() -> None:
    observed, state = fleet()
    actions = reconcile(desired(analysis=False, alarms=False), observed, state, now=T0)
    held = [a for a in actions if isinstance(a, Blocked) and a.code == "WAITING_FOR_ALARMS"]
    assert held and "not read" in held[0].reason
    assert not any(isinstance(a, DispatchBatch) for a in actions)


def test_gates_after_every_batch_keep_batches_from_overlapping() -> None:
    run = start(config="CodeDeployDefault.HalfAtATime", count=1)
    run.drive(good)
    deployment = run.user_deployment()
    assert deployment.status is DeploymentStatus.SUCCEEDED
    for batch in range(1, len(deployment.batches)):
        ends = [deployment.hosts[h].finished_at for h in deployment.batches[batch - 1]]
        previous_end = max(end for end in ends if end is not None)
        assert min(dispatched(deployment, deployment.batches[batch])) >= previous_end
    assert {m.checkpoint for m in run.analysis[deployment.deployment_id].measurements} == {
        f"batch-{n}" for n in range(len(deployment.batches))
    }


def test_a_failing_series_is_not_hidden_by_a_nan_one() -> None:
    condition = Condition.parse("result < 0.01")
    for values in ([("a", float("nan")), ("b", 0.5)], [("b", 0.5), ("a", float("nan"))]):
        assert judge(condition, values) == (False, 0.5, "b")
    passed, _, label = judge(condition, [("a", float("nan")), ("b", 0.001)])
    assert passed is None and label == "a"
