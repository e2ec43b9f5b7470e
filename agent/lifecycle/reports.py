"""A command's event reports as it runs: every state change sent on at once, and at the end the outcome
with the one paragraph a person reads when it failed.

This is the one place where what leaves the host is put together (the reports go to `status.json`, the
reconciler copies them into `deployments/<id>.json` and the `reconcile --once` summary, the agent logs the
failure paragraph), so every message is redacted here (contract/redact.py); the log tails come
redacted from the script log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.lifecycle.scriptlog import ScriptLog
from contract.redact import Redactor
from contract.vocabulary import CommandStatus, EventStatus, LifecycleErrorCode
from contract.wire import EventReport, InstalledRevision


@dataclass(frozen=True)
class CommandOutcome:
    status: CommandStatus  # Succeeded | Failed
    events: list[EventReport]  # final report of every event in the command (Skipped after a failure)
    installed: InstalledRevision | None  # set when the deployment succeeded
    message: str | None  # one-paragraph explanation on failure (event, script, why, log tail, log path)
    log_path: Path | None


class EventFailed(Exception):
    """One event failed; the runner turns it into the event's report and the command's message."""

    def __init__(
        self,
        message: str,
        *,
        error_code: LifecycleErrorCode = LifecycleErrorCode.UNKNOWN_ERROR,
        exit_code: int | None = None,
        script: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.exit_code = exit_code
        self.script = script


class EventReports:
    """The report of every event of one command, in order; each change goes to `on_event` as it happens."""

    def __init__(
        self,
        events: list[str],
        on_event: Callable[[EventReport], None] | None,
        now: Callable[[], datetime],
        log: Any,
    ) -> None:
        self.events = events
        self.reports = [EventReport(name=name) for name in events]
        self.on_event = on_event
        self.now = now
        self.log = log
        self.script_log: ScriptLog | None = None
        self.log_file: Path | None = None
        #: Until the script log exists (a command that cannot start), the agent's environment's secrets.
        self._early_redactor: Redactor | None = None

    def attach(self, script_log: ScriptLog, log_file: Path) -> None:
        """The hooks' log, once the deployment folder exists: tails and the log's path go into reports."""
        self.script_log = script_log
        self.log_file = log_file

    def redact(self, text: str) -> str:
        """`text` as it may leave the host: the script log's redaction, or the agent environment's before it."""
        if self.script_log is not None:
            return self.script_log.redact(text)
        if self._early_redactor is None:
            self._early_redactor = Redactor(os.environ)
        return self._early_redactor.text(text)

    def emit(self, index: int, **changes: object) -> None:
        message = changes.get("message")
        if isinstance(message, str):
            changes["message"] = self.redact(message)
        self.reports[index] = self.reports[index].model_copy(update=changes)
        if self.on_event is not None:
            self.on_event(self.reports[index])

    def skip_rest(self, start: int, reason: str) -> None:
        for index in range(start, len(self.events)):
            if self.reports[index].status == EventStatus.PENDING:
                self.emit(index, status=EventStatus.SKIPPED, message=reason)

    def fail(
        self, index: int, failure: EventFailed, *, ended_at: datetime | None = None, skip_rest: bool = True
    ) -> None:
        """Report the event failed; unless the failure is ignored, the events after it are skipped."""
        assert self.script_log is not None
        reason = self.redact(failure.message)
        self.emit(
            index,
            status=EventStatus.FAILED,
            ended_at=ended_at or self.now(),
            exit_code=failure.exit_code,
            error_code=failure.error_code,
            message=reason,
            log_tail=self.script_log.tail(),
        )
        self.log.error("event.failed", lifecycle_event=self.events[index], reason=reason)
        if skip_rest:
            self.skip_rest(index + 1, f"not run: {self.events[index]} failed")

    def explain(self, event: str, reason: str, script: str | None) -> str:
        """The one paragraph a person reads: which event, which script, why, the output, where the log is."""
        assert self.script_log is not None and self.log_file is not None
        # A reason that ends a sentence itself ("was it pushed?") must not get a second full stop.
        text = f"{event} failed: {reason}" + ("" if reason.endswith((".", "?", "!")) else ".")
        tail = self.script_log.tail() if script else None
        lines = [line for line in (tail or "").split("\n") if line and not line.startswith("[agent]")]
        if lines:
            text += " Last output: " + " | ".join(lines[-10:]) + "."
        if self.script_log.wrote_anything:
            text += f" Full log: {self.log_file}"
        return self.script_log.redact(text)

    def outcome(
        self, status: CommandStatus, message: str | None, installed: InstalledRevision | None = None
    ) -> CommandOutcome:
        log_path = None
        if self.log_file is not None and self.script_log is not None and self.script_log.wrote_anything:
            log_path = self.log_file
        shown = self.redact(message) if message is not None else None
        return CommandOutcome(status, list(self.reports), installed, shown, log_path)
