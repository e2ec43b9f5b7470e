"""Chaos: one rollout story on six real agents (v1, v2, v3 broken by design, v4) while the reconciler and the
agents are killed with SIGKILL at seeded random points and restarted, and the store goes away for a few seconds.

On both stores. The end must be the same as without chaos, nothing lost and nothing run twice:

- no host ran any lifecycle event of any deployment twice (the hooks' own log, per host);
- every deployment the group knows is finished and its host states are final; a host counted Succeeded really
  ran the deployment to its last hook; a host counted Failed failed by design (v3) or was cut off by a kill
  (FailedAfterRestart); no host ran a deployment the group does not know;
- v3 failed on its canary and its rollback finished;
- at the end every host reports the desired revision installed and `reconcile --once` exits 0.

A kill mid-hook legitimately fails that host's command (at most once, never re-run), which may fail and
quarantine a good revision or leave one host behind; after the chaos the test then does what an operator
would (`reconcile retry`, or a new commit) and says so in its messages. Every assertion message carries the
seed and what really happened, so `CHAOS_SEEDS=<seed>` replays a failure.

The store outage: on S3 a TCP proxy in front of the server refuses connections; on file:// the store folder is
renamed away, but only when the file store treats a vanished store root as unavailable (a marker file); a file
store that would quietly create a new empty folder gets no outage (the test says so in its log). During a
file-store outage no process is started, and it begins only once every running process has opened the store:
a writer opening a missing folder creates a new, empty store there (by design of the file store), which
would be a second store, not an outage.

Agent kills aim at an agent running a hook when there is one (found from its child processes), so most of
them cut a command off; the drawn host otherwise. CI runs seed 1; `CHAOS_SEEDS=1,2,3` runs several.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from contract.keys import deployment_key, group_state_key, status_key
from contract.models import Deployment, DeploymentStatus, GroupState, HostDeploymentStatus, HostStatus
from contract.store import Store, StoreError, open_store
from tests.chaos.world import Host, OutageProxy, Schedule, make_bundle
from tests.conftest import S3Server
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import BIN, ROOT, Reconciler

pytestmark = pytest.mark.slow

HOSTS = [f"host-{i}" for i in range(1, 7)]
PHASES = ["v1", "v2", "v3", "v4"]
BROKEN = "v3"  # ValidateService fails on every host: the canary fails, the canary host is rolled back
FINISHED = {DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.STOPPED,
            DeploymentStatus.SUPERSEDED}
PHASE_DEADLINE = 60.0

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: hello
---
apiVersion: deploy/v1
kind: DeploymentConfig
metadata:
  name: canary-then-half
spec:
  minimumHealthyHosts:
    type: FLEET_PERCENT
    value: 50
  canary:
    hosts: 1
    bakeTime: 1s
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: web
spec:
  application: hello
  revision:
    local:
      path: {path}
      bundleType: directory
  targets:
    tagSets:
      - - key: app
          value: hello
  deploymentConfig: canary-then-half
  autoRollback:
    enabled: true
    events: [DEPLOYMENT_FAILURE]
"""


def seeds() -> list[int]:
    return [int(s) for s in os.environ.get("CHAOS_SEEDS", "1").split(",")]


@dataclass
class Outage:
    """Turns the store off and on again for the agents and the reconciler (not for the test's own reads)."""

    down: Callable[[], None]
    up: Callable[[], None]
    what: str
    #: False for the file store: a process started while the folder is away would create a new, empty store
    #: there (a writer creates a missing folder), so nothing is started during that outage.
    restart_ok: bool = True


@dataclass
class World:
    tmp: Path
    store_url: str  # what the agents and the reconciler use
    store: Store  # the test's own view, unaffected by the outage
    outage: Outage | None
    config: ConfigRepo = field(init=False)
    bundles: dict[str, Path] = field(init=False)
    hosts: list[Host] = field(init=False)
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    runs: int = 0

    def __post_init__(self) -> None:
        self.config = ConfigRepo(self.tmp / "config-repo")
        self.bundles = {
            version: make_bundle(self.tmp / "bundles" / version, version,
                                 failing="ValidateService" if version == BROKEN else None)
            for version in [*PHASES, "v5"]
        }
        self.hosts = [Host(host_id, self.tmp / host_id, self.store_url) for host_id in HOSTS]

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.2f}s {text}")

    def commit(self, version: str) -> None:
        self.config.write("manifests/hello.yaml", MANIFESTS.format(path=self.bundles[version]))
        self.config.commit(f"deploy {version}")
        self.note(f"commit {version}")

    def reconciler(self, *args: str) -> Reconciler:
        self.runs += 1
        return Reconciler(
            ["--repo", str(self.config.path), "--ref", "main", "--path", "manifests", "--store", self.store_url,
             *args],
            self.tmp / f"reconcile-{self.runs:02d}.log",
            {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "100ms", "FLEETSHIFT_RECONCILE_LEASE_DURATION": "2s",
             "FLEETSHIFT_RECONCILE_TIMEOUT": "60s", "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "30s"},
        )

    def once(self) -> tuple[int, str]:
        process = self.reconciler("--once")
        try:
            code = process.wait(timeout=PHASE_DEADLINE + 30)
            out = process.process.stdout.read().decode() if process.process.stdout else ""
        finally:
            process.stop()
        self.note(f"reconcile --once (no chaos) exited {code}: {out.strip()!r}")
        return code, out

    def operator(self, *args: str) -> None:
        result = subprocess.run(
            [str(BIN / "reconcile"), "--repo", str(self.config.path), "--ref", "main", "--path", "manifests",
             "--store", self.store_url, *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("FLEETSHIFT_")},
        )
        self.note(f"reconcile {' '.join(args)} exited {result.returncode}: {result.stdout.strip()!r}")
        assert result.returncode == 0, self.report(f"reconcile {' '.join(args)} failed: {result.stderr}")

    def group(self) -> GroupState:
        stored = self.store.get(group_state_key("hello", "web"))
        assert stored is not None, self.report("no group record")
        return GroupState.model_validate_json(stored.data)

    def deployment(self, deployment_id: str) -> Deployment | None:
        stored = self.store.get(deployment_key(deployment_id))
        return Deployment.model_validate_json(stored.data) if stored is not None else None

    def status(self, host_id: str) -> HostStatus | None:
        stored = self.store.get(status_key(host_id))
        return HostStatus.model_validate_json(stored.data) if stored is not None else None

    def report(self, what: str) -> str:
        return f"{what}\nchaos log:\n  " + "\n  ".join(self.log) + f"\nfiles kept in {self.tmp}"

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(self.report(f"timed out after {timeout}s waiting for {what}"))
            time.sleep(0.05)

    def registered(self) -> bool:
        try:
            return sum(1 for item in self.store.list("hosts/") if item.key.endswith("/status.json")) == len(HOSTS)
        except StoreError:
            return False


class Chaos:
    """Runs the schedule: kills and restarts agents, turns the store off and on, and says when to kill the
    reconciler. Everything it did goes to the world's log."""

    def __init__(self, world: World, schedule: Schedule) -> None:
        self.world = world
        self.schedule = schedule
        self.reconciler_kills = list(schedule.reconciler_kills)
        self.agent_kills = list(schedule.agent_kills)
        self.outage = schedule.outage
        self.restarts: list[tuple[float, Host]] = []
        self.outage_ends: float | None = None
        #: The reconciler running now, if any.
        self.current: Reconciler | None = None
        self.phase = 0
        self.phase_started = time.monotonic()
        self.done = {"reconciler kills": 0, "agent kills": 0, "outages": 0}

    def start_phase(self, phase: int) -> None:
        self.phase, self.phase_started = phase, time.monotonic()

    def next_reconciler_kill(self) -> float | None:
        due = [k for k in self.reconciler_kills if k[0] <= self.phase]
        return due[0][1] if due else None

    def reconciler_killed(self) -> None:
        due = [k for k in self.reconciler_kills if k[0] <= self.phase]
        self.reconciler_kills.remove(due[0])
        self.done["reconciler kills"] += 1

    def outage_may_begin(self) -> bool:
        """On the file store, only once every running process has opened the store: one opening it while the
        folder is away would create a new, empty store there."""
        assert self.world.outage is not None
        if self.world.outage.restart_ok:
            return True
        if self.current is not None and self.current.process.poll() is None and not any(
            str(event.get("event", "")).startswith("lease.") for event in self.current.events()
        ):
            return False
        return all(host.log_count("agent.started") >= host.starts for host in self.world.hosts if host.running)

    def may_start(self) -> bool:
        """Whether a process may be started now (see Outage.restart_ok)."""
        return self.outage_ends is None or self.world.outage is None or self.world.outage.restart_ok

    def wait_until_startable(self) -> None:
        while not self.may_start():
            self.tick()
            time.sleep(0.02)

    def end_outage(self) -> None:
        if self.outage_ends is not None and self.world.outage is not None:
            self.world.outage.up()
            self.outage_ends = None

    def tick(self) -> None:
        now = time.monotonic()
        for kill in [k for k in self.agent_kills if k[0] <= self.phase and now >= self.phase_started + k[1]]:
            # Aim at an agent running a hook (the interesting case); after 2s of nobody busy, at the drawn one.
            busy = [host for host in self.world.hosts if host.in_hook()]
            if not busy and now < self.phase_started + kill[1] + 2.0:
                continue
            self.agent_kills.remove(kill)
            host = busy[kill[2] % len(busy)] if busy else self.world.hosts[kill[2]]
            if host.running:
                host.kill9()
                self.done["agent kills"] += 1
                where = "mid-hook" if busy else "idle"
                self.world.note(f"kill -9 agent {host.host_id} ({where}); restart in {kill[3]}s")
                self.restarts.append((now + kill[3], host))
        for due, host in [r for r in self.restarts if now >= r[0] and self.may_start()]:
            self.restarts.remove((due, host))
            host.start()
            self.world.note(f"restarted agent {host.host_id}")
        if (self.outage is not None and self.outage[0] <= self.phase and now >= self.phase_started + self.outage[1]
                and self.outage_may_begin()):
            assert self.world.outage is not None
            self.world.outage.down()
            self.outage_ends = now + self.outage[2]
            self.world.note(f"store outage starts ({self.world.outage.what}) for {self.outage[2]}s")
            self.outage = None
            self.done["outages"] += 1
        if self.outage_ends is not None and now >= self.outage_ends:
            assert self.world.outage is not None
            self.world.outage.up()
            self.outage_ends = None
            self.world.note("store outage ends")

    def settle(self) -> None:
        """End the chaos: the store back, every agent running."""
        deadline = time.monotonic() + 10
        while self.restarts or self.outage_ends is not None:
            assert time.monotonic() < deadline
            self.tick()
            time.sleep(0.02)
        for host in self.world.hosts:
            if not host.running:
                host.start()
                self.world.note(f"restarted agent {host.host_id} (it had exited)")


def run_phase(world: World, chaos: Chaos, phase: int) -> int:
    """Commit the phase's revision and run `reconcile --once` until it ends by itself (not killed), killing and
    restarting it as the schedule says. Returns its exit code."""
    version = PHASES[phase]
    world.commit(version)
    chaos.start_phase(phase)
    deadline = time.monotonic() + PHASE_DEADLINE
    while True:
        chaos.wait_until_startable()
        process = world.reconciler("--once")
        chaos.current = process
        started = time.monotonic()
        kill_after = chaos.next_reconciler_kill()
        killed = False
        try:
            while process.process.poll() is None:
                chaos.tick()
                if kill_after is not None and time.monotonic() >= started + kill_after:
                    process.signal(signal.SIGKILL)
                    process.wait(timeout=10)
                    chaos.reconciler_killed()
                    killed = True
                    world.note(f"kill -9 reconciler (run {world.runs}, {kill_after}s after it started)")
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(world.report(f"phase {version}: no end within {PHASE_DEADLINE}s"))
                time.sleep(0.02)
            code = process.wait(timeout=10)
            out = process.process.stdout.read().decode() if process.process.stdout and not killed else ""
        finally:
            process.stop()
        if killed:
            continue
        world.note(f"reconcile --once (run {world.runs}) exited {code}: {out.strip()!r}")
        if code in (0, 3, 4):
            return code
        # 8: the store was unreachable for longer than --once waits; 7: a killed reconciler's lease had not
        # expired yet. Both only around the chaos; anything else is a defect.
        assert code in (7, 8), world.report(f"phase {version}: unexpected exit code {code}")
        if time.monotonic() > deadline:
            raise AssertionError(world.report(f"phase {version}: no end within {PHASE_DEADLINE}s"))


def heal(world: World) -> int:
    """After the chaos: what an operator would do until the fleet is on the desired revision. A kill mid-hook
    fails that host's command (by design: never re-run), which may have quarantined a good revision (retry) or
    left a host on an older one that is not retried automatically (a new commit)."""
    code, _ = world.once()
    for _ in range(3):
        group = world.group()
        behind = [h.host_id for h in world.hosts if not on_revision(world, h.host_id, group)]
        if code == 0 and not behind and not group.quarantined:
            return code
        if group.quarantined:
            world.note("healing: the desired revision is quarantined after a chaos casualty; reconcile retry")
            world.operator("retry", "hello/web")
        else:
            world.note(f"healing: {behind} not on the desired revision after a chaos casualty; commit v5")
            world.commit("v5")
        code, _ = world.once()
    return code


def on_revision(world: World, host_id: str, group: GroupState) -> bool:
    status = world.status(host_id)
    installed = status.installed.get("hello/web") if status else None
    return (installed is not None and group.desired_revision is not None
            and installed.revision.identity() == group.desired_revision.identity())


def check_invariants(world: World) -> None:
    group = world.group()
    known = set(group.history)
    broken_path = str(world.bundles[BROKEN])
    deployments = {}
    for deployment_id in group.history:
        deployment = world.deployment(deployment_id)
        assert deployment is not None, world.report(f"{deployment_id} is in the history but not in the store")
        deployments[deployment_id] = deployment

    for host in world.hosts:
        runs = host.hook_runs()
        twice = sorted({run for run in runs if runs.count(run) > 1})
        assert not twice, world.report(f"{host.host_id} ran a lifecycle event twice: {twice}")
        unknown = sorted({d for _, d in runs} - known)
        assert not unknown, world.report(f"{host.host_id} ran deployments the group does not know: {unknown}")

    for deployment_id, deployment in deployments.items():
        assert deployment.status in FINISHED, world.report(f"{deployment_id} is {deployment.status}")
        for host_id, state in deployment.hosts.items():
            assert state.status is not HostDeploymentStatus.IN_PROGRESS, world.report(
                f"{deployment_id}: {host_id} still InProgress")
            if state.status is HostDeploymentStatus.PENDING:
                assert deployment.status is not DeploymentStatus.SUCCEEDED, world.report(
                    f"{deployment_id} succeeded with {host_id} pending")
            host = world.hosts[HOSTS.index(host_id)]
            if state.status is HostDeploymentStatus.SUCCEEDED:
                assert ("ValidateService", deployment_id) in host.hook_runs(), world.report(
                    f"{deployment_id}: {host_id} counted Succeeded but its ValidateService never ran")
            if state.status is HostDeploymentStatus.FAILED:
                by_design = broken_path in deployment.revision.identity()
                casualty = "after restart" in (state.message or "").lower()
                assert by_design or casualty, world.report(
                    f"{deployment_id}: {host_id} failed for no reason the chaos explains: {state.message}")

    broken = [d for d in deployments.values()
              if d.creator == "user" and broken_path in d.revision.identity()]
    found = [d.deployment_id for d in broken]
    assert len(broken) == 1, world.report(f"expected one {BROKEN} deployment, found {found}")
    assert broken[0].status is DeploymentStatus.FAILED, world.report(f"{BROKEN}: {broken[0].status}")
    rollbacks = [d for d in deployments.values() if d.rollback_of == broken[0].deployment_id]
    assert len(rollbacks) == 1 and rollbacks[0].status in FINISHED, world.report(
        f"{BROKEN}'s rollback: {[(d.deployment_id, d.status) for d in rollbacks]}")

    assert group.deployment_in_flight is None and not group.quarantined, world.report(f"group: {group}")
    assert group.effective_revision == group.desired_revision, world.report(f"group: {group}")
    behind = [h.host_id for h in world.hosts if not on_revision(world, h.host_id, group)]
    assert not behind, world.report(f"not on the desired revision at the end: {behind}")


def run_story(world: World, seed: int) -> None:
    schedule = Schedule.draw(seed, phases=len(PHASES), hosts=len(HOSTS), outage=world.outage is not None)
    world.note(schedule.describe())
    if world.outage is None:
        world.note("no store outage: this file store would not treat a vanished folder as an outage")
    chaos = Chaos(world, schedule)
    try:
        for host in world.hosts:
            host.start()
        world.wait(world.registered, 30, "six agents to register")
        for phase, version in enumerate(PHASES):
            code = run_phase(world, chaos, phase)
            if version == BROKEN:
                assert code in (3, 4), world.report(f"{BROKEN} is broken by design but --once exited {code}")
        chaos.settle()
        world.note(f"chaos done: {chaos.done}; not reached: reconciler kills {chaos.reconciler_kills}, "
                   f"agent kills {chaos.agent_kills}")
        code = heal(world)
        assert code == 0, world.report(f"the last reconcile --once exited {code}")
        check_invariants(world)
        code, _ = world.once()
        assert code == 0, world.report(f"a quiet reconcile --once after convergence exited {code}")
        world.note(f"converged in {time.monotonic() - world.started:.1f}s")
        print("\n".join(world.log))
    finally:
        chaos.end_outage()
        for host in world.hosts:
            host.stop()


# ---------------------------------------------------------------------------------------------------- the stores


def file_store_outage(root: Path) -> Outage | None:
    """Renaming the store folder away is an outage only if the file store refuses a vanished (unmarked) root;
    otherwise a writer would quietly create a new empty store, which is not what this test is about."""
    probe = root.parent / "outage-probe"
    store = open_store(f"file://{probe}")
    store.put("probe.json", b"{}")
    probe.rename(root.parent / "outage-probe-away")
    try:
        store.put("probe.json", b"{}")
        refused = False
    except StoreError:
        refused = True
    finally:
        shutil.rmtree(probe, ignore_errors=True)
        shutil.rmtree(root.parent / "outage-probe-away", ignore_errors=True)
    if not refused:
        return None
    away = root.parent / "store-away"

    def down() -> None:
        root.rename(away)

    def up() -> None:
        away.rename(root)

    return Outage(down=down, up=up, what="the file store folder renamed away", restart_ok=False)


@pytest.fixture
def s3_world(s3_server: S3Server, tmp_path: Path) -> Iterator[World]:
    bucket = f"chaos-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)  # type: ignore[no-untyped-call]
    upstream = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    proxy = OutageProxy(upstream)
    proxy.up()
    outage = Outage(down=proxy.down, up=proxy.up, what="the S3 proxy refuses connections")
    yield World(tmp_path, f"s3://{bucket}/prod?endpoint={proxy.endpoint_url}",
                open_store(f"s3://{bucket}/prod?endpoint={s3_server.endpoint_url}"), outage)
    proxy.down()


@pytest.fixture
def file_world(tmp_path: Path) -> World:
    root = tmp_path / "store"
    url = f"file://{root}"
    outage = file_store_outage(root)
    root.mkdir()
    return World(tmp_path, url, open_store(url), outage)


@pytest.mark.parametrize("seed", seeds())
def test_chaos_on_the_s3_store(s3_world: World, seed: int) -> None:
    run_story(s3_world, seed)


@pytest.mark.parametrize("seed", seeds())
def test_chaos_on_the_file_store(file_world: World, seed: int) -> None:
    run_story(file_world, seed)
