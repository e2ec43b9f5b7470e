"""What fleetlab's local servers (HAProxy, Prometheus) share: a system binary run as a child process in its own
process group, its output in a log file in the work dir, started and stopped the same way.

Why a process group: `stop()` must take the server's children with it (HAProxy's master-worker, say), and a test
that is interrupted must not leave a server listening. Why a log file, not a pipe: a chatty server would block
on a full pipe nobody reads; errors quote its tail instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import structlog

log = structlog.get_logger(__name__)

#: After SIGTERM, how long before SIGKILL.
STOP_GRACE = 5.0
#: How much of a server's log an error quotes.
LOG_TAIL = 4000


def find_binary(name: str, extra_dirs: str, error: type[Exception]) -> str:
    """`name` on PATH or in `extra_dirs` (where Debian puts sbin tools, often not on a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path=extra_dirs)
    if found is None:
        raise error(f"{name} is not installed (Debian/Ubuntu: apt-get install {name})")
    return found


def free_port() -> int:
    """A loopback port nothing listens on now (whoever binds it next may race us; on loopback nobody does)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalService:
    """A child server process with a log file: `spawn` it, `stop` it (SIGTERM to its group, SIGKILL after
    `STOP_GRACE`), quote its `log_tail`. Subclasses write their config and wait until they are ready."""

    #: For log events: `fleetlab.<name>.start` / `.stop`.
    name = "service"

    def __init__(self, workdir: Path, log_path: Path) -> None:
        self.workdir = Path(workdir)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> None:
        raise NotImplementedError

    def spawn(self, argv: Sequence[str], **details: object) -> None:
        """Start `argv` with its output appended to the log file, then wait until ready (`_wait_ready`); a
        server that does not get ready is stopped before the error goes up."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop())
        self._process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.info(f"fleetlab.{self.name}.start", pid=self._process.pid, **details)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it lingers, and reap it. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.info(f"fleetlab.{self.name}.stop", pid=process.pid, returncode=process.returncode)
        if self._log is not None:
            self._log.close()
            self._log = None

    def exited(self) -> int | None:
        """The exit code if the process has ended on its own, else None."""
        return self._process.poll() if self._process is not None else None

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text[-LOG_TAIL:].strip() or "(empty log)"
