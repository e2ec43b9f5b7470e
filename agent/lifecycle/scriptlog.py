"""Where hook output goes: the deployment's `logs/scripts.log`, the root's shared deployments log (rotated),
and the tail of the current event's output for its report."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TextIO

#: Rotation of the shared deployments log, as the reference agent does (8 files of 64 MiB).
_DEPLOYMENTS_LOG_MAX = 64 << 20
_DEPLOYMENTS_LOG_KEEP = 8


class ScriptLog:
    """The deployment's `logs/scripts.log` plus the root's shared deployments log, and the log tail.

    Lines look like the reference agent's (`2026-01-02 10:11:12 [stdout]text`), so existing log scraping
    keeps working. The tail is kept per lifecycle event, like the 2 KB "log tail" CodeDeploy reports.
    """

    def __init__(self, script_log: Path, deployments_log: Path, deployment_id: str, tail_chars: int) -> None:
        script_log.parent.mkdir(parents=True, exist_ok=True)
        deployments_log.parent.mkdir(parents=True, exist_ok=True)
        _rotate(deployments_log)
        self.path = script_log
        self.deployment_id = deployment_id
        self.tail_chars = tail_chars
        self._script: TextIO = script_log.open("a", encoding="utf-8", errors="replace")
        self._shared: TextIO = deployments_log.open("a", encoding="utf-8", errors="replace")
        self._tail = ""
        self.wrote_anything = False

    def _write(self, message: str) -> None:
        now = datetime.now()
        self._script.write(f"{now:%Y-%m-%d %H:%M:%S} {message}\n")
        self._shared.write(f"[{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d}] [{self.deployment_id}]{message}\n")
        self.wrote_anything = True

    def reset_tail(self) -> None:
        """A new lifecycle event starts: its report's tail holds only its own scripts' output."""
        self._tail = ""

    def event(self, name: str) -> None:
        self._write(f"LifecycleEvent - {name}")

    def script(self, location: str) -> None:
        self._write(f"Script - {location}")

    def output(self, stream: str, line: str) -> None:
        self._write(f"[{stream}]{line}")
        self._tail += f"[{stream}]{line}\n"
        if len(self._tail) > 4 * self.tail_chars:
            self._tail = self._tail[-self.tail_chars :]

    def note(self, text: str) -> None:
        """The agent's own remarks (timeouts, kills), marked so they are not mistaken for script output."""
        self._write(f"[agent]{text}")
        self._tail += f"[agent]{text}\n"

    def tail(self) -> str | None:
        text = self._tail[-self.tail_chars :]
        return text or None

    def flush(self) -> None:
        self._script.flush()
        self._shared.flush()

    def close(self) -> None:
        self._script.close()
        self._shared.close()


def _rotate(path: Path) -> None:
    try:
        if path.stat().st_size < _DEPLOYMENTS_LOG_MAX:
            return
    except FileNotFoundError:
        return
    for index in range(_DEPLOYMENTS_LOG_KEEP - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    path.with_name(f"{path.name}.{_DEPLOYMENTS_LOG_KEEP}").unlink(missing_ok=True)
