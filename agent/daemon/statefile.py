"""The deployment root's two agent files: the state file (`<root>/ongoing-deployment`, the name CodeDeploy's
agent gives its tracking folder), written atomically before a command starts and at each event, and the
lock (`<root>/.deploy-agent.lock`) that keeps a second agent off the same root."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from agent.daemon.identity import StateError
from agent.daemon.progress import AgentState
from contract.atomic import write_atomic

STATE_FILE = "ongoing-deployment"
LOCK_FILE = ".deploy-agent.lock"


class LocalState:
    """Reads and writes the state file atomically (contract/atomic.py: temp file, fsync, rename, fsync of the
    folder), so after a power cut it holds the old or the new state, never half of one."""

    def __init__(self, root: Path) -> None:
        self.path = root / STATE_FILE

    def load(self) -> AgentState | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the agent's state file {self.path}: {exc.strerror}") from exc
        try:
            return AgentState.model_validate_json(data)
        except msgspec.DecodeError as exc:
            raise StateError(
                f"the agent's state file {self.path} is unreadable ({exc}). It records which "
                "commands already ran; check it, then remove it to start over (commands the store shows as "
                "reported will still not run again)"
            ) from None

    def save(self, state: AgentState) -> None:
        write_atomic(self.path, state.to_json(), temp_name=f".{STATE_FILE}.tmp")


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One agent per deployment root: two agents sharing one would run commands twice or clobber state."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held for the agent's lifetime
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise StateError(
                    f"another deploy-agent (pid {holder}) is using the deployment root {root}; give each agent "
                    "its own --root-dir"
                ) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
