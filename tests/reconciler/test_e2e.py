"""End to end: `reconcile --once` against six real `deploy-agent run` processes, a real Git config repo and a
real Git app repo built from examples/apps/hello.

Each simulated host has its own host id, deployment root, host root, tags, port and folders. The app's
BeforeInstall hook appends the deployment id to a per-host file: that file, written by the hooks themselves,
is the proof that no host ran a deployment twice. The hosts' HTTP answers prove what each one really runs.

The story: v1 everywhere; v2 in batches (a canary of two hosts, then the rest keeping half the fleet
healthy); v3 whose ValidateService fails on one canary host -> failed, rolled back, quarantined, exit 3;
v4 with the reconciler killed by SIGKILL mid-rollout and restarted -> it finishes, exit 0, nothing ran twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.local_fleet import LocalAgent
from contract.keys import group_state_key
from contract.models import Deployment, GroupState, HostDeploymentStatus
from contract.store import Store, open_store
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import Reconciler, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOSTS = [f"host-{i}" for i in range(1, 7)]
BAD_HOST = "host-2"  # v3's ValidateService fails here (and only with v3)

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
    hosts: 2
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: hello-e2e
spec:
  application: hello
  revision:
    git:
      repository: {repository}
      commit: {commit}
  targets:
    tagSets:
      - - key: app
          value: hello
      - - key: env
          value: e2e
  deploymentConfig: canary-then-half
  autoRollback:
    enabled: true
    events: [DEPLOYMENT_FAILURE]
"""

RUNS_HOOK = '\necho "$DEPLOYMENT_ID" >> "${HELLO_RUNS:?}"\n'
BAD_VALIDATE = (
    'if [[ -n "${HELLO_BAD_HOST:-}" ]]; then log "v3 cannot run on this host"; exit 1; fi\n'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_app_repo(path: Path, before_install_extra: str = RUNS_HOOK) -> tuple[ConfigRepo, dict[str, str]]:
    """hello v1 to v4 (v3's ValidateService fails where HELLO_BAD_HOST is set); `before_install_extra` is appended
    to BeforeInstall (by default: each host counts the deployments it ran)."""
    repo = ConfigRepo(path)
    repo.copy_tree(ROOT / "examples" / "apps" / "hello")
    before_install = path / "scripts" / "before_install.sh"
    before_install.write_text(before_install.read_text() + before_install_extra)
    commits = {"v1": repo.commit("hello v1")}
    (path / "app" / "VERSION").write_text("2\n")
    commits["v2"] = repo.commit("hello v2")
    validate = path / "scripts" / "validate.sh"
    good_validate = validate.read_text()
    marker = 'source "$(dirname "$0")/common.sh"\n'
    validate.write_text(good_validate.replace(marker, marker + BAD_VALIDATE))
    (path / "app" / "VERSION").write_text("3\n")
    commits["v3"] = repo.commit("hello v3: broken on one host")
    validate.write_text(good_validate)
    (path / "app" / "VERSION").write_text("4\n")
    commits["v4"] = repo.commit("hello v4")
    return repo, commits


@dataclass
class Host(LocalAgent):
    port: int = 0

    @property
    def runs(self) -> list[str]:
        path = self.base / "runs.log"
        return path.read_text().split() if path.exists() else []

    def answer(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as response:
                return str(json.load(response)["version"])
        except OSError:
            return "down"


def start_agent(host: Host, store_url: str) -> None:
    env = {
        "HELLO_HOME": str(host.base / "root" / "srv" / "hello"),
        "HELLO_PORT": str(host.port),
        "HELLO_RUN": str(host.base / "run"),
        "HELLO_RUNS": str(host.base / "runs.log"),
        # While a command runs and for a minute after, agents poll at their busy interval (1s by default).
        "FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": "200ms",
    }
    if host.host_id == BAD_HOST:
        env["HELLO_BAD_HOST"] = "1"
    host.env = env
    host.start(store_url)


def stop_host(host: Host) -> None:
    host.stop()
    pidfile = host.base / "run" / "hello.pid"  # the service the hooks started
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


@dataclass
class Fleet:
    store_url: str
    store: Store
    config: ConfigRepo
    app: Path
    commits: dict[str, str]
    hosts: list[Host]
    workdir: Path

    def commit(self, version: str) -> str:
        self.config.write("manifests/hello.yaml",
                          MANIFESTS.format(repository=self.app, commit=self.commits[version]))
        return self.config.commit(f"deploy {version}")

    def reconcile(self, name: str, *args: str) -> Reconciler:
        return Reconciler(
            ["--repo", str(self.config.path), "--ref", "main", "--path", "manifests",
             "--store", self.store_url, *args],
            self.workdir / f"reconcile-{name}.log",
            {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "100ms", "FLEETSHIFT_RECONCILE_LEASE_DURATION": "2s",
             "FLEETSHIFT_RECONCILE_TIMEOUT": "90s", "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "30s"},
        )

    def once(self, name: str) -> tuple[int, str]:
        process = self.reconcile(name, "--once")
        try:
            code = process.wait(timeout=120)
            out = process.process.stdout.read().decode() if process.process.stdout else ""
            return code, out
        finally:
            process.stop()

    def group(self) -> GroupState:
        stored = self.store.get(group_state_key("hello", "hello-e2e"))
        assert stored is not None
        return GroupState.model_validate_json(stored.data)

    def deployment(self, deployment_id: str) -> Deployment:
        stored = self.store.get(f"deployments/{deployment_id}.json")
        assert stored is not None
        return Deployment.model_validate_json(stored.data)

    def answers(self) -> dict[str, str]:
        return {host.host_id: host.answer() for host in self.hosts}

    def assert_nothing_ran_twice(self) -> None:
        for host in self.hosts:
            runs = host.runs
            assert len(runs) == len(set(runs)), f"{host.host_id} ran a deployment twice: {runs}"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    app, commits = make_app_repo(tmp_path / "app-repo")
    config = ConfigRepo(tmp_path / "config-repo")
    store_url = f"file://{tmp_path / 'store'}"
    hosts = [Host(host_id, tmp_path / host_id, tags={"app": "hello", "env": "e2e"}, port=free_port())
             for host_id in HOSTS]
    fleet = Fleet(store_url, open_store(store_url), config, app.path, commits, hosts, tmp_path)
    try:
        for host in hosts:
            start_agent(host, store_url)
        wait_for(lambda: len([i for i in fleet.store.list("hosts/") if i.key.endswith("/status.json")]) == 6,
                 30, "six agents to report")
        yield fleet
    finally:
        for host in hosts:
            stop_host(host)


def events_json(fleet: Fleet, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [str(BIN / "reconcile"), "events", "--store", fleet.store_url, "--format", "json", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def by_type(events: list[dict[str, object]], deployment_id: str) -> dict[str, list[object]]:
    """Event type -> the hosts (or batches, or None) of a deployment's events, in order."""
    found: dict[str, list[object]] = {}
    for event in events:
        if event.get("deploymentId") == deployment_id:
            found.setdefault(str(event["type"]), []).append(event.get("host", event.get("batch")))
    return found


def test_rollout_failure_rollback_and_kill_9_with_real_agents(fleet: Fleet) -> None:
    fleet.commit("v1")
    code, out = fleet.once("v1")
    assert code == 0, out
    assert set(fleet.answers().values()) == {"1"}
    # Another terminal: `reconcile events --follow` shows everything from here on as it is recorded. From a time
    # taken now, not `--since 1s`: a command that starts in less than a second would also show v1's last events.
    since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    follow = subprocess.Popen(
        [str(BIN / "reconcile"), "events", "--follow", "--interval", "200ms", "--format", "json",
         "--store", fleet.store_url, "--since", since],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )

    fleet.commit("v2")
    code, out = fleet.once("v2")
    assert code == 0, out
    assert set(fleet.answers().values()) == {"2"}
    v2 = fleet.deployment(fleet.group().history[-1])
    assert v2.batches[0] == ["host-1", "host-2"]  # the canary went first and alone
    assert len(v2.batches) >= 3, v2.batches  # then the rest, in batches

    fleet.commit("v3")
    code, out = fleet.once("v3")
    assert code == 3, out
    assert "failed, rolled back" in out
    group = fleet.group()
    assert [q.revision.git.commit for q in group.quarantined if q.revision.git] == [fleet.commits["v3"]]
    assert group.effective_revision is not None and group.effective_revision.git is not None
    assert group.effective_revision.git.commit == fleet.commits["v2"]
    assert set(fleet.answers().values()) == {"2"}, fleet.answers()  # the touched hosts went back to v2
    failed = fleet.deployment(group.history[-2])
    assert failed.hosts[BAD_HOST].status is HostDeploymentStatus.FAILED
    fleet.assert_nothing_ran_twice()

    fleet.commit("v4")
    first = fleet.reconcile("v4-killed", "--once")
    try:
        def mid_rollout() -> bool:
            flight = fleet.group().deployment_in_flight
            if flight is None:
                return False
            hosts = fleet.deployment(flight).hosts.values()
            done = sum(1 for h in hosts if h.status is HostDeploymentStatus.SUCCEEDED)
            return 2 <= done < len(HOSTS)

        wait_for(mid_rollout, 60, "the v4 rollout to be half-way")
        in_flight = fleet.group().deployment_in_flight
        first.signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        first.stop()
    assert fleet.group().deployment_in_flight == in_flight  # the killed run left it mid-flight

    code, out = fleet.once("v4-restarted")
    assert code == 0, out
    group = fleet.group()
    assert group.history[-1] == in_flight  # the same deployment finished, none was lost or restarted
    assert set(fleet.answers().values()) == {"4"}, fleet.answers()
    fleet.assert_nothing_ran_twice()
    for host in fleet.hosts:
        assert host.runs.count(in_flight or "") == 1, (host.host_id, host.runs)
    assert in_flight is not None

    # The event stream: every change recorded exactly once, the kill -9 of v4's first run included.
    recorded = events_json(fleet)
    ids = [str(event["id"]) for event in recorded]
    assert len(ids) == len(set(ids))
    v4 = by_type(recorded, in_flight)
    assert v4["deployment.started"] == [None]
    assert sorted(map(str, v4["host.succeeded"])) == HOSTS  # one per host, although a run was killed half-way
    assert v4["batch.started"] == list(range(len(fleet.deployment(in_flight).batches)))
    assert v4["deployment.succeeded"] == [None]
    assert "host.failed" not in v4 and "deployment.failed" not in v4
    v3_id = fleet.group().history[-3]
    v3 = by_type(recorded, v3_id)
    assert v3["host.failed"] == [BAD_HOST]
    assert v3["deployment.failed"] == [None] and v3["revision.quarantined"] == [None]
    rollback = next(e for e in recorded if e["type"] == "rollback.started")
    assert rollback["rollbackOf"] == v3_id
    assert by_type(recorded, str(rollback["deploymentId"]))["rollback.succeeded"] == [None]

    # What --follow printed live is the same stream, each event once, in recording order.
    time.sleep(0.5)
    os.killpg(follow.pid, signal.SIGINT)
    streamed, errors = follow.communicate(timeout=10)
    assert follow.returncode == 0, errors
    live = [json.loads(line) for line in streamed.splitlines()]
    live_ids = [str(event["id"]) for event in live]
    assert len(live_ids) == len(set(live_ids))
    v2_and_later = [event_id for event_id in ids if not event_id.startswith(fleet.group().history[0] + ".")]
    assert live_ids and set(live_ids) == set(v2_and_later), (live_ids, v2_and_later)
