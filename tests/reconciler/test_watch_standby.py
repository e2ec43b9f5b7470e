"""A `watch` that loses its lease keeps nothing of the fleet while it waits, and leads again as a restart would.

In process, on a file store, with agents that answer in a thread (`ScriptedAgents`): the lease is taken from the
watcher by a second `WriteLease` once the watcher's has run out on a shared clock that the test moves, which is
what happens when a paused or partitioned reconciler's lease expires and another takes it. The real-process
version on S3 (`test_warm_start.py`, SIGSTOP past the lease) checks the warm-start cache across the same hand-over;
this one checks what the standby drops and how the passes are numbered, in a second or two.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contract.keys import group_state_key
from contract.models import GroupState
from contract.store import Store, open_store
from reconciler.settings import DeploySettings
from reconciler.shell.lease import WriteLease, read_lease
from reconciler.shell.passes import PassOutcome
from reconciler.shell.watch import Watcher
from tests.reconciler.fleet import APPLICATION, Config, ScriptedAgents, answering, group_manifest, local_revision
from tests.reconciler.procs import wait_for


class SharedClock:
    """Real time plus an offset the test moves: both leases read it, so moving it expires the watcher's lease
    (nothing else in the watcher reads it: its sleeps stay real)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class Listener:
    """A progress listener that remembers the pass numbers it was shown and when it was told to forget; and then
    fails, as a display that cannot redraw might: the watch must go on without it."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        #: How many passes it had seen each time it was told to forget its view.
        self.forgotten: list[int] = []
        self.last: PassOutcome | None = None

    def on_pass(self, outcome: PassOutcome) -> None:
        self.numbers.append(outcome.number)
        self.last = outcome

    def forget_view(self) -> None:
        self.forgotten.append(len(self.numbers))
        self.last = None
        raise RuntimeError("the display is gone")


def effective(store: Store) -> str | None:
    stored = store.get(group_state_key("hello", "web"))
    state = GroupState.model_validate_json(stored.data) if stored else None
    return state.effective_revision.short() if state is not None and state.effective_revision else None


def test_a_watch_that_loses_its_lease_closes_its_runner_forgets_the_fleet_and_counts_on_when_it_leads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    config.repo.write("manifests/application.yaml", APPLICATION)
    config.set_group(group_manifest(revision=local_revision(1)), message="deploy v1")
    agents = ScriptedAgents(store, ["h1", "h2", "h3"])
    agents.register()
    settings = DeploySettings.model_validate({
        "repository": {"url": str(config.repo.path), "ref": "main", "path": "manifests"},
        "store": store.url,
        "reconcile": {"pollInterval": "20ms", "resyncInterval": "50ms", "leaseDuration": "10s",
                      "heartbeatTimeout": "1h"},
    })
    clock = SharedClock()
    lease = WriteLease(store, duration=timedelta(seconds=10), holder="watcher", clock=clock)
    thief = WriteLease(store, duration=timedelta(seconds=10), holder="thief", clock=clock)
    listener = Listener()
    stop = threading.Event()
    watcher = Watcher(store, settings, stop=stop, progress=listener, lease=lease)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        with answering(agents):
            wait_for(lambda: effective(store) == "bundles/v1.zip", 30, "v1 deployed by the watcher")
            wait_for(lambda: watcher.notifier.latest()[1] is not None, 10, "the notifier fed by a pass")
            leading = watcher.runner
            closed: list[bool] = []
            close = leading.close
            monkeypatch.setattr(leading, "close", lambda: (closed.append(True), close())[1])
            assert watcher.reader is leading.reader

            def take_over() -> bool:
                """The watcher's lease runs out (say it was paused) and another reconciler takes it. Moved on until
                the thief wins: the watcher may renew in between (its lease is still its own until taken)."""
                clock.advance(11)
                return thief.try_acquire()

            wait_for(take_over, 10, "another reconciler to take the lease")
            # Standing by ends with the listeners told (`Watcher._stand_by`): everything below is done by then.
            wait_for(lambda: listener.forgotten, 10, "the watcher to stand by")
            seen = len(listener.numbers)

            assert closed == [True]  # its load balancer, gate and AWS clients closed
            assert watcher.reader is watcher.runner.reader and watcher.reader is not leading.reader
            assert watcher.runner.passes == 0  # the new runner has read nothing
            assert watcher.last is None and listener.last is None and listener.forgotten == [seen]
            assert watcher.notifier.latest()[1] is None  # no records held for the notifications either
            assert read_lease(store).holder == "thief"  # type: ignore[union-attr]

            thief.release()
            config.set_group(group_manifest(revision=local_revision(2)), message="deploy v2")
            wait_for(lambda: effective(store) == "bundles/v2.zip", 30, "v2 deployed after leading again")
    finally:
        stop.set()
        watcher.wake.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert len(listener.numbers) > seen
    # Numbered on from where the lost lead stopped, not from 1 again: one sequence per process.
    assert listener.numbers == list(range(1, len(listener.numbers) + 1))
    assert agents.dispatched_twice() == {}
