"""On a `file://` store, wake the agent's main loop as soon as its command key changes, instead of at its next poll.

Where it sits: `Agent.run_forever` (agent/daemon/loop.py) waits here between two reads of `commands/<host>.json`.
Why: with only polls, each host of a OneAtATime rollout waited for its next poll before it even saw its command
(1.26 s a host at the default settings, issue 18). Here a thread watches the `commands/` folder of the store with
watchfiles (inotify on Linux) and wakes the loop within tens of milliseconds of the reconciler's write.

What it never changes: the poll itself. Reads stay conditional reads of the key, at the same interval, so a
missed event (a network share whose writes happen on another machine, a folder re-created under the watch, more
watches than the kernel allows) costs at most the usual poll, never a command. watchfiles is imported in the
watching thread, so it is loaded only by an agent on a file store that runs as a service (docs/design.md,
"Dependency boundary"; tests/daemon/test_import_boundary.py).

The folder is watched, not the file: the store replaces a document by renaming a new file over it, which
a watch on the file itself would lose. Only `commands/` (not recursively) is watched, so the kernel tells this
agent about command writes only, never about the fleet's heartbeats. Until `commands/` exists (a new store),
the store's top folder is watched for it to appear.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from contract.keys import COMMANDS_PREFIX, command_key

log = structlog.get_logger("agent.daemon.command_watch")

#: watchfiles' grouping of changes: yield once no new change came for STEP_MS, and after DEBOUNCE_MS at most.
#: A reconciler writes a batch's commands together; the host's own write is seen within about STEP_MS.
STEP_MS = 50
DEBOUNCE_MS = 200
#: How long one wait inside watchfiles lasts without a change before it comes back empty.
RUST_TIMEOUT_MS = 5000
#: After the watch failed (the folder vanished, too many watches), try again this much later; polls go on.
RETRY_SECONDS = 30.0


class CommandWatch:
    """Wakes `wait` when `commands/<host>.json` under a file store's folder may have changed."""

    def __init__(self, root: Path, host_id: str, stop: threading.Event) -> None:
        self.root = root
        self.folder = root / COMMANDS_PREFIX.rstrip("/")
        self.path = root / command_key(host_id)
        self.stop = stop
        #: Set by the watching thread on a change of the key (and when it ends); cleared by `wait`.
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="command-watch", daemon=True)
        #: True while the watch is in place (for tests and logs).
        self.watching = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`, or until the command key changed or the agent is stopping; True when woken by
        a change. A change between the last read and this call is not lost: it set the flag, which returns at
        once."""
        if not self._thread.is_alive():
            self.stop.wait(seconds)
            return False
        changed = self._changed.wait(seconds)
        self._changed.clear()
        return changed and not self.stop.is_set()

    def _run(self) -> None:
        try:
            import watchfiles
        except ImportError as exc:  # pragma: no cover - watchfiles is a dependency; polls still work without it
            log.warning("command_watch.unavailable", error=str(exc))
            return
        try:
            while not self.stop.is_set():
                try:
                    self._watch(watchfiles)
                except Exception as exc:  # an OS limit or a vanished folder: the polls go on, retry later
                    self.watching.clear()
                    log.warning("command_watch.failed", folder=str(self.folder), error=str(exc),
                                retry_in=RETRY_SECONDS)
                    self.stop.wait(RETRY_SECONDS)
        finally:
            self.watching.clear()
            self._changed.set()  # a waiter re-checks why it should go on waiting

    def _watch(self, watchfiles: Any) -> None:
        """One watch: of `commands/` until the agent stops, or of the store's folder until `commands/` appears.
        Every RUST_TIMEOUT_MS without a change the loop comes round empty-handed: that first round says the
        watch is in place, and the folder watch looks again whether `commands/` has appeared."""
        on_folder = self.folder.is_dir()
        target, wanted = (self.folder, str(self.path)) if on_folder else (self.root, str(self.folder))

        def relevant(_change: object, path: str) -> bool:
            return path == wanted

        for changes in watchfiles.watch(target, watch_filter=relevant, recursive=False, stop_event=self.stop,
                                        step=STEP_MS, debounce=DEBOUNCE_MS, rust_timeout=RUST_TIMEOUT_MS,
                                        yield_on_timeout=True, raise_interrupt=False):
            if not self.watching.is_set():
                self.watching.set()
                log.debug("command_watch.started", folder=str(target))
            if on_folder:
                if changes:
                    self._changed.set()
            elif self.folder.is_dir():
                self._changed.set()  # a command may already be in the new folder
                return  # and watch that folder from now on


def watch_for(store: object, host_id: str, stop: threading.Event) -> CommandWatch | None:
    """A started `CommandWatch` when `store` is a file store (its folder is `root`, through any wrapper), else None."""
    root = getattr(store, "root", None)
    if not isinstance(root, Path):
        return None
    watch = CommandWatch(root, host_id, stop)
    watch.start()
    return watch
