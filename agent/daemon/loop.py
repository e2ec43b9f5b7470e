"""`deploy-agent run`: the long-running agent that turns commands in the store into deployments on this host.

Where it sits: between the store (contract/store) and the lifecycle runner (agent/lifecycle/runner.py). The reconciler
writes `commands/<host>.json`; this loop notices a new generation with a conditional read, hands the command
to the runner, and writes every lifecycle event's progress into `hosts/<host>/status.json` as it happens,
ending with the revision now installed per deployment group.

Two threads, one writer each:

- the **main thread** polls the command and runs it (the runner is synchronous);
- the **reporter thread** owns every store write (registration, status, heartbeats). Progress is handed over
  as a change counter, so a slow or unreachable store never stalls a hook, and several events that happen
  during one store round trip are written once, newest state first. While a command runs, the reporter also
  watches the command key at the busy interval, so a newer command stops the current one after its current
  event (like CodeDeploy's StopDeployment).

Exactly once (docs/design.md, "Exactly once across restarts"): before a command starts, the agent writes a small
state file (`<root>/ongoing-deployment`, the name CodeDeploy's agent gives its tracking folder) atomically, and
updates it at each event. A generation at or below the one recorded there is never run again. If the agent finds
the file saying a command was running, the agent died during it: the event in progress is reported Failed with
`FailedAfterRestart` and the command is not run again. The store's own copy of the status is a second guard, for
a deployment root that was wiped.

Store outages: the agent keeps running, backs off (up to 30 s), keeps the result in the state file and
reports it when the store answers again, even after a restart.

One installation per host id: each deployment root has an identity (`<root>/installation-id`, see
`Installation`) stamped on the registration and status. Before reading its first command the agent claims
the host id by compare-and-swap on the registration; another installation whose heartbeat is fresh makes it
exit 1 with a message (and a `hosts/<id>/conflicts/<installation>.json` record for `reconcile status`), one
silent for 3 heartbeat intervals is taken over. Every status write is a compare-and-swap on the version last
written, so an agent whose host id was taken over notices at its next write and stops instead of fighting.
Crash safety: the identity file is written to a temp file, fsynced and linked (create-once) or renamed, so a
kill -9 leaves it absent, old or new; the claim and the status writes are single conditional store writes,
so a kill -9 between them leaves a registration that is ours, which a restart (same identity) resumes.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO, cast

import structlog
from pydantic import ValidationError

from agent import __version__
from agent.daemon.identity import (
    INSTALLATION_FILE,
    HostIdInUse,
    Installation,
    StateError,
    describe_installation,
    load_installation,
    machine_fingerprint,
)
from agent.lifecycle.runner import LifecycleRunner, RunnerSettings
from agent.settings import (
    AgentSettings,
    SettingsError,
    load_settings,
    meant_variable,
    parse_tags,
    unknown_environment_variables,
)
from contract.keys import command_key, conflict_key, registration_key, status_key
from contract.logs import configure_logging
from contract.models import (
    CommandProgress,
    CommandStatus,
    ConflictReason,
    Document,
    EventReport,
    EventStatus,
    HostCommand,
    HostConflict,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    LifecycleErrorCode,
    group_key,
)
from contract.signals import stop_on_signals
from contract.store import PreconditionFailed, Store, StoreError, StoreUnavailable, open_store
from contract.store.docs import (
    DocumentInvalid,
    Versioned,
    create_document,
    parse_document,
    read_document,
    replace_document,
    write_document,
)

log = structlog.get_logger("agent.daemon.loop")

STATE_FILE = "ongoing-deployment"
LOCK_FILE = ".deploy-agent.lock"
#: Another installation owning this host id counts as alive while its last sign of life (registration or
#: heartbeat) is younger than this many of its heartbeat intervals (the reconciler's offline rule), plus
#: CLOCK_SKEW_SECONDS because the time was written by another machine's clock.
MISSED_HEARTBEATS = 3
CLOCK_SKEW_SECONDS = 5.0
#: Compare-and-swap rounds when claiming the registration before giving up for this attempt (retried).
CLAIM_ATTEMPTS = 5
#: After a command ends the agent keeps polling at the busy interval this long: a rollback or the next
#: deployment for this host usually follows within seconds.
BUSY_WINDOW = timedelta(minutes=1)
BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
_FINAL = frozenset({EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.SKIPPED})


class ExitCode(IntEnum):
    """`deploy-agent run` exit codes (the same numbers `reconcile` uses for the same situations)."""

    #: Stopped by SIGTERM/SIGINT; with --once: nothing was pending, or the command succeeded.
    OK = 0
    #: Invalid settings or flags, or the deployment root is unusable or in use by another agent, or the host
    #: id belongs to another live agent installation (at start, or taken over while running).
    INVALID = 1
    #: --once: the command ran (or was found cut off by a crash) and failed; the failure was reported.
    COMMAND_FAILED = 4
    #: --once: the store could not be reached or refused access; a result not yet reported is kept locally.
    STORE_UNAVAILABLE = 8


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# The local state file and the pure bookkeeping around it


class AgentState(Document):
    """`<root>/ongoing-deployment`: what this agent started and whether the store has heard the result."""

    host_id: str
    #: Highest generation ever started on this host: nothing at or below it runs again.
    last_generation: int = 0
    #: The command in flight, or the last one run.
    command: HostCommand | None = None
    progress: CommandProgress | None = None
    #: True from just before the first event until the outcome is recorded; found True at start = a crash.
    running: bool = False
    #: Whether `progress` in its final form has reached the store.
    reported: bool = True


def apply_event(progress: CommandProgress, report: EventReport) -> CommandProgress:
    """Fold one event report from the runner into the progress. Events run in order, so the report belongs
    to the first event of that name that has not reached a final state."""
    events = list(progress.events)
    for index, current in enumerate(events):
        if current.name == report.name and current.status not in _FINAL:
            events[index] = report
            break
    else:
        events.append(report)
    return progress.model_copy(update={"events": events})


def fail_unfinished(
    progress: CommandProgress,
    *,
    now: datetime,
    error_code: LifecycleErrorCode,
    event_message: str,
    skip_message: str,
    command_message: Callable[[str], str],
) -> CommandProgress:
    """Fail the event that was running (or about to run) and skip the ones after it."""
    events = list(progress.events)
    cut_off: str | None = None
    for index, event in enumerate(events):
        if event.status in _FINAL:
            continue
        if cut_off is None:
            cut_off = event.name
            events[index] = event.model_copy(
                update={"status": EventStatus.FAILED, "started_at": event.started_at or now, "ended_at": now,
                        "error_code": error_code, "message": event_message}
            )
        else:
            events[index] = event.model_copy(update={"status": EventStatus.SKIPPED, "message": skip_message})
    return progress.model_copy(
        update={"events": events, "status": CommandStatus.FAILED, "ended_at": now,
                "message": command_message(cut_off or "the command")}
    )


def finish_after_restart(
    progress: CommandProgress, installed: InstalledRevision | None, *, now: datetime
) -> CommandProgress:
    """The report for a command the agent was running when it died. Nothing is run again: the event that
    was running (or about to run) fails with FailedAfterRestart and the rest are skipped. If every event had
    already finished, the runner's own results stand and only the bookkeeping after them was lost;
    `installed` (what the runner recorded for the group) then decides whether the command really succeeded."""
    events = list(progress.events)
    if events and all(event.status in _FINAL for event in events):
        ran = [event for event in events if event.status != EventStatus.SKIPPED]
        ok = not ran or ran[-1].status == EventStatus.SUCCEEDED
        if ok and installed is not None and installed.deployment_id != progress.deployment_id:
            ok = False
        return progress.model_copy(
            update={
                "status": CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED,
                "ended_at": now,
                "message": None if ok else (progress.message or "the command failed before the agent restarted"),
            }
        )
    return fail_unfinished(
        progress,
        now=now,
        error_code=LifecycleErrorCode.FAILED_AFTER_RESTART,
        # CodeDeploy's wording first (reference 2.6, agent restart mid-hook), so searches for it find ours too.
        event_message="Failing in-progress lifecycle event after an agent restart: the agent stopped while this "
        "event was running (crash, kill or reboot); it was not run again",
        skip_message="not run: the agent restarted during the command",
        command_message=lambda event: f"failed after restart: the agent stopped during {event}; the command was "
        "not run again",
    )


def relabel_superseded(progress: CommandProgress, newer: HostCommand) -> CommandProgress:
    """The runner words a stop as a shutdown; when a newer command was the reason, say so."""
    reason = f"superseded by command generation {newer.generation} (deployment {newer.deployment_id})"
    events = list(progress.events)
    ran = [i for i, event in enumerate(events) if event.status != EventStatus.SKIPPED and event.started_at]
    after = ran[-1] + 1 if ran else 0
    for index in range(after, len(events)):
        if events[index].status == EventStatus.SKIPPED:
            events[index] = events[index].model_copy(update={"message": f"not run: {reason}"})
    last = events[after - 1].name if after else "the start"
    return progress.model_copy(update={"events": events, "message": f"stopped after {last}: {reason}"})


class LocalState:
    """Reads and writes the state file atomically (temp file, fsync, rename, fsync of the folder), so after
    a power cut it holds the old or the new state, never half of one."""

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
        except ValidationError as exc:
            raise StateError(
                f"the agent's state file {self.path} is unreadable ({exc.errors()[0]['msg']}). It records which "
                "commands already ran; check it, then remove it to start over (commands the store shows as "
                "reported will still not run again)"
            ) from None

    def save(self, state: AgentState) -> None:
        temporary = self.path.with_name(f".{STATE_FILE}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(state.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


# --------------------------------------------------------------------------------------------------
# The agent


class _Backoff:
    def __init__(self) -> None:
        self.delay = 0.0

    def next(self) -> float:
        self.delay = BACKOFF_START_SECONDS if self.delay == 0 else min(BACKOFF_MAX_SECONDS, self.delay * 2)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


@dataclass
class _StoreHealth:
    """Logs an outage once when it starts and once when it ends, not on every retry."""

    down_since: float | None = None
    last_error: str | None = None

    def failed(self, exc: StoreError, doing: str) -> None:
        message = str(exc)
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("store.unavailable", doing=doing, error=message, retryable=exc.retryable)
        elif message != self.last_error:
            log.warning("store.still_unavailable", doing=doing, error=message, retryable=exc.retryable)
        self.last_error = message

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.info("store.recovered", outage_seconds=round(time.monotonic() - self.down_since, 1))
        self.down_since = None
        self.last_error = None


class Agent:
    """One host's agent. `run_forever()` until stopped, or `run_once()` for cron and tests."""

    def __init__(
        self,
        settings: AgentSettings,
        store: Store,
        runner: LifecycleRunner,
        stop: threading.Event,
        *,
        take_over: bool = False,
        installation: Installation | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.stop = stop
        self.host_id = settings.host_id
        self.local = LocalState(settings.root_dir)
        self.log = log.bind(host_id=self.host_id)
        #: Guards everything below; the reporter waits on it for changes.
        self._lock = threading.Condition()
        self._state = AgentState(host_id=self.host_id)
        self._installed: dict[str, InstalledRevision] = {}
        #: Bumped by every change worth reporting; `_written` is the last value the store has seen.
        self._changes = 1  # the first status write doubles as the first heartbeat
        self._written = 0
        #: The generation the store says this host last reported; None until read. Nothing is written to
        #: the store before it is known (see `_read_store_floor`).
        self._store_floor: int | None = None
        #: Loaded from the root in `_start` unless given.
        self._installation = installation
        self._take_over = take_over
        self._started_at = _now()
        self._hostname = socket.gethostname()
        #: The version of our status in the store: every status write is a compare-and-swap against it, so
        #: another installation writing the same key is noticed at our next write instead of fought over.
        self._status_version: str | None = None
        self._last_status_attempt: bytes | None = None
        self._registration_version: str | None = None
        #: The first registration write failed (store outage): the reporter claims again before writing.
        self._registration_pending = False
        self._next_registration_check = 0.0
        #: Set (with the message) when another installation took this host id while we ran.
        self._conflict: str | None = None
        self._closing = False
        self._abandon = False
        self._superseded_by: HostCommand | None = None
        self._failed_reported = False
        self._command_seen: Versioned[HostCommand] | None = None
        self._command_rejected: str | None = None
        self._busy_until = 0.0
        self._poll_health = _StoreHealth()
        self._report_health = _StoreHealth()
        self._reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)

    # ----------------------------------------------------------------------------------------------
    # Entry points

    def run_forever(self) -> ExitCode:
        self._start()
        backoff = _Backoff()
        try:
            while not self.stop.is_set():
                try:
                    command = self._poll()
                except StoreError as exc:
                    self._poll_health.failed(exc, "reading the command")
                    self.stop.wait(backoff.next())
                    continue
                self._poll_health.succeeded()
                backoff.reset()
                if command is not None:
                    self._execute(command)
                    continue  # look again at once: a newer command may be waiting
                self.stop.wait(self._poll_interval())
        finally:
            self._shutdown(self.settings.report_timeout.total_seconds())
        self._raise_conflict()
        return ExitCode.OK

    def run_once(self) -> ExitCode:
        self._start()
        try:
            command = self._poll()
        except HostIdInUse:
            self._shutdown(0.0)
            raise
        except StoreError as exc:
            self.log.error("store.unavailable", doing="reading the command", error=str(exc))
            self._shutdown(0.0)
            return ExitCode.STORE_UNAVAILABLE
        if command is not None:
            self._execute(command)
        if not self._shutdown(self.settings.report_timeout.total_seconds()):
            self._raise_conflict()
            self.log.error("store.unavailable", doing="reporting", error=self._report_health.last_error,
                           kept_in=str(self.local.path))
            return ExitCode.STORE_UNAVAILABLE
        return ExitCode.COMMAND_FAILED if self._failed_reported else ExitCode.OK

    # ----------------------------------------------------------------------------------------------
    # Start and stop

    def _start(self) -> None:
        """Load the state file, settle a command cut off by a crash, start the reporter."""
        state = self.local.load()
        if state is not None and state.host_id != self.host_id:
            raise StateError(
                f"the deployment root {self.settings.root_dir} belongs to host {state.host_id!r}, not "
                f"{self.host_id!r}; give each agent its own --root-dir"
            )
        # An Install cut off by a crash is undone from its journal now, before anything reads the files, so
        # the host runs the previous revision whole rather than half of each until that group deploys again.
        restored = self.runner.recover_interrupted()
        if restored:
            self.log.warning("install.recovered_after_crash", deployment_groups=restored)
        self._installed = self._installed_from_disk()
        self._state = state or AgentState(host_id=self.host_id)
        if self._installation is None:
            self._installation, warning = load_installation(self.settings.root_dir, machine=machine_fingerprint())
            if warning is not None:
                self.log.warning("installation.copied_root", message=warning,
                                 installation_id=self._installation.installation_id,
                                 replaces=self._installation.replaces)
        if state is not None and state.running and state.progress is not None and state.command is not None:
            command = state.command
            installed = self.runner.last_successful(command.application, command.deployment_group)
            progress = finish_after_restart(state.progress, installed, now=_now())
            if progress.status == CommandStatus.SUCCEEDED and installed is not None:
                self._installed[group_key(installed.application, installed.deployment_group)] = installed
            self._settled(progress, source="state file")
        elif not self._state.reported and self._state.progress is not None:
            self._failed_reported = self._state.progress.status == CommandStatus.FAILED
        self.log.info("agent.started", version=__version__, store=self.store.url,
                      installation_id=self.installation.installation_id,
                      root_dir=str(self.settings.root_dir), last_generation=self._state.last_generation,
                      pending_report=not self._state.reported)
        self._reporter.start()

    def _settled(self, progress: CommandProgress, *, source: str) -> None:
        self._update_state(last_generation=max(self._state.last_generation, progress.generation),
                           progress=progress, running=False, reported=False)
        self._failed_reported = self._failed_reported or progress.status == CommandStatus.FAILED
        self.log.warning("command.settled_after_restart", deployment_id=progress.deployment_id,
                         generation=progress.generation, status=progress.status.value, source=source,
                         message=progress.message)

    def _shutdown(self, flush_seconds: float) -> bool:
        """Give the reporter `flush_seconds` to write what is pending, then stop it. True if all was written."""
        deadline = time.monotonic() + flush_seconds
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            while (self._written < self._changes and self._store_floor is not None and not self._abandon
                   and time.monotonic() < deadline):
                self._lock.wait(min(0.2, max(0.001, deadline - time.monotonic())))
            flushed = self._written >= self._changes and self._conflict is None
            self._abandon = True
            self._lock.notify_all()
        self._reporter.join(timeout=1.0)  # a daemon thread: a store call still in flight dies with the process
        self.log.info("agent.stopped", all_reported=flushed)
        return flushed

    def _installed_from_disk(self) -> dict[str, InstalledRevision]:
        """What the runner recorded per deployment group: the truth about this host, whatever the store says."""
        installed: dict[str, InstalledRevision] = {}
        layout = self.runner.layout
        for record in sorted(layout.instructions.glob("*_installed_revision.json")):
            found = layout.installed(record.name.removesuffix("_installed_revision.json"))
            if found is None:
                continue
            key = group_key(found.application, found.deployment_group)
            if key not in installed or installed[key].installed_at < found.installed_at:
                installed[key] = found
        return installed

    # ----------------------------------------------------------------------------------------------
    # Polling (main thread)

    def _poll_interval(self) -> float:
        busy = time.monotonic() < self._busy_until
        interval = self.settings.busy_poll_interval if busy else self.settings.poll_interval
        return interval.total_seconds()

    def _poll(self) -> HostCommand | None:
        """A command to run now, or None. A conditional read: an unchanged command moves no body."""
        if self._store_floor is None:
            floor = self._read_store_floor(self._claim())
            with self._lock:
                self._store_floor = floor
                self._lock.notify_all()
        key = command_key(self.host_id)
        known = self._command_seen.version if self._command_seen is not None else self._command_rejected
        stored = self.store.get(key, if_version_not=known)
        if stored is None:
            self._command_seen = None
            self._command_rejected = None
            return None
        fresh = stored.version != known
        if fresh:
            try:
                self._command_seen = Versioned(parse_document(stored, HostCommand), stored.version)
                self._command_rejected = None
            except DocumentInvalid as exc:
                self._command_seen = None
                self._command_rejected = stored.version
                self._reject_unreadable(stored.data, str(exc))
                return None
        if self._command_seen is None:
            return None
        command = self._command_seen.document
        return command if self._is_new(command, warn=fresh) else None

    def _is_new(self, command: HostCommand, *, warn: bool) -> bool:
        floor = max(self._state.last_generation, self._store_floor or 0)
        if command.generation <= floor:
            return False
        if command.host_id != self.host_id:
            if warn:  # once per version of the command, not once per poll
                self.log.warning("command.wrong_host", key=command_key(self.host_id), names=command.host_id)
            return False
        return True

    def _read_store_floor(self, found: HostStatus | None) -> int:
        """The generation the store says this host last reported: the second guard against running a
        command twice, for a deployment root (and its state file) that was wiped or replaced (or a machine
        reinstalled under the same host id, whose old installation's status was just taken over). A command
        the store shows as still running that the state file does not know was cut off with that root: it is
        reported failed after restart, like one the state file knows."""
        command = found.command if found is not None else None
        if command is None:
            return 0
        if command.status == CommandStatus.IN_PROGRESS and command.generation > self._state.last_generation:
            self._settled(finish_after_restart(command, None, now=_now()), source="store")
        return command.generation

    def _reject_unreadable(self, data: bytes, reason: str) -> None:
        """A command that does not parse cannot run; if its generation can be read, report it failed so the
        reconciler does not wait for it, and never look at that generation again."""
        self.log.error("command.unreadable", error=reason)
        try:
            raw: Any = json.loads(data)
            generation = int(raw["generation"])
            deployment_id = str(raw["deploymentId"])
        except (ValueError, KeyError, TypeError):
            return
        if generation <= max(self._state.last_generation, self._store_floor or 0):
            return
        now = _now()
        progress = CommandProgress(
            deployment_id=deployment_id,
            generation=generation,
            application=str(raw.get("application", "")),
            deployment_group=str(raw.get("deploymentGroup", "")),
            status=CommandStatus.FAILED,
            started_at=now,
            ended_at=now,
            message=f"the agent cannot read this command: {reason}",
        )
        self._update_state(last_generation=generation, command=None, progress=progress, running=False,
                           reported=False)
        self._failed_reported = True

    # ----------------------------------------------------------------------------------------------
    # Running a command (main thread)

    def _execute(self, command: HostCommand) -> CommandStatus:
        progress = CommandProgress(
            deployment_id=command.deployment_id,
            generation=command.generation,
            application=command.application,
            deployment_group=command.deployment_group,
            status=CommandStatus.IN_PROGRESS,
            events=[EventReport(name=name) for name in command.events],
            started_at=_now(),
        )
        # Written (and fsynced) before anything runs: from here on this generation never runs again. If it
        # cannot be written, the command does not run: exactly once cannot be promised without it.
        self._update_state(last_generation=command.generation, command=command, progress=progress, running=True,
                           reported=False, strict=True)
        self.log.info("command.received", deployment_id=command.deployment_id, generation=command.generation,
                      application=command.application, deployment_group=command.deployment_group,
                      revision=command.revision.short())
        try:
            outcome = self.runner.run(command, on_event=self._on_event, should_stop=self._should_stop)
            status, events, message, installed = outcome.status, outcome.events, outcome.message, outcome.installed
        except Exception as exc:  # a bug in the engine must fail this command, not re-run it after a restart
            self.log.exception("command.internal_error", deployment_id=command.deployment_id)
            message = f"internal error in the agent: {exc!r}"
            failed = fail_unfinished(
                self._state.progress or progress, now=_now(), error_code=LifecycleErrorCode.UNKNOWN_ERROR,
                event_message=message, skip_message="not run: internal error in the agent",
                command_message=lambda event: f"{event} failed: {message}",
            )
            status, events, installed = CommandStatus.FAILED, failed.events, None
        with self._lock:
            current = self._state.progress or progress
            final = current.model_copy(
                update={"status": status, "events": events, "ended_at": _now(), "message": message}
            )
            newer, self._superseded_by = self._superseded_by, None
            if newer is not None and status == CommandStatus.FAILED:
                final = relabel_superseded(final, newer)
            if installed is not None:
                self._installed[group_key(installed.application, installed.deployment_group)] = installed
            self._update_state(progress=final, running=False, reported=False)
        self._failed_reported = self._failed_reported or status == CommandStatus.FAILED
        self._busy_until = time.monotonic() + BUSY_WINDOW.total_seconds()
        self.log.info("command.finished", deployment_id=command.deployment_id, generation=command.generation,
                      status=status.value, message=final.message)
        return status

    def _on_event(self, report: EventReport) -> None:
        with self._lock:
            if self._state.progress is not None:
                self._update_state(progress=apply_event(self._state.progress, report))

    def _should_stop(self) -> bool:
        return self.stop.is_set() or self._superseded_by is not None

    def _update_state(self, *, strict: bool = False, **changes: Any) -> None:
        """Change the state, persist it, and wake the reporter. The file is written before the store, so a
        crash can lose a report (sent on the next start) but never the fact that a command started.
        `strict`: a failed save raises StateError; otherwise it is logged and the state lives on in memory."""
        with self._lock:
            state = self._state.model_copy(update=changes)
            try:
                self.local.save(state)
            except OSError as exc:
                if strict:
                    raise StateError(f"cannot write the agent's state file {self.local.path}: {exc}") from exc
                self.log.warning("state.save_failed", path=str(self.local.path), error=str(exc))
            self._state = state
            self._changes += 1
            self._lock.notify_all()

    # ----------------------------------------------------------------------------------------------
    # Reporting (reporter thread)

    def _status_document(self) -> HostStatus:
        return HostStatus(
            host_id=self.host_id,
            heartbeat_at=_now(),
            agent_version=__version__,
            installation_id=self.installation.installation_id,
            started_at=self._started_at,
            installed=dict(self._installed),
            command=self._state.progress,
            heartbeat_interval_seconds=self.settings.heartbeat_interval.total_seconds(),
        )

    def _next_action(self, next_heartbeat: float, retry_at: float, next_watch: float) -> str:
        """Wait (holding the lock) until there is something to do: "write", "watch" or "exit"."""
        while True:
            now = time.monotonic()
            pending = self._written < self._changes
            if self._abandon or (self._closing and not pending):
                return "exit"
            if self._store_floor is None:
                self._lock.wait()  # nothing is written before the floor is known; `_poll` notifies
                continue
            # A change is written at once, a heartbeat when due; either waits out a store outage's backoff.
            write_at = retry_at if pending else max(next_heartbeat, retry_at)
            if now >= write_at:
                return "write"
            watching = self._state.running and not self._closing
            if watching and now >= next_watch:
                return "watch"
            wake = min(write_at, next_watch) if watching else write_at
            self._lock.wait(max(0.005, wake - now))

    def _report_loop(self) -> None:
        heartbeat = self.settings.heartbeat_interval.total_seconds()
        busy = self.settings.busy_poll_interval.total_seconds()
        next_heartbeat = retry_at = next_watch = 0.0
        backoff = _Backoff()
        while True:
            with self._lock:
                action = self._next_action(next_heartbeat, retry_at, next_watch)
                if action == "exit":
                    return
                changes = self._changes
                document = self._status_document()
                finished = self._state.progress if not self._state.running and not self._state.reported else None
            if action == "watch":
                next_watch = time.monotonic() + busy
                self._watch_for_newer_command()
                continue
            try:
                if self._registration_pending:
                    self._claim(first=False)
                self._check_registration()
                self._write_status(document)
            except HostIdInUse as exc:
                self._stop_for_conflict(str(exc))
                return
            except StoreError as exc:
                self._report_health.failed(exc, "writing the status")
                retry_at = time.monotonic() + backoff.next()
                continue
            except Exception:  # a bug here must not silence the host for good: log it and keep trying
                self.log.exception("reporter.error")
                retry_at = time.monotonic() + backoff.next()
                continue
            self._report_health.succeeded()
            backoff.reset()
            retry_at = 0.0
            next_heartbeat = time.monotonic() + heartbeat
            with self._lock:
                self._written = max(self._written, changes)
                if finished is not None and self._state.progress == finished and not self._state.running:
                    self._state = self._state.model_copy(update={"reported": True})
                    try:
                        self.local.save(self._state)
                    except OSError as exc:  # only costs a duplicate report after a restart
                        self.log.warning("state.save_failed", error=str(exc))
                self._lock.notify_all()

    # ----------------------------------------------------------------------------------------------
    # Owning the host id (one installation per host id)

    @property
    def installation(self) -> Installation:
        assert self._installation is not None, "the installation is loaded in _start"
        return self._installation

    def _registration_document(self) -> HostRegistration:
        return HostRegistration(
            host_id=self.host_id,
            installation_id=self.installation.installation_id,
            tags=dict(self.settings.tags),
            zone=self.settings.zone,
            platform=platform.system().lower(),
            hostname=self._hostname,
            agent_version=__version__,
            registered_at=_now(),
        )

    def _is_mine(self, registration: HostRegistration) -> bool:
        """A registration without an installation id was written by an agent older than installation ids: on
        this machine's host name it is this installation before its upgrade, elsewhere another agent."""
        if registration.installation_id is None:
            return registration.hostname == self._hostname
        return registration.installation_id == self.installation.installation_id

    def _claim(self, *, first: bool = True) -> HostStatus | None:
        """Register, unless another live installation owns the host id; returns the status found in the store.

        Runs in the main thread before the first command is read, so a refused agent never runs anything.
        Race-free: the registration is created with put-if-absent and replaced with put-if-version, so of two
        agents starting together exactly one writes it; the other re-reads, finds a live owner and is refused.
        A registration whose owner has been silent for MISSED_HEARTBEATS of its heartbeat intervals (a dead
        or reinstalled machine) is taken over without anyone's help; `--take-over` takes a live one (the old
        agent then notices at its next write and stops instead of fighting back).
        Raises HostIdInUse (after recording a HostConflict for `reconcile status`), or StoreError to retry.

        The decision needs only reads. If the store then refuses the write (an outage of writes only), the
        agent runs commands anyway, as it always has during outages, and the reporter claims again, reads and
        all, before its first status write (`first=False`): a rival that registered meanwhile is found then."""
        key = registration_key(self.host_id)
        for _ in range(CLAIM_ATTEMPTS):
            damaged: str | None = None  # the version of a registration that does not parse
            try:
                existing = read_document(self.store, key, HostRegistration)
            except DocumentInvalid as exc:
                if not self._take_over:
                    raise HostIdInUse(
                        f"host id {self.host_id!r}: {exc}; another agent (perhaps a newer fleetshift) may own this "
                        "host id. Give this machine its own host id (hostId in agent.yaml or --host-id), or, if "
                        "the registration is just damaged, start once with --take-over to replace it"
                    ) from None
                existing, damaged = None, exc.version
            status, status_version = self._read_status()
            wanted = self._registration_document()
            try:
                if existing is None and damaged is None:
                    self._registration_version = create_document(self.store, key, wanted)
                elif existing is None and damaged is not None:
                    self._registration_version = replace_document(self.store, key, wanted, damaged)
                elif existing is not None and (not self._is_mine(existing.document) or existing.document.model_copy(
                    update={"registered_at": wanted.registered_at}
                ) != wanted):
                    if not self._is_mine(existing.document):
                        self._refuse_or_take_over(existing.document, status)
                    self._registration_version = replace_document(self.store, key, wanted, existing.version)
                else:
                    assert existing is not None
                    self._registration_version = existing.version
                    wanted = existing.document
            except PreconditionFailed:
                continue  # someone wrote it between our read and our write: look again
            except StoreError as exc:
                if not first or not exc.retryable:
                    raise
                self.log.warning("agent.register_deferred", error=str(exc))
                self._registration_pending = True
                with self._lock:
                    self._status_version = status_version
                return status
            self._registration_pending = False
            if existing is None or existing.document is not wanted:
                self.log.info("agent.registered", tags=wanted.tags, zone=wanted.zone,
                              installation_id=wanted.installation_id)
            if first:
                with self._lock:
                    self._status_version = status_version
            self._next_registration_check = time.monotonic() + self.settings.heartbeat_interval.total_seconds()
            self._resolve_conflict_record()
            return status
        raise StoreUnavailable(f"{key} kept changing while this agent tried to register; trying again")

    def _read_status(self) -> tuple[HostStatus | None, str | None]:
        """The status in the store and its version (which our first write swaps against). One that does not
        parse is treated as absent (and replaced by ours)."""
        key = status_key(self.host_id)
        try:
            found = read_document(self.store, key, HostStatus)
        except DocumentInvalid as exc:
            self.log.warning("status.unreadable", error=str(exc))
            return None, exc.version
        return (found.document, found.version) if found is not None else (None, None)

    def _refuse_or_take_over(self, owner: HostRegistration, status: HostStatus | None) -> None:
        """The host id is registered by another installation: refuse while it is alive, else take it over."""
        theirs = status if status is not None and status.installation_id == owner.installation_id else None
        last_seen = max(owner.registered_at, theirs.heartbeat_at) if theirs is not None else owner.registered_at
        interval = theirs.heartbeat_interval_seconds if theirs is not None else \
            self.settings.heartbeat_interval.total_seconds()
        silent = (_now() - last_seen).total_seconds()
        alive = silent <= MISSED_HEARTBEATS * interval + CLOCK_SKEW_SECONDS
        who = describe_installation(owner, theirs)
        if alive and not self._take_over:
            message = (
                f"host id {self.host_id!r} is in use by another agent installation: {who}, last seen "
                f"{silent:.0f}s ago. Two machines must not share a host id (they would overwrite each other's "
                f"registration and status). Give this machine its own host id (hostId in agent.yaml, "
                f"FLEETSHIFT_AGENT_HOST_ID or --host-id, with its own --root-dir if this root already served "
                f"{self.host_id!r}). If that installation is really gone (a reinstalled or replaced machine), "
                f"this agent takes the host id over by itself once it has been silent for "
                f"{MISSED_HEARTBEATS * interval + CLOCK_SKEW_SECONDS:.0f}s, or at once with --take-over"
            )
            self._record_conflict(ConflictReason.REFUSED, owner, message)
            raise HostIdInUse(message)
        self.log.warning("agent.took_over_host_id", previous=who, silent_seconds=round(silent, 1),
                         forced=alive)

    def _check_registration(self) -> None:
        """Once per heartbeat interval, a conditional read of our registration (an unchanged one moves no
        body): another installation that took the host id over makes this agent stop."""
        if time.monotonic() < self._next_registration_check:
            return
        key = registration_key(self.host_id)
        stored = self.store.get(key, if_version_not=self._registration_version)
        self._next_registration_check = time.monotonic() + self.settings.heartbeat_interval.total_seconds()
        if stored is None:  # removed by someone: put ours back, unless another agent does so first
            try:
                self._registration_version = create_document(self.store, key, self._registration_document())
            except PreconditionFailed:
                self._next_registration_check = 0.0
            return
        if stored.version == self._registration_version:
            return
        try:
            current = parse_document(stored, HostRegistration)
        except DocumentInvalid as exc:
            raise HostIdInUse(f"host id {self.host_id!r}: our registration was replaced by something else "
                              f"({exc}); this agent stopped writing rather than overwrite it") from None
        if current.installation_id == self.installation.installation_id:
            self._registration_version = stored.version  # ours, written by an earlier attempt
            return
        message = (f"host id {self.host_id!r} was taken over by another agent installation: "
                   f"{describe_installation(current)}. "
                   "This agent stopped writing rather than fight over the host's registration and status. "
                   "Give one of the two machines its own host id (hostId in agent.yaml or --host-id)")
        self._record_conflict(ConflictReason.OVERWRITTEN, current, message)
        raise HostIdInUse(message)

    def _write_status(self, document: HostStatus) -> None:
        """Compare-and-swap against the version we last wrote: if it moved, someone else writes this host's
        status. A lost answer to our own write is recognised by its bytes and not taken for a conflict."""
        key = status_key(self.host_id)
        data = document.to_json()
        previous, self._last_status_attempt = self._last_status_attempt, data
        try:
            if self._status_version is None:
                version = self.store.put_if_absent(key, data)
            else:
                version = self.store.put_if_version(key, data, self._status_version)
        except PreconditionFailed:
            stored = self.store.get(key)
            if stored is None:  # deleted (by hand): next attempt recreates it
                self._status_version = None
                raise StoreUnavailable(f"{key} was removed while the agent wrote it; writing it again") from None
            if stored.data == data:  # our own write, whose answer was lost
                self._status_version = stored.version
                return
            if previous is not None and stored.data == previous:  # an earlier attempt did land: write again
                self._status_version = stored.version
                self._write_status(document)
                return
            try:
                other = parse_document(stored, HostStatus)
            except DocumentInvalid as exc:
                raise HostIdInUse(f"host id {self.host_id!r}: our status was replaced by something else ({exc}); "
                                  "this agent stopped writing rather than overwrite it") from None
            registration = read_document(self.store, registration_key(self.host_id), HostRegistration)
            owner = registration.document if registration is not None else None
            same = other.installation_id == self.installation.installation_id
            who = "a copy of this installation (the same installation id, e.g. a deployment root copied with a " \
                  "cloned VM image on a machine without a machine id)" if same else \
                  describe_installation(
                      owner if owner is not None and owner.installation_id == other.installation_id else None, other)
            message = (f"the status of host id {self.host_id!r} is being written by another agent: {who}. This "
                       "agent stopped writing rather than fight over it. Give one of the two machines its own host "
                       "id (hostId in agent.yaml or --host-id)"
                       + (f", and remove {self.settings.root_dir / INSTALLATION_FILE} on the copy" if same else ""))
            self._record_conflict(ConflictReason.OVERWRITTEN, owner, message, other=other)
            raise HostIdInUse(message) from None
        self._status_version = version

    def _stop_for_conflict(self, message: str) -> None:
        """Stop writing at once and end the agent (the main thread lets a running hook finish its event)."""
        self.log.error("agent.host_id_conflict", message=message)
        with self._lock:
            self._conflict = message
            self._abandon = True
            self._lock.notify_all()
        self.stop.set()

    def _raise_conflict(self) -> None:
        if self._conflict is not None:
            raise HostIdInUse(self._conflict)

    def _record_conflict(self, reason: ConflictReason, owner: HostRegistration | None, message: str,
                         other: HostStatus | None = None) -> None:
        """Leave a HostConflict for `reconcile status`; best effort, the exit and its message come first."""
        record = HostConflict(
            host_id=self.host_id,
            installation_id=self.installation.installation_id,
            hostname=self._hostname,
            reason=reason,
            detected_at=_now(),
            other_installation_id=owner.installation_id if owner is not None else (
                other.installation_id if other is not None else None),
            other_hostname=owner.hostname if owner is not None else None,
            message=message,
        )
        try:
            write_document(self.store, conflict_key(self.host_id, self.installation.installation_id), record)
        except StoreError as exc:
            self.log.warning("conflict.not_recorded", error=str(exc))

    def _resolve_conflict_record(self) -> None:
        """This installation owns the host id now: mark an earlier conflict of its own resolved (a PUT, since
        agents may not delete). Costs one GET per start, usually a 404."""
        key = conflict_key(self.host_id, self.installation.installation_id)
        try:
            found = read_document(self.store, key, HostConflict)
            if found is not None and found.document.resolved_at is None:
                write_document(self.store, key, found.document.model_copy(update={"resolved_at": _now()}))
        except StoreError as exc:
            self.log.warning("conflict.not_resolved", key=key, error=str(exc))


    def _watch_for_newer_command(self) -> None:
        """While a command runs: a newer generation for this host stops it after the current event."""
        seen = self._command_seen
        try:
            stored = self.store.get(command_key(self.host_id), if_version_not=seen.version if seen else None)
        except StoreError:
            return  # outages are reported by the poll loop and the status writes; this is only a watch
        if stored is None or (seen is not None and stored.version == seen.version):
            return
        try:
            newer = parse_document(stored, HostCommand)
        except DocumentInvalid:
            return
        with self._lock:
            running = self._state.command
            if (
                self._state.running
                and running is not None
                and newer.generation > running.generation
                and newer.host_id == self.host_id
                and self._superseded_by is None
            ):
                self.log.warning("command.superseded", running=running.generation, newer=newer.generation)
                self._superseded_by = newer


# --------------------------------------------------------------------------------------------------
# The command line


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the agent: poll the store for this host's commands, deploy them, report",
        description=(
            "Poll the store for this host's command, run it through the lifecycle hooks, and report each "
            "event. Settings: --config FILE (default /etc/fleetshift/agent.yaml if present) < "
            "FLEETSHIFT_AGENT_* variables < flags. Exit codes: 0 ok, 1 invalid settings or host id in use "
            "by another installation, 4 the command "
            "failed (--once), 8 store unavailable (--once)."
        ),
    )
    parser.add_argument("--config", type=Path, help="agent.yaml (see agent.yaml.example)")
    parser.add_argument("--once", action="store_true",
                        help="process whatever command is pending, report it, and exit (for cron and tests)")
    parser.add_argument("--host-id", help="this host's id in the store (default: the host name)")
    parser.add_argument("--store", help="file:///path/to/dir or s3://bucket/prefix[?endpoint=URL]")
    parser.add_argument("--root-dir", type=Path, help="deployment root (bundles, logs, the agent's state)")
    parser.add_argument("--host-root", type=Path,
                        help="prefix for absolute appspec destinations (/srv/app -> HOST_ROOT/srv/app)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="a tag deployment groups can select on (repeatable; adds to the file's tags)")
    parser.add_argument("--zone", help="availability zone, for zone-by-zone rollouts")
    parser.add_argument("--poll-interval", help="idle command poll interval, e.g. 5s")
    parser.add_argument("--heartbeat-interval", help="idle heartbeat interval, e.g. 60s")
    parser.add_argument("--take-over", action="store_true",
                        help="take this host id over from another agent installation even though its heartbeat "
                        "is fresh (a replaced machine you know is gone); a live one stops at its next write")
    parser.set_defaults(func=run_command)


_FLAGS = {
    "hostId": "--host-id",
    "store": "--store",
    "rootDir": "--root-dir",
    "hostRoot": "--host-root",
    "tags": "--tag",
    "zone": "--zone",
    "pollInterval": "--poll-interval",
    "heartbeatInterval": "--heartbeat-interval",
}


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> AgentSettings:
    flags: dict[str, Any] = {}
    for key, flag in _FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if key == "tags":
            tags: dict[str, str] = {}
            for item in value or []:
                tags.update(parse_tags(item, f"--tag {item}"))
            value = tags or None
        if value is not None:
            flags[key] = str(value) if isinstance(value, Path) else value
    return load_settings(args.config, flags=flags, flag_names=_FLAGS, environ=environ)


class _Tee:
    """stderr plus the agent's log file (logDir): one log, two places."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


def _configure_logging(args: argparse.Namespace, settings: AgentSettings) -> None:
    level = getattr(args, "log_level", None) or settings.logging.level
    chosen = getattr(args, "log_format", "auto")
    log_format = chosen if chosen != "auto" else settings.logging.format
    json_lines = {"auto": None, "console": False, "json": True}[log_format]
    stream: TextIO | _Tee = sys.stderr
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = (settings.log_dir / "deploy-agent.log").open("a", encoding="utf-8", buffering=1)
        stream = _Tee(sys.stderr, log_file)
    configure_logging(level, json_lines=json_lines, stream=cast(TextIO, stream))


def _make_runner(settings: AgentSettings) -> LifecycleRunner:
    return LifecycleRunner(
        RunnerSettings(
            root_dir=settings.root_dir,
            host_root=settings.host_root,
            max_revisions=settings.max_revisions,
            runas_allowed=settings.runas_allowed,
        )
    )


def run_command(args: argparse.Namespace) -> int:
    """`deploy-agent run`: the CLI layer. Renders errors as one line each and maps them to exit codes."""
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"deploy-agent: {problem}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        _configure_logging(args, settings)
    except OSError as exc:
        print(f"deploy-agent: cannot open the log folder {settings.log_dir}: {exc.strerror}", file=sys.stderr)
        return ExitCode.INVALID
    for name in unknown_environment_variables(os.environ):
        log.warning("settings.unknown_variable", variable=name, did_you_mean=meant_variable(name))
    try:
        store = open_store(settings.store)
    except StoreError as exc:
        print(f"deploy-agent: store {settings.store}: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        with stop_on_signals() as stop, root_lock(settings.root_dir):
            agent = Agent(settings, store, _make_runner(settings), stop, take_over=args.take_over)
            code = agent.run_once() if args.once else agent.run_forever()
    except HostIdInUse as exc:
        print(f"deploy-agent: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    except StateError as exc:
        print(f"deploy-agent: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    except OSError as exc:
        print(f"deploy-agent: cannot use the deployment root {settings.root_dir}: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    if code == ExitCode.STORE_UNAVAILABLE:
        print(f"deploy-agent: the store {settings.store} is unavailable; unreported results are kept in "
              f"{settings.root_dir / STATE_FILE} and sent on the next run", file=sys.stderr)
    return int(code)


__all__ = [
    "Agent",
    "AgentState",
    "ExitCode",
    "apply_event",
    "finish_after_restart",
    "register",
    "run_command",
]
