"""A running hook script's output and end: read stdout and stderr line by line into the script log while
watching for its exit (one thread, select), and stop its process group when time runs out."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time

from agent.lifecycle.scriptlog import ScriptLog

_READ_SIZE = 65536
_MAX_LINE = 65536


class Capture:
    """Reads a child's stdout and stderr line by line, and notices its exit, on one thread with select."""

    def __init__(self, process: subprocess.Popen[bytes], script_log: ScriptLog) -> None:
        self.process = process
        self.script_log = script_log
        self.selector = selectors.DefaultSelector()
        self.partial: dict[int, bytearray] = {}
        self.names: dict[int, str] = {}
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, name)
            self.partial[fd] = bytearray()
            self.names[fd] = name
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(process.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")
        self.exited = False

    def open_streams(self) -> list[str]:
        return [self.names[fd] for fd in self.partial]

    def _check_exit(self) -> None:
        if not self.exited and self.process.poll() is not None:
            self.exited = True
            if self.pidfd is not None:
                self.selector.unregister(self.pidfd)
                os.close(self.pidfd)
                self.pidfd = None

    def until(self, deadline: float) -> bool:
        """Pump output until the process exited and both streams closed (True), or the deadline (False)."""
        while True:
            self._check_exit()
            if self.exited and not self.partial:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Without a pidfd, an exit is only noticed by polling; keep that cheap but prompt.
            wait = remaining if self.pidfd is not None or self.exited else min(remaining, 0.05)
            for key, _ in self.selector.select(wait):
                if key.data == "exit":
                    self._check_exit()
                else:
                    self._read(int(key.fd))

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._flush(fd, final=True)
            self.selector.unregister(fd)
            del self.partial[fd]
            return
        buffer = self.partial[fd]
        buffer.extend(data)
        self._flush(fd, final=False)

    def _flush(self, fd: int, *, final: bool) -> None:
        buffer = self.partial[fd]
        name = self.names[fd]
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            self.script_log.output(name, buffer[:newline].decode("utf-8", "replace").rstrip("\r"))
            del buffer[: newline + 1]
        if len(buffer) > _MAX_LINE or (final and buffer):
            self.script_log.output(name, buffer.decode("utf-8", "replace"))
            buffer.clear()

    def drain(self, seconds: float) -> None:
        """Keep reading (so the child never blocks on a full pipe) while waiting for it to exit."""
        self.until(time.monotonic() + seconds)

    def close(self) -> None:
        for fd in list(self.partial):
            self._flush(fd, final=True)
        self.partial.clear()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.selector.close()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        self.script_log.flush()


def stop_group(process: subprocess.Popen[bytes], capture: Capture, grace: float) -> bool:
    """SIGTERM the script's process group, then SIGKILL it if the leader is still there after `grace`.
    Returns True if SIGKILL was needed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        capture.drain(min(0.05, max(deadline - time.monotonic(), 0)))
        if process.poll() is not None:
            # The leader is gone; anything left in its group gets SIGKILL too, as the timeout promised.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True
