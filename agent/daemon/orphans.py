"""Child process groups that outlive a killed agent: hook scripts and git run in their own process group, so
kill -9 of the agent (outside systemd, whose control group takes them down too) leaves them running. The agent
records the running child's group in its state file right after starting it (`ChildGroup`), clears it when
the child is gone, and at its next start kills a recorded group before reporting the command
FailedAfterRestart, so a half-run hook cannot keep changing the host while a rollback runs.

"Still ours" is checked before killing: same boot (`/proc/sys/kernel/random/boot_id`), and the group's leader
(pid = pgid) still has the start time recorded (`/proc/<pid>/stat`, field 22), or, if the leader has exited,
the group's remaining members started no earlier than it did (Linux does not reuse a pid as a new group id
while the old group still has members). kill -9 between the start of a child and its record leaves that one
child unrecorded: a window of one state-file write.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from contract.wirebase import WireRecord

PROC = Path("/proc")


class ChildGroup(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A child process group the agent started (a hook, git), as recorded in the state file."""

    pgid: int
    #: The leader's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    start_ticks: int
    boot_id: str
    what: str


def boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time) of a process, or None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    return int(fields[2]), int(fields[19])


def describe(pid: int, what: str) -> ChildGroup | None:
    """The record for a child just started as its own group leader (None without /proc)."""
    found = _stat(pid)
    if found is None:
        return None
    return ChildGroup(pgid=pid, start_ticks=found[1], boot_id=boot_id(), what=what)


def _members(pgid: int) -> list[tuple[int, int]]:
    members = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None and found[0] == pgid:
                members.append((int(entry.name), found[1]))
    return members


def reap(child: ChildGroup) -> int:
    """Kill the recorded group with SIGKILL if it is still the one the agent started. Returns how many of its
    processes were alive (0: nothing to do, or not ours any more)."""
    if not child.boot_id or child.boot_id != boot_id():
        return 0
    members = _members(child.pgid)
    leader = next((ticks for pid, ticks in members if pid == child.pgid), None)
    if leader is not None:
        ours = leader == child.start_ticks
    else:
        ours = bool(members) and all(ticks >= child.start_ticks for _, ticks in members)
    if not ours:
        return 0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pgid, signal.SIGKILL)
    return len(members)
