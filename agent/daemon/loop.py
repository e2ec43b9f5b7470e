"""`deploy-agent run`: the long-running agent that turns commands in the store into deployments on this host.

Where it sits: between the store (contract/store) and the lifecycle runner (agent/lifecycle/runner.py). The reconciler
writes `commands/<host>.json`; this loop notices a new generation with a conditional read, hands the command
to the runner, and writes every lifecycle event's progress into `hosts/<host>/status.json` as it happens,
ending with the revision now installed per deployment group. Its neighbours: agent/daemon/cli.py (the command
line), progress.py (the pure bookkeeping), statefile.py (the state file and the root lock), claim.py (owning
the host id), identity.py (this installation's identity), retry.py (store outages), clock.py (the clocks),
agent/metrics.py (what it counts for Prometheus, when agent.yaml asks).

Two threads, one writer each:

- the **main thread** polls the command and runs it (the runner is synchronous). Between polls it waits for a
  change of the command key on a file store (command_watch.py), and elsewhere paces its polls by whether a
  deployment of one of its groups is in flight (rollout_signal.py; `_idle_wait`);
- the **reporter thread** owns every store write (registration, status, heartbeats). Progress is handed over
  as a change counter, so a slow or unreachable store never stalls a hook, and several events that happen
  during one store round trip are written once, newest state first. While a command runs, the reporter also
  watches the command key at the busy interval, so a newer command stops the current one after its current
  event (like CodeDeploy's StopDeployment).

Exactly once (docs/design.md, "Exactly once across restarts"): before a command starts, the agent writes a small
state file (`<root>/ongoing-deployment`) atomically, and updates it at each event. A generation at or below the
one recorded there is never run again. If the agent finds the file saying a command was running, the agent died
during it: the event in progress is reported Failed with `FailedAfterRestart` and the command is not run again.
The store's own copy of the status is a second guard, for a deployment root that was wiped.

Store outages: the agent keeps running, backs off (up to 30 s), keeps the result in the state file and
reports it when the store answers again, even after a restart.

One installation per host id: see agent/daemon/claim.py. Before reading its first command the agent claims the
host id; a conflict found then or later (while it runs) ends the agent with exit 1.

Why over 400 lines: the Agent is one object shared by two threads under one lock; its polling, running and
reporting halves read and write the same fields, and splitting them into classes would spread that lock.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from agent import __version__
from agent.daemon import orphans
from agent.daemon.claim import HostIdOwner
from agent.daemon.command_watch import CommandWatch, watch_for
from agent.daemon.commands import CommandReader
from agent.daemon.identity import (
    HostIdInUse,
    Installation,
    StateError,
    load_installation,
    machine_fingerprint,
)
from agent.daemon.progress import (
    AgentState,
    apply_event,
    fail_unfinished,
    finish_after_restart,
    relabel_superseded,
    unreadable_command,
)
from agent.daemon.retry import Backoff, StoreHealth
from agent.daemon.rollout_signal import RolloutSignal
from agent.daemon.statefile import LocalState
from agent.daemon.traffic_gate import StoreTrafficGate
from agent.metrics import AgentMetrics
from agent.settings import AgentSettings
from contract.clock import Monotonic, Now, utc_now
from contract.exitcodes import ExitCode
from contract.keys import command_key
from contract.store import Store, StoreError
from contract.vocabulary import MAX_REFUSALS, CommandStatus, LifecycleErrorCode, group_key
from contract.wire import CommandProgress, CommandRefusal, EventReport, HostCommand, HostStatus, InstalledRevision

if TYPE_CHECKING:
    from agent.lifecycle.runner import LifecycleRunner

log = structlog.get_logger("agent.daemon.loop")

#: After a command ends the agent keeps polling at the busy interval this long: a rollback or the next
#: deployment for this host usually follows within seconds.
BUSY_WINDOW = timedelta(minutes=1)





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
        metrics: AgentMetrics | None = None,
        now: Now = utc_now,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        """`now` is the clock for times written to the store and compared with other machines' (heartbeats);
        `monotonic` schedules polls, heartbeats and the flush at shutdown, and must advance. `metrics`: where
        polls, events, commands, refusals and failed writes are counted (agent/metrics.py); none by default."""
        self.settings = settings
        self.store = store
        self.runner = runner
        self.stop = stop
        self.host_id = settings.host_id
        self.now = now
        self.monotonic = monotonic
        self.metrics = metrics if metrics is not None else AgentMetrics()
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
        #: Created in `_start` with the installation: every registration and status write goes through it.
        self._owner: HostIdOwner | None = None
        self._started_at = now()
        #: Set (with the message) when another installation took this host id while we ran.
        self._conflict: str | None = None
        self._closing = False
        self._abandon = False
        self._superseded_by: HostCommand | None = None
        self._failed_reported = False
        self._commands = CommandReader(store, self.host_id)
        #: Signatures are checked (agent.yaml `commandSigning`): then a signed command older than the last one
        #: run is a replay, refused and reported; without signatures it is only ignored, as before.
        self._verifying = getattr(store, "trust", None) is not None
        #: Refused documents, newest last (at most MAX_REFUSALS), and how many since start.
        self._refusals: list[CommandRefusal] = []
        self._refused_total = 0
        self._busy_until = 0.0
        #: On a file store, wakes the idle loop when the command key changes (created in `run_forever`).
        self._command_watch: CommandWatch | None = None
        #: Elsewhere, whether a deployment is in flight in one of this host's groups, and when to look again.
        self._rollout = RolloutSignal(store)
        self._next_signal_read = 0.0
        self._poll_health = StoreHealth(monotonic)
        self._report_health = StoreHealth(monotonic)
        self._reporter = threading.Thread(target=self._report_loop, name="reporter", daemon=True)
        # While a command waits for the reconciler, poll as often as the agent is told to poll at its busiest.
        gate_interval = min(settings.busy_poll_interval, settings.poll_interval).total_seconds()
        self._traffic_gate = StoreTrafficGate(store, self.host_id, interval=gate_interval, stop=stop)

    # ----------------------------------------------------------------------------------------------
    # Entry points

    def run_forever(self) -> ExitCode:
        self._start()
        self._command_watch = watch_for(self.store, self.host_id, self.stop)
        backoff = Backoff()
        try:
            while not self.stop.is_set():
                try:
                    command = self._poll()
                except StoreError as exc:
                    self._poll_health.failed(exc, "reading the command")
                    self.metrics.poll_failed()
                    self.metrics.flush()
                    self.stop.wait(backoff.next())
                    continue
                self._poll_health.succeeded()
                self.metrics.poll_succeeded(self.now())
                self.metrics.flush()
                backoff.reset()
                if command is not None:
                    self._execute(command)
                    continue  # look again at once: a newer command may be waiting
                self._idle_wait()
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
            self.metrics.poll_failed()
            self._shutdown(0.0)
            return ExitCode.STORE_UNAVAILABLE
        self.metrics.poll_succeeded(self.now())
        if command is not None:
            self._execute(command)
        if not self._shutdown(self.settings.report_timeout.total_seconds()):
            self._raise_conflict()
            self.log.error("store.unavailable", doing="reporting", error=self._report_health.last_error,
                           kept_in=str(self.local.path))
            return ExitCode.STORE_UNAVAILABLE
        return ExitCode.FAILED if self._failed_reported else ExitCode.OK

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
        self._installed = self.runner.layout.installed_revisions()
        for installed_revision in self._installed.values():
            self._rollout.track(installed_revision.application, installed_revision.deployment_group)
        self._state = state or AgentState(host_id=self.host_id)
        if self._installation is None:
            self._installation, warning = load_installation(self.settings.root_dir, machine=machine_fingerprint())
            if warning is not None:
                self.log.warning("installation.copied_root", message=warning,
                                 installation_id=self._installation.installation_id,
                                 replaces=self._installation.replaces)
        self._owner = HostIdOwner(self.settings, self.store, self.installation, take_over=self._take_over,
                                  hostname=socket.gethostname(), log=self.log, now=self.now,
                                  monotonic=self.monotonic)
        if state is not None and state.child is not None:
            # A hook or git still running from before the crash: stop it before the command is reported failed
            # and a rollback can run next to it.
            alive = orphans.reap(state.child)
            self.log.warning("child.reaped_after_restart", what=state.child.what, pgid=state.child.pgid,
                             processes=alive)
            self._state = state = state.model_copy(update={"child": None})
            try:
                self.local.save(state)
            except OSError as exc:
                self.log.warning("state.save_failed", path=str(self.local.path), error=str(exc))
        if state is not None and state.running and state.progress is not None and state.command is not None:
            command = state.command
            installed = self.runner.last_successful(command.application, command.deployment_group)
            progress = finish_after_restart(state.progress, installed, now=self.now())
            if progress.status == CommandStatus.SUCCEEDED and installed is not None:
                self._installed[group_key(installed.application, installed.deployment_group)] = installed
            self._settled(state.progress, progress, source="state file")
        elif not self._state.reported and self._state.progress is not None:
            self._failed_reported = self._state.progress.status == CommandStatus.FAILED
        self.log.info("agent.started", version=__version__, store=self.store.url,
                      installation_id=self.installation.installation_id,
                      root_dir=str(self.settings.root_dir), last_generation=self._state.last_generation,
                      pending_report=not self._state.reported, verifies_signatures=self._verifying)
        if not self._verifying:
            self.log.warning("signing.not_verified", hint="commandSigning.trustedKeys is empty: this agent runs "
                             "whatever the store says, so anyone who can write the store can run programs here "
                             "(docs/trust.md)")
        self._reporter.start()

    def _settled(self, cut_off: CommandProgress, progress: CommandProgress, *, source: str) -> None:
        """`progress` is the report for `cut_off`, a command found running after a crash."""
        self.metrics.events_settled(cut_off, progress)
        self.metrics.command_finished(progress.status)
        self._update_state(last_generation=max(self._state.last_generation, progress.generation),
                           progress=progress, running=False, reported=False)
        self._failed_reported = self._failed_reported or progress.status == CommandStatus.FAILED
        self.log.warning("command.settled_after_restart", deployment_id=progress.deployment_id,
                         generation=progress.generation, status=progress.status.value, source=source,
                         message=progress.message)

    def _shutdown(self, flush_seconds: float) -> bool:
        """Give the reporter `flush_seconds` to write what is pending, then stop it. True if all was written."""
        deadline = self.monotonic() + flush_seconds
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            while (self._written < self._changes and self._store_floor is not None and not self._abandon
                   and self.monotonic() < deadline):
                self._lock.wait(min(0.2, max(0.001, deadline - self.monotonic())))
            flushed = self._written >= self._changes and self._conflict is None
            self._abandon = True
            self._lock.notify_all()
        self._reporter.join(timeout=1.0)  # a daemon thread: a store call still in flight dies with the process
        self.metrics.flush(force=True)
        self.log.info("agent.stopped", all_reported=flushed)
        return flushed

    def _poll_interval(self) -> float:
        busy = self.monotonic() < self._busy_until
        interval = self.settings.busy_poll_interval if busy else self.settings.poll_interval
        return interval.total_seconds()

    def _idle_wait(self) -> None:
        """Wait until the command is worth reading again (docs/agent.md, "How fast a host sees its command").

        - A file store: until the command key changes (agent/daemon/command_watch.py), at most a poll interval.
        - Just after a command of its own: the busy interval (a rollback or the next deployment often follows).
        - A deployment in flight in one of its groups (agent/daemon/rollout_signal.py): the busy interval, and
          the group records re-read every poll interval to see the rollout end.
        - Otherwise, idle: every other poll interval reads a group record instead of the command, so an idle
          host still sends one GET per poll interval, and a rollout is noticed as soon as before."""
        if self._command_watch is not None:
            self._command_watch.wait(self._poll_interval())
            return
        idle = self.settings.poll_interval.total_seconds()
        busy = self.settings.busy_poll_interval.total_seconds()
        signal = self._rollout
        if self.monotonic() < self._busy_until or not signal.usable:
            self.stop.wait(self._poll_interval())
            return
        if signal.in_flight:
            self.stop.wait(min(busy, idle))
            if self.monotonic() >= self._next_signal_read:
                self._next_signal_read = self.monotonic() + idle
                signal.read_next()
            return
        if self.stop.wait(idle):
            return
        self._next_signal_read = self.monotonic() + idle
        if not signal.read_next():
            self.stop.wait(idle)

    def _poll(self) -> HostCommand | None:
        """A command to run now, or None. A conditional read: an unchanged command moves no body."""
        if self._store_floor is None:
            floor = self._read_store_floor(self.owner.claim())
            with self._lock:
                self._store_floor = floor
                self._lock.notify_all()
        read = self._commands.read()
        if read.refused is not None:
            self._refuse(*read.refused)
        if read.unreadable is not None:
            self._reject_unreadable(*read.unreadable)
        if read.command is None:
            return None
        if not self._is_new(read.command, warn=read.fresh, version=read.version):
            return None
        mismatch = self._not_for_this_host(read.command)
        if mismatch is not None:
            self._refuse_genuine(read.command, read.version or "", mismatch)
            return None
        return read.command

    def _not_for_this_host(self, command: HostCommand) -> str | None:
        """Why a genuine command must not run here anyway, or None. The reconciler decides membership and traffic
        from what hosts registered in the store, which agents do not sign; a store writer who rewrote this host's
        registration could have the reconciler sign another group's deployment for it, or drain another address
        before this host stops its service. The command carries what the reconciler relied on, and this host
        checks it against its own settings (docs/trust.md, "Membership")."""
        settings = self.settings
        targets = command.targets
        if targets is not None and not targets.admits(self.host_id, dict(settings.tags), settings.instance_id):
            tags = ", ".join(f"{k}={v}" for k, v in sorted(settings.tags.items())) or "none"
            return (f"this host is not in deployment group {command.deployment_group}: its own tags ({tags}) and id "
                    "match none of the group's targets (was its registration in the store altered?)")
        for what, sent, own in (("address", command.traffic_address, settings.address),
                                ("instance id", command.traffic_instance_id, settings.instance_id)):
            if sent is not None and sent != own:
                return (f"the load balancers would be told to drain {what} {sent}, but this host's {what} is "
                        f"{own or 'not set'} (was its registration in the store altered?)")
        return None

    def _refuse_genuine(self, command: HostCommand, version: str, reason: str) -> None:
        """A genuinely signed command this host must not run: refused and reported like a forged one, and also
        reported failed for its generation (which the signature made believable), so the reconciler stops waiting
        for it instead of timing out."""
        self._refuse(version, reason)
        now = self.now()
        progress = CommandProgress(
            deployment_id=command.deployment_id, generation=command.generation, application=command.application,
            deployment_group=command.deployment_group, status=CommandStatus.FAILED, started_at=now, ended_at=now,
            message=f"refused by the agent: {reason}",
        )
        self._update_state(last_generation=command.generation, command=None, progress=progress, running=False,
                           reported=False)
        self._failed_reported = True

    def _is_new(self, command: HostCommand, *, warn: bool, version: str | None = None) -> bool:
        floor = max(self._state.last_generation, self._store_floor or 0)
        if command.generation < floor and warn and self._verifying and version is not None:
            # Genuinely signed, but older than what this host already ran: somebody put an old command back.
            self._refuse(version, f"replayed: generation {command.generation} ({command.deployment_id}) is older "
                                  f"than the last command this host ran ({floor})")
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
            self._settled(command, finish_after_restart(command, None, now=self.now()), source="store")
        return command.generation

    def _refuse(self, version: str, reason: str) -> None:
        """A command that must not run (docs/trust.md): nothing runs, the generation floor does not move (the
        document's generation cannot be believed), and the refusal goes into the next status write."""
        key = command_key(self.host_id)
        self.log.error("command.refused", key=key, version=version, reason=reason)
        with self._lock:
            self._refusals = [*self._refusals, CommandRefusal(at=self.now(), key=key, version=version,
                                                             reason=reason)][-MAX_REFUSALS:]
            self._refused_total += 1
            self.metrics.command_refused()
            self._changes += 1
            self._lock.notify_all()

    def _reject_unreadable(self, data: bytes, reason: str) -> None:
        """A command that does not parse cannot run; if its generation can be read, report it failed so the
        reconciler does not wait for it, and never look at that generation again."""
        self.log.error("command.unreadable", error=reason)
        progress = unreadable_command(data, reason, now=self.now())
        if progress is None or progress.generation <= max(self._state.last_generation, self._store_floor or 0):
            return
        self._update_state(last_generation=progress.generation, command=None, progress=progress, running=False,
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
            started_at=self.now(),
        )
        # Written (and fsynced) before anything runs: from here on this generation never runs again. If it
        # cannot be written, the command does not run: exactly once cannot be promised without it.
        self._update_state(last_generation=command.generation, command=command, progress=progress, running=True,
                           reported=False, strict=True)
        self.metrics.command_started()
        self._rollout.track(command.application, command.deployment_group)
        self.log.info("command.received", deployment_id=command.deployment_id, generation=command.generation,
                      application=command.application, deployment_group=command.deployment_group,
                      revision=command.revision.short())
        try:
            outcome = self.runner.run(command, on_event=self._on_event, should_stop=self._should_stop,
                                      on_child=self._on_child, traffic_gate=self._traffic_gate)
            status, events, message, installed = outcome.status, outcome.events, outcome.message, outcome.installed
        except Exception as exc:  # a bug in the engine must fail this command, not re-run it after a restart
            self.log.exception("command.internal_error", deployment_id=command.deployment_id)
            message = f"internal error in the agent: {exc!r}"
            cut_off = self._state.progress or progress
            failed = fail_unfinished(
                cut_off, now=self.now(), error_code=LifecycleErrorCode.UNKNOWN_ERROR,
                event_message=message, skip_message="not run: internal error in the agent",
                command_message=lambda event: f"{event} failed: {message}",
            )
            self.metrics.events_settled(cut_off, failed)
            status, events, installed = CommandStatus.FAILED, failed.events, None
        with self._lock:
            current = self._state.progress or progress
            final = current.model_copy(
                update={"status": status, "events": events, "ended_at": self.now(), "message": message}
            )
            newer, self._superseded_by = self._superseded_by, None
            if newer is not None and status == CommandStatus.FAILED:
                final = relabel_superseded(final, newer)
            if installed is not None:
                self._installed[group_key(installed.application, installed.deployment_group)] = installed
            self._update_state(progress=final, running=False, reported=False)
        self._failed_reported = self._failed_reported or status == CommandStatus.FAILED
        self.metrics.command_finished(status)
        self._busy_until = self.monotonic() + BUSY_WINDOW.total_seconds()
        self.log.info("command.finished", deployment_id=command.deployment_id, generation=command.generation,
                      status=status.value, message=final.message)
        return status

    def _on_event(self, report: EventReport) -> None:
        self.metrics.event_reported(report)
        with self._lock:
            if self._state.progress is not None:
                self._update_state(progress=apply_event(self._state.progress, report))

    def _on_child(self, pid: int | None, what: str) -> None:
        """Record (or clear) the running child process group in the state file, atomically, so a restart after
        kill -9 can kill it (agent/daemon/orphans.py). Not a change worth a status write."""
        child = orphans.describe(pid, what) if pid is not None else None
        with self._lock:
            if child is None and self._state.child is None:
                return
            self._state = self._state.model_copy(update={"child": child})
            try:
                self.local.save(self._state)
            except OSError as exc:
                self.log.warning("state.save_failed", path=str(self.local.path), error=str(exc))

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
            heartbeat_at=self.now(),
            agent_version=__version__,
            installation_id=self.installation.installation_id,
            started_at=self._started_at,
            installed=dict(self._installed),
            command=self._state.progress,
            heartbeat_interval_seconds=self.settings.heartbeat_interval.total_seconds(),
            refusals=list(self._refusals),
            refused_total=self._refused_total,
            verifies_signatures=self._verifying,
        )

    def _next_action(self, next_heartbeat: float, retry_at: float, next_watch: float) -> str:
        """Wait (holding the lock) until there is something to do: "write", "watch" or "exit"."""
        while True:
            now = self.monotonic()
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
        backoff = Backoff()
        while True:
            with self._lock:
                action = self._next_action(next_heartbeat, retry_at, next_watch)
                if action == "exit":
                    return
                changes = self._changes
                document = self._status_document()
                finished = self._state.progress if not self._state.running and not self._state.reported else None
            if action == "watch":
                next_watch = self.monotonic() + busy
                self._watch_for_newer_command()
                continue
            try:
                self.owner.write_status(document)
            except HostIdInUse as exc:
                self._stop_for_conflict(str(exc))
                return
            except StoreError as exc:
                self._report_health.failed(exc, "writing the status")
                self.metrics.store_write_failed()
                self.metrics.flush()
                retry_at = self.monotonic() + backoff.next()
                continue
            except Exception:  # a bug here must not silence the host for good: log it and keep trying
                self.log.exception("reporter.error")
                self.metrics.store_write_failed()
                retry_at = self.monotonic() + backoff.next()
                continue
            self._report_health.succeeded()
            self.metrics.flush()
            backoff.reset()
            retry_at = 0.0
            next_heartbeat = self.monotonic() + heartbeat
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
    # Owning the host id (one installation per host id; agent/daemon/claim.py)

    @property
    def installation(self) -> Installation:
        assert self._installation is not None, "the installation is loaded in _start"
        return self._installation

    @property
    def owner(self) -> HostIdOwner:
        assert self._owner is not None, "created in _start"
        return self._owner

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

    # ----------------------------------------------------------------------------------------------
    # Watching for a newer command (reporter thread)

    def _watch_for_newer_command(self) -> None:
        """While a command runs: a newer generation for this host stops it after the current event."""
        newer = self._commands.newer()
        if newer is None:
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
