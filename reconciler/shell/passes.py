"""One pass (read, decide, write) and the `reconcile --once` loop built from passes.

Where it sits: between the CLI (`reconciler.cli.run`, which loads manifests, takes the lease and renders
progress) and the pure core. A pass is:

1. read the fleet and the reconciler's records from the store (`StoreReader.snapshot`, cached by version),
   the EC2 instances and Auto Scaling members of groups that name them (`FleetShell.observe`), the load
   balancers of hosts at a traffic step (`TrafficShell.observe`), and the alarms and due gate measurements of
   deployments in flight (`GateShell.observe`, which records what it measured), and the instances held at launch
   by a group's Auto Scaling lifecycle hook (`LaunchShell.observe`);
2. take the time, and ask `reconcile(desired, observed, state, now=...)` what to write;
3. apply the actions in order (`Executor`), under the lease, by compare-and-swap; then make the Auto Scaling
   lifecycle calls among them (`LaunchShell.perform`).

Passes are cheap and repeatable: the core plans one safe step per pass, so a rollout is many passes a poll
interval apart, never a long-running loop that could be cut off half-way. `reconciler.shell.settle` repeats
passes for `--once`, `reconciler.shell.watch` on triggers.

Nothing here prints: whoever shows progress implements `PassListener` (the CLI's renderers in
`reconciler.cli.progress` do) and is told about every pass; the shell never imports the CLI.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from contract.clock import Now, utc_now
from contract.keys import group_state_key
from contract.store import Store
from reconciler.core import (
    Action,
    Blocked,
    CoreSettings,
    State,
    reconcile,
)
from reconciler.desired.manifests import Desired
from reconciler.settings import ReconcileSettings
from reconciler.shell.applied import AppliedConfigLedger
from reconciler.shell.executor import Applied, Executor, WriteConflict
from reconciler.shell.fleet import FleetShell
from reconciler.shell.gates import GateShell
from reconciler.shell.lease import StopWriting, WriteLease
from reconciler.shell.lifecycle import LaunchShell
from reconciler.shell.observe import Snapshot, StoreReader
from reconciler.shell.traffic import TrafficShell

log = structlog.get_logger(__name__)

#: The shortest sleep for a wake-up time that has already passed (a gate measurement due now that the last pass
#: could not record, say): the next pass comes soon, but a loop never spins on a time in the past.
WAKE_FLOOR_SECONDS = 0.2

#: Blocked reasons that end by themselves: a run that sees them is not settled yet.
WAITING_CODES = frozenset(
    {"WAITING_FOR_HOSTS", "BAKING", "STOPPING", "WAITING_FOR_TRAFFIC", "WAITING_FOR_ANALYSIS", "WAITING_FOR_ALARMS",
     "HOLDING_LAUNCH"}
)


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
    #: The manifests this pass decided from (listeners that describe groups need their targets and revisions).
    desired: Desired
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


class PassListener(Protocol):
    """Whoever shows progress: told about every pass (the CLI's renderers implement this; the shell defines
    it so that it never depends on how progress is drawn)."""

    def on_pass(self, outcome: PassOutcome) -> None: ...

    def forget_view(self) -> None:
        """This process stopped leading (a `watch` lost its lease): drop the last pass's view of the fleet. Another
        reconciler drives it now, and a standby may wait for hours holding nothing of it (`Watcher`)."""


def state_after(state: State, applied: Applied) -> State:
    """Lay the writes of a pass over the state it read, so progress and the next decisions need no re-read."""
    return state.with_documents(write.document for write in applied.writes)


class PassRunner:
    """Runs passes against one store for one holder of the write lease."""

    def __init__(
        self,
        store: Store,
        lease: WriteLease,
        settings: ReconcileSettings,
        *,
        reader: StoreReader | None = None,
        clock: Now = utc_now,
        first_number: int = 1,
        traffic: TrafficShell | None = None,
        gates: GateShell | None = None,
        fleet: FleetShell | None = None,
        launches: LaunchShell | None = None,
        applied_config: AppliedConfigLedger | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.settings = settings
        self.core_settings = CoreSettings.from_settings(settings)
        self.reader = reader or StoreReader(store)
        self.reader.freeze_cold_reads = True  # thawed at the end of every pass (`run_pass`)
        self.reader.writes_warm_start = True  # a remote store's next cold read starts from this one's (`warmstart`)
        self.reader.warm_start_interval = settings.warm_start_interval
        self.traffic = traffic or TrafficShell()
        self.gates = gates or GateShell(clock=clock)
        self.fleet = fleet or FleetShell(clock=clock)
        self.launches = launches or LaunchShell(clock=clock)
        self.executor = Executor(store, lease, self.reader, traffic=self.traffic, clock=clock)
        self.clock = clock
        #: config/applied.json: the commit is checked against it before a pass writes and recorded after
        #: (`repository.verify`, docs/trust.md); None for callers that apply no config commit (tests, tools).
        self.applied_config = applied_config
        #: Passes this runner ran; numbered from `first_number` (a `watch` that leads again goes on counting).
        self.passes = 0
        self.first_number = first_number

    def run_pass(self, desired: Desired, *, before_decide: Callable[[Snapshot], None] | None = None) -> PassOutcome:
        """One pass. `before_decide` sees the snapshot first and may refuse by raising (a stale saved plan)."""
        try:
            return self._run_pass(desired, before_decide)
        finally:
            gc.unfreeze()  # what a cold read froze (`StoreReader.freeze_cold_reads`) is the collector's again

    def _run_pass(self, desired: Desired, before_decide: Callable[[Snapshot], None] | None) -> PassOutcome:
        started = time.monotonic()
        started_at = self.clock()
        self.lease.ensure()
        if self.applied_config is not None:
            # UnverifiedCommit: the commit is refused before anything of this pass is written.
            self.applied_config.confirm(desired.commit)
        snapshot = self.reader.snapshot()
        # EC2 and Auto Scaling membership is observed data (issue 16): read first, so that the load balancer and
        # gate reads below see the same members as the decision.
        members = self.fleet.observe(desired, snapshot.observed, snapshot.state)
        # Instances held at launch by a group's lifecycle hook, from that same read (reconciler/shell/lifecycle.py).
        members = self.launches.observe(desired, members)
        snapshot = dataclasses.replace(snapshot, observed=members)
        # Load balancers are observed data too: read for the hosts at a traffic step, before deciding.
        observed = self.traffic.observe(desired, snapshot.observed, snapshot.state)
        snapshot = dataclasses.replace(snapshot, observed=observed)
        if before_decide is not None:
            before_decide(snapshot)
        # So are the gates: alarms read and due measurements taken (and recorded, still under the lease) for the
        # deployments in flight; after a saved plan's check, so a refused plan records nothing.
        observed = self.gates.observe(
            self.store, desired, snapshot.observed, snapshot.state, before_write=self.lease.ensure
        )
        snapshot = dataclasses.replace(snapshot, observed=observed)
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
        if conflict is None:
            # The Auto Scaling lifecycle calls, after the writes they may follow from; AWS errors are logged, never
            # raised, and the next pass decides again.
            self.launches.perform(actions, before_call=self.lease.ensure)
        if self.applied_config is not None and conflict is None:
            self.applied_config.record(desired.commit, before_write=self.lease.ensure)
        self.passes += 1
        # After the pass's own writes, so a new cache never delays them.
        if self.passes == 1:
            self.reader.save_warm_start(written_at=self.clock())
        else:
            self.reader.refresh_warm_start(written_at=self.clock())
        outcome = PassOutcome(
            number=self.first_number + self.passes - 1,
            commit=desired.commit,
            started_at=started_at,
            now=now,
            duration=timedelta(seconds=time.monotonic() - started),
            snapshot=snapshot,
            actions=list(actions),
            applied=applied,
            state_after=state_after(snapshot.state, applied),
            desired=desired,
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

    def close(self) -> None:
        """Close the clients the shells opened (load balancers, gates' readers, EC2 and Auto Scaling): when the
        process ends, and when a `watch` drops this runner after losing its lease (`Watcher`), so that a standby
        holds no connection to a provider it no longer drives. Safe to call twice."""
        for shell in (self.traffic, self.gates, self.fleet, self.launches):
            try:
                shell.close()
            except Exception:  # closing is best effort: a client that fails to close must not hide why we stop
                log.warning("pass_runner.close_failed", shell=type(shell).__name__, exc_info=True)


class PassErrorCounter(Protocol):
    """What `MeteredPassRunner` tells about a pass that raised (`ReconcilerMetrics` in reconciler/shell/metrics.py,
    which this module does not import: prometheus_client is loaded only when metrics are on)."""

    def count_pass_error(self) -> None: ...


class MeteredPassRunner(PassRunner):
    """A `PassRunner` that counts the passes that raise as `fleetshift_passes_total{result="error"}` (a pass that
    returns is counted by `ReconcilerMetrics.on_pass`). A stop request ending a pass (`StopWriting`) is not an
    error. With `metrics=None` it is a plain `PassRunner`."""

    def __init__(self, *args: Any, metrics: PassErrorCounter | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def run_pass(self, desired: Desired, *, before_decide: Callable[[Snapshot], None] | None = None) -> PassOutcome:
        try:
            return super().run_pass(desired, before_decide=before_decide)
        except StopWriting:
            raise
        except Exception:
            if self.metrics is not None:
                self.metrics.count_pass_error()
            raise


__all__ = [
    "WAITING_CODES",
    "WAKE_FLOOR_SECONDS",
    "MeteredPassRunner",
    "PassErrorCounter",
    "PassListener",
    "PassOutcome",
    "PassRunner",
    "state_after",
]
