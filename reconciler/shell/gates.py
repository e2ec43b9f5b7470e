"""The shell's side of monitoring gates: before each decision, read the alarms of groups whose user deployment is
in flight, take the gate measurements that are due, record them, and hand both to the core as observed data
(docs/gates.md).

Where it sits: `PassRunner.run_pass` calls `observe` between reading the store (and the load balancers) and
deciding. Which measurement is due, and with which variables, is the core's pure `due_measurements`; this module
only asks Prometheus and CloudWatch and keeps the record.

The record, `analysis/<deployment id>.json`, is written by the lease holder only (compare-and-swap on the version
read), after the query and before the decision that uses it:
- kill -9 after a query, before its write: the measurement is lost and taken again next pass under the same
  index (a run never counts one twice, never skips one);
- kill -9 after the write: the next pass (or process) reads it back and decides on it;
- a write that loses its compare-and-swap (another holder wrote since): this pass goes on without its
  measurement; the next one re-reads.
Alarm reads are recorded only when what they say changes (state or names), so a quiet deployment writes nothing
per pass for them, yet `status` shows the last answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from contract.keys import analysis_key
from contract.models import AlarmCheck, Deployment, DeploymentAnalysis, GateMeasurement, GateResult
from contract.store import PreconditionFailed, Store, StoreError
from contract.store.docs import (
    DocumentInvalid,
    Versioned,
    create_document,
    read_if_changed,
    replace_document,
    write_document,
)
from reconciler.core import Observed, State
from reconciler.core.gates import DueMeasurement, alarms_wanted, due_measurements
from reconciler.core.view import deployment_config
from reconciler.desired.gates_spec import AlarmConfigurationSpec
from reconciler.desired.manifests import Desired, DesiredGroup
from reconciler.gates.cloudwatch import AlarmReader

log = structlog.get_logger(__name__)

Measure = Callable[[DueMeasurement], GateMeasurement]
AlarmReaderFactory = Callable[[AlarmConfigurationSpec], AlarmReader]


class GateShell:
    """Alarm readers per group, the analysis records of deployments in flight, and the measurements of a pass."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime],
        measure_one: Measure | None = None,
        alarm_reader: AlarmReaderFactory = AlarmReader,
    ) -> None:
        self._clock = clock
        self._measure = measure_one or self._measure_prometheus
        self._alarm_reader = alarm_reader
        self._readers: dict[str, AlarmReader] = {}
        self._records: dict[str, Versioned[DeploymentAnalysis] | None] = {}
        #: Deployment id -> the version of a record that could not be parsed: replaced by the next write.
        self._broken: dict[str, str | None] = {}
        self._before_write: Callable[[], None] | None = None

    def _measure_prometheus(self, due: DueMeasurement) -> GateMeasurement:
        """One query against Prometheus. Its client is imported here, at the first gate due, not with this module:
        it loads urllib, http.client and ssl (~8 ms of each start), which a fleet without metric gates never needs,
        and every `reconcile` imports this module (issue 18)."""
        from reconciler.gates.prometheus import measure

        return measure(due, now=self._clock())

    def observe(
        self,
        store: Store,
        desired: Desired,
        observed: Observed,
        state: State,
        *,
        before_write: Callable[[], None] | None = None,
    ) -> Observed:
        """`observed` with `analysis` and `alarms` filled for the groups whose user deployment is in flight (or,
        for alarms, may start this pass)."""
        groups = desired.desired_groups()
        analysis: dict[str, DeploymentAnalysis] = {}
        alarms: dict[str, AlarmCheck] = {}
        watched: set[str] = set()
        self._before_write = before_write
        for key, group in groups.items():
            group_state = state.groups.get(key)
            deployment = state.deployments.get(group_state.deployment_in_flight or "") if group_state else None
            check = self._alarms(key, group) if alarms_wanted(group, group_state, deployment) else None
            if check is not None:
                alarms[key] = check
            if deployment is None or deployment.creator != "user" or deployment.status.finished:
                continue
            if not group.analysis and check is None:
                continue
            watched.add(deployment.deployment_id)
            record = self._record(store, deployment)
            document = record.document if record is not None else None
            taken = self._take_due(desired, deployment, group, document) if group.analysis else []
            if taken or (check is not None and _alarms_changed(document, check)):
                document = self._save(store, deployment, record, taken, check)
            if document is not None:
                analysis[deployment.deployment_id] = document
        self._forget(watched, groups)
        return dataclasses.replace(observed, analysis=analysis, alarms=alarms)

    def _record(self, store: Store, deployment: Deployment) -> Versioned[DeploymentAnalysis] | None:
        key = analysis_key(deployment.deployment_id)
        known = self._records.get(deployment.deployment_id)
        try:
            record = read_if_changed(store, key, DeploymentAnalysis, known)
        except DocumentInvalid as exc:
            # Only the lease holder writes it; a broken copy is replaced by the next write (over its version), and
            # the run starts again from its first measurement.
            log.warning("gates.record_unreadable", key=key, error=str(exc))
            self._broken[deployment.deployment_id] = exc.version
            record = None
        else:
            self._broken.pop(deployment.deployment_id, None)
        self._records[deployment.deployment_id] = record
        return record

    def _alarms(self, key: str, group: DesiredGroup) -> AlarmCheck:
        assert group.alarms is not None
        reader = self._readers.get(key)
        if reader is None or reader.spec != group.alarms:
            if reader is not None:
                reader.close()
            reader = self._readers[key] = self._alarm_reader(group.alarms)
        check = reader.read(self._clock())
        if check.state != "OK":
            log.warning("gates.alarms", group=key, state=check.state, message=check.message)
        return check

    def _take_due(
        self, desired: Desired, deployment: Deployment, group: DesiredGroup, document: DeploymentAnalysis | None
    ) -> list[GateMeasurement]:
        config = deployment_config(desired, deployment, group)
        due = due_measurements(deployment, group, config, document, now=self._clock())
        taken: list[GateMeasurement] = []
        for item in due:
            try:
                measurement = self._measure(item)
            except Exception as exc:
                # A bug of ours, or an answer nobody foresaw: this measurement is Inconclusive, the pass goes on.
                log.exception("gates.measure_failed", deployment=deployment.deployment_id, gate=item.gate.name)
                measurement = GateMeasurement(
                    gate=item.gate.name, checkpoint=item.checkpoint, index=item.index, due_at=item.due_at,
                    measured_at=self._clock(), result=GateResult.INCONCLUSIVE,
                    message=f"the measurement failed inside fleetshift: {type(exc).__name__}: {exc}",
                )
            log.info(
                "gates.measured",
                deployment=deployment.deployment_id,
                gate=measurement.gate,
                checkpoint=measurement.checkpoint,
                index=measurement.index,
                result=measurement.result.value,
                value=measurement.value,
                message=measurement.message,
            )
            taken.append(measurement)
        return taken

    def _save(
        self,
        store: Store,
        deployment: Deployment,
        record: Versioned[DeploymentAnalysis] | None,
        taken: list[GateMeasurement],
        check: AlarmCheck | None,
    ) -> DeploymentAnalysis | None:
        """The record with this pass's measurements (and alarm read) added, written by compare-and-swap."""
        now = self._clock()
        before = record.document if record is not None else None
        document = DeploymentAnalysis(
            deployment_id=deployment.deployment_id,
            application=deployment.application,
            deployment_group=deployment.deployment_group,
            measurements=[*(before.measurements if before is not None else []), *taken],
            alarms=check if check is not None else (before.alarms if before is not None else None),
            updated_at=now,
        )
        key = analysis_key(deployment.deployment_id)
        broken = deployment.deployment_id in self._broken
        try:
            if self._before_write is not None:
                self._before_write()  # still the lease holder after the queries' time
            broken_version = self._broken.get(deployment.deployment_id)
            if record is not None:
                version = replace_document(store, key, document, record.version)
            elif broken_version is not None:
                version = replace_document(store, key, document, broken_version)
            elif broken:
                version = write_document(store, key, document)  # unreadable, version unknown: one writer, us
            else:
                version = create_document(store, key, document)
        except PreconditionFailed:
            log.warning("gates.record_conflict", key=key)
            self._records.pop(deployment.deployment_id, None)
            return before
        except StoreError as exc:
            # Not recorded: the measurements are taken again next pass; this pass decides without them.
            log.warning("gates.record_failed", key=key, error=str(exc))
            return before
        self._records[deployment.deployment_id] = Versioned(document, version)
        self._broken.pop(deployment.deployment_id, None)
        return document

    def _forget(self, watched: set[str], groups: Mapping[str, DesiredGroup]) -> None:
        for deployment_id in [d for d in self._records if d not in watched]:
            del self._records[deployment_id]
        for key in [k for k in self._readers if k not in groups or not groups[k].watches_alarms]:
            self._readers.pop(key).close()

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _alarms_changed(document: DeploymentAnalysis | None, check: AlarmCheck) -> bool:
    last = document.alarms if document is not None else None
    return last is None or last.state != check.state or last.alarms != check.alarms


__all__ = ["GateShell"]
