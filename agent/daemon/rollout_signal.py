"""Whether a deployment is in flight in one of this host's deployment groups, read from their group records.

Where it sits: `Agent.run_forever` (agent/daemon/loop.py) asks it how to spend its idle polls when its command key
cannot be watched (an S3 store). Why: a host polls its command every `pollInterval` (10 s) when idle, so in a
OneAtATime rollout each host waited up to that long for a command that was already there (issue 18). While a
deployment of one of its groups is in flight a command is likely soon, and worth polling for at the busy interval
(1 s); the rest of the time it is not.

What it reads: `groups/<application>/<group>.json`, the reconciler's record of each group this host has been
deployed to, by conditional GETs (a 304 moves no body). Its `deploymentInFlight` says a rollout is on. The idle
budget does not grow: the loop spends every other idle poll on a group record instead of the command
(agent/daemon/loop.py, `_idle_wait`), so an idle host still makes one GET per `pollInterval`.

The agent reads only that field (`GroupInFlight` below), not the whole record: the record is the reconciler's,
large, and its model is not one of the agent's (contract/wire.py). It is only a hint. A group record that cannot be
read (not there yet, not parseable, refused by signature checking, or the IAM policy does not let agents read
`groups/`, as the example policies do not) counts as "no deployment in flight", so the host behaves as before:
commands are found by the idle poll. The first denial turns the reads off for the life of the process, so a policy
without access costs one request.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import structlog

from contract.keys import group_state_key
from contract.store import Store, StoreError
from contract.store.base import AccessDenied
from contract.store.docs import DocumentInvalid, parse_document
from contract.wirebase import WireDocument

log = structlog.get_logger("agent.daemon.rollout_signal")


class GroupInFlight(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The one field of `contract.models.GroupState` the agent reads; the other fields are skipped unread."""

    deployment_in_flight: str | None = msgspec.field(default=None, name="deploymentInFlight")


@dataclass
class _Record:
    key: str
    version: str | None = None
    in_flight: bool = False


class RolloutSignal:
    """The group records of this host's groups, read one at a time, round robin (`read_next`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._records: dict[str, _Record] = {}
        self._order: list[str] = []
        self._next = 0
        #: Reading `groups/` was refused (IAM): no more reads.
        self.denied = False
        #: Group records read (conditional GETs sent), for tests and benchmarks.
        self.reads = 0

    def track(self, application: str, deployment_group: str) -> None:
        """A group this host belongs to (it was deployed to); tracking twice is a no-op."""
        key = group_state_key(application, deployment_group)
        if key not in self._records:
            self._records[key] = _Record(key)
            self._order.append(key)

    @property
    def usable(self) -> bool:
        """Whether there is any group record worth reading."""
        return bool(self._order) and not self.denied

    @property
    def in_flight(self) -> bool:
        """A deployment was in flight in one of the groups when its record was last read."""
        return any(record.in_flight for record in self._records.values())

    def read_next(self) -> bool:
        """Read the next group's record (conditionally) and return `in_flight` for all groups."""
        if not self.usable:
            return False
        record = self._records[self._order[self._next % len(self._order)]]
        self._next += 1
        self.reads += 1
        try:
            stored = self.store.get(record.key, if_version_not=record.version)
        except AccessDenied as exc:
            self.denied = True
            for each in self._records.values():
                each.in_flight = False
            log.info("rollout_signal.denied", key=record.key, error=str(exc),
                     hint="agents may not read groups/ (the example IAM policies): commands are picked up by the "
                     "idle poll; docs/agent.md, 'How fast a host sees its command'")
            return False
        except StoreError:
            return self.in_flight  # an outage: the command poll reports it; keep what was known
        if stored is None:
            record.version, record.in_flight = None, False
        elif stored.version != record.version:
            record.version = stored.version
            try:
                record.in_flight = parse_document(stored, GroupInFlight).deployment_in_flight is not None
            except DocumentInvalid:
                record.in_flight = False
        return self.in_flight
