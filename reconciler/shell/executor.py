"""Applying the core's actions to the store.

Where it sits: last step of a pass. `reconcile()` returned actions, each carrying whole documents to write;
this module writes them, in order, under the write lease, and nothing else decides anything.

Write order and why a crash anywhere is safe (the order itself comes from `reconciler.core.actions`):

1. Actions are applied in list order, and each action's writes in their order. Every write replaces a whole
   document, so re-applying an action is the same as applying it once.
2. `StartDeployment`/`StartRollback` write `deployments/<id>.json` before the `groups/<app>/<group>.json`
   that points at it. A crash in between leaves a deployment nobody references: the next pass does not see
   it as in flight and starts afresh. Nothing is dispatched from an unreferenced deployment, so no host runs
   anything twice; and once the group points at it, the deployment is never lost.
3. `DispatchBatch` writes the deployment (hosts InProgress, each with its new command generation) before the
   hosts' `commands/<host>.json`. A crash in between leaves hosts recorded as dispatched without a command:
   the next pass sees it and re-writes the same command with the same generation (`RewriteCommands`), never a
   new one. Agents run a generation at most once, so a command written twice runs once.
4. Command writes of one action go out in parallel (a 1,000-host batch is 1,000 PUTs on S3); they are
   independent of each other and all come after the deployment document, so a partial set is case 3.

Compare-and-swap everywhere: every write is conditional on the version the pass read (`put_if_absent` for a
key that did not exist). The reconciler is the only writer of these keys while it holds the lease, except
for the operator commands (`retry`, `stop`, `forget`), which change group documents by compare-and-swap too.
So a pass that decided from a group document that changed meanwhile (a stop request just written) fails its
write with `WriteConflict` instead of overwriting the request; the pass stops there (the prefix it wrote is
safe by the rules above) and the next pass decides again from fresh reads. The same check fences a
reconciler that was paused past its lease: its versions are stale, so its writes fail.

Traffic steps (`TrafficStep`, docs/traffic.md): the load balancer call comes first, then the record the waiting
agent reads; a refused call writes the record as Failed with the load balancer's answer instead. Calls are
idempotent, so a crash between the call and the write repeats the call on the next pass.

Housekeeping: when a group's history drops old deployment ids (beyond `historyLimit`), their documents are
deleted after the group document is written. A crash in between only leaves an unreferenced document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from contract.clock import Now, utc_now
from contract.keys import COMMANDS_PREFIX, analysis_key, deployment_key
from contract.models import GroupState, TrafficStepState
from contract.store import PreconditionFailed, Store
from reconciler.core import Action, StoreWrite, TrafficStep
from reconciler.shell.lease import WriteLease
from reconciler.shell.observe import StoreReader
from reconciler.shell.traffic import TrafficShell

log = structlog.get_logger(__name__)

PARALLEL_COMMANDS_ABOVE = 4
COMMAND_WRITERS = 16


class WriteConflict(Exception):
    """A document changed since the pass read it. Not an error for users: the next pass re-reads."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key} changed since this pass read it")


@dataclass
class Applied:
    """What one `apply` call wrote: the actions fully applied and every write that reached the store."""

    actions: list[Action] = field(default_factory=list)
    writes: list[StoreWrite] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class Executor:
    """Writes actions to the store, in order, by compare-and-swap, while the lease is held."""

    def __init__(
        self,
        store: Store,
        lease: WriteLease,
        reader: StoreReader | None = None,
        *,
        traffic: TrafficShell | None = None,
        clock: Now = utc_now,
    ) -> None:
        self.store = store
        self.lease = lease
        self.reader = reader
        self.traffic = traffic
        self.clock = clock

    def apply(
        self,
        actions: Sequence[Action],
        versions: Mapping[str, str],
        groups_before: Mapping[str, GroupState] | None = None,
        *,
        applied: Applied | None = None,
    ) -> Applied:
        """Apply `actions` in order. `versions` are the versions the pass read (see `Snapshot.versions`);
        `groups_before` the group documents it read, for history housekeeping.

        Raises WriteConflict (the pass must stop and re-read), LeaseLost, or StoreError; `applied` (when
        given) is filled as writes land, so a caller that catches still knows exactly what was written."""
        result = applied if applied is not None else Applied()
        current_versions = dict(versions)
        groups = dict(groups_before or {})
        for action in actions:
            if isinstance(action, TrafficStep) and action.call is not None:
                self.lease.ensure()
                action = self._call(action)  # noqa: PLW2901 - the record to write is the call's outcome
            writes = action.writes()
            if not writes:
                continue
            self.lease.ensure()
            self._apply_writes(writes, current_versions, result)
            for write in writes:
                if isinstance(write.document, GroupState):
                    self._drop_old_deployments(write.key, groups.get(write.key), write.document, current_versions,
                                               result)
                    groups[write.key] = write.document
            result.actions.append(action)
            log.info("action.applied", action=action.kind, group=action.group, detail=action.describe(),
                     writes=len(writes))
        return result

    # ----------------------------------------------------------------------------------------------

    def _call(self, action: TrafficStep) -> TrafficStep:
        """Make the load balancer call; a refusal turns the step's record into a Failed one that says why."""
        if self.traffic is None:
            return action
        error = self.traffic.call(action)
        if error is None:
            return action
        step = action.traffic.step
        message = f"{step} failed: {error}"
        failed = action.traffic.model_copy(
            update={"state": TrafficStepState.FAILED, "ended_at": self.clock(), "message": message}
        )
        return action.model_copy(update={"call": None, "reason": message, "traffic": failed})

    def _write(self, write: StoreWrite, versions: dict[str, str]) -> str:
        expected = versions.get(write.key)
        data = write.data()
        try:
            if expected is None:
                return self.store.put_if_absent(write.key, data)
            return self.store.put_if_version(write.key, data, expected)
        except PreconditionFailed:
            log.info("executor.conflict", key=write.key)
            raise WriteConflict(write.key) from None

    def _landed(self, write: StoreWrite, version: str, versions: dict[str, str], result: Applied) -> None:
        versions[write.key] = version
        result.writes.append(write)
        if self.reader is not None:
            self.reader.record_write(write.key, version, write.document)

    def _apply_writes(self, writes: list[StoreWrite], versions: dict[str, str], result: Applied) -> None:
        index = 0
        while index < len(writes):
            # A run of command writes goes out in parallel; everything else one by one, in order.
            end = index
            while end < len(writes) and writes[end].key.startswith(COMMANDS_PREFIX):
                end += 1
            run = writes[index:end]
            if len(run) > PARALLEL_COMMANDS_ABOVE:
                self._write_parallel(run, versions, result)
                index = end
                continue
            write = writes[index]
            self._landed(write, self._write(write, versions), versions, result)
            index += 1

    def _write_parallel(self, run: list[StoreWrite], versions: dict[str, str], result: Applied) -> None:
        def attempt(write: StoreWrite) -> str | BaseException:
            try:
                return self._write(write, versions)
            except Exception as exc:  # collected, re-raised below after every write has settled
                return exc

        with ThreadPoolExecutor(max_workers=COMMAND_WRITERS, thread_name_prefix="executor") as pool:
            outcomes = list(pool.map(attempt, run))
        first_error: BaseException | None = None
        for write, outcome in zip(run, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                first_error = first_error or outcome
            else:
                self._landed(write, outcome, versions, result)
        if first_error is not None:
            raise first_error

    def _drop_old_deployments(
        self,
        key: str,
        before: GroupState | None,
        after: GroupState,
        versions: dict[str, str],
        result: Applied,
    ) -> None:
        if before is None:
            return
        keep = set(after.history)
        if after.deployment_in_flight:
            keep.add(after.deployment_in_flight)
        for deployment_id in before.history:
            if deployment_id in keep:
                continue
            doc_key = deployment_key(deployment_id)
            self.store.delete(doc_key)
            versions.pop(doc_key, None)
            result.deleted.append(doc_key)
            # Its gate measurements go with it (absent for most deployments: deleting nothing is no error).
            self.store.delete(analysis_key(deployment_id))
            if self.reader is not None:
                self.reader.record_delete(doc_key)
            log.debug("executor.history_trimmed", group=key, deployment=deployment_id)
