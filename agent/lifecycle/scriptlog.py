"""Where hook output goes: the deployment's `logs/scripts.log`, the root's shared deployments log (rotated),
and the tail of the current event's output for its report.

Every line is redacted (contract/redact.py) before it is written anywhere, the host's own logs
included: log shippers commonly send the deployments log off the host, and these files are readable by
more users than the agent's environment is. See docs/agent.md, "What hosts publish".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TextIO

from contract.redact import Redactor, StreamRedactor

#: Rotation of the shared deployments log, as the reference agent does (8 files of 64 MiB).
_DEPLOYMENTS_LOG_MAX = 64 << 20
_DEPLOYMENTS_LOG_KEEP = 8


class ScriptLog:
    """The deployment's `logs/scripts.log` plus the root's shared deployments log, and the log tail.

    Lines look like the reference agent's (`2026-01-02 10:11:12 [stdout]text`), so existing log scraping
    keeps working. The tail is kept per lifecycle event, like the 2 KB "log tail" CodeDeploy reports; it is
    at most `tail_bytes` bytes of UTF-8, and 0 publishes none.

    `redact` (agent.yaml `reportOutput.redact`) replaces secrets by `[REDACTED]`: the values of the agent's
    secret-named environment variables (and of a hook's, once `learn` got its environment) and the patterns
    of contract/redact.py.
    """

    def __init__(
        self,
        script_log: Path,
        deployments_log: Path,
        deployment_id: str,
        tail_bytes: int,
        *,
        redact: bool = True,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        script_log.parent.mkdir(parents=True, exist_ok=True)
        deployments_log.parent.mkdir(parents=True, exist_ok=True)
        _rotate(deployments_log)
        self.path = script_log
        self.deployment_id = deployment_id
        self.tail_bytes = max(tail_bytes, 0)
        self.redactor = Redactor(os.environ if environment is None else environment, enabled=redact)
        self._streams: dict[str, StreamRedactor] = {}
        self._script: TextIO = script_log.open("a", encoding="utf-8", errors="replace")
        self._shared: TextIO = deployments_log.open("a", encoding="utf-8", errors="replace")
        self._tail = ""
        self.wrote_anything = False

    def learn(self, environment: Mapping[str, str]) -> None:
        """A hook's environment: its secret-named variables' values are redacted from then on."""
        self.redactor.learn(environment)

    def redact(self, text: str) -> str:
        """A message built from hook output or the agent's words, as it may leave the host."""
        return self.redactor.text(text)

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
        redactor = self._streams.get(stream)
        if redactor is None:
            redactor = self._streams[stream] = StreamRedactor(self.redactor)
        shown = redactor.line(line)
        if shown is None:
            return  # inside a private key block: the block's first line already says [REDACTED]
        self._write(f"[{stream}]{shown}")
        self._add_to_tail(f"[{stream}]{shown}\n")

    def note(self, text: str) -> None:
        """The agent's own remarks (timeouts, kills), marked so they are not mistaken for script output."""
        shown = self.redactor.text(text)
        self._write(f"[agent]{shown}")
        self._add_to_tail(f"[agent]{shown}\n")

    def _add_to_tail(self, text: str) -> None:
        if self.tail_bytes == 0:
            return
        self._tail += text
        # Characters are at most 4 bytes: 4 x tail_bytes characters always hold the last tail_bytes bytes.
        if len(self._tail) > 8 * self.tail_bytes:
            self._tail = self._tail[-4 * self.tail_bytes :]

    def tail(self) -> str | None:
        """The current event's last `tail_bytes` bytes of output (whole characters), None when there is none."""
        if self.tail_bytes == 0 or not self._tail:
            return None
        data = self._tail[-self.tail_bytes :].encode("utf-8")[-self.tail_bytes :]
        return data.decode("utf-8", "ignore") or None

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
