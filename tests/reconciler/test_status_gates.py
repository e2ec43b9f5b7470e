"""`reconcile status` and `reconcile history` with monitoring gates (issue 14, docs/gates.md): each gate's last
value at the current or last checkpoint, the last alarm read, a host's HealthCheck step, and a one-line gates
summary per deployment in history.

Through the real CLI entry point, on a real FileStore and a real Git config repo; the store holds the documents
a reconciler and its agents would have written (the real models, `analysis/<id>.json` included).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from structlog.testing import capture_logs

from contract.keys import analysis_key, deployment_key, group_state_key, registration_key, status_key
from contract.models import (
    HEALTH_CHECK,
    AlarmCheck,
    CommandProgress,
    CommandStatus,
    Deployment,
    DeploymentAnalysis,
    DeploymentStatus,
    Document,
    EventReport,
    EventStatus,
    GateMeasurement,
    GateResult,
    GroupState,
    HostDeploymentState,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from contract.store import Store, open_store
from reconciler.cli.main import main
from reconciler.cli.progress import LiveProgress, LogProgress, rollout_rows
from reconciler.core.gates import DueMeasurement
from reconciler.gates.cloudwatch import AlarmReader
from reconciler.settings import LoggingSettings, ReconcileSettings
from reconciler.shell.gates import GateShell
from reconciler.shell.lease import WriteLease
from reconciler.shell.passes import PassRunner
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision, settings_overrides

HOSTS = ["h1", "h2", "h3", "h4"]
KEY = "hello/web"
V1 = Revision.model_validate({"local": {"path": "bundles/v1.zip", "bundleType": "zip"}})
V2 = Revision.model_validate({"local": {"path": "bundles/v2.zip", "bundleType": "zip"}})

CANARY_CONFIG = """\
apiVersion: deploy/v1
kind: DeploymentConfig
metadata:
  name: canary-one
spec:
  minimumHealthyHosts: {type: HOST_COUNT, value: 2}
  canary: {hosts: 1, bakeTime: 0s}
"""

GATES = """\
  healthCheck:
    url: http://{address}:8080/healthz
    minHealthyTime: 10s
  alarmConfiguration:
    alarms: [web-5xx, web-latency]
  analysis:
    - name: error-rate
      prometheus:
        address: http://prometheus:9090
        query: 'sum(rate(errors{host=~"{{ batchHosts }}"}[1m]))'
      successCondition: result < 0.01
      interval: 10s
      count: 3
    - name: latency
      prometheus:
        address: http://prometheus:9090
        query: 'max(latency{host=~"{{ batchHosts }}"})'
      successCondition: result <= 0.25
      count: 2
"""


@pytest.fixture(autouse=True)
def fast_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT", "60s")
    monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")


class GatedWorld:
    """A group with a canary config, a health check, two alarms and two gates, at v2 in the manifests; four
    hosts on v1. The tests write the deployment and its analysis record as the reconciler would have."""

    def __init__(self, tmp_path: Path) -> None:
        self.now = datetime.now(UTC)
        self.store_dir = tmp_path / "store"
        self.store: Store = open_store(f"file://{self.store_dir}")
        self.config = Config(tmp_path / "config")
        self.config.repo.write("manifests/configs.yaml", CANARY_CONFIG)
        manifest = group_manifest(revision=local_revision(2), config="canary-one")
        manifest = manifest.replace("    events: [DEPLOYMENT_FAILURE]\n",
                                    "    events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]\n") + GATES
        self.commit = self.config.set_group(manifest, message="v2 with gates")
        for host in HOSTS:
            self.put(registration_key(host), HostRegistration(
                host_id=host, tags={"app": "hello"}, platform="linux", hostname=host, agent_version="test",
                registered_at=self.now - timedelta(days=1)))
            self.host_status(host)

    def put(self, key: str, document: Document) -> None:
        self.store.put(key, document.to_json())

    def host_status(self, host: str, command: CommandProgress | None = None, revision: Revision = V1) -> None:
        installed = {KEY: InstalledRevision(application="hello", deployment_group="web", revision=revision,
                                            deployment_id="d-v1", installed_at=self.now - timedelta(days=1))}
        self.put(status_key(host), HostStatus(host_id=host, heartbeat_at=self.now - timedelta(seconds=2),
                                              agent_version="test", installed=installed, command=command))

    def deployment(self, deployment_id: str, *, status: DeploymentStatus, canary_done: bool,
                   error: tuple[str, str] | None = None, ended: bool = False) -> Deployment:
        """v2 with the canary (h1) dispatched a minute ago and finished 40 s ago when `canary_done`."""
        dispatched = self.now - timedelta(minutes=1)
        hosts = {h: HostDeploymentState() for h in HOSTS}
        hosts["h1"] = HostDeploymentState(
            status=HostDeploymentStatus.SUCCEEDED if canary_done else HostDeploymentStatus.IN_PROGRESS,
            batch=0, generation=1, dispatched_at=dispatched,
            finished_at=self.now - timedelta(seconds=40) if canary_done else None)
        deployment = Deployment(
            deployment_id=deployment_id, application="hello", deployment_group="web", revision=V2,
            source_commit=self.commit, deployment_config="canary-one", status=status, hosts=hosts,
            batches=[["h1"]], created_at=dispatched, updated_at=self.now,
            ended_at=self.now - timedelta(seconds=5) if ended else None,
            error_code=error[0] if error else None, error_message=error[1] if error else None)
        self.put(deployment_key(deployment_id), deployment)
        return deployment

    def group(self, *, in_flight: str | None, history: list[str]) -> None:
        self.put(group_state_key("hello", "web"), GroupState(
            application="hello", deployment_group="web", desired_revision=V2, desired_commit=self.commit,
            effective_revision=V1, effective_commit="1" * 40, deployment_in_flight=in_flight, history=history,
            updated_at=self.now))

    def analysis(self, deployment_id: str, measurements: list[GateMeasurement],
                 alarms: AlarmCheck | None = None) -> None:
        self.put(analysis_key(deployment_id), DeploymentAnalysis(
            deployment_id=deployment_id, application="hello", deployment_group="web", measurements=measurements,
            alarms=alarms, updated_at=self.now))

    def measurement(self, gate: str, index: int, value: float | None, result: GateResult, message: str,
                    checkpoint: str = "batch-0") -> GateMeasurement:
        at = self.now - timedelta(seconds=40) + timedelta(seconds=10 * index)
        return GateMeasurement(gate=gate, checkpoint=checkpoint, index=index, due_at=at, measured_at=at,
                               result=result, value=value, message=message)

    def run(self, *args: str) -> int:
        return main([*self.config.args(), "--store", f"file://{self.store_dir}", *args])


@pytest.fixture
def world(tmp_path: Path) -> GatedWorld:
    return GatedWorld(tmp_path)


def test_status_shows_each_gate_at_the_open_checkpoint_and_the_last_alarm_read(
    world: GatedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    world.deployment("d-gated", status=DeploymentStatus.IN_PROGRESS, canary_done=True)
    world.group(in_flight="d-gated", history=["d-gated"])
    ok = GateResult.SUCCESSFUL
    world.analysis("d-gated", [
        world.measurement("error-rate", 0, 0.0009, ok, "error-rate 0.0009 < 0.01"),
        world.measurement("error-rate", 1, 0.0012, ok, "error-rate 0.0012 < 0.01"),
        world.measurement("latency", 0, 0.18, ok, "latency 0.18 <= 0.25"),
        world.measurement("latency", 1, 0.21, ok, "latency 0.21 <= 0.25"),
    ], alarms=AlarmCheck(checked_at=world.now - timedelta(seconds=3), state="OK", message="no alarm in ALARM"))

    assert world.run("status") == 0
    text = capsys.readouterr().out
    assert "gate         error-rate after the canary batch: 2 of 3 measured, last 0.0012 (successful)" in text
    assert "gate         latency after the canary batch: passed, 2 of 2 measured, last 0.21 (successful)" in text
    assert "alarms       OK (watching web-5xx, web-latency), checked 3s ago" in text

    assert world.run("status", "web", "--format", "json") == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    analysis = group["analysis"]
    assert analysis["deploymentId"] == "d-gated"
    gates = {g["gate"]: g for g in analysis["gates"]}
    assert gates["error-rate"]["verdict"] == "running"
    assert (gates["error-rate"]["measured"], gates["error-rate"]["count"]) == (2, 3)
    assert gates["error-rate"]["last"]["value"] == 0.0012
    assert gates["error-rate"]["where"] == "after the canary batch"
    assert gates["latency"]["verdict"] == "passed"
    assert analysis["alarms"]["state"] == "OK"
    assert analysis["alarms"]["watched"] == ["web-5xx", "web-latency"]


def test_a_failed_gate_shows_its_value_and_message_in_status_and_history(
    world: GatedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    message = ("gate error-rate after the canary batch failed: 1 of 1 measurement(s) failed (failureLimit 0); "
               "error-rate 0.2 is not < 0.01 on h1")
    world.deployment("d-bad", status=DeploymentStatus.FAILED, canary_done=True, ended=True,
                     error=("ANALYSIS_FAILED", message))
    world.group(in_flight=None, history=["d-bad"])
    world.analysis("d-bad", [world.measurement("error-rate", 0, 0.2, GateResult.FAILED,
                                               "error-rate 0.2 is not < 0.01 on h1")])

    assert world.run("status") == 0
    text = capsys.readouterr().out
    assert "last         d-bad Failed [ANALYSIS_FAILED]" in text
    assert ("gate         error-rate after the canary batch: failed, 1 of 3 measured, last 0.2 (failed): "
            "error-rate 0.2 is not < 0.01 on h1") in text

    assert world.run("history", "web") == 0
    text = capsys.readouterr().out
    assert f"ANALYSIS_FAILED: {message}" in text
    assert "gates: error-rate failed after the canary batch: error-rate 0.2 is not < 0.01 on h1" in text

    assert world.run("history", "web", "--format", "json") == 0
    (deployment,) = json.loads(capsys.readouterr().out)["deployments"]
    assert deployment["errorCode"] == "ANALYSIS_FAILED"
    assert deployment["analysis"]["gates"][0]["verdict"] == "failed"


def test_history_sums_up_gates_that_passed_at_every_checkpoint(
    world: GatedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = world.deployment("d-good", status=DeploymentStatus.SUCCEEDED, canary_done=True, ended=True)
    # Three batches, every host done: checkpoints batch-0 (canary), batch-1, batch-2 (the last).
    hosts = {h: s.model_copy(update={"status": HostDeploymentStatus.SUCCEEDED, "finished_at": world.now})
             for h, s in deployment.hosts.items()}
    world.put(deployment_key("d-good"), deployment.model_copy(
        update={"hosts": hosts, "batches": [["h1"], ["h2", "h3"], ["h4"]]}))
    world.group(in_flight=None, history=["d-good"])
    ok = GateResult.SUCCESSFUL
    world.analysis("d-good", [
        world.measurement(gate, index, 0.001, ok, "fine", checkpoint=f"batch-{n}")
        for n in range(3) for gate, count in (("error-rate", 3), ("latency", 2)) for index in range(count)
    ])

    assert world.run("history", "web") == 0
    text = capsys.readouterr().out
    assert "gates: error-rate passed at 3 checkpoints; latency passed at 3 checkpoints" in text

    assert world.run("status") == 0
    text = capsys.readouterr().out
    assert "gate         error-rate after the last batch (batch 3): passed, 3 of 3 measured" in text


def test_an_alarm_stop_shows_the_alarm_in_status(world: GatedWorld, capsys: pytest.CaptureFixture[str]) -> None:
    world.deployment("d-alarm", status=DeploymentStatus.STOPPED, canary_done=True, ended=True,
                     error=("ALARM_ACTIVE", "stopped on alarm: web-5xx is in ALARM"))
    world.group(in_flight=None, history=["d-alarm"])
    world.analysis("d-alarm", [], alarms=AlarmCheck(checked_at=world.now - timedelta(seconds=8), state="ALARM",
                                                    alarms=["web-5xx"], message="web-5xx is in ALARM"))

    assert world.run("status") == 0
    text = capsys.readouterr().out
    assert "last         d-alarm Stopped [ALARM_ACTIVE]" in text
    assert "alarms       ALARM web-5xx, checked 8s ago: web-5xx is in ALARM" in text

    assert world.run("history", "web") == 0
    assert "ALARM_ACTIVE: stopped on alarm: web-5xx is in ALARM" in capsys.readouterr().out


def test_a_hosts_health_check_step_shows_in_host_detail(world: GatedWorld, capsys: pytest.CaptureFixture[str]) -> None:
    world.deployment("d-gated", status=DeploymentStatus.IN_PROGRESS, canary_done=False)
    world.group(in_flight="d-gated", history=["d-gated"])
    started = world.now - timedelta(seconds=30)
    events = [EventReport(name="ValidateService", status=EventStatus.SUCCEEDED, started_at=started,
                          ended_at=started),
              EventReport(name=HEALTH_CHECK, status=EventStatus.IN_PROGRESS, started_at=started,
                          message="healthy for 4 s of 10 s, 3 checks")]
    world.host_status("h1", CommandProgress(
        deployment_id="d-gated", generation=1, application="hello", deployment_group="web",
        status=CommandStatus.IN_PROGRESS, events=events, started_at=started))

    assert world.run("status") == 0
    text = capsys.readouterr().out
    assert "h1: HealthCheck" in text  # what the busy host runs, in the deployment in flight
    assert "      health: HealthCheck InProgress: healthy for 4 s of 10 s, 3 checks" in text
    assert "gate " not in text  # nothing measured yet: no analysis record

    assert world.run("status", "web", "--format", "json") == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    h1 = next(h for h in group["hosts"] if h["host"] == "h1")
    assert h1["healthCheck"] == {"status": "InProgress", "message": "healthy for 4 s of 10 s, 3 checks",
                                 "endedAt": None}
    assert group["analysis"] is None


def test_progress_says_a_rollout_waits_for_its_analysis_in_words(
    world: GatedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real pass over the canary checkpoint (the gate measurements taken by a stand-in for Prometheus that
    answers 0.001): the live table and the log say "analysis running" with the gate's progress, not only the
    code."""
    def measure(due: DueMeasurement) -> GateMeasurement:
        at = datetime.now(UTC)
        return GateMeasurement(gate=due.gate.name, checkpoint=due.checkpoint, index=due.index, due_at=due.due_at,
                               measured_at=at, result=GateResult.SUCCESSFUL, value=0.001, message="0.001")

    class QuietAlarms(AlarmReader):
        def read(self, now: datetime) -> AlarmCheck:
            return AlarmCheck(checked_at=now, state="OK", message="no alarm in ALARM")

        def close(self) -> None:
            return None

    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(world.store, duration=settings.lease_duration)
    assert lease.try_acquire()
    gates = GateShell(clock=lambda: datetime.now(UTC), measure_one=measure, alarm_reader=QuietAlarms)
    runner = PassRunner(world.store, lease, settings, gates=gates)
    agents = ScriptedAgents(world.store, list(HOSTS))
    agents.register()
    desired = world.config.desired()
    waiting = None
    for _ in range(6):
        outcome = runner.run_pass(desired)
        if any(b.code == "WAITING_FOR_ANALYSIS" for b in outcome.blocked):
            waiting = outcome
            break
        agents.answer()
    assert waiting is not None
    (row,) = rollout_rows(waiting)
    assert row.waiting == "analysis running"
    assert row.note is not None and "error-rate after the canary batch" in row.note
    live = LiveProgress(LoggingSettings())
    live.on_pass(waiting)
    console = Console(width=250, record=True)
    console.print(live.table())
    assert "InProgress (analysis running)" in console.export_text()
    with capture_logs() as logs:
        LogProgress().on_pass(waiting)
    (blocked,) = [entry for entry in logs if entry["event"] == "rollout.blocked"]
    assert blocked["reason"].startswith("analysis running (WAITING_FOR_ANALYSIS): analysis: gate error-rate")
