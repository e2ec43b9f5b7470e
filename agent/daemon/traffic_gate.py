"""The daemon's `TrafficGate`: wait at BlockTraffic / AllowTraffic until the reconciler recorded the step.

Reads `traffic/<host>.json` (written only by the reconciler) by conditional reads every `busy_poll_interval`:
an unchanged record moves no body. Only a record for this command's generation and step counts, so a record
left from an older command (or a repair the reconciler made on its own) is never taken for this one.

While waiting, the agent keeps heartbeating (the reporter thread) and stays stoppable: a shutdown or the
command's own time limit ends the wait as a failed step, like any other event cut short. A store outage
while waiting is not a failure: the reconciler cannot have moved on without the agent reading its record,
so the agent keeps asking, and logs the outage once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from agent.lifecycle.traffic_wait import TrafficOutcome
from contract.keys import traffic_key
from contract.store import Store, StoredObject, StoreError
from contract.store.docs import DocumentInvalid, parse_document
from contract.vocabulary import TrafficStepState
from contract.wire import HostCommand, HostTraffic

log = structlog.get_logger(__name__)


class StoreTrafficGate:
    def __init__(self, store: Store, host_id: str, *, interval: float, stop: threading.Event) -> None:
        self.store = store
        self.key = traffic_key(host_id)
        self.interval = interval
        self.stop = stop

    def __call__(
        self,
        command: HostCommand,
        step: str,
        should_stop: Callable[[], bool] | None,
        deadline: float | None,
    ) -> TrafficOutcome:
        seen: str | None = None
        outage_logged = False
        while True:
            if should_stop is not None and should_stop():
                return TrafficOutcome(False, f"the agent is shutting down; stopped waiting for the reconciler's {step}")
            if deadline is not None and time.monotonic() >= deadline:
                limit = f"{command.timeout_seconds:g} s" if command.timeout_seconds else "its time limit"
                return TrafficOutcome(False, f"the command's time limit of {limit} ran out waiting for the "
                                             f"reconciler's {step}")
            try:
                stored = self.store.get(self.key, if_version_not=seen)
                outage_logged = False
            except StoreError as exc:
                if not outage_logged:
                    log.warning("traffic.wait_store_error", step=step, key=self.key, error=str(exc))
                    outage_logged = True
                stored = None
            if stored is not None and stored.version != seen:
                seen = stored.version
                found = self._decided(stored, command, step)
                if found is not None:
                    return found
            self.stop.wait(self.interval)

    def _decided(self, stored: StoredObject, command: HostCommand, step: str) -> TrafficOutcome | None:
        try:
            record = parse_document(stored, HostTraffic)
        except DocumentInvalid as exc:
            log.warning("traffic.record_unreadable", key=self.key, error=str(exc))
            return None
        if record.generation != command.generation or record.step != step or record.repair:
            return None
        if record.state is TrafficStepState.IN_PROGRESS:
            return None
        message = record.message or f"{step} {record.state.value.lower()}"
        return TrafficOutcome(record.state is TrafficStepState.SUCCEEDED, message)
