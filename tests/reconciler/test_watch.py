"""`reconcile watch` as a real process: a commit triggers a pass at once (not at the next resync), agent
reports drive the rollout, a second reconciler waits for the lease and never writes meanwhile, SIGTERM
releases the lease, and a `kill -9`-ed holder's lease expires so another reconciler takes over."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.keys import command_key, group_state_key
from contract.models import GroupState
from contract.store import Store, open_store
from reconciler.lease import read_lease
from tests.reconciler.fleet import APPLICATION, Config, ScriptedAgents, group_manifest, local_revision
from tests.reconciler.procs import Reconciler, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def env() -> dict[str, str]:
    return {
        "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "50ms",
        "FLEETSHIFT_RECONCILE_RESYNC_INTERVAL": "1h",  # a pass within seconds can only come from a trigger
        "FLEETSHIFT_RECONCILE_LEASE_DURATION": "3s",
        "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "1h",
    }


@pytest.fixture
def answering() -> Iterator[list[ScriptedAgents]]:
    """Agents added to the list answer their commands every 20 ms until the test ends."""
    agents: list[ScriptedAgents] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.02):
            for group in agents:
                group.answer()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield agents
    stop.set()
    thread.join()


def group_state(store: Store) -> GroupState | None:
    stored = store.get(group_state_key("hello", "web"))
    return GroupState.model_validate_json(stored.data) if stored else None


def test_commit_triggers_a_rollout_and_a_standby_takes_over_on_sigterm(
    tmp_path: Path, env: dict[str, str], answering: list[ScriptedAgents]
) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    config = Config(tmp_path / "config")
    config.repo.write("manifests/application.yaml", APPLICATION)
    config.repo.commit("application only")
    agents = ScriptedAgents(store, ["h1", "h2", "h3"])
    agents.register()
    args = [*config.args(), "--store", store_url, "watch"]
    leader = Reconciler(args, tmp_path / "leader.log", env)
    standby: Reconciler | None = None
    try:
        leader.wait_event("watch.started")
        leader.wait_event("lease.acquired")
        standby = Reconciler(args, tmp_path / "standby.log", env)
        standby.wait_event("lease.waiting")

        committed = time.monotonic()
        config.set_group(group_manifest(revision=local_revision(1)), message="deploy v1")
        wait_for(lambda: store.get(command_key("h1")), 5, "the first command")
        latency = time.monotonic() - committed
        assert latency < 3, f"commit to first command took {latency:.2f}s"

        answering.append(agents)  # agent reports now drive the rollout to its end
        wait_for(lambda: (state := group_state(store)) and state.effective_revision is not None, 10,
                 "the rollout to finish")
        assert group_state(store).effective_revision.short() == "bundles/v1.zip"  # type: ignore[union-attr]
        assert standby.events("action.applied") == []  # the standby never wrote

        leader.signal(signal.SIGTERM)
        assert leader.wait(timeout=10) == 0
        assert leader.events("lease.released")
        taken = standby.wait_event("lease.acquired", timeout=5)
        assert taken["holder"] != leader.events("lease.acquired")[0]["holder"]

        # The new leader reacts to commits too.
        config.set_group(group_manifest(revision=local_revision(2)), message="deploy v2")
        wait_for(lambda: (state := group_state(store)) and state.effective_revision is not None
                 and state.effective_revision.short() == "bundles/v2.zip", 10, "v2 through the standby")
        standby.signal(signal.SIGTERM)
        assert standby.wait(timeout=10) == 0
        lease = read_lease(store)
        assert lease is not None and not lease.active(datetime.now(UTC))
        assert agents.dispatched_twice() == {}
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()


def test_a_killed_holder_blocks_others_only_until_its_lease_expires(tmp_path: Path, env: dict[str, str]) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)))
    ScriptedAgents(store, ["h1"]).register()
    base = [*config.args(), "--store", store_url]
    holder = Reconciler([*base, "watch"], tmp_path / "holder.log", env)
    try:
        holder.wait_event("lease.acquired")

        # While it runs, `--once` waits a bounded time (the lease duration, here 1s) and exits 7.
        refused = Reconciler([*base, "--once", "--no-wait"], tmp_path / "refused.log",
                             {**env, "FLEETSHIFT_RECONCILE_LEASE_DURATION": "1s"})
        assert refused.wait(timeout=15) == 7
        assert refused.events("action.applied") == []
        refused.stop()

        holder.signal(signal.SIGKILL)  # no chance to release
        holder.wait(timeout=10)
        lease = read_lease(store)
        assert lease is not None and lease.active(datetime.now(UTC))

        started = time.monotonic()
        takeover = Reconciler([*base, "--once", "--no-wait"], tmp_path / "takeover.log",
                              {**env, "FLEETSHIFT_RECONCILE_LEASE_DURATION": "10s"})
        assert takeover.wait(timeout=20) == 0
        waited = time.monotonic() - started
        assert waited < 8, f"took over after {waited:.1f}s; the dead lease lasted 3s"
        assert takeover.events("lease.acquired")
        takeover.stop()
    finally:
        holder.stop()


def test_a_remote_repository_is_fetched_periodically(tmp_path: Path, env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL (here file://, which git treats like any remote) is mirrored and fetched every fetchInterval."""
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    config = Config(tmp_path / "config")
    config.repo.write("manifests/application.yaml", APPLICATION)
    config.repo.commit("application only")
    ScriptedAgents(store, ["h1"]).register()
    args = ["--repo", f"file://{config.path}", "--ref", "main", "--path", "manifests", "--store", store_url, "watch"]
    watcher = Reconciler(args, tmp_path / "watch.log",
                         {**env, "FLEETSHIFT_RECONCILE_FETCH_INTERVAL": "200ms",
                          "XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        assert watcher.wait_event("watch.started")["mode"] == "fetch"
        watcher.wait_event("lease.acquired")
        config.set_group(group_manifest(revision=local_revision(1)), message="deploy v1")
        wait_for(lambda: store.get(command_key("h1")), 10, "the first command after a fetch")
        assert watcher.events("watch.commit")[-1]["commit"] == config.repo.repo.head.commit.hexsha
        watcher.signal(signal.SIGTERM)
        assert watcher.wait(timeout=10) == 0
    finally:
        watcher.stop()
