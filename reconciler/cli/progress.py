"""Showing a rollout while it runs: a live table on a terminal, structured log lines everywhere else.

Where it sits: the CLI layer. `reconcile --once` and `reconcile watch` hand every `PassOutcome` to a
`Progress` (which is a `reconciler.shell.passes.PassListener`, the shell's side of the deal); the pass loop
itself never prints. Both renderers read the same rows (`rollout_rows`):

- `LiveProgress` (stdout is a TTY): a `rich` live table, one row per deployment in flight — group, deployment,
  status, batch, hosts done / failed / in flight / pending, and what the busy hosts are running right now —
  redrawn after every pass. Log events scroll above it instead of tearing it.
- `LogProgress` (CI, journald, pipes): one `rollout.progress` event when a deployment's counts change and one
  `rollout.blocked` event when a group's reason for waiting changes, so a log of a 30-minute rollout reads as
  its story, not as one line per poll.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import structlog

from contract.logs import configure_logging
from contract.models import CommandStatus, Deployment, EventStatus, HostDeploymentStatus
from reconciler.core import FinishDeployment, Observed
from reconciler.settings import LoggingSettings
from reconciler.shell.passes import PassListener, PassOutcome

if TYPE_CHECKING:
    from rich.table import Table

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RolloutRow:
    """One deployment as progress output shows it."""

    group: str
    deployment_id: str
    creator: str
    revision: str
    status: str
    #: Batches dispatched so far (the engine sizes each batch when it goes, so there is no fixed total).
    batches: int
    total: int
    succeeded: int
    failed: int
    in_flight: int
    pending: int
    skipped: int
    #: Busy hosts and the lifecycle event each is running, as reported by its agent.
    running: tuple[tuple[str, str], ...] = ()
    note: str | None = None

    #: Why the deployment waits this pass, in words (`blocked_words`), when it does.
    waiting: str | None = None

    def counts(self) -> tuple[int, int, int, int, int]:
        return (self.succeeded, self.failed, self.in_flight, self.pending, self.batches)


#: Blocked codes in a few words, for the live table's status column (the reason follows in full).
BLOCKED_WORDS = {
    "NO_INSTANCES": "no hosts",
    "SUSPENDED": "suspended",
    "QUARANTINED": "quarantined",
    "WAITING_FOR_HOSTS": "waiting for hosts",
    "HEALTH_CONSTRAINTS": "too few healthy",
    "STOPPING": "stopping",
    "BAKING": "baking",
    "WAITING_FOR_TRAFFIC": "waiting for traffic",
    "WAITING_FOR_ANALYSIS": "analysis running",
    "WAITING_FOR_ALARMS": "alarms unreadable",
}


def blocked_words(code: str) -> str:
    return BLOCKED_WORDS.get(code, code)


def current_event(observed: Observed, host_id: str, deployment_id: str) -> str | None:
    """The lifecycle event `host_id` is running for `deployment_id`, from its agent's last report."""
    status = observed.statuses.get(host_id)
    command = status.command if status else None
    if command is None or command.deployment_id != deployment_id or command.status is not CommandStatus.IN_PROGRESS:
        return None
    for event in command.events:
        if event.status is EventStatus.IN_PROGRESS:
            return event.name
    done = [e.name for e in command.events if e.status is EventStatus.SUCCEEDED]
    return f"after {done[-1]}" if done else "starting"


def row_for(group: str, deployment: Deployment, observed: Observed, note: str | None = None,
            waiting: str | None = None) -> RolloutRow:
    by_status = {status: 0 for status in HostDeploymentStatus}
    running: list[tuple[str, str]] = []
    for host_id, host in sorted(deployment.hosts.items()):
        by_status[host.status] += 1
        if host.status is HostDeploymentStatus.IN_PROGRESS:
            running.append((host_id, current_event(observed, host_id, deployment.deployment_id) or "dispatched"))
    return RolloutRow(
        group=group,
        deployment_id=deployment.deployment_id,
        creator=deployment.creator,
        revision=deployment.revision.short(),
        status=str(deployment.status),
        batches=len(deployment.batches),
        total=len(deployment.hosts),
        succeeded=by_status[HostDeploymentStatus.SUCCEEDED],
        failed=by_status[HostDeploymentStatus.FAILED],
        in_flight=by_status[HostDeploymentStatus.IN_PROGRESS],
        pending=by_status[HostDeploymentStatus.PENDING],
        skipped=by_status[HostDeploymentStatus.SKIPPED],
        running=tuple(running),
        note=note,
        waiting=waiting,
    )


def rollout_rows(outcome: PassOutcome) -> list[RolloutRow]:
    """Deployments in flight after the pass, plus those that ended in it."""
    notes = {blocked.group: blocked.reason for blocked in outcome.blocked}
    codes = {blocked.group: blocked_words(blocked.code) for blocked in outcome.blocked}
    rows: list[RolloutRow] = []
    seen: set[str] = set()
    for group, deployment_id in sorted(outcome.in_flight.items()):
        deployment = outcome.state_after.deployments.get(deployment_id)
        if deployment is not None:
            rows.append(row_for(group, deployment, outcome.snapshot.observed, notes.get(group), codes.get(group)))
            seen.add(deployment_id)
    for action in outcome.applied.actions:
        if isinstance(action, FinishDeployment) and action.deployment_id not in seen:
            rows.append(row_for(action.group, action.deployment, outcome.snapshot.observed, action.reason))
            seen.add(action.deployment_id)
    return rows


class Progress(PassListener, Protocol):
    """A `PassListener` that is also a context manager (a live display starts and stops)."""

    def __enter__(self) -> Progress: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None: ...

    def on_pass(self, outcome: PassOutcome) -> None: ...

    def forget_view(self) -> None: ...


@dataclass
class LogProgress:
    """Log lines for machines and CI logs: only changes, never one line per poll."""

    _last_counts: dict[str, tuple[int, int, int, int, int]] = field(default_factory=dict)
    _last_blocked: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        return None

    def on_pass(self, outcome: PassOutcome) -> None:
        rows = rollout_rows(outcome)
        for row in rows:
            if self._last_counts.get(row.deployment_id) == row.counts() and row.status != "Succeeded":
                continue
            self._last_counts[row.deployment_id] = row.counts()
            log.info(
                "rollout.progress",
                group=row.group,
                deployment=row.deployment_id,
                creator=row.creator,
                revision=row.revision,
                status=row.status,
                batch=row.batches,
                succeeded=row.succeeded,
                failed=row.failed,
                in_flight=row.in_flight,
                pending=row.pending,
                total=row.total,
            )
        blocked_now = {b.group: f"{blocked_words(b.code)} ({b.code}): {b.reason}" for b in outcome.blocked}
        for group, reason in sorted(blocked_now.items()):
            if self._last_blocked.get(group) != reason:
                log.info("rollout.blocked", group=group, reason=reason)
        self._last_blocked = blocked_now
        # Only deployments this pass shows are compared at the next one: a `watch` running for months must not
        # keep a line per deployment it ever logged.
        shown = {row.deployment_id for row in rows}
        self._last_counts = {d: counts for d, counts in self._last_counts.items() if d in shown}

    def forget_view(self) -> None:
        """Standby: when this process leads again, every rollout it sees is logged afresh."""
        self._last_counts.clear()
        self._last_blocked.clear()


class LiveProgress:
    """A `rich` live table on a terminal, redrawn after every pass."""

    def __init__(self, logging_settings: LoggingSettings, *, title: str = "reconcile") -> None:
        from rich.console import Console

        self._logging = logging_settings
        self._title = title
        self._console = Console()
        self._live: object | None = None
        self._started = time.monotonic()
        self._last: PassOutcome | None = None
        #: The caption while no pass is shown: before the first, and on standby (`forget_view`).
        self._idle_caption = "reading the store..."

    def __enter__(self) -> LiveProgress:
        from rich.live import Live

        live = Live(self.table(), console=self._console, refresh_per_second=4, transient=False,
                    redirect_stdout=True, redirect_stderr=True)
        live.start()
        self._live = live
        # Log events must go through the live display's stderr proxy, or they tear the table.
        self._configure_logging()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        from rich.live import Live

        if isinstance(self._live, Live):
            self._live.update(self.table(), refresh=True)
            self._live.stop()
        self._live = None
        self._configure_logging()

    def _configure_logging(self) -> None:
        json_lines = {"auto": None, "console": False, "json": True}[self._logging.format]
        configure_logging(self._logging.level, json_lines=json_lines, stream=sys.stderr)

    def on_pass(self, outcome: PassOutcome) -> None:
        from rich.live import Live

        self._last = outcome
        if isinstance(self._live, Live):
            self._live.update(self.table())

    def forget_view(self) -> None:
        """Standby: the table stops showing a fleet another reconciler now drives."""
        from rich.live import Live

        self._last = None
        self._idle_caption = "standby: another reconciler holds the write lease"
        if isinstance(self._live, Live):
            self._live.update(self.table())

    def table(self) -> Table:
        """The table as of the last pass."""
        from rich.table import Table
        from rich.text import Text

        outcome = self._last
        elapsed = time.monotonic() - self._started
        commit = (outcome.commit or "")[:12] if outcome else ""
        caption = f"pass {outcome.number}, commit {commit}, {elapsed:.0f}s" if outcome else self._idle_caption
        table = Table(title=self._title, caption=caption, expand=False)
        table.add_column("group", no_wrap=True)
        table.add_column("deployment", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("batch", justify="right")
        table.add_column("hosts")
        table.add_column("now")
        if outcome is None:
            return table
        rows = rollout_rows(outcome)
        for row in rows:
            style = {"Failed": "red", "Succeeded": "green", "Stopped": "yellow"}.get(row.status, "")
            status = row.status
            if row.waiting and row.waiting.lower() != row.status.lower():
                status += f" ({row.waiting})"
            now = ", ".join(f"{host}: {event}" for host, event in row.running[:4])
            if len(row.running) > 4:
                now += f" (+{len(row.running) - 4})"
            if not now and row.note:
                now = row.note
            hosts = Text(f"{row.succeeded}/{row.total - row.skipped} done")
            if row.failed:
                hosts.append(f", {row.failed} failed", style="red")
            if row.in_flight:
                hosts.append(f", {row.in_flight} running")
            if row.pending:
                hosts.append(f", {row.pending} pending")
            table.add_row(
                row.group,
                row.deployment_id + (f" ({row.creator})" if row.creator != "user" else ""),
                Text(status, style=style),
                str(row.batches),
                hosts,
                now,
            )
        shown = {row.group for row in rows}
        for blocked in outcome.blocked:
            if blocked.group not in shown:
                table.add_row(blocked.group, "", Text(blocked_words(blocked.code), style="yellow"), "", "",
                              blocked.reason)
        if not rows and not outcome.blocked:
            table.add_row("(all groups)", "", Text("converged", style="green"), "", "", "")
        return table


def choose_progress(logging_settings: LoggingSettings, *, title: str = "reconcile") -> Progress:
    """Live view when a person is watching (stdout is a terminal and logs are not forced to JSON)."""
    if sys.stdout.isatty() and logging_settings.format != "json":
        return LiveProgress(logging_settings, title=title)
    return LogProgress()


@contextmanager
def progress_for(logging_settings: LoggingSettings, *, title: str = "reconcile") -> Iterator[Progress]:
    with choose_progress(logging_settings, title=title) as progress:
        yield progress
