"""The executor against a real FileStore: idempotence, crash safety at every write, compare-and-swap.

A crash is simulated by letting a pass's writes reach the real store up to a point and then killing the
"process" (its runner, lease object and cache are thrown away), exactly as `kill -9` between two writes
would. A new reconciler then starts from what the store holds. The agents' record of what they ran is the
ground truth: no host may run one deployment twice, and a deployment the group already points at must be the
one that completes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from contract.keys import group_state_key
from contract.models import Deployment, DeploymentStatus, GroupState, StopRequest
from contract.store import ObjectVersion, Store, StoredObject, open_store
from reconciler.core import reconcile
from reconciler.settings import ReconcileSettings
from reconciler.shell.executor import Executor, WriteConflict
from reconciler.shell.lease import LeaseLost, WriteLease
from reconciler.shell.observe import StoreReader
from reconciler.shell.passes import PassOutcome, PassRunner
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision, now, settings_overrides

HOSTS = ["h1", "h2", "h3", "h4"]
SETTINGS = ReconcileSettings.model_validate(settings_overrides())


class Crash(BaseException):
    """The process died. BaseException, so nothing in the code under test can swallow it."""


class CrashingStore:
    """The real FileStore, until the `crash_after`-th write: that write and everything after never happen."""

    def __init__(self, inner: Store, crash_after: int | None) -> None:
        self.inner = inner
        self.url = inner.url
        self.crash_after = crash_after
        self.writes = 0

    def _count(self) -> None:
        if self.crash_after is not None and self.writes >= self.crash_after:
            raise Crash
        self.writes += 1

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        return self.inner.get(key, if_version_not=if_version_not)

    def put(self, key: str, data: bytes) -> str:
        self._count()
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        self._count()
        return self.inner.put_if_absent(key, data)

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        self._count()
        return self.inner.put_if_version(key, data, version)

    def delete(self, key: str) -> None:
        self._count()
        self.inner.delete(key)

    def list(self, prefix: str) -> list[ObjectVersion]:
        return self.inner.list(prefix)


def runner_for(store: Store, holder: str = "reconciler") -> PassRunner:
    # A restarted reconciler with the same holder name takes its own lease back at once; a different name
    # would wait for the dead one's lease to expire (covered by the lease tests).
    lease = WriteLease(store, duration=SETTINGS.lease_duration, holder=holder)
    assert lease.try_acquire()
    return PassRunner(store, lease, SETTINGS)


def converge(runner: PassRunner, config: Config, agents: ScriptedAgents, limit: int = 40) -> PassOutcome:
    desired = config.desired()
    for _ in range(limit):
        outcome = runner.run_pass(desired)
        if outcome.settled:
            return outcome
        agents.answer()
    raise AssertionError("did not converge")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Store, Config, ScriptedAgents]:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)), message="v1")
    agents = ScriptedAgents(store, HOSTS)
    agents.register()
    setup = runner_for(store, holder="setup")
    converge(setup, config, agents)
    setup.lease.release()
    return store, config, agents


def group_state(store: Store) -> GroupState:
    stored = store.get(group_state_key("hello", "web"))
    assert stored is not None
    return GroupState.model_validate_json(stored.data)


def test_a_second_pass_after_applying_writes_nothing(world: tuple[Store, Config, ScriptedAgents]) -> None:
    store, config, _ = world
    config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    runner = runner_for(store)
    first = runner.run_pass(config.desired())
    assert first.wrote
    again = runner.run_pass(config.desired())
    assert not again.wrote, [a.describe() for a in again.actions]
    assert all(a.kind == "Blocked" for a in again.actions)


# Pass 0 of v2 records the desired revision, starts the deployment and dispatches the first host (5 writes);
# pass 1 records that host's result and dispatches the next (3 writes). Crashing at each write of both covers
# every ordering rule in the executor's docstring.
CRASH_POINTS = [(0, k) for k in range(5)] + [(1, k) for k in range(3)]


@pytest.mark.parametrize(("crash_pass", "crash_at"), CRASH_POINTS)
def test_a_crash_between_any_two_writes_neither_repeats_nor_loses_work(
    world: tuple[Store, Config, ScriptedAgents], crash_pass: int, crash_at: int
) -> None:
    store, config, agents = world
    config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    desired = config.desired()
    crashing = CrashingStore(store, crash_after=None)
    runner = runner_for(crashing)  # type: ignore[arg-type]
    for _ in range(crash_pass):
        runner.run_pass(desired)
        agents.answer()
    crashing.crash_after = crashing.writes + crash_at
    with pytest.raises(Crash):
        runner.run_pass(desired)
    in_flight_at_crash = group_state(store).deployment_in_flight

    restarted = runner_for(store)  # a new process: fresh cache, fresh lease object
    final = converge(restarted, config, agents)

    assert agents.dispatched_twice() == {}
    state = group_state(store)
    assert state.deployment_in_flight is None
    assert state.effective_revision is not None and state.effective_revision.short() == "bundles/v2.zip"
    if in_flight_at_crash is not None:
        # The group pointed at a deployment when the process died: that deployment is the one that finished.
        assert state.history[-1] == in_flight_at_crash
        finished = final.state_after.deployments[in_flight_at_crash]
        assert finished.status is DeploymentStatus.SUCCEEDED
    for host in HOSTS:
        ran_v2 = [run for run in agents.runs[host] if run[2].endswith("v2.zip#zip")]
        assert len(ran_v2) == 1, agents.runs[host]


def test_an_operator_write_between_read_and_write_is_never_overwritten(
    world: tuple[Store, Config, ScriptedAgents],
) -> None:
    store, config, agents = world
    config.set_group(group_manifest(revision=local_revision(2), config="CodeDeployDefault.AllAtOnce"), message="v2")
    runner = runner_for(store)
    runner.run_pass(config.desired())  # v2 in flight on every host
    agents.answer()  # ... and every host has finished

    reader = StoreReader(store)
    snapshot = reader.snapshot()
    actions = reconcile(config.desired(), snapshot.observed, snapshot.state, now=now())
    assert "FinishDeployment" in [a.kind for a in actions]  # this pass will rewrite the group document

    # `reconcile stop` lands after the pass read the group and before it writes.
    key = group_state_key("hello", "web")
    stored = store.get(key)
    assert stored is not None
    current = GroupState.model_validate_json(stored.data)
    request = StopRequest(rollback=False, requested_at=now(), deployment_id=current.deployment_in_flight)
    store.put_if_version(key, current.model_copy(update={"stop_request": request}).to_json(), stored.version)

    executor = Executor(store, runner.lease, reader)
    with pytest.raises(WriteConflict) as caught:
        executor.apply(actions, snapshot.versions)
    assert caught.value.key == key
    assert group_state(store).stop_request == request  # the request survived the stale write

    # The next passes decide again from fresh reads and settle; nothing ran twice.
    converge(runner, config, agents)
    final = group_state(store)
    assert final.deployment_in_flight is None
    assert final.stop_request is None  # dropped once there was nothing left to stop
    assert agents.dispatched_twice() == {}


def test_a_paused_reconciler_whose_lease_was_taken_cannot_write(
    world: tuple[Store, Config, ScriptedAgents],
) -> None:
    store, config, _ = world
    config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    paused_clock = [now()]
    lease = WriteLease(store, duration=timedelta(seconds=10), holder="old", clock=lambda: paused_clock[0])
    assert lease.try_acquire()
    old = PassRunner(store, lease, SETTINGS)
    snapshot = old.reader.snapshot()
    actions = reconcile(config.desired(), snapshot.observed, snapshot.state, now=now())

    # "old" pauses (a long GC, a suspended VM) past its lease; another reconciler takes the lease over.
    paused_clock[0] += timedelta(seconds=11)
    takeover = WriteLease(store, duration=timedelta(minutes=1), holder="new", clock=lambda: paused_clock[0])
    assert takeover.try_acquire()

    with pytest.raises(LeaseLost):
        old.executor.apply(actions, snapshot.versions)
    assert group_state(store).desired_revision.short() == "bundles/v1.zip"  # type: ignore[union-attr]


def test_history_beyond_the_limit_is_deleted_from_the_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    agents = ScriptedAgents(store, ["h1"])
    agents.register()
    settings = ReconcileSettings.model_validate({**settings_overrides(), "historyLimit": 2})
    lease = WriteLease(store, duration=settings.lease_duration)
    assert lease.try_acquire()
    runner = PassRunner(store, lease, settings)
    for version in range(1, 5):
        config.set_group(group_manifest(revision=local_revision(version)), message=f"v{version}")
        converge(runner, config, agents)
    state = group_state(store)
    assert len(state.history) == 2
    kept = sorted(item.key for item in store.list("deployments/"))
    assert kept == sorted(f"deployments/{d}.json" for d in state.history)
    for deployment_id in state.history:
        stored = store.get(f"deployments/{deployment_id}.json")
        assert stored is not None
        assert Deployment.model_validate_json(stored.data).status is DeploymentStatus.SUCCEEDED
