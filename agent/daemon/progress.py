"""The daemon's pure bookkeeping: what the agent started and how far it got (`AgentState`, kept in the state
file by agent/daemon/statefile.py), folding the runner's event reports into a command's progress, and the
report for a command cut off by a crash, an internal error or a newer command. No I/O and no clock: every
time is passed in."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.daemon.orphans import ChildGroup
from contract.vocabulary import CommandStatus, EventStatus, LifecycleErrorCode
from contract.wire import CommandProgress, EventReport, HostCommand, InstalledRevision
from contract.wirebase import WireDocument

_FINAL = frozenset({EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.SKIPPED})


class AgentState(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
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
    #: The child process group running for the command (a hook, git), recorded right after it starts and
    #: cleared when it ends; found at start = killed before the command is reported FailedAfterRestart.
    child: ChildGroup | None = None


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


def unreadable_command(data: bytes, reason: str, *, now: datetime) -> CommandProgress | None:
    """The failed report for a command that does not parse, if its generation and deployment id can be read
    (else nothing can be reported)."""
    try:
        raw: Any = json.loads(data)
        generation = int(raw["generation"])
        deployment_id = str(raw["deploymentId"])
    except (ValueError, KeyError, TypeError):
        return None
    return CommandProgress(
        deployment_id=deployment_id,
        generation=generation,
        application=str(raw.get("application", "")),
        deployment_group=str(raw.get("deploymentGroup", "")),
        status=CommandStatus.FAILED,
        started_at=now,
        ended_at=now,
        message=f"the agent cannot read this command: {reason}",
    )
