"""End to end: notifications through the real CLI, with three real `deploy-agent run` processes, a real Git config
repo and app repo, `reconcile --once` as a process, and one in-test HTTP server standing in for both a webhook
receiver and GitHub's commit status API (it checks the auth and signature headers of every request).

The story:
1. v1: the first run with the two notifications sends every event of the rollout, and the commit goes
   pending -> success;
2. v2 with the reconciler killed by SIGKILL mid-rollout, while a host runs its hooks, and started again: the
   server receives every event exactly once (by id), in stream order, and the commit goes pending -> success;
3. v3 fails on one host: failure status on its commit, deployment.failed, rollback and quarantine events on the
   webhook; the rollback posts no status (it is not the commit's rollout);
4. v4 while both services answer 503 for the whole rollout: the rollout's exit code is unchanged and it is not
   held up past `--notify-timeout`; the logs and the cursors (what `reconcile status` shows) report the failures;
   once the services are back, the next run sends what was left.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.events import Event, from_deployment, in_order
from contract.keys import group_state_key
from contract.models import Deployment, GroupState, HostDeploymentStatus
from contract.store import Store, open_store
from fleetlab.receiver import Receiver, Reply, receiver
from reconciler.notify.health import read_health
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import Reconciler, wait_for
from tests.reconciler.test_e2e import Host, free_port, stop_host
from tests.reconciler.test_e2e import make_app_repo as make_hello_repo

pytestmark = pytest.mark.slow

HOSTS = ["host-1", "host-2", "host-3"]
BAD_HOST = "host-2"
TOKEN = "ghp_e2eTokenForTheStatusApi"
HOOK_SECRET = "e2e-hmac-signing-secret"
#: Each BeforeInstall takes this long, so a rollout has hosts running hooks long enough to be killed in.
HOOK_SECONDS = "0.6"

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: hello
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: web
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
  autoRollback:
    enabled: true
    events: [DEPLOYMENT_FAILURE]
---
apiVersion: deploy/v1
kind: Notification
metadata:
  name: audit-hook
spec:
  webhook:
    url: {server}/hook
    secretFrom: {{env: HOOK_SECRET}}
  retry: {{attempts: 50, backoff: 200ms, maxBackoff: 2s}}
  timeout: 3s
---
apiVersion: deploy/v1
kind: Notification
metadata:
  name: commit-status
spec:
  githubStatus:
    repository: acme/config
    tokenFrom: {{env: GITHUB_TOKEN}}
    apiUrl: {server}
  retry: {{attempts: 50, backoff: 200ms, maxBackoff: 2s}}
  timeout: 3s
"""

SLOW_AND_COUNTED = '\necho "$DEPLOYMENT_ID" >> "${HELLO_RUNS:?}"\nsleep "${HELLO_HOOK_SECONDS:-0}"\n'


def make_app_repo(path: Path) -> dict[str, str]:
    """hello v1 to v4 as the reconciler's end-to-end test builds it, with hooks that can be slowed down."""
    return make_hello_repo(path, SLOW_AND_COUNTED)[1]


@dataclass
class World:
    store_url: str
    store: Store
    config: ConfigRepo
    app: Path
    apps: dict[str, str]
    hosts: list[Host]
    server: Receiver
    workdir: Path

    def commit(self, version: str) -> str:
        self.config.write("manifests/all.yaml", MANIFESTS.format(repository=self.app, commit=self.apps[version],
                                                                 server=self.server.url))
        return self.config.commit(f"deploy {version}")

    def reconcile(self, name: str, *args: str) -> Reconciler:
        return Reconciler(
            ["--repo", str(self.config.path), "--ref", "main", "--path", "manifests", "--store", self.store_url,
             *args],
            self.workdir / f"reconcile-{name}.log",
            {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "100ms", "FLEETSHIFT_RECONCILE_LEASE_DURATION": "2s",
             "FLEETSHIFT_RECONCILE_TIMEOUT": "90s", "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "30s",
             "GITHUB_TOKEN": TOKEN, "HOOK_SECRET": HOOK_SECRET},
        )

    def once(self, name: str, *args: str) -> tuple[int, str, float, Reconciler]:
        process = self.reconcile(name, "--once", *args)
        started = time.monotonic()
        try:
            code = process.wait(timeout=150)
            out = process.process.stdout.read().decode() if process.process.stdout else ""
            return code, out, time.monotonic() - started, process
        finally:
            process.stop()

    def status(self, *args: str) -> str:
        """`reconcile status` as an operator runs it (what it says about the notifications)."""
        process = self.reconcile(f"status{len(args)}", "status", *args)
        try:
            assert process.wait(timeout=60) == 0
            return process.process.stdout.read().decode() if process.process.stdout else ""
        finally:
            process.stop()

    def group(self) -> GroupState:
        stored = self.store.get(group_state_key("hello", "web"))
        assert stored is not None
        return GroupState.model_validate_json(stored.data)

    def deployment(self, deployment_id: str) -> Deployment:
        stored = self.store.get(f"deployments/{deployment_id}.json")
        assert stored is not None
        return Deployment.model_validate_json(stored.data)

    def recorded(self) -> list[Event]:
        """Every event of the group's deployments, in stream order: what the webhook must have received."""
        group = self.group()
        ids = [*group.history, *([group.deployment_in_flight] if group.deployment_in_flight else [])]
        return in_order(event for deployment_id in dict.fromkeys(ids)
                        for event in from_deployment(self.deployment(deployment_id)))

    def accepted_hook_ids(self) -> list[str]:
        """Webhook deliveries the server accepted (2xx), in the order they arrived."""
        return [request.json()["id"] for request in self.server.received("/hook") if request.status < 300]

    def statuses(self, commit: str) -> list[str]:
        return [request.json()["state"] for request in self.server.received(f"/repos/acme/config/statuses/{commit}")
                if request.status < 300]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    apps = make_app_repo(tmp_path / "app-repo")
    config = ConfigRepo(tmp_path / "config-repo")
    store_url = f"file://{tmp_path / 'store'}"
    hosts = [Host(host_id, tmp_path / host_id, tags={"app": "hello"}, port=free_port()) for host_id in HOSTS]
    with receiver() as server:
        world = World(store_url, open_store(store_url), config, tmp_path / "app-repo", apps, hosts, server, tmp_path)
        try:
            for host in hosts:
                host.env = {
                    "HELLO_HOME": str(host.base / "root" / "srv" / "hello"),
                    "HELLO_PORT": str(host.port),
                    "HELLO_RUN": str(host.base / "run"),
                    "HELLO_RUNS": str(host.base / "runs.log"),
                    "HELLO_HOOK_SECONDS": HOOK_SECONDS,
                    "FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": "200ms",
                    **({"HELLO_BAD_HOST": "1"} if host.host_id == BAD_HOST else {}),
                }
                host.start(store_url)
            wait_for(lambda: len([i for i in world.store.list("hosts/") if i.key.endswith("/status.json")]) == 3,
                     30, "three agents to report")
            yield world
        finally:
            for host in hosts:
                stop_host(host)


def check_auth(server: Receiver) -> None:
    """Every request carried the right credentials: the HMAC of its exact body, or GitHub's Bearer token."""
    for request in server.received():
        if request.path == "/hook":
            digest = hmac.new(HOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
            assert request.header("X-Fleetshift-Signature-256") == f"sha256={digest}"
            assert request.header("X-Fleetshift-Delivery") == request.json()["id"]
        else:
            assert request.path.startswith("/repos/acme/config/statuses/"), request.path
            assert request.header("Authorization") == f"Bearer {TOKEN}"
            assert request.header("Accept") == "application/vnd.github+json"


def test_notifications_exactly_once_across_kill_9_failure_and_outage(world: World) -> None:
    # 1. v1: everything the first run records is sent.
    v1 = world.commit("v1")
    code, out, _, _ = world.once("v1")
    assert code == 0, out
    assert world.accepted_hook_ids() == [event.id for event in world.recorded()]
    assert world.statuses(v1)[0] == "pending" and world.statuses(v1)[-1] == "success"
    assert set(world.statuses(v1)[:-1]) == {"pending"}

    # 2. v2, killed mid-rollout while a host runs its hooks, once the notifier has sent what was recorded.
    v2 = world.commit("v2")
    first = world.reconcile("v2-killed", "--once")
    try:
        def mid_rollout_and_caught_up() -> bool:
            flight = world.group().deployment_in_flight
            if flight is None:
                return False
            hosts = world.deployment(flight).hosts.values()
            done = sum(1 for h in hosts if h.status is HostDeploymentStatus.SUCCEEDED)
            running = any(h.status is HostDeploymentStatus.IN_PROGRESS for h in hosts)
            if not (1 <= done < len(HOSTS) and running):
                return False
            requests = world.server.received()
            quiet = not requests or time.monotonic() - requests[-1].at > 0.2
            return quiet and world.accepted_hook_ids() == [event.id for event in world.recorded()]

        wait_for(mid_rollout_and_caught_up, 60, "the v2 rollout half-way with its events sent")
        in_flight = world.group().deployment_in_flight
        first.signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        first.stop()
    assert world.group().deployment_in_flight == in_flight
    code, out, _, _ = world.once("v2-restarted")
    assert code == 0, out
    ids = world.accepted_hook_ids()
    assert len(ids) == len(set(ids)), f"an event was delivered twice: {ids}"
    assert ids == [event.id for event in world.recorded()], "every event, exactly once, in stream order"
    assert world.statuses(v2)[0] == "pending" and world.statuses(v2)[-1] == "success"
    assert set(world.statuses(v2)[:-1]) == {"pending"}

    # 3. v3 fails on one host: failure on its commit, rollback and quarantine on the webhook.
    v3 = world.commit("v3")
    code, out, _, _ = world.once("v3")
    assert code == 3, out
    events = world.recorded()
    assert world.accepted_hook_ids() == [event.id for event in events]
    types = [event.type.value for event in events if event.commit == v3 or event.creator == "rollback"]
    for expected in ("deployment.failed", "rollback.started", "rollback.succeeded", "revision.quarantined"):
        assert expected in types, types
    assert world.statuses(v3)[-1] == "failure" and "success" not in world.statuses(v3)
    assert world.statuses(v2)[-1] == "success", "the rollback posted nothing on the commit it went back to"
    check_auth(world.server)

    # 4. v4 with both services answering 503 throughout: the rollout is neither failed nor held up.
    world.server.default = Reply(503, b"service unavailable")
    before = len(world.server.received())
    v4 = world.commit("v4")
    code, out, seconds, run = world.once("v4-outage", "--notify-timeout", "2s")
    assert code == 0, out
    deployment = world.deployment(world.group().history[-1])
    assert deployment.ended_at is not None
    rollout_seconds = (deployment.ended_at - deployment.created_at).total_seconds()
    assert seconds < rollout_seconds + 2 + 8, (seconds, rollout_seconds)
    assert "notifications:" in out and "not sent within --notify-timeout" in out, out
    assert len(world.server.received()) > before, "it kept trying meanwhile"
    retrying = run.events("notify.retrying")
    assert retrying and all("HTTP 503" in event["error"] for event in retrying)
    health = {item.name: item for item in read_health(world.store)}
    for name in ("audit-hook", "commit-status"):
        assert health[name].retrying and not health[name].healthy
        assert (health[name].last_error or "").startswith("HTTP 503")
    assert world.statuses(v4) == []
    # What `reconcile status` tells the operator meanwhile, in text and JSON.
    shown = {item["name"]: item for item in json.loads(world.status("--format", "json"))["notifications"]}
    assert shown["audit-hook"]["provider"] == "webhook" and shown["audit-hook"]["retrying"] is True
    assert shown["audit-hook"]["healthy"] is False and shown["audit-hook"]["lastError"].startswith("HTTP 503")
    assert shown["audit-hook"]["pending"] > 0 and shown["commit-status"]["healthy"] is False
    text = world.status()
    assert re.search(r"^  audit-hook +webhook +FAILING: \d+ delivered.*retrying; last error .* ago: HTTP 503", text,
                     re.M), text

    # The services are back: the next run (nothing to deploy) sends what was left, once.
    world.server.default = Reply(200)
    code, out, _, _ = world.once("after-outage")
    assert code == 0, out
    ids = world.accepted_hook_ids()
    assert ids == [event.id for event in world.recorded()] and len(ids) == len(set(ids))
    assert world.statuses(v4)[0] == "pending" and world.statuses(v4)[-1] == "success"
    health = {item.name: item for item in read_health(world.store)}
    assert all(item.healthy for item in health.values())
    assert re.search(r"^  commit-status +githubStatus +ok: \d+ delivered, last .* ago$", world.status(), re.M)
    check_auth(world.server)
