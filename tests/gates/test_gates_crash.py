"""Crash safety of the gates' record (docs/gates.md, "Crash safety"): a measurement lost between its query and
its write is taken again under the same index, never twice; and `reconcile --once` killed with SIGKILL in the
middle of an analysis run finishes it in the next process with exactly `count` measurements per checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contract.keys import analysis_key
from contract.models import (
    Deployment,
    DeploymentAnalysis,
    DeploymentStatus,
    GateMeasurement,
    GateResult,
    GroupState,
    HostDeploymentState,
    HostDeploymentStatus,
    Revision,
)
from contract.store import Store, StoreUnavailable
from contract.store.docs import read_document
from contract.store.file import FileStore
from fleetlab.fleet import TrafficFleet, commit_all
from fleetlab.prometheus import LocalPrometheus
from reconciler.core import Observed, State
from reconciler.core.gates import DueMeasurement
from reconciler.desired.loader import load_files
from reconciler.desired.sources import ManifestFile
from reconciler.shell.gates import GateShell
from tests.conftest import require_tool

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MANIFESTS = """
apiVersion: deploy/v1
kind: Application
metadata: {name: shop}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {name: web}
spec:
  application: shop
  revision: {local: {path: bundles/v2.zip, bundleType: zip}}
  targets: {hosts: [web-1, web-2]}
  analysis:
    - name: errors
      prometheus: {address: "http://127.0.0.1:9", query: "vector(0)"}
      successCondition: result < 1
      interval: 10s
      count: 3
"""


def world() -> tuple[State, Deployment]:
    """A user deployment whose first batch (web-1) finished a minute ago: its checkpoint is open."""
    revision = Revision.model_validate({"local": {"path": "bundles/v2.zip", "bundleType": "zip"}})
    hosts = {
        "web-1": HostDeploymentState(status=HostDeploymentStatus.SUCCEEDED, batch=0, generation=1,
                                     dispatched_at=T0 - timedelta(minutes=2), finished_at=T0 - timedelta(minutes=1)),
        "web-2": HostDeploymentState(),
    }
    deployment = Deployment(deployment_id="d-1", application="shop", deployment_group="web", revision=revision,
                            deployment_config="CodeDeployDefault.OneAtATime", status=DeploymentStatus.IN_PROGRESS,
                            hosts=hosts, batches=[["web-1"]], created_at=T0, updated_at=T0)
    group = GroupState(application="shop", deployment_group="web", desired_revision=revision, desired_commit="c",
                       deployment_in_flight="d-1", updated_at=T0)
    return State(groups={"shop/web": group}, deployments={"d-1": deployment}), deployment


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def measurement(due: DueMeasurement, now: datetime) -> GateMeasurement:
    return GateMeasurement(gate=due.gate.name, checkpoint=due.checkpoint, index=due.index, due_at=due.due_at,
                           measured_at=now, result=GateResult.SUCCESSFUL, value=0.0, message="errors = 0")


class FlakyStore:
    """A file store whose writes fail while `down` is set: the process that measured never got its record out."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = False

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self.inner, name)
        if name.startswith("put") and self.down:
            def refuse(*args: object, **kwargs: object) -> str:
                raise StoreUnavailable("the store is down (test)")
            return refuse
        return attribute


def test_a_measurement_whose_record_was_lost_is_taken_again_under_the_same_index(tmp_path: Path) -> None:
    desired = load_files([ManifestFile("web.yaml", MANIFESTS.encode())], commit="c")
    state, _ = world()
    store = FlakyStore(FileStore(f"file://{tmp_path / 'store'}"))
    clock = Clock()
    taken: list[int] = []

    def measure(due: DueMeasurement) -> GateMeasurement:
        taken.append(due.index)
        return measurement(due, clock.now)

    store.down = True
    shell = GateShell(clock=clock, measure_one=measure)
    seen = shell.observe(store, desired, Observed(), state)  # type: ignore[arg-type]
    assert taken == [0] and seen.analysis == {}  # measured, not recorded: the decision has nothing to go on
    store.down = False
    # A new process (a restart after kill -9 at that point): index 0 again, recorded this time.
    fresh = GateShell(clock=clock, measure_one=measure)
    seen = fresh.observe(store, desired, Observed(), state)  # type: ignore[arg-type]
    assert taken == [0, 0]
    assert [m.index for m in seen.analysis["d-1"].measurements] == [0]
    # Not due again before the interval: nothing measured, nothing written.
    clock.now += timedelta(seconds=5)
    seen = fresh.observe(store, desired, Observed(), state)  # type: ignore[arg-type]
    assert taken == [0, 0] and len(seen.analysis["d-1"].measurements) == 1
    clock.now += timedelta(seconds=5)
    seen = GateShell(clock=clock, measure_one=measure).observe(store, desired, Observed(), state)  # type: ignore[arg-type]
    assert [m.index for m in seen.analysis["d-1"].measurements] == [0, 1]
    stored = read_document(store.inner, analysis_key("d-1"), DeploymentAnalysis)
    assert stored is not None and [m.index for m in stored.document.measurements] == [0, 1]


def test_a_record_another_writer_changed_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    desired = load_files([ManifestFile("web.yaml", MANIFESTS.encode())], commit="c")
    state, _ = world()
    store = FileStore(f"file://{tmp_path / 'store'}")
    clock = Clock()
    shell = GateShell(clock=clock, measure_one=lambda due: measurement(due, clock.now))
    shell.observe(store, desired, Observed(), state)
    # Someone else (a reconciler that held the lease in between) recorded index 1 meanwhile.
    other = GateShell(clock=clock, measure_one=lambda due: measurement(due, clock.now))
    clock.now += timedelta(seconds=10)
    other.observe(store, desired, Observed(), state)
    clock.now += timedelta(seconds=10)
    seen = shell.observe(store, desired, Observed(), state)  # re-reads the changed record, then measures index 2
    indexes = [m.index for m in seen.analysis["d-1"].measurements]
    assert indexes == [0, 1, 2]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[TrafficFleet, LocalPrometheus]]:
    require_tool("haproxy", "haproxy")
    require_tool("prometheus", "prometheus")
    started = TrafficFleet(tmp_path / "fleet", count=3, faulty="none")
    prometheus: LocalPrometheus | None = None
    try:
        started.start()
        prometheus = LocalPrometheus(tmp_path / "prometheus", [(h.host_id, "127.0.0.1", h.port) for h in started.hosts])
        prometheus.start()
        yield started, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        started.stop()


GATE = """\
  analysis:
    - name: steady
      prometheus: {{address: "{address}", query: "vector(0.001)"}}
      successCondition: result < 0.01
      interval: 1s
      count: 4
"""


@pytest.mark.slow
def test_reconcile_killed_mid_analysis_finishes_the_run_without_counting_a_measurement_twice(
    fleet: tuple[TrafficFleet, LocalPrometheus],
) -> None:
    lab, prometheus = fleet
    installed = lab.deploy("v1", config="CodeDeployDefault.AllAtOnce", traffic=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    text = lab.manifest("v2", config="CodeDeployDefault.OneAtATime", traffic=False)
    text += GATE.format(address=prometheus.url)
    (lab.config_repo / "manifests" / f"{lab.group}.yaml").write_text(text)
    commit_all(lab.config_repo, "deploy v2 with a gate")
    store = lab.workdir / "store"
    command, env = lab.reconcile_command("--once", lease_duration="1s")
    kills = 0
    for _ in range(3):  # kill it at two points of the runs, then let it finish
        with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True) as process:
            if kills == 2:
                assert process.wait(timeout=120) == 0
                break
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                records = list((store / "analysis").glob("*.json")) if (store / "analysis").exists() else []
                counts = [len(json.loads(r.read_text())["measurements"]) for r in records]
                if counts and sum(counts) >= 2 + 4 * kills:
                    break
                time.sleep(0.02)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
            time.sleep(1.2)  # the killed holder's lease expires
    group = json.loads((store / "groups" / "hello" / f"{lab.group}.json").read_text())
    deployment = json.loads((store / "deployments" / f"{group['history'][-1]}.json").read_text())
    assert deployment["status"] == "Succeeded", deployment
    record_file = store / "analysis" / f"{deployment['deploymentId']}.json"
    record = DeploymentAnalysis.model_validate_json(record_file.read_text())
    by_checkpoint: dict[str, list[GateMeasurement]] = {}
    for m in record.measurements:
        by_checkpoint.setdefault(m.checkpoint, []).append(m)
    assert set(by_checkpoint) == {"batch-0", "batch-1", "batch-2"}
    for checkpoint, measured in by_checkpoint.items():
        assert [m.index for m in measured] == [0, 1, 2, 3], checkpoint
        times = [m.measured_at for m in measured]
        assert times == sorted(times)
    # Each next batch went out after the run before it ended.
    for batch in (1, 2):
        host = deployment["batches"][batch][0]
        last = max(m.measured_at for m in by_checkpoint[f"batch-{batch - 1}"])
        assert datetime.fromisoformat(deployment["hosts"][host]["dispatchedAt"]) >= last


def test_an_unreadable_record_is_replaced_and_the_run_starts_again(tmp_path: Path) -> None:
    desired = load_files([ManifestFile("web.yaml", MANIFESTS.encode())], commit="c")
    state, _ = world()
    store = FileStore(f"file://{tmp_path / 'store'}")
    store.put(analysis_key("d-1"), b'{"not": "an analysis record"')  # cut off: not even JSON
    clock = Clock()
    taken: list[int] = []

    def measure(due: DueMeasurement) -> GateMeasurement:
        taken.append(due.index)
        return measurement(due, clock.now)

    shell = GateShell(clock=clock, measure_one=measure)
    seen = shell.observe(store, desired, Observed(), state)
    assert taken == [0] and [m.index for m in seen.analysis["d-1"].measurements] == [0]
    clock.now += timedelta(seconds=10)
    seen = shell.observe(store, desired, Observed(), state)
    assert taken == [0, 1] and [m.index for m in seen.analysis["d-1"].measurements] == [0, 1]
    stored = read_document(store, analysis_key("d-1"), DeploymentAnalysis)
    assert stored is not None and len(stored.document.measurements) == 2


def test_a_measurement_that_raises_is_inconclusive_and_the_pass_goes_on(tmp_path: Path) -> None:
    desired = load_files([ManifestFile("web.yaml", MANIFESTS.encode())], commit="c")
    state, _ = world()
    store = FileStore(f"file://{tmp_path / 'store'}")

    def broken(due: DueMeasurement) -> GateMeasurement:
        raise KeyError("value")

    seen = GateShell(clock=Clock(), measure_one=broken).observe(store, desired, Observed(), state)
    [taken] = seen.analysis["d-1"].measurements
    assert taken.result is GateResult.INCONCLUSIVE
    assert taken.message == "the measurement failed inside fleetshift: KeyError: 'value'"
