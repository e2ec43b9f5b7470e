"""One pass (read, decide, write) and the `reconcile --once` loop built from passes.

Where it sits: between the CLI (`reconciler.cli.ops`, which loads manifests, takes the lease and renders
progress) and the pure core. A pass is:

1. read the fleet and the reconciler's records from the store (`StoreReader.snapshot`, cached by version);
2. take the time, and ask `reconcile(desired, observed, state, now=...)` what to write;
3. apply the actions in order (`Executor`), under the lease, by compare-and-swap.

Passes are cheap and repeatable: the core plans one safe step per pass, so a rollout is many passes a poll
interval apart, never a long-running loop that could be cut off half-way. `run_until_settled` repeats passes
until nothing is in flight, then turns what finished into an exit code.

Nothing here prints: progress goes to an `on_pass` callback (rendered by `reconciler.cli.progress`) and
structured log events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from contract.keys import group_state_key
from contract.models import Deployment, DeploymentStatus, GroupState, HostCommand, HostDeploymentStatus
from contract.store import Store, StoreError
from reconciler.core import (
    Action,
    Blocked,
    CoreSettings,
    FinishDeployment,
    MarkGroupRemoved,
    StartRollback,
    State,
    reconcile,
)
from reconciler.desired.manifests import Desired
from reconciler.exitcodes import ExitCode
from reconciler.settings import ReconcileSettings
from reconciler.shell.executor import Applied, Executor, WriteConflict
from reconciler.shell.lease import Clock, WriteLease, utc_now
from reconciler.shell.observe import Snapshot, StoreReader

log = structlog.get_logger(__name__)

#: Blocked reasons that end by themselves: a run that sees them is not settled yet.
WAITING_CODES = frozenset({"WAITING_FOR_HOSTS", "BAKING", "STOPPING"})
#: How long a transient store failure may last before `--once` gives up with STORE_UNAVAILABLE.
STORE_RETRY_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class PassOutcome:
    """What one pass saw, decided and wrote."""

    number: int
    commit: str | None
    started_at: datetime
    now: datetime
    duration: timedelta
    snapshot: Snapshot
    actions: list[Action]
    applied: Applied
    #: The records as they are after this pass's writes (the snapshot with the writes laid over it).
    state_after: State
    #: Set when a write lost a compare-and-swap: the pass stopped there and the next one re-reads.
    conflict: str | None = None

    @property
    def wrote(self) -> bool:
        return bool(self.applied.writes) or bool(self.applied.deleted)

    @property
    def in_flight(self) -> dict[str, str]:
        """Group key -> deployment id, for every group with a deployment in flight after this pass."""
        return {
            key: group.deployment_in_flight
            for key, group in self.state_after.groups.items()
            if group.deployment_in_flight
        }

    @property
    def blocked(self) -> list[Blocked]:
        return [action for action in self.actions if isinstance(action, Blocked)]

    @property
    def waiting(self) -> list[Blocked]:
        return [b for b in self.blocked if b.code in WAITING_CODES]

    @property
    def settled(self) -> bool:
        """Nothing more will happen without a change in the manifests or the fleet."""
        return not self.wrote and self.conflict is None and not self.in_flight and not self.waiting

    def wake_at(self) -> datetime | None:
        """The earliest time a `Blocked` wait ends by itself (end of a bake), if any."""
        ends = [b.until for b in self.blocked if b.until is not None]
        return min(ends) if ends else None


def state_after(state: State, applied: Applied) -> State:
    """Lay the writes of a pass over the state it read, so progress and the next decisions need no re-read."""
    groups = dict(state.groups)
    deployments = dict(state.deployments)
    commands = dict(state.commands)
    for write in applied.writes:
        document = write.document
        if isinstance(document, GroupState):
            groups[f"{document.application}/{document.deployment_group}"] = document
        elif isinstance(document, Deployment):
            deployments[document.deployment_id] = document
        elif isinstance(document, HostCommand):
            commands[document.host_id] = document
    return State(groups=groups, deployments=deployments, commands=commands)


class PassRunner:
    """Runs passes against one store for one holder of the write lease."""

    def __init__(
        self,
        store: Store,
        lease: WriteLease,
        settings: ReconcileSettings,
        *,
        reader: StoreReader | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.lease = lease
        self.settings = settings
        self.core_settings = CoreSettings.from_settings(settings)
        self.reader = reader or StoreReader(store)
        self.executor = Executor(store, lease, self.reader)
        self.clock = clock
        self.passes = 0

    def run_pass(self, desired: Desired, *, before_decide: Callable[[Snapshot], None] | None = None) -> PassOutcome:
        """One pass. `before_decide` sees the snapshot first and may refuse by raising (a stale saved plan)."""
        started = time.monotonic()
        started_at = self.clock()
        self.lease.ensure()
        snapshot = self.reader.snapshot()
        if before_decide is not None:
            before_decide(snapshot)
        now = self.clock()
        actions = reconcile(desired, snapshot.observed, snapshot.state, now=now, settings=self.core_settings)
        groups_before = {
            group_state_key(group.application, group.deployment_group): group
            for group in snapshot.state.groups.values()
        }
        applied = Applied()
        conflict: str | None = None
        try:
            self.executor.apply(actions, snapshot.versions, groups_before, applied=applied)
        except WriteConflict as exc:
            conflict = exc.key
        self.passes += 1
        outcome = PassOutcome(
            number=self.passes,
            commit=desired.commit,
            started_at=started_at,
            now=now,
            duration=timedelta(seconds=time.monotonic() - started),
            snapshot=snapshot,
            actions=list(actions),
            applied=applied,
            state_after=state_after(snapshot.state, applied),
            conflict=conflict,
        )
        log.debug(
            "pass.done",
            number=outcome.number,
            commit=desired.commit,
            actions=len(actions),
            writes=len(applied.writes),
            in_flight=len(outcome.in_flight),
            read=self.reader.last_fetch_count,
            seconds=round(outcome.duration.total_seconds(), 3),
            conflict=conflict,
        )
        return outcome


# --------------------------------------------------------------------------------------------------
# The --once loop and its exit code


@dataclass
class RunLedger:
    """What ended during a run, across passes, to decide the exit code and the summary."""

    finished: dict[str, FinishDeployment] = field(default_factory=dict)
    #: Triggering deployment id -> the rollback deployment started for it.
    rollbacks: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def record(self, outcome: PassOutcome) -> None:
        for action in outcome.applied.actions:
            if isinstance(action, MarkGroupRemoved):
                self.removed.append(action.group)
            elif isinstance(action, FinishDeployment):
                self.finished[action.deployment_id] = action
            elif isinstance(action, StartRollback):
                self.rollbacks[action.rollback_of] = action.deployment_id


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    #: One line per fact a person needs at the end: what succeeded, failed, was rolled back, is still running.
    lines: list[str]
    passes: int
    last: PassOutcome | None
    #: Whether any deployment ended during this run. With exit 3 or 4 and nothing ended, the code comes only
    #: from `held`: the summary must then say that nothing was deployed, not "failed, rolled back".
    ran: bool = False
    #: Groups whose desired revision is quarantined from an earlier failure (and so was not deployed).
    held: tuple[str, ...] = ()


FAILED_STATUSES = frozenset({DeploymentStatus.FAILED, DeploymentStatus.STOPPED})


def _rolled_back(deployment_id: str, ledger: RunLedger, deployments: Mapping[str, Deployment]) -> str | None:
    """The id of a successful rollback of `deployment_id`, from this run or the records."""
    rollback_id = ledger.rollbacks.get(deployment_id)
    if rollback_id is not None:
        finish = ledger.finished.get(rollback_id)
        if finish is not None and finish.status is DeploymentStatus.SUCCEEDED:
            return rollback_id
        return None
    for deployment in deployments.values():
        if deployment.rollback_of == deployment_id and deployment.status is DeploymentStatus.SUCCEEDED:
            return deployment.deployment_id
    return None


FAILED_HOSTS_SHOWN = 5


def _failed_hosts(deployment: Deployment) -> list[str]:
    """Why each host failed (event, script, exit code, last output), straight from the agent's report, so a
    CI log says what went wrong without anyone opening the store."""
    failed = [(host, state) for host, state in sorted(deployment.hosts.items())
              if state.status is HostDeploymentStatus.FAILED]
    lines = [f"  {host} failed: {state.message or 'no details reported'}"
             for host, state in failed[:FAILED_HOSTS_SHOWN]]
    if len(failed) > FAILED_HOSTS_SHOWN:
        more = len(failed) - FAILED_HOSTS_SHOWN
        hosts = "host" if more == 1 else "hosts"
        lines.append(f"  ... and {more} more failed {hosts}: reconcile status shows them all")
    return lines


def summarize(ledger: RunLedger, last: PassOutcome | None) -> tuple[int, list[str]]:
    """Exit code and summary lines of a run that ended with nothing in flight.

    - 0: every deployment that ended succeeded (or was superseded) and no group is held back.
    - 3: a deployment failed or was stopped and a rollback to the last good revision succeeded; also when a
      group's desired revision is quarantined from an earlier run whose failure was rolled back (the fleet
      does not run what the manifests say).
    - 4: a failure with no successful rollback (rollback disabled, or the rollback failed too).
    """
    lines: list[str] = []
    rolled_back = False
    unrecovered = False
    deployments = dict(last.state_after.deployments) if last else {}
    for deployment_id, finish in ledger.finished.items():
        deployment = finish.deployment
        code = f" [{finish.error_code}]" if finish.error_code else ""
        if finish.status is DeploymentStatus.SUCCEEDED:
            what = "rollback" if deployment.creator == "rollback" else "deployment"
            lines.append(f"{finish.group}: {what} {deployment_id} of {finish.revision.short()} succeeded")
            continue
        if finish.status is DeploymentStatus.SUPERSEDED:
            lines.append(f"{finish.group}: deployment {deployment_id} superseded by a newer commit")
            continue
        if finish.status not in FAILED_STATUSES:
            continue
        why_hosts_failed = _failed_hosts(deployment)
        verb = "failed" if finish.status is DeploymentStatus.FAILED else "was stopped"
        if deployment.creator == "rollback":
            unrecovered = True
            lines.append(f"{finish.group}: rollback {deployment_id} {verb}{code}: {finish.reason}")
            lines.extend(why_hosts_failed)
            continue
        rollback = _rolled_back(deployment_id, ledger, deployments)
        if rollback is not None:
            rolled_back = True
            lines.append(
                f"{finish.group}: deployment {deployment_id} of {finish.revision.short()} {verb}{code}: "
                f"{finish.reason}; rolled back by {rollback}"
            )
            lines.extend(why_hosts_failed)
        else:
            unrecovered = True
            lines.append(
                f"{finish.group}: deployment {deployment_id} of {finish.revision.short()} {verb}{code}: "
                f"{finish.reason}; not rolled back"
            )
            lines.extend(why_hosts_failed)
    for removed in ledger.removed:
        lines.append(f"{removed}: removed from the manifests; nothing was uninstalled, its records are kept "
                     f"(`reconcile forget {removed}` deletes them)")
    if last is not None:
        for blocked in last.blocked:
            if blocked.code != "QUARANTINED":
                continue
            group = last.state_after.groups.get(blocked.group)
            held = None
            if group is not None and group.desired_revision is not None:
                wanted = group.desired_revision.identity()
                matching = [q for q in group.quarantined if q.revision.identity() == wanted]
                held = matching[-1] if matching else None
            earlier = held.deployment_id if held else blocked.deployment_id
            if earlier is not None and earlier in ledger.finished:
                continue  # already reported above
            recovered = earlier is not None and _rolled_back(earlier, ledger, deployments) is not None
            rolled_back = rolled_back or recovered
            unrecovered = unrecovered or not recovered
            lines.append(
                f"{blocked.group}: not deployed: {blocked.reason}. Fix the manifests, or run "
                f"`reconcile retry {blocked.group}` to try the same revision again"
            )
        for blocked in last.blocked:
            if blocked.code != "QUARANTINED":
                lines.append(f"{blocked.group}: {blocked.code}: {blocked.reason}")
    if unrecovered:
        return ExitCode.FAILED, lines
    if rolled_back:
        return ExitCode.FAILED_ROLLED_BACK, lines
    if not lines:
        lines.append("converged: every deployment group runs its desired revision")
    return ExitCode.OK, lines


def run_until_settled(
    runner: PassRunner,
    desired: Desired,
    *,
    timeout: timedelta,
    no_wait: bool = False,
    on_pass: Callable[[PassOutcome], None] | None = None,
    before_first_decide: Callable[[Snapshot], None] | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """`reconcile --once`: passes a poll interval apart until nothing is in flight, `timeout` passes, or
    `stop` is set. The lease must already be held by `runner.lease`."""
    deadline = time.monotonic() + timeout.total_seconds()
    poll = runner.settings.poll_interval.total_seconds()
    ledger = RunLedger()
    last: PassOutcome | None = None
    store_failing_since: float | None = None
    first = True
    while True:
        try:
            outcome = runner.run_pass(desired, before_decide=before_first_decide if first else None)
        except StoreError as exc:
            if not exc.retryable:
                raise
            now_mono = time.monotonic()
            store_failing_since = store_failing_since or now_mono
            if now_mono - store_failing_since > STORE_RETRY_WINDOW.total_seconds() or now_mono >= deadline:
                raise
            log.warning("pass.store_unavailable", error=str(exc), retry_in=poll)
            if _pause(stop, poll):
                break
            continue
        store_failing_since = None
        first = False
        last = outcome
        ledger.record(outcome)
        if on_pass is not None:
            on_pass(outcome)
        if no_wait or outcome.settled:
            break
        if time.monotonic() >= deadline:
            return _timed_out(ledger, outcome, runner.passes)
        if outcome.conflict is not None:
            continue  # re-read now: the documents that changed are fresher than anything we would wait for
        if outcome.wrote and not outcome.in_flight and not outcome.waiting:
            continue  # something just changed and nothing waits on agents: confirm at once
        pause = poll
        wake = outcome.wake_at()
        if wake is not None:
            pause = min(pause, max(0.0, (wake - runner.clock()).total_seconds()))
        pause = min(pause, max(0.0, deadline - time.monotonic()))
        renew = runner.lease.renew_due()
        if renew is not None:  # never sleep through the lease's renewal, however long the poll interval
            pause = min(pause, max(0.0, (renew - runner.clock()).total_seconds()))
        if _pause(stop, pause):
            break
    if stop is not None and stop.is_set() and (last is None or not last.settled):
        in_flight = sorted(last.in_flight.items()) if last else []
        lines = [f"{group}: {deployment} still in flight" for group, deployment in in_flight]
        return RunResult(128 + 15, ["stopped before the rollout finished; re-run to continue", *lines],
                         runner.passes, last)
    code, lines = summarize(ledger, last)
    if no_wait and last is not None and last.in_flight and code == ExitCode.OK:
        lines = [f"{group}: {deployment} in flight (not waiting: --no-wait)"
                 for group, deployment in sorted(last.in_flight.items())]
    held = tuple(sorted({b.group for b in last.blocked if b.code == "QUARANTINED"})) if last else ()
    return RunResult(int(code), lines, runner.passes, last, ran=bool(ledger.finished), held=held)


def _pause(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds` or until `stop` is set; True when stopped."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def _timed_out(ledger: RunLedger, last: PassOutcome, passes: int) -> RunResult:
    _, lines = summarize(ledger, None)
    lines = [line for line in lines if not line.startswith("converged")]
    for group, deployment_id in sorted(last.in_flight.items()):
        deployment = last.state_after.deployments.get(deployment_id)
        counts = ""
        if deployment is not None:
            done = sum(1 for h in deployment.hosts.values() if h.status == "Succeeded")
            total = len(deployment.hosts)
            counts = f" ({done} of {total} {'host' if total == 1 else 'hosts'} done)"
        lines.append(f"{group}: {deployment_id} still in flight{counts}")
    for blocked in last.waiting:
        lines.append(f"{blocked.group}: {blocked.reason}")
    lines.insert(0, "the timeout passed with work in flight; deployments keep their state, re-run to continue")
    return RunResult(int(ExitCode.TIMED_OUT), lines, passes, last)


__all__ = [
    "PassOutcome",
    "PassRunner",
    "RunLedger",
    "RunResult",
    "run_until_settled",
    "state_after",
    "summarize",
]
