"""Checking a revision before anything runs, shared by the runner's early check and `deploy-agent validate`.

Which events run which revision's scripts, whether an event list can work at all, and everything known
about deploying one unpacked revision on this host (appspec, scripts, runas users, the install plan and its
conflicts), changing nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError, Problem, RevisionInvalid, UsageError
from agent.lifecycle.appspec import SCRIPTABLE_EVENTS, SCRIPTLESS_STEPS, AppSpec, load_appspec
from agent.lifecycle.appspec_values import bundle_relative
from agent.lifecycle.hooks import resolve_runas
from agent.lifecycle.install import InstallPlan, plan_install
from agent.lifecycle.layout import DeploymentDir, DeploymentRoot, GroupRoot
from contract.vocabulary import HEALTH_CHECK, LIFECYCLE_EVENTS, PREVIOUS_REVISION_EVENTS, FileExistsBehavior

DOWNLOAD_BUNDLE = "DownloadBundle"
INSTALL = "Install"
VALIDATE_SERVICE = "ValidateService"


@dataclass(frozen=True)
class RevisionCheck:
    """Everything known about deploying one unpacked revision on this host, before doing it."""

    spec: AppSpec | None
    plan: InstallPlan | None
    behavior: FileExistsBehavior
    errors: list[Problem]
    #: Problems a script running earlier in the command might fix; fatal only when none runs earlier.
    deferred: list[tuple[Problem, str]]
    warnings: list[Problem]

    def fatal(self, scripts_before: Callable[[str], bool]) -> list[Problem]:
        """The problems that make the deployment fail for sure, given which events have scripts before."""
        return self.errors + [problem for problem, event in self.deferred if not scripts_before(event)]


def effective_behavior(spec: AppSpec | None, option: FileExistsBehavior | None) -> FileExistsBehavior:
    """Appspec top-level value, else the deployment's option, else DISALLOW (reference 1.3)."""
    if spec is not None and spec.file_exists_behavior is not None:
        return spec.file_exists_behavior
    return option or FileExistsBehavior.DISALLOW


def uses_new_revision(events: list[str], index: int) -> bool:
    """Previous-revision events use the new revision once DownloadBundle has run (codedeploy-local). The
    traffic steps (the reconciler performs them) and HealthCheck (the agent's own check) run no scripts at all,
    so they use neither."""
    if events[index] in SCRIPTLESS_STEPS:
        return False
    return events[index] not in PREVIOUS_REVISION_EVENTS or DOWNLOAD_BUNDLE in events[:index]


def check_revision(
    archive_dir: Path,
    *,
    events: list[str],
    appspec_filename: str | None,
    file_exists_behavior: FileExistsBehavior | None,
    previous_cleanup: list[str],
    host_root: Path | None,
    runas_allowed: bool = True,
) -> RevisionCheck:
    """Parse the appspec and check it against the bundle and this host, changing nothing."""
    try:
        spec = load_appspec(archive_dir, appspec_filename)
    except RevisionInvalid as exc:
        behavior = effective_behavior(None, file_exists_behavior)
        return RevisionCheck(None, None, behavior, list(exc.problems), [], [])
    behavior = effective_behavior(spec, file_exists_behavior)
    errors = unknown_hook_problems(spec, events)
    for event in dict.fromkeys(events):
        if event not in LIFECYCLE_EVENTS and event not in SCRIPTLESS_STEPS and not spec.scripts_for(event):
            errors.append(Problem(spec.filename, "hooks", f"the custom event {event} has no scripts in the appspec"))
    deferred: list[tuple[Problem, str]] = []
    warnings = list(spec.warnings)
    for index, event in enumerate(events):
        if not uses_new_revision(events, index):
            continue
        for position, script in enumerate(spec.scripts_for(event)):
            where = f"{spec.filename}:{script.line}" if script.line else spec.filename
            field_name = f"hooks.{event}[{position}]"
            path = archive_dir / bundle_relative(script.location)
            if not path.is_file():
                what = "is a folder" if path.is_dir() else "does not exist in the bundle"
                errors.append(Problem(where, f"{field_name}.location", f"script {script.location} {what}"))
            if script.runas:
                account = resolve_runas(script.runas)
                if not runas_allowed:
                    errors.append(Problem(where, f"{field_name}.runas", "this agent does not allow runas"))
                elif account is None:
                    message = f"user {script.runas!r} does not exist on this host"
                    deferred.append((Problem(where, f"{field_name}.runas", message), event))
                elif os.geteuid() != 0 and account.pw_uid != os.geteuid():
                    errors.append(Problem(where, f"{field_name}.runas", "runas needs the agent to run as root"))
    plan = None
    if INSTALL in events:
        plan = plan_install(
            spec, archive_dir, behavior=behavior, previous_cleanup=previous_cleanup, host_root=host_root
        )
        errors += plan.errors
        deferred += [(problem, INSTALL) for problem in plan.deferred]
        warnings += plan.warnings
    return RevisionCheck(spec, plan, behavior, errors, deferred, warnings)


def scripts_run_before(event: str, events: list[str], new: AppSpec | None, previous: AppSpec | None) -> bool:
    """Whether any script runs before `event`'s first occurrence: the new revision's for events after
    DownloadBundle, the last installed revision's for the traffic and stop events before it."""
    if event not in events:
        return False
    for index in range(events.index(event)):
        spec = new if uses_new_revision(events, index) else previous
        if spec is not None and spec.scripts_for(events[index]):
            return True
    return False


@dataclass(frozen=True)
class PreviousRevision:
    """The group's last installed revision (None on a first deployment) and its appspec, read once."""

    folder: DeploymentDir | None
    spec: AppSpec | None
    #: Why its appspec could not be read, if it could not.
    error: Exception | None

    def spec_if_readable(self) -> AppSpec | None:
        """The appspec, or None if there is none or it cannot be read (then its events fail on their own,
        with their own message); a host error other than an unreadable revision is raised."""
        if self.error is not None and not isinstance(self.error, AgentError):
            raise self.error
        return self.spec


def read_previous(group: GroupRoot, appspec_filename: str | None) -> PreviousRevision:
    folder = group.last_successful_install()
    if folder is None:
        return PreviousRevision(None, None, None)
    try:
        return PreviousRevision(folder, load_appspec(folder.archive, appspec_filename), None)
    except Exception as exc:  # kept: the events that run its scripts report it
        return PreviousRevision(folder, None, exc)


def previous_appspec(layout: DeploymentRoot, group_id: str, appspec_filename: str | None) -> AppSpec | None:
    """The last installed revision's appspec, or None if there is none or it cannot be read."""
    return read_previous(layout.group(group_id), appspec_filename).spec_if_readable()


def check_event_order(events: list[str]) -> None:
    """Refuse event lists that cannot work, before anything runs: every event that needs the new
    revision must come after DownloadBundle, and HealthCheck comes right after ValidateService (it checks the
    service ValidateService has just vouched for, and nothing may run between them, issue 14)."""
    if not events:
        raise UsageError("the command has no lifecycle events to run")
    for index, event in enumerate(events):
        if event == HEALTH_CHECK and (index == 0 or events[index - 1] != VALIDATE_SERVICE):
            raise UsageError(
                f"HealthCheck must come directly after {VALIDATE_SERVICE} in the events ({', '.join(events)})"
            )
        if event == DOWNLOAD_BUNDLE and DOWNLOAD_BUNDLE in events[:index]:
            raise UsageError("DownloadBundle is listed twice in the command's events")
        if uses_new_revision(events, index) and event != DOWNLOAD_BUNDLE and DOWNLOAD_BUNDLE not in events[:index]:
            raise UsageError(
                f"{event} runs the new revision's scripts, so DownloadBundle must come before it in the events "
                f"({', '.join(events)}); only {', '.join(sorted(PREVIOUS_REVISION_EVENTS))} may come before it"
            )


def unknown_hook_problems(spec: AppSpec, events: list[str] | tuple[str, ...]) -> list[Problem]:
    """Hook names that will never run: not a lifecycle event and not a custom event of this command.

    The reference agent accepts any name and silently never runs a typo such as `AfterInstal`.
    """
    known = set(SCRIPTABLE_EVENTS) | set(events)
    problems = []
    for event in spec.hooks:
        if event not in known:
            hint = ""
            for candidate in sorted(SCRIPTABLE_EVENTS):
                if _close(event, candidate):
                    hint = f"; did you mean {candidate}?"
                    break
            message = f"{event} is not a lifecycle event, so it would never run{hint}"
            line = spec.hook_lines.get(event)
            where = f"{spec.filename}:{line}" if line else spec.filename
            problems.append(Problem(where, f"hooks.{event}", message))
    return problems


def _close(a: str, b: str) -> bool:
    """Edit distance at most 2, or equal ignoring case: enough to catch typos in event names."""
    if a.lower() == b.lower():
        return True
    if abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1] <= 2
