"""`reconcile watch` as a real process: a commit triggers a pass at once (not at the next resync), agent
reports drive the rollout, a second reconciler waits for the lease and never writes meanwhile, SIGTERM
releases the lease, and a `kill -9`-ed holder's lease expires so another reconciler takes over. SIGTERM stops
the watcher promptly even while a fetch hangs or a log line is being written; a pass being written stops
after its current action.

Timing: these tests run next to others on a loaded machine. They wait for conditions with generous
deadlines (`wait_for`) and never sleep a fixed time; the only tight bounds asserted are the ones the design
promises (the stop bound of `reconciler.shell.watch`, a dead lease lasting no longer than its expiry), measured
from the events themselves where possible.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from contract.keys import command_key, group_state_key
from contract.models import GroupState
from contract.signals import relay_stop_signals
from contract.store import Store, open_store
from reconciler.desired.gitmirror import GIT_TERM_GRACE_SECONDS, Interrupted, run_git
from reconciler.errors import SourceError
from reconciler.settings import ReconcileSettings
from reconciler.shell.lease import StopWriting, WriteLease, read_lease
from reconciler.shell.passes import PassRunner
from tests.reconciler.fleet import (
    APPLICATION,
    Config,
    ScriptedAgents,
    group_manifest,
    local_revision,
    settings_overrides,
)
from tests.reconciler.procs import Reconciler, wait_for

pytestmark = pytest.mark.slow

#: What the watcher promises between SIGTERM and exit (see `reconciler.shell.watch`): killing git (its grace period)
#: plus one action's writes and the lease release, on a local store well under a second. Asserted with room
#: for a loaded machine, far below the 10 s the first tests allow a plain stop.
STOP_BOUND_SECONDS = GIT_TERM_GRACE_SECONDS + 4.0


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

        # The resync is an hour away: a command within the deadline can only come from the commit trigger.
        config.set_group(group_manifest(revision=local_revision(1)), message="deploy v1")
        wait_for(lambda: store.get(command_key("h1")), 30, "the first command")

        answering.append(agents)  # agent reports now drive the rollout to its end
        wait_for(lambda: (state := group_state(store)) and state.effective_revision is not None, 30,
                 "the rollout to finish")
        assert group_state(store).effective_revision.short() == "bundles/v1.zip"  # type: ignore[union-attr]
        assert standby.events("action.applied") == []  # the standby never wrote

        leader.signal(signal.SIGTERM)
        assert leader.wait(timeout=10) == 0
        assert leader.events("lease.released")
        taken = standby.wait_event("lease.acquired", timeout=15)
        assert taken["holder"] != leader.events("lease.acquired")[0]["holder"]

        # The new leader reacts to commits too.
        config.set_group(group_manifest(revision=local_revision(2)), message="deploy v2")
        wait_for(lambda: (state := group_state(store)) and state.effective_revision is not None
                 and state.effective_revision.short() == "bundles/v2.zip", 30, "v2 through the standby")
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
    # 5s, renewed every 2.5s: still held when it is killed even if a loaded machine delays a renewal.
    holder = Reconciler([*base, "watch"], tmp_path / "holder.log", {**env, "FLEETSHIFT_RECONCILE_LEASE_DURATION": "5s"})
    try:
        holder.wait_event("lease.acquired")

        # While it runs, `--once` waits a bounded time (the lease duration, here 1s) and exits 7.
        refused = Reconciler([*base, "--once", "--no-wait"], tmp_path / "refused.log",
                             {**env, "FLEETSHIFT_RECONCILE_LEASE_DURATION": "1s"})
        assert refused.wait(timeout=30) == 7
        assert refused.events("action.applied") == []
        refused.stop()

        holder.signal(signal.SIGKILL)  # no chance to release
        holder.wait(timeout=10)
        dead = read_lease(store)
        assert dead is not None and dead.active(datetime.now(UTC))

        takeover = Reconciler([*base, "--once", "--no-wait"], tmp_path / "takeover.log",
                              {**env, "FLEETSHIFT_RECONCILE_LEASE_DURATION": "10s"})
        assert takeover.wait(timeout=30) == 0
        # Judged by the store's clock marks, not by how long the process took to start: the takeover happens
        # no earlier than the dead lease's expiry, and soon after it (the waiter wakes up at the expiry).
        acquired = datetime.fromisoformat(takeover.events("lease.acquired")[0]["timestamp"])
        assert acquired >= dead.expires_at
        late = acquired - dead.expires_at
        assert late < timedelta(seconds=4), f"took over {late.total_seconds():.1f}s after the dead lease expired"
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
        wait_for(lambda: store.get(command_key("h1")), 30, "the first command after a fetch")
        assert watcher.events("watch.commit")[-1]["commit"] == config.repo.repo.head.commit.hexsha
        # Fetches run every 200 ms, so SIGTERM often lands during one: it must not wait for it.
        code, took = watcher.stop_time(signal.SIGTERM, timeout=10)
        assert code == 0
        assert took < STOP_BOUND_SECONDS, f"stopped {took:.1f}s after SIGTERM"
    finally:
        watcher.stop()


# --------------------------------------------------------------------------------------------------
# Stopping whatever the watcher is doing


class SilentGitServer:
    """A git:// server that accepts connections and never answers: a fetch from it hangs until killed."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.url = f"git://127.0.0.1:{self._socket.getsockname()[1]}/config"
        self.connections: queue.Queue[socket.socket] = queue.Queue()
        self._held: list[socket.socket] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)
            self.connections.put(connection)

    def next_connection(self, timeout: float) -> socket.socket:
        try:
            return self.connections.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no git connection within {timeout}s") from None

    @staticmethod
    def closed_by_peer(connection: socket.socket, timeout: float) -> bool:
        """True when the client closes the connection within `timeout` (its request is read and dropped)."""
        connection.settimeout(timeout)
        try:
            while connection.recv(4096):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._socket.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentGitServer]:
    server = SilentGitServer()
    yield server
    server.close()


def test_sigterm_during_a_hung_fetch_kills_git_and_stops_at_once(
    tmp_path: Path, env: dict[str, str], silent_server: SilentGitServer
) -> None:
    """The fetch hangs (a server that never answers); SIGTERM goes to the watcher alone, as `kill PID` or
    systemd's KillMode=mixed sends it: the watcher kills git itself, releases the lease and exits 0."""
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    config = Config(tmp_path / "config")
    config.repo.commit("application only")
    ScriptedAgents(store, ["h1"]).register()
    cache = tmp_path / "cache"
    args = ["--repo", f"file://{config.path}", "--ref", "main", "--path", "manifests", "--store", store_url, "watch"]
    watcher = Reconciler(args, tmp_path / "watch.log",
                         {**env, "FLEETSHIFT_RECONCILE_FETCH_INTERVAL": "200ms", "XDG_CACHE_HOME": str(cache)})
    try:
        watcher.wait_event("lease.acquired")
        [mirror] = [p for p in (cache / "fleetshift" / "repos").iterdir() if not p.name.endswith(".partial")]
        # From now on the mirror's remote is the silent server: the next fetch hangs.
        subprocess.run(["git", "-C", str(mirror), "config", "remote.origin.url", silent_server.url], check=True)
        connection = silent_server.next_connection(timeout=30)

        code, took = watcher.stop_time(signal.SIGTERM, timeout=10)
        assert code == 0
        assert took < STOP_BOUND_SECONDS, f"stopped {took:.1f}s after SIGTERM"
        assert watcher.events("lease.released")
        assert silent_server.closed_by_peer(connection, timeout=5), "git was left running"
    finally:
        watcher.stop()


def test_a_fetch_is_bounded_by_a_timeout_and_killed_on_stop(silent_server: SilentGitServer) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError, match="did not finish within"):
        run_git(["ls-remote", silent_server.url], cwd=None, stop=threading.Event(), timeout=0.5, what="config")
    assert time.monotonic() - started < 0.5 + GIT_TERM_GRACE_SECONDS + 3
    assert silent_server.closed_by_peer(silent_server.next_connection(timeout=5), timeout=5)

    stop = threading.Event()

    def stop_once_connected() -> None:
        silent_server.next_connection(timeout=30)
        stop.set()

    threading.Thread(target=stop_once_connected, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        run_git(["ls-remote", silent_server.url], cwd=None, stop=stop, timeout=600, what="config")
    assert time.monotonic() - started < 30 + GIT_TERM_GRACE_SECONDS


class GatedLogger:
    """A structlog logger whose every write waits for `gate`, like a write lock held by the main thread."""

    def __init__(self, gate: threading.Lock) -> None:
        self.gate = gate
        self.lines: list[str] = []

    def msg(self, message: str) -> None:
        with self.gate:
            self.lines.append(message)

    info = debug = warning = error = msg


def test_a_signal_that_lands_while_the_log_is_being_written_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that logs would wait here forever for the lock its own thread holds (the cause of a watcher
    that ignored SIGTERM under load); the relay thread sets the stop event without needing it."""
    gate = threading.Lock()
    logger = GatedLogger(gate)
    structlog.configure(processors=[structlog.processors.JSONRenderer()], logger_factory=lambda *_: logger)
    before = signal.getsignal(signal.SIGTERM)
    stop, wake = threading.Event(), threading.Event()
    with relay_stop_signals(stop, wake):
        with gate:  # the main thread is "writing a log line"
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(10), "SIGTERM did not set the stop event while the log lock was held"
            assert wake.is_set()
        wait_for(lambda: logger.lines, 10, "the signal.received log line")
    assert '"signal.received"' in logger.lines[0]
    assert signal.getsignal(signal.SIGTERM) is before


class SettingStopOnFirstWrite:
    """The real store; the first write also sets `stop`, as a SIGTERM arriving during a pass's writes."""

    def __init__(self, inner: Store, stop: threading.Event) -> None:
        self.inner = inner
        self.url = inner.url
        self.stop = stop
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_if_absent(self, key: str, data: bytes) -> str:
        if self.armed:
            self.stop.set()
        return self.inner.put_if_absent(key, data)


def test_a_pass_being_written_when_stop_comes_finishes_its_action_and_applies_no_other(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    config.set_group(group_manifest("web", tag="web"))
    config.set_group(group_manifest("api", tag="api"), name="api")
    ScriptedAgents(store, ["w1"], tags={"app": "web"}).register()
    ScriptedAgents(store, ["a1"], tags={"app": "api"}).register()
    settings = ReconcileSettings.model_validate(settings_overrides())
    stop = threading.Event()
    stopping = SettingStopOnFirstWrite(store, stop)
    lease = WriteLease(stopping, duration=settings.lease_duration, holder="watch")
    lease.stop_writing_on(stop)
    assert lease.try_acquire()
    stopping.armed = True
    with pytest.raises(StopWriting):
        PassRunner(stopping, lease, settings).run_pass(config.desired())
    started = [group for group in ("web", "api") if store.get(group_state_key("hello", group))]
    assert len(started) == 1, f"groups written after stop: {started}"
    # What was written is a consistent prefix: a fresh reconciler picks up from it and starts the other group.
    lease.release()
    fresh = WriteLease(store, duration=settings.lease_duration, holder="next")
    assert fresh.try_acquire()
    PassRunner(store, fresh, settings).run_pass(config.desired())
    assert all(store.get(group_state_key("hello", group)) for group in ("web", "api"))
