"""Real `reconcile` processes for tests: start them, read their JSON log events, wait with deadlines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Reconciler:
    """A `reconcile ...` child process with its stderr (JSON log lines) in a file."""

    def __init__(self, args: list[str], log: Path, env: Mapping[str, str]) -> None:
        self.log = log
        self.args = args
        self.process = subprocess.Popen(
            [str(BIN / "reconcile"), *args],
            cwd=ROOT,
            env={**os.environ, "FLEETSHIFT_LOGGING_FORMAT": "json", **env},
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            start_new_session=True,
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        events = wait_for(lambda: self.events(name), timeout, f"{name!r} in {self.log.name}")
        return events[-1]  # type: ignore[no-any-return]

    def signal(self, signum: int) -> None:
        """Signal the whole process group, as a terminal's Ctrl-C or systemd's default KillMode does."""
        os.killpg(self.process.pid, signum)

    def signal_alone(self, signum: int) -> None:
        """Signal the reconciler only, not the processes it started (`kill PID`, systemd KillMode=mixed)."""
        self.process.send_signal(signum)

    def stop_time(self, signum: int, timeout: float) -> tuple[int, float]:
        """Send `signum` to the reconciler alone and wait for it to exit: (exit code, seconds it took)."""
        sent = time.monotonic()
        self.signal_alone(signum)
        code = self.wait(timeout=timeout)
        return code, time.monotonic() - sent

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
