"""One command while it runs: the events in order, each state change reported, one outcome at the end.

`LifecycleRunner.run` (agent/lifecycle/runner.py) makes a `CommandRun` per command. The early check
(agent/lifecycle/early_check.py; its checks: agent/lifecycle/revision_check.py) runs first when the command
includes DownloadBundle; then every event runs in the command's order: the agent's own (DownloadBundle,
Install) here, hook scripts through agent/lifecycle/hooks.py, Install's files through
agent/lifecycle/transaction.py, the waits for the reconciler's load balancer steps through
agent/lifecycle/traffic_wait.py, the HealthCheck step through agent/lifecycle/health_check.py. Times come
from the runner's clock (`now`); the command's overall time limit is measured on the monotonic clock. Reports
and the failure paragraph: agent/lifecycle/reports.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.errors import AgentError, RevisionInvalid, UsageError
from agent.lifecycle.appspec import AppSpec
from agent.lifecycle.early_check import EarlyCheck, run_early_check
from agent.lifecycle.health_check import MISSING_SETTINGS, run_health_check
from agent.lifecycle.hooks import HookSettings, hook_environment, run_script
from agent.lifecycle.install import plan_install
from agent.lifecycle.layout import DeploymentDir, GroupRoot
from agent.lifecycle.reports import CommandOutcome, EventFailed, EventReports
from agent.lifecycle.revision_check import (
    DOWNLOAD_BUNDLE,
    INSTALL,
    PreviousRevision,
    check_event_order,
    effective_behavior,
    read_previous,
    uses_new_revision,
)
from agent.lifecycle.scriptlog import ScriptLog
from agent.lifecycle.traffic_wait import NO_RECONCILER, TrafficGate, waiting_message
from agent.lifecycle.transaction import execute_install, recover_interrupted_install
from contract.vocabulary import (
    HEALTH_CHECK,
    PREVIOUS_REVISION_EVENTS,
    TRAFFIC_STEPS,
    CommandStatus,
    EventStatus,
    LifecycleErrorCode,
)
from contract.wire import EventReport, HostCommand, InstalledRevision

if TYPE_CHECKING:
    from agent.lifecycle.runner import LifecycleRunner

log = structlog.get_logger("agent.lifecycle.runner")


class CommandRun:
    """State of one command while it runs. Kept apart from the runner so `run` stays re-entrant-free."""

    def __init__(
        self,
        runner: LifecycleRunner,
        command: HostCommand,
        on_event: Callable[[EventReport], None] | None,
        should_stop: Callable[[], bool] | None,
        appspec_filename: str | None,
        *,
        on_child: Callable[[int | None, str], None] | None = None,
        traffic_gate: TrafficGate | None = None,
    ) -> None:
        self.settings = runner.settings
        self.layout = runner.layout
        self.now = runner.now
        self.command = command
        self.should_stop = should_stop
        #: Told each child process group the command starts (a hook, git) and None when it is gone, so the
        #: daemon can record it and kill it after a crash (agent/daemon/orphans.py).
        self.on_child = on_child
        #: Waits for the reconciler at BlockTraffic and AllowTraffic (agent/lifecycle/traffic_wait.py).
        self.traffic_gate = traffic_gate
        self.appspec_filename = appspec_filename
        self.events = list(command.events)
        self.deadline = time.monotonic() + command.timeout_seconds if command.timeout_seconds else None
        self.group: GroupRoot | None = None
        self.deployment: DeploymentDir | None = None
        self._previous: PreviousRevision | None = None
        self.script_log: ScriptLog | None = None
        self.early = EarlyCheck()
        self.installed_now = False
        #: Something ran on the host since the early check (a script, a wait for the load balancers): what the
        #: check's install plan saw may have changed, so Install plans again.
        self.touched_since_check = False
        self.hook_settings = HookSettings(self.settings.kill_grace_seconds, self.settings.runas_allowed)
        self.log = log.bind(deployment_id=command.deployment_id, group=command.deployment_group)
        self.reports = EventReports(self.events, on_event, self.now, self.log)

    # -- the command

    def execute(self) -> CommandOutcome:
        command = self.command
        self.log.info("command.started", events=self.events, revision=command.revision.short())
        try:
            check_event_order(self.events)
            if HEALTH_CHECK in self.events and command.health_check is None:
                # Refused before anything runs rather than at the step: the revision would otherwise be
                # installed on every host of the batch only to fail there and be rolled back.
                raise UsageError(MISSING_SETTINGS)
            self.layout.ensure()
            self.group = self.layout.group(command.deployment_group_id)
            self.deployment = self.group.deployment(command.deployment_id)
            self.deployment.logs.mkdir(parents=True, exist_ok=True)
            if self.settings.host_root is not None:
                self.settings.host_root.mkdir(parents=True, exist_ok=True)
            recover_interrupted_install(self.layout, self.group.group_id)
            self.script_log = ScriptLog(
                self.deployment.script_log,
                self.layout.deployments_log,
                command.deployment_id,
                self.settings.report_tail_bytes,
                redact=self.settings.report_redact,
            )
            self.reports.attach(self.script_log, self.deployment.script_log)
        except (AgentError, OSError) as exc:
            message = f"the command could not start: {exc}"
            if self.events:
                self.reports.emit(0, status=EventStatus.FAILED, started_at=self.now(), ended_at=self.now(),
                          error_code=LifecycleErrorCode.UNKNOWN_ERROR, message=message)
            self.reports.skip_rest(1, "not run: the command could not start")
            self.log.error("command.failed", reason=message)
            return self.reports.outcome(CommandStatus.FAILED, message)
        try:
            return self._run_events()
        finally:
            self.script_log.close()
            if self.deployment is not None and not self.script_log.wrote_anything:
                self.deployment.script_log.unlink(missing_ok=True)
            self._stamp_deployment()

    def _stamp_deployment(self) -> None:
        """The folder's modification time is when the command ended by the runner's clock: retention
        (`GroupRoot.prune_revisions`) removes the oldest folders first."""
        if self.deployment is None:
            return
        stamp = self.now().timestamp()
        with contextlib.suppress(OSError):
            os.utime(self.deployment.path, (stamp, stamp))

    def _run_events(self) -> CommandOutcome:
        assert self.deployment is not None and self.script_log is not None
        if DOWNLOAD_BUNDLE in self.events:
            run_early_check(self, self.early)
        for index, event in enumerate(self.events):
            # A failed early check (a stop or the deadline during the fetch included) is reported below as
            # DownloadBundle's own failure, with its message.
            if self.early.failure is None and self.should_stop is not None and self.should_stop():
                done = self.events[index - 1] if index else "the start"
                message = (f"stopped after {done}: the agent is shutting down, so the remaining events were "
                           "skipped")
                self.reports.skip_rest(index, "not run: the agent is shutting down")
                self.log.warning("command.stopped", after=done)
                return self.reports.outcome(CommandStatus.FAILED, message)
            if self.early.failure is None and self.deadline is not None and time.monotonic() >= self.deadline:
                message = (f"the command's time limit of {self.command.timeout_seconds:g} s ran out before "
                           f"{event}")
                self.reports.emit(index, status=EventStatus.FAILED, started_at=self.now(), ended_at=self.now(),
                          error_code=LifecycleErrorCode.UNKNOWN_ERROR, message=message)
                self.reports.skip_rest(index + 1, f"not run: {event} failed")
                return self.reports.outcome(CommandStatus.FAILED, self.reports.explain(event, message, None))
            if event == DOWNLOAD_BUNDLE and self.early.failure is not None:
                failure = self.early.failure
                self.reports.emit(index, status=EventStatus.IN_PROGRESS, started_at=self.early.started_at)
                self.reports.fail(index, failure, ended_at=self.early.ended_at)
                return self.reports.outcome(CommandStatus.FAILED, self.reports.explain(event, failure.message, None))
            if self.early.failure is not None:
                # Before DownloadBundle: nothing of the running application is touched for a revision that
                # cannot be deployed.
                self.reports.emit(index, status=EventStatus.SKIPPED,
                          message="not run: the new revision failed its checks (see DownloadBundle)")
                continue
            started_at = self.early.started_at if event == DOWNLOAD_BUNDLE else self.now()
            # message=None: DownloadBundle's fetch progress while it was Pending is no longer news.
            self.reports.emit(index, status=EventStatus.IN_PROGRESS, started_at=started_at, message=None)
            self.script_log.reset_tail()
            try:
                note = self._run_event_safely(index, event)
            except EventFailed as failure:
                ignorable = event in PREVIOUS_REVISION_EVENTS and self.command.ignore_application_stop_failures
                if ignorable:
                    failure.message += " (ignored: ignore_application_stop_failures is set)"
                self.reports.fail(index, failure, skip_rest=not ignorable)
                if ignorable:
                    continue
                explained = self.reports.explain(event, failure.message, failure.script)
                return self.reports.outcome(CommandStatus.FAILED, explained)
            ended_at = self.early.ended_at if event == DOWNLOAD_BUNDLE else self.now()
            self.reports.emit(index, status=EventStatus.SUCCEEDED, ended_at=ended_at, message=note,
                      log_tail=self.script_log.tail())
        installed = self._record_success() if self.installed_now else None
        self.log.info("command.succeeded")
        return self.reports.outcome(CommandStatus.SUCCEEDED, None, installed)

    # -- one event

    def _run_event_safely(self, index: int, event: str) -> str | None:
        """A bug or an unexpected host error fails the event with a message instead of killing the agent."""
        try:
            return self._run_event(index, event)
        except EventFailed:
            raise
        except AgentError as exc:
            raise EventFailed(str(exc), error_code=exc.error_code) from exc
        except OSError as exc:
            raise EventFailed(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from exc
        except Exception as exc:
            self.log.exception("event.internal_error", lifecycle_event=event)
            raise EventFailed(f"internal error in the agent: {exc!r}") from exc

    def _run_event(self, index: int, event: str) -> str | None:
        """Run one event; returns a note for its report, raises `EventFailed`."""
        if event == DOWNLOAD_BUNDLE:
            assert self.deployment is not None and self.group is not None
            self.group.set_most_recent_install(self.deployment)
            if self.early.warnings:
                shown = "; ".join(str(w) for w in self.early.warnings[:5])
                more = f" (and {len(self.early.warnings) - 5} more)" if len(self.early.warnings) > 5 else ""
                return f"{len(self.early.warnings)} warning(s): {shown}{more}"
            return None
        if event == INSTALL:
            return self._install()
        if event in TRAFFIC_STEPS:
            return self._traffic_step(index, event)
        if event == HEALTH_CHECK:
            return self._health_check(index)
        if uses_new_revision(self.events, index):
            assert self.deployment is not None and self.early.spec is not None
            return self._run_scripts(event, self.early.spec, self.deployment.archive, previous=False)
        return self._run_previous_revision(event)

    def _traffic_step(self, index: int, event: str) -> str | None:
        """BlockTraffic / AllowTraffic: the reconciler changes the load balancers; this host waits for it."""
        if self.traffic_gate is None:
            return NO_RECONCILER
        self.touched_since_check = True
        self.reports.emit(index, message=waiting_message(event))
        outcome = self.traffic_gate(self.command, event, self.should_stop, self.deadline)
        if not outcome.succeeded:
            raise EventFailed(outcome.message)
        return outcome.message

    def _health_check(self, index: int) -> str | None:
        """HealthCheck: GET the service until it has stayed healthy long enough (agent/lifecycle/health_check.py).
        Unlike the traffic steps it needs no reconciler, so `deploy-agent local` runs it too."""
        self.touched_since_check = True
        check = self.command.health_check
        if check is None:  # refused in `execute` already; kept so the step can never pass unchecked
            raise EventFailed(MISSING_SETTINGS)
        outcome = run_health_check(
            check,
            should_stop=self.should_stop,
            deadline=self.deadline,
            command_timeout=self.command.timeout_seconds,
            on_progress=lambda text: self.reports.emit(index, message=text),
        )
        if not outcome.succeeded:
            raise EventFailed(outcome.message)
        return outcome.message

    def previous_revision(self) -> PreviousRevision:
        """The group's last installed revision, read once per command: the early check and the events that
        run its scripts (all before Install, so it cannot change in between) share it."""
        assert self.group is not None
        if self._previous is None:
            self._previous = read_previous(self.group, self.appspec_filename)
        return self._previous

    def _run_previous_revision(self, event: str) -> str | None:
        previous = self.previous_revision()
        if previous.folder is None:
            return "nothing to run: no earlier revision of this deployment group is installed on this host"
        if isinstance(previous.error, RevisionInvalid):
            hint = ""
            if event == "ApplicationStop" and not self.command.ignore_application_stop_failures:
                hint = "; deploy with ignore_application_stop_failures to get past it"
            raise EventFailed(
                f"cannot read the last installed revision's appspec in {previous.folder.archive} to run its {event} "
                f"scripts: {previous.error}{hint}"
            ) from previous.error
        if previous.error is not None:
            raise previous.error
        assert previous.spec is not None
        return self._run_scripts(event, previous.spec, previous.folder.archive, previous=True)

    def _run_scripts(self, event: str, spec: AppSpec, archive: Path, *, previous: bool) -> str | None:
        assert self.script_log is not None
        scripts = spec.scripts_for(event)
        if not scripts:
            return None
        self.touched_since_check = True
        self.script_log.event(event)
        environment = hook_environment(self.command, event, self.settings.host_root)
        self.script_log.learn(environment)
        for script in scripts:
            outcome = run_script(
                script,
                archive_dir=archive,
                environment=environment,
                script_log=self.script_log,
                settings=self.hook_settings,
                deadline=self.deadline,
                on_spawn=self._hook_child(script.location),
            )
            if not outcome.succeeded:
                assert outcome.error_code is not None and outcome.message is not None
                origin = " (from the last installed revision)" if previous else ""
                raise EventFailed(
                    outcome.message + origin,
                    error_code=outcome.error_code,
                    exit_code=outcome.exit_code,
                    script=script.location,
                )
        if previous:
            return f"ran {len(scripts)} script(s) of the last installed revision ({archive.parent.name})"
        return None

    def _hook_child(self, location: str) -> Callable[[int | None], None] | None:
        on_child = self.on_child
        if on_child is None:
            return None
        return lambda pid: on_child(pid, f"hook {location}")

    def _install(self) -> str | None:
        assert self.deployment is not None and self.early.spec is not None and self.group is not None
        group = self.group
        plan = self.early.plan
        if plan is None or plan.all_problems() or self.touched_since_check:
            # Planned again now: a script (BeforeInstall, ApplicationStop) may have removed files in the way,
            # created users or changed the bundle, and a wait for the load balancers leaves the host to others
            # for a while. Otherwise the check's plan is current: it was made moments ago from the same appspec,
            # bundle and cleanup list, and the transaction still refuses to create over anything that appeared.
            behavior = effective_behavior(self.early.spec, self.command.file_exists_behavior)
            plan = plan_install(
                self.early.spec,
                self.deployment.archive,
                behavior=behavior,
                previous_cleanup=group.read_cleanup(),
                host_root=self.settings.host_root,
            )
        problems = plan.all_problems()
        if problems:
            detail = "; ".join(str(p) for p in problems)
            raise EventFailed(f"nothing was changed, the previous revision is still installed: {detail}")
        try:
            result = execute_install(plan, layout=self.layout, group_id=group.group_id, deployment=self.deployment)
        except AgentError as exc:
            raise EventFailed(str(exc), error_code=exc.error_code) from exc
        # Like the reference agent, the next deployment's ApplicationStop now uses this revision's scripts,
        # even if a later event of this deployment fails (the files are in place).
        group.set_last_successful_install(self.deployment)
        self.installed_now = True
        retained = f", kept {len(plan.retained)} existing (RETAIN)" if plan.retained else ""
        return f"installed {len(result.created)} paths, removed {result.removed} of the previous revision{retained}"

    def _record_success(self) -> InstalledRevision:
        assert self.group is not None
        command = self.command
        installed = InstalledRevision(
            application=command.application,
            deployment_group=command.deployment_group,
            revision=command.revision,
            deployment_id=command.deployment_id,
            installed_at=self.now(),
        )
        try:
            self.group.record_installed(installed)
        except OSError as exc:
            # The deployment itself succeeded; only `last_successful` will not know about it after a restart.
            self.log.error("command.record_failed", error=str(exc))
        return installed
