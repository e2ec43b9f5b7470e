"""The early check of one command: fetch, unpack and check the new revision before the first event runs.

`CommandRun` (agent/lifecycle/command_run.py) runs it when the command includes DownloadBundle and keeps its
`EarlyCheck` record: DownloadBundle later reports the record's times and failure or warnings, and the events
after it use the checked appspec. The checks themselves are agent/lifecycle/revision_check.py; the bounds
of the fetch agent/fetch/bounds.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from agent.errors import AgentError, Problem, RevisionInvalid
from agent.fetch import FetchBudget, FetchedBundle, fetch_bundle, unpack_bundle
from agent.lifecycle.appspec import AppSpec
from agent.lifecycle.reports import EventFailed
from agent.lifecycle.revision_check import DOWNLOAD_BUNDLE, check_revision, scripts_run_before
from agent.lifecycle.steps import InstallPlan

if TYPE_CHECKING:
    from agent.lifecycle.command_run import CommandRun


@dataclass
class EarlyCheck:
    fetched: FetchedBundle | None = None
    spec: AppSpec | None = None
    #: The install plan made by the check: Install carries it out as it is when nothing ran in between
    #: (`CommandRun.touched_since_check`), instead of planning a second time (issue 18: 1.2 s for 10,000 files).
    plan: InstallPlan | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    failure: EventFailed | None = None
    warnings: list[Problem] = field(default_factory=list)


def fetch_budget(run: CommandRun) -> FetchBudget:
    """Fetch, unpack and check run under the command's time limit (or `FetchLimits.default_timeout_seconds`
    when it has none) and stop when `should_stop` says so; progress goes to DownloadBundle's report (still
    Pending: the events before it have not run) as its message."""
    limits = run.settings.fetch_limits
    deadline, seconds = run.deadline, run.command.timeout_seconds
    if deadline is None or seconds is None:
        seconds = limits.default_timeout_seconds
        deadline = time.monotonic() + seconds
    index = run.events.index(DOWNLOAD_BUNDLE)

    def progress(text: str) -> None:
        run.reports.emit(index, message=text)

    def child(pid: int | None) -> None:
        if run.on_child is not None:
            run.on_child(pid, "git")

    return FetchBudget(should_stop=run.should_stop, deadline=deadline, limit_seconds=seconds, limits=limits,
                       on_progress=progress, on_child=child)


def run_early_check(run: CommandRun, early: EarlyCheck) -> None:
    """Fetch, unpack and check the new revision before the first event, filling in `early`. Every step is
    bounded by the command's `FetchBudget` (agent/fetch/bounds.py); a stop or the deadline fails DownloadBundle
    with a message naming the step, its source and how long it waited. kill -9 here: the state file says the
    command was running with every event Pending, so the next start reports the first event
    FailedAfterRestart and the rest Skipped, and kills a git child recorded there."""
    assert run.deployment is not None and run.group is not None
    command = run.command
    early.started_at = run.now()
    budget = fetch_budget(run)
    try:
        run.group.prune_revisions(run.deployment, run.settings.max_revisions)
        fetched = fetch_bundle(command.revision, run.deployment.path, git_cache_dir=run.layout.git_cache,
                               budget=budget)
        unpack_bundle(fetched, run.deployment.archive, run.settings.extract_limits, budget)
        budget.step("checking the new revision")
        early.fetched = fetched
        check = check_revision(
            run.deployment.archive,
            events=run.events,
            appspec_filename=run.appspec_filename,
            file_exists_behavior=command.file_exists_behavior,
            previous_cleanup=run.group.read_cleanup(),
            host_root=run.settings.host_root,
            runas_allowed=run.settings.runas_allowed,
        )
        early.spec = check.spec
        early.plan = check.plan
        early.warnings = list(check.warnings)
        for warning in check.warnings:
            run.log.warning("revision.warning", problem=str(warning))
        previous = run.previous_revision().spec_if_readable()
        fatal = check.fatal(lambda event: scripts_run_before(event, run.events, check.spec, previous))
        if fatal:
            raise RevisionInvalid(fatal, headline="the new revision was checked before anything ran and "
                                  "cannot be deployed")
    except AgentError as exc:
        early.failure = EventFailed(str(exc), error_code=exc.error_code)
    except OSError as exc:
        early.failure = EventFailed(f"cannot prepare the deployment folder: {exc}")
    early.ended_at = run.now()
