"""The lifecycle runner: one `HostCommand` in, lifecycle events run in CodeDeploy's order, one outcome out.

The daemon (agent/daemon/loop.py) calls `LifecycleRunner.run` for each new command and forwards every event
report to the store; `deploy-agent local` calls it with a command it builds from the command line.

Order and semantics follow the reference agent (reference 2.1-2.2, 3.2): BeforeBlockTraffic,
AfterBlockTraffic and ApplicationStop run the scripts of the group's last successful install (nothing on a
first deployment) with the new deployment's environment; DownloadBundle fetches and unpacks; Install
copies files; the other hooks run the new revision's scripts; the first failure skips the rest.

What this runner does differently, and why:

- **The new revision is checked before anything runs.** When the command includes DownloadBundle, the
  bundle is fetched, unpacked and checked (the whole appspec, hook names, scripts, runas users, the install
  plan and its conflicts) *before the first event*, so a broken bundle no longer stops the running
  application (ApplicationStop) or removes the previous revision's files before failing. Events are still
  reported in CodeDeploy's order; DownloadBundle's report carries the times the fetch really ran. If the
  check fails, DownloadBundle is reported Failed and the events before it Skipped.
- Problems that a hook could still fix before they matter (a file in the way under DISALLOW, a user that
  BeforeInstall creates) only fail early when no script runs before the point of use; otherwise they are
  checked again at that point, which keeps existing bundles that clean up in BeforeInstall working.
- Install is all or nothing (agent/lifecycle/install.py).
"""

from __future__ import annotations

import os
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.errors import AgentError, Problem, RevisionInvalid, UsageError
from agent.fetch import ExtractLimits, FetchedBundle, bundle_environment, fetch_bundle, unpack_bundle
from agent.lifecycle.appspec import AppSpec, bundle_relative, load_appspec, unknown_hook_problems
from agent.lifecycle.hooks import HookSettings, resolve_runas, run_script
from agent.lifecycle.install import InstallPlan, plan_install
from agent.lifecycle.layout import DeploymentDir, DeploymentRoot
from agent.lifecycle.scriptlog import ScriptLog
from agent.lifecycle.transaction import execute_install, recover_interrupted_install
from contract.models import (
    LIFECYCLE_EVENTS,
    PREVIOUS_REVISION_EVENTS,
    CommandStatus,
    EventReport,
    EventStatus,
    FileExistsBehavior,
    HostCommand,
    InstalledRevision,
    LifecycleErrorCode,
)

log = structlog.get_logger("agent.lifecycle.runner")

DOWNLOAD_BUNDLE = "DownloadBundle"
INSTALL = "Install"


@dataclass(frozen=True)
class RunnerSettings:
    root_dir: Path  # deployment root (like /opt/codedeploy-agent/deployment-root)
    host_root: Path | None = None  # prefix for absolute appspec destinations; None = "/"
    max_revisions: int = 5
    log_tail_chars: int = 2048
    kill_grace_seconds: float = 10.0  # SIGTERM -> SIGKILL escalation for timed-out hooks
    runas_allowed: bool = True
    #: Caps on unpacked bundles (entries, bytes): a zip bomb fails DownloadBundle instead of filling the disk.
    extract_limits: ExtractLimits = field(default_factory=ExtractLimits)


@dataclass(frozen=True)
class CommandOutcome:
    status: CommandStatus  # Succeeded | Failed
    events: list[EventReport]  # final report of every event in the command (Skipped after a failure)
    installed: InstalledRevision | None  # set when the deployment succeeded
    message: str | None  # one-paragraph explanation on failure (event, script, why, log tail, log path)
    log_path: Path | None


def new_local_deployment_id() -> str:
    """`d-` and nine characters, like CodeDeploy's ids, with the `-local` suffix codedeploy-local uses."""
    alphabet = string.ascii_uppercase + string.digits
    return "d-" + "".join(secrets.choice(alphabet) for _ in range(9)) + "-local"


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# Checking a revision (shared by the runner's early check and `deploy-agent validate`)


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
    """Previous-revision events use the new revision once DownloadBundle has run (codedeploy-local)."""
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
        if event not in LIFECYCLE_EVENTS and not spec.scripts_for(event):
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


def previous_appspec(layout: DeploymentRoot, group_id: str, appspec_filename: str | None) -> AppSpec | None:
    """The last installed revision's appspec, or None if there is none or it cannot be read (then its
    events fail on their own, with their own message)."""
    previous = layout.last_successful_install(group_id)
    if previous is None:
        return None
    try:
        return load_appspec(previous.archive, appspec_filename)
    except AgentError:
        return None


def check_event_order(events: list[str]) -> None:
    """Refuse event lists that cannot work, before anything runs: every event that needs the new
    revision must come after DownloadBundle."""
    if not events:
        raise UsageError("the command has no lifecycle events to run")
    for index, event in enumerate(events):
        if event == DOWNLOAD_BUNDLE and DOWNLOAD_BUNDLE in events[:index]:
            raise UsageError("DownloadBundle is listed twice in the command's events")
        if uses_new_revision(events, index) and event != DOWNLOAD_BUNDLE and DOWNLOAD_BUNDLE not in events[:index]:
            raise UsageError(
                f"{event} runs the new revision's scripts, so DownloadBundle must come before it in the events "
                f"({', '.join(events)}); only {', '.join(sorted(PREVIOUS_REVISION_EVENTS))} may come before it"
            )


# --------------------------------------------------------------------------------------------------
# The runner


class LifecycleRunner:
    """Runs commands one at a time against one deployment root. Not thread-safe: one runner per agent."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.layout = DeploymentRoot(settings.root_dir)

    def run(
        self,
        command: HostCommand,
        on_event: Callable[[EventReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        appspec_filename: str | None = None,
    ) -> CommandOutcome:
        """Run every event of `command` in order and report each state change through `on_event`."""
        run = _CommandRun(self, command, on_event, should_stop, appspec_filename)
        return run.execute()

    def last_successful(self, application: str, deployment_group: str) -> InstalledRevision | None:
        """The last deployment of this group that succeeded end to end on this host (None if none did)."""
        return self.layout.find_installed(application, deployment_group)

    def recover_interrupted(self) -> list[str]:
        """Undo every Install a crash cut off, so the previous revisions are back in place. For the daemon
        to call once at start-up; `run` also does it for its own group. Returns the group ids recovered."""
        recovered: list[str] = []
        if not self.layout.instructions.is_dir():
            return recovered
        for journal in sorted(self.layout.instructions.glob("*-install-journal")):
            group_id = journal.name.removesuffix("-install-journal")
            if recover_interrupted_install(self.layout, group_id):
                recovered.append(group_id)
        return recovered


class _EventFailed(Exception):
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


@dataclass
class _EarlyCheck:
    fetched: FetchedBundle | None = None
    spec: AppSpec | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    failure: _EventFailed | None = None
    warnings: list[Problem] = field(default_factory=list)


class _CommandRun:
    """State of one command while it runs. Kept apart from the runner so `run` stays re-entrant-free."""

    def __init__(
        self,
        runner: LifecycleRunner,
        command: HostCommand,
        on_event: Callable[[EventReport], None] | None,
        should_stop: Callable[[], bool] | None,
        appspec_filename: str | None,
    ) -> None:
        self.settings = runner.settings
        self.layout = runner.layout
        self.command = command
        self.on_event = on_event
        self.should_stop = should_stop
        self.appspec_filename = appspec_filename
        self.events = list(command.events)
        self.reports = [EventReport(name=name) for name in self.events]
        self.deadline = time.monotonic() + command.timeout_seconds if command.timeout_seconds else None
        self.deployment: DeploymentDir | None = None
        self.script_log: ScriptLog | None = None
        self.early = _EarlyCheck()
        self.installed_now = False
        self.hook_settings = HookSettings(self.settings.kill_grace_seconds, self.settings.runas_allowed)
        self.log = log.bind(deployment_id=command.deployment_id, group=command.deployment_group)

    # -- reporting

    def emit(self, index: int, **changes: object) -> None:
        self.reports[index] = self.reports[index].model_copy(update=changes)
        if self.on_event is not None:
            self.on_event(self.reports[index])

    def skip_rest(self, start: int, reason: str) -> None:
        for index in range(start, len(self.events)):
            if self.reports[index].status == EventStatus.PENDING:
                self.emit(index, status=EventStatus.SKIPPED, message=reason)

    def outcome(
        self, status: CommandStatus, message: str | None, installed: InstalledRevision | None = None
    ) -> CommandOutcome:
        log_path = None
        if self.deployment is not None and self.script_log is not None and self.script_log.wrote_anything:
            log_path = self.deployment.script_log
        return CommandOutcome(status, list(self.reports), installed, message, log_path)

    # -- the command

    def execute(self) -> CommandOutcome:
        command = self.command
        self.log.info("command.started", events=self.events, revision=command.revision.short())
        try:
            check_event_order(self.events)
            self.layout.ensure()
            self.deployment = self.layout.deployment(command.deployment_group_id, command.deployment_id)
            self.deployment.logs.mkdir(parents=True, exist_ok=True)
            if self.settings.host_root is not None:
                self.settings.host_root.mkdir(parents=True, exist_ok=True)
            recover_interrupted_install(self.layout, command.deployment_group_id)
            self.script_log = ScriptLog(
                self.deployment.script_log,
                self.layout.deployments_log,
                command.deployment_id,
                self.settings.log_tail_chars,
            )
        except (AgentError, OSError) as exc:
            message = f"the command could not start: {exc}"
            if self.events:
                self.emit(0, status=EventStatus.FAILED, started_at=_now(), ended_at=_now(),
                          error_code=LifecycleErrorCode.UNKNOWN_ERROR, message=message)
            self.skip_rest(1, "not run: the command could not start")
            self.log.error("command.failed", reason=message)
            return self.outcome(CommandStatus.FAILED, message)
        try:
            return self._run_events()
        finally:
            self.script_log.close()
            if self.deployment is not None and not self.script_log.wrote_anything:
                self.deployment.script_log.unlink(missing_ok=True)

    def _run_events(self) -> CommandOutcome:
        assert self.deployment is not None and self.script_log is not None
        if DOWNLOAD_BUNDLE in self.events:
            self._early_check()
        for index, event in enumerate(self.events):
            if self.should_stop is not None and self.should_stop():
                done = self.events[index - 1] if index else "the start"
                message = (f"stopped after {done}: the agent is shutting down, so the remaining events were "
                           "skipped")
                self.skip_rest(index, "not run: the agent is shutting down")
                self.log.warning("command.stopped", after=done)
                return self.outcome(CommandStatus.FAILED, message)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                message = (f"the command's time limit of {self.command.timeout_seconds:g} s ran out before "
                           f"{event}")
                self.emit(index, status=EventStatus.FAILED, started_at=_now(), ended_at=_now(),
                          error_code=LifecycleErrorCode.UNKNOWN_ERROR, message=message)
                self.skip_rest(index + 1, f"not run: {event} failed")
                return self.outcome(CommandStatus.FAILED, self._explain(event, message, None))
            if event == DOWNLOAD_BUNDLE and self.early.failure is not None:
                failure = self.early.failure
                self.emit(index, status=EventStatus.IN_PROGRESS, started_at=self.early.started_at)
                self._report_failure(index, failure, ended_at=self.early.ended_at)
                return self.outcome(CommandStatus.FAILED, self._explain(event, failure.message, None))
            if self.early.failure is not None:
                # Before DownloadBundle: nothing of the running application is touched for a revision that
                # cannot be deployed.
                self.emit(index, status=EventStatus.SKIPPED,
                          message="not run: the new revision failed its checks (see DownloadBundle)")
                continue
            started_at = self.early.started_at if event == DOWNLOAD_BUNDLE else _now()
            self.emit(index, status=EventStatus.IN_PROGRESS, started_at=started_at)
            self.script_log.reset_tail()
            try:
                note = self._run_event_safely(index, event)
            except _EventFailed as failure:
                ignorable = event in PREVIOUS_REVISION_EVENTS and self.command.ignore_application_stop_failures
                if ignorable:
                    failure.message += " (ignored: ignore_application_stop_failures is set)"
                self._report_failure(index, failure)
                if ignorable:
                    continue
                return self.outcome(CommandStatus.FAILED, self._explain(event, failure.message, failure.script))
            ended_at = self.early.ended_at if event == DOWNLOAD_BUNDLE else _now()
            self.emit(index, status=EventStatus.SUCCEEDED, ended_at=ended_at, message=note,
                      log_tail=self.script_log.tail())
        installed = self._record_success() if self.installed_now else None
        self.log.info("command.succeeded")
        return self.outcome(CommandStatus.SUCCEEDED, None, installed)

    def _report_failure(self, index: int, failure: _EventFailed, ended_at: datetime | None = None) -> None:
        assert self.script_log is not None
        self.emit(
            index,
            status=EventStatus.FAILED,
            ended_at=ended_at or _now(),
            exit_code=failure.exit_code,
            error_code=failure.error_code,
            message=failure.message,
            log_tail=self.script_log.tail(),
        )
        self.log.error("event.failed", lifecycle_event=self.events[index], reason=failure.message)
        if not (self.events[index] in PREVIOUS_REVISION_EVENTS and self.command.ignore_application_stop_failures):
            self.skip_rest(index + 1, f"not run: {self.events[index]} failed")

    def _explain(self, event: str, reason: str, script: str | None) -> str:
        """The one paragraph a person reads: which event, which script, why, the output, where the log is."""
        assert self.script_log is not None and self.deployment is not None
        # A reason that ends a sentence itself ("was it pushed?") must not get a second full stop.
        text = f"{event} failed: {reason}" + ("" if reason.endswith((".", "?", "!")) else ".")
        tail = self.script_log.tail() if script else None
        lines = [line for line in (tail or "").split("\n") if line and not line.startswith("[agent]")]
        if lines:
            text += " Last output: " + " | ".join(lines[-10:]) + "."
        if self.script_log.wrote_anything:
            text += f" Full log: {self.deployment.script_log}"
        return text

    # -- the early check

    def _early_check(self) -> None:
        assert self.deployment is not None
        command = self.command
        self.early.started_at = _now()
        try:
            self.layout.prune_revisions(command.deployment_group_id, self.deployment, self.settings.max_revisions)
            fetched = fetch_bundle(command.revision, self.deployment.path, git_cache_dir=self.layout.git_cache)
            unpack_bundle(fetched, self.deployment.archive, self.settings.extract_limits)
            self.early.fetched = fetched
            check = check_revision(
                self.deployment.archive,
                events=self.events,
                appspec_filename=self.appspec_filename,
                file_exists_behavior=command.file_exists_behavior,
                previous_cleanup=self.layout.read_cleanup(command.deployment_group_id),
                host_root=self.settings.host_root,
                runas_allowed=self.settings.runas_allowed,
            )
            self.early.spec = check.spec
            self.early.warnings = list(check.warnings)
            for warning in check.warnings:
                self.log.warning("revision.warning", problem=str(warning))
            previous = previous_appspec(self.layout, command.deployment_group_id, self.appspec_filename)
            fatal = check.fatal(lambda event: scripts_run_before(event, self.events, check.spec, previous))
            if fatal:
                raise RevisionInvalid(fatal, headline="the new revision was checked before anything ran and "
                                      "cannot be deployed")
        except AgentError as exc:
            self.early.failure = _EventFailed(str(exc), error_code=exc.error_code)
        except OSError as exc:
            self.early.failure = _EventFailed(f"cannot prepare the deployment folder: {exc}")
        self.early.ended_at = _now()

    # -- one event

    def _run_event_safely(self, index: int, event: str) -> str | None:
        """A bug or an unexpected host error fails the event with a message instead of killing the agent."""
        try:
            return self._run_event(index, event)
        except _EventFailed:
            raise
        except AgentError as exc:
            raise _EventFailed(str(exc), error_code=exc.error_code) from exc
        except OSError as exc:
            raise _EventFailed(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from exc
        except Exception as exc:
            self.log.exception("event.internal_error", lifecycle_event=event)
            raise _EventFailed(f"internal error in the agent: {exc!r}") from exc

    def _run_event(self, index: int, event: str) -> str | None:
        """Run one event; returns a note for its report, raises `_EventFailed`."""
        if event == DOWNLOAD_BUNDLE:
            assert self.deployment is not None
            self.layout.set_most_recent_install(self.command.deployment_group_id, self.deployment)
            if self.early.warnings:
                shown = "; ".join(str(w) for w in self.early.warnings[:5])
                more = f" (and {len(self.early.warnings) - 5} more)" if len(self.early.warnings) > 5 else ""
                return f"{len(self.early.warnings)} warning(s): {shown}{more}"
            return None
        if event == INSTALL:
            return self._install()
        if uses_new_revision(self.events, index):
            assert self.deployment is not None and self.early.spec is not None
            return self._run_scripts(event, self.early.spec, self.deployment.archive, previous=False)
        return self._run_previous_revision(event)

    def _run_previous_revision(self, event: str) -> str | None:
        group_id = self.command.deployment_group_id
        previous = self.layout.last_successful_install(group_id)
        if previous is None:
            return "nothing to run: no earlier revision of this deployment group is installed on this host"
        try:
            spec = load_appspec(previous.archive, self.appspec_filename)
        except RevisionInvalid as exc:
            hint = ""
            if event == "ApplicationStop" and not self.command.ignore_application_stop_failures:
                hint = "; deploy with ignore_application_stop_failures to get past it"
            raise _EventFailed(
                f"cannot read the last installed revision's appspec in {previous.archive} to run its {event} "
                f"scripts: {exc}{hint}"
            ) from exc
        return self._run_scripts(event, spec, previous.archive, previous=True)

    def _run_scripts(self, event: str, spec: AppSpec, archive: Path, *, previous: bool) -> str | None:
        assert self.script_log is not None
        scripts = spec.scripts_for(event)
        if not scripts:
            return None
        self.script_log.event(event)
        environment = self._environment(event)
        for script in scripts:
            outcome = run_script(
                script,
                archive_dir=archive,
                environment=environment,
                script_log=self.script_log,
                settings=self.hook_settings,
                deadline=self.deadline,
            )
            if not outcome.succeeded:
                assert outcome.error_code is not None and outcome.message is not None
                origin = " (from the last installed revision)" if previous else ""
                raise _EventFailed(
                    outcome.message + origin,
                    error_code=outcome.error_code,
                    exit_code=outcome.exit_code,
                    script=script.location,
                )
        if previous:
            return f"ran {len(scripts)} script(s) of the last installed revision ({archive.parent.name})"
        return None

    def _environment(self, event: str) -> dict[str, str]:
        command = self.command
        environment = {key: value for key, value in os.environ.items() if not key.startswith("BUNDLE_")}
        environment.update(
            LIFECYCLE_EVENT=event,
            DEPLOYMENT_ID=command.deployment_id,
            APPLICATION_NAME=command.application,
            DEPLOYMENT_GROUP_NAME=command.deployment_group,
            DEPLOYMENT_GROUP_ID=command.deployment_group_id,
            # Where absolute destinations really land: empty in production (host root `/`), the sandbox
            # folder under `--host-root`, so `"$FLEETSHIFT_HOST_ROOT/srv/app"` is right in both. Always set,
            # so scripts under `set -u` work too.
            FLEETSHIFT_HOST_ROOT=host_root_text(self.settings.host_root),
        )
        environment.update(bundle_environment(command.revision))
        return environment

    def _install(self) -> str | None:
        assert self.deployment is not None and self.early.spec is not None
        group_id = self.command.deployment_group_id
        behavior = effective_behavior(self.early.spec, self.command.file_exists_behavior)
        # Planned again now: BeforeInstall may have removed files in the way or created users.
        plan = plan_install(
            self.early.spec,
            self.deployment.archive,
            behavior=behavior,
            previous_cleanup=self.layout.read_cleanup(group_id),
            host_root=self.settings.host_root,
        )
        problems = plan.all_problems()
        if problems:
            detail = "; ".join(str(p) for p in problems)
            raise _EventFailed(f"nothing was changed, the previous revision is still installed: {detail}")
        try:
            result = execute_install(plan, layout=self.layout, group_id=group_id, deployment=self.deployment)
        except AgentError as exc:
            raise _EventFailed(str(exc), error_code=exc.error_code) from exc
        # Like the reference agent, the next deployment's ApplicationStop now uses this revision's scripts,
        # even if a later event of this deployment fails (the files are in place).
        self.layout.set_last_successful_install(group_id, self.deployment)
        self.installed_now = True
        retained = f", kept {len(plan.retained)} existing (RETAIN)" if plan.retained else ""
        return f"installed {len(result.created)} paths, removed {result.removed} of the previous revision{retained}"

    def _record_success(self) -> InstalledRevision:
        command = self.command
        installed = InstalledRevision(
            application=command.application,
            deployment_group=command.deployment_group,
            revision=command.revision,
            deployment_id=command.deployment_id,
            installed_at=_now(),
        )
        try:
            self.layout.record_installed(command.deployment_group_id, installed)
        except OSError as exc:
            # The deployment itself succeeded; only `last_successful` will not know about it after a restart.
            self.log.error("command.record_failed", error=str(exc))
        return installed


def host_root_text(host_root: Path | None) -> str:
    """`FLEETSHIFT_HOST_ROOT` for hooks: "" for the real root, so a script prefixes absolute paths with it
    unconditionally; never a trailing `/`, so `$FLEETSHIFT_HOST_ROOT/etc` has no `//`."""
    if host_root is None:
        return ""
    return str(host_root.absolute()).rstrip("/")



__all__ = [
    "CommandOutcome",
    "LifecycleRunner",
    "RevisionCheck",
    "RunnerSettings",
    "check_event_order",
    "check_revision",
    "new_local_deployment_id",
]
