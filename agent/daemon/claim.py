"""One installation per host id: claiming the host id for this installation and keeping it.

Each deployment root has an identity (`<root>/installation-id`, agent/daemon/identity.py) stamped on the
registration and status. Before reading its first command the agent claims the host id by compare-and-swap on
the registration; another installation whose heartbeat is fresh makes it exit 1 with a message (and a
`hosts/<id>/conflicts/<installation>.json` record for `reconcile status`), one silent for MISSED_HEARTBEATS
heartbeat intervals is taken over. Every status write is a compare-and-swap on the version last written, so an
agent whose host id was taken over notices at its next write and stops instead of fighting.
Crash safety: the claim and the status writes are single conditional store writes, so a kill -9 between them
leaves a registration that is ours, which a restart (same identity) resumes.
"""

from __future__ import annotations

import platform
from typing import Any

from agent import __version__
from agent.daemon.identity import INSTALLATION_FILE, HostIdInUse, Installation, describe_installation
from agent.settings import AgentSettings
from contract.clock import Monotonic, Now
from contract.keys import conflict_key, registration_key, status_key
from contract.store import PreconditionFailed, Store, StoreError, StoreUnavailable
from contract.store.docs import (
    DocumentInvalid,
    Versioned,
    create_document,
    parse_document,
    read_document,
    replace_document,
    write_document,
)
from contract.vocabulary import ConflictReason
from contract.wire import HostConflict, HostRegistration, HostStatus

#: Another installation owning this host id counts as alive while its last sign of life (registration or
#: heartbeat) is younger than this many of its heartbeat intervals (the reconciler's offline rule), plus
#: CLOCK_SKEW_SECONDS because the time was written by another machine's clock.
MISSED_HEARTBEATS = 3
CLOCK_SKEW_SECONDS = 5.0
#: Compare-and-swap rounds when claiming the registration before giving up for this attempt (retried).
CLAIM_ATTEMPTS = 5


class HostIdOwner:
    """This installation's hold on its host id: the registration and the status are written only through
    here, each by compare-and-swap against the version this installation last wrote.

    Used by one thread at a time: the agent's main thread claims before the first command is read, the reporter
    thread writes everything after that (it writes nothing before the main thread has claimed)."""

    def __init__(self, settings: AgentSettings, store: Store, installation: Installation, *, take_over: bool,
                 hostname: str, log: Any, now: Now, monotonic: Monotonic) -> None:
        self.settings = settings
        self.store = store
        self.host_id = settings.host_id
        self.installation = installation
        self.take_over = take_over
        self.hostname = hostname
        self.log = log
        self.now = now
        self.monotonic = monotonic
        #: The version of our status in the store: every status write is a compare-and-swap against it, so
        #: another installation writing the same key is noticed at our next write instead of fought over.
        self.status_version: str | None = None
        self._last_status_attempt: bytes | None = None
        self._registration_version: str | None = None
        #: The first registration write failed (store outage): claim again before the first status write.
        self.registration_pending = False
        self._next_registration_check = 0.0

    # ----------------------------------------------------------------------------------------------
    # Claiming (main thread, before the first command)

    def claim(self, *, first: bool = True) -> HostStatus | None:
        """Register, unless another live installation owns the host id; returns the status found in the store.

        Runs in the main thread before the first command is read, so a refused agent never runs anything.
        Race-free: the registration is created with put-if-absent and replaced with put-if-version, so of two
        agents starting together exactly one writes it; the other re-reads, finds a live owner and is refused.
        A registration whose owner has been silent for MISSED_HEARTBEATS of its heartbeat intervals (a dead
        or reinstalled machine) is taken over without anyone's help; `--take-over` takes a live one (the old
        agent then notices at its next write and stops instead of fighting back).
        Raises HostIdInUse (after recording a HostConflict for `reconcile status`), or StoreError to retry.

        The decision needs only reads. If the store then refuses the write (an outage of writes only), the
        agent runs commands anyway, as it always has during outages, and the reporter claims again, reads and
        all, before its first status write (`first=False`): a rival that registered meanwhile is found then."""
        key = registration_key(self.host_id)
        for _ in range(CLAIM_ATTEMPTS):
            existing, damaged = self._read_registration()
            status, status_version = self._read_status()
            try:
                wanted = self._write_registration(existing, damaged, status)
            except PreconditionFailed:
                continue  # someone wrote it between our read and our write: look again
            except StoreError as exc:
                if not first or not exc.retryable:
                    raise
                self.log.warning("agent.register_deferred", error=str(exc))
                self.registration_pending = True
                self.status_version = status_version
                return status
            self.registration_pending = False
            if existing is None or existing.document is not wanted:
                self.log.info("agent.registered", tags=wanted.tags, zone=wanted.zone,
                              installation_id=wanted.installation_id)
            if first:
                self.status_version = status_version
            self._next_registration_check = self.monotonic() + self.settings.heartbeat_interval.total_seconds()
            self._resolve_conflict_record()
            return status
        raise StoreUnavailable(f"{key} kept changing while this agent tried to register; trying again")

    def _read_registration(self) -> tuple[Versioned[HostRegistration] | None, str | None]:
        """The registration in the store, or (None, its version) when it does not parse and --take-over
        allows replacing it."""
        try:
            return read_document(self.store, registration_key(self.host_id), HostRegistration), None
        except DocumentInvalid as exc:
            if not self.take_over:
                raise HostIdInUse(
                    f"host id {self.host_id!r}: {exc}; another agent (perhaps a newer fleetshift) may own this "
                    "host id. Give this machine its own host id (hostId in agent.yaml or --host-id), or, if "
                    "the registration is just damaged, start once with --take-over to replace it"
                ) from None
            return None, exc.version

    def _write_registration(self, existing: Versioned[HostRegistration] | None, damaged: str | None,
                            status: HostStatus | None) -> HostRegistration:
        """Write our registration where it is missing, damaged, another's (if it may be taken) or out of date;
        returns the registration now in the store. Raises PreconditionFailed when it changed meanwhile."""
        key = registration_key(self.host_id)
        wanted = self._registration_document()
        if existing is None and damaged is None:
            self._registration_version = create_document(self.store, key, wanted)
        elif existing is None:
            assert damaged is not None
            self._registration_version = replace_document(self.store, key, wanted, damaged)
        elif not self._is_mine(existing.document) or existing.document.model_copy(
            update={"registered_at": wanted.registered_at}
        ) != wanted:
            if not self._is_mine(existing.document):
                self._refuse_or_take_over(existing.document, status)
            self._registration_version = replace_document(self.store, key, wanted, existing.version)
        else:
            self._registration_version = existing.version
            wanted = existing.document
        return wanted

    def _registration_document(self) -> HostRegistration:
        return HostRegistration(
            host_id=self.host_id,
            installation_id=self.installation.installation_id,
            tags=dict(self.settings.tags),
            zone=self.settings.zone,
            address=self.settings.address,
            instance_id=self.settings.instance_id,
            region=self.settings.region,
            platform=platform.system().lower(),
            hostname=self.hostname,
            agent_version=__version__,
            registered_at=self.now(),
        )

    def _is_mine(self, registration: HostRegistration) -> bool:
        """A registration without an installation id was written by an agent older than installation ids: on
        this machine's host name it is this installation before its upgrade, elsewhere another agent."""
        if registration.installation_id is None:
            return registration.hostname == self.hostname
        return registration.installation_id == self.installation.installation_id

    def _read_status(self) -> tuple[HostStatus | None, str | None]:
        """The status in the store and its version (which our first write swaps against). One that does not
        parse is treated as absent (and replaced by ours)."""
        key = status_key(self.host_id)
        try:
            found = read_document(self.store, key, HostStatus)
        except DocumentInvalid as exc:
            self.log.warning("status.unreadable", error=str(exc))
            return None, exc.version
        return (found.document, found.version) if found is not None else (None, None)

    def _refuse_or_take_over(self, owner: HostRegistration, status: HostStatus | None) -> None:
        """The host id is registered by another installation: refuse while it is alive, else take it over."""
        theirs = status if status is not None and status.installation_id == owner.installation_id else None
        last_seen = max(owner.registered_at, theirs.heartbeat_at) if theirs is not None else owner.registered_at
        interval = theirs.heartbeat_interval_seconds if theirs is not None else \
            self.settings.heartbeat_interval.total_seconds()
        silent = (self.now() - last_seen).total_seconds()
        alive = silent <= MISSED_HEARTBEATS * interval + CLOCK_SKEW_SECONDS
        who = describe_installation(owner, theirs)
        if alive and not self.take_over:
            message = (
                f"host id {self.host_id!r} is in use by another agent installation: {who}, last seen "
                f"{silent:.0f}s ago. Two machines must not share a host id (they would overwrite each other's "
                f"registration and status). Give this machine its own host id (hostId in agent.yaml, "
                f"FLEETSHIFT_AGENT_HOST_ID or --host-id, with its own --root-dir if this root already served "
                f"{self.host_id!r}). If that installation is really gone (a reinstalled or replaced machine), "
                f"this agent takes the host id over by itself once it has been silent for "
                f"{MISSED_HEARTBEATS * interval + CLOCK_SKEW_SECONDS:.0f}s, or at once with --take-over"
            )
            self._record_conflict(ConflictReason.REFUSED, owner, message)
            raise HostIdInUse(message)
        self.log.warning("agent.took_over_host_id", previous=who, silent_seconds=round(silent, 1),
                         forced=alive)

    # ----------------------------------------------------------------------------------------------
    # Keeping it (reporter thread)

    def write_status(self, document: HostStatus) -> None:
        """Write this host's status, first claiming again if the first claim's write was deferred and checking
        (once per heartbeat interval) that the registration is still ours. Raises HostIdInUse when another
        installation took the host id, StoreError to retry."""
        if self.registration_pending:
            self.claim(first=False)
        self._check_registration()
        self._write_status(document)

    def _check_registration(self) -> None:
        """Once per heartbeat interval, a conditional read of our registration (an unchanged one moves no
        body): another installation that took the host id over makes this agent stop."""
        if self.monotonic() < self._next_registration_check:
            return
        key = registration_key(self.host_id)
        stored = self.store.get(key, if_version_not=self._registration_version)
        self._next_registration_check = self.monotonic() + self.settings.heartbeat_interval.total_seconds()
        if stored is None:  # removed by someone: put ours back, unless another agent does so first
            try:
                self._registration_version = create_document(self.store, key, self._registration_document())
            except PreconditionFailed:
                self._next_registration_check = 0.0
            return
        if stored.version == self._registration_version:
            return
        try:
            current = parse_document(stored, HostRegistration)
        except DocumentInvalid as exc:
            raise HostIdInUse(f"host id {self.host_id!r}: our registration was replaced by something else "
                              f"({exc}); this agent stopped writing rather than overwrite it") from None
        if current.installation_id == self.installation.installation_id:
            self._registration_version = stored.version  # ours, written by an earlier attempt
            return
        message = (f"host id {self.host_id!r} was taken over by another agent installation: "
                   f"{describe_installation(current)}. "
                   "This agent stopped writing rather than fight over the host's registration and status. "
                   "Give one of the two machines its own host id (hostId in agent.yaml or --host-id)")
        self._record_conflict(ConflictReason.OVERWRITTEN, current, message)
        raise HostIdInUse(message)

    def _write_status(self, document: HostStatus) -> None:
        """Compare-and-swap against the version we last wrote: if it moved, someone else writes this host's
        status. A lost answer to our own write is recognised by its bytes and not taken for a conflict."""
        key = status_key(self.host_id)
        data = document.to_json()
        previous, self._last_status_attempt = self._last_status_attempt, data
        try:
            if self.status_version is None:
                version = self.store.put_if_absent(key, data)
            else:
                version = self.store.put_if_version(key, data, self.status_version)
        except PreconditionFailed:
            stored = self.store.get(key)
            if stored is None:  # deleted (by hand): next attempt recreates it
                self.status_version = None
                raise StoreUnavailable(f"{key} was removed while the agent wrote it; writing it again") from None
            if stored.data == data:  # our own write, whose answer was lost
                self.status_version = stored.version
                return
            if previous is not None and stored.data == previous:  # an earlier attempt did land: write again
                self.status_version = stored.version
                self._write_status(document)
                return
            try:
                other = parse_document(stored, HostStatus)
            except DocumentInvalid as exc:
                raise HostIdInUse(f"host id {self.host_id!r}: our status was replaced by something else ({exc}); "
                                  "this agent stopped writing rather than overwrite it") from None
            if _same_process(other, document):
                # Written by this very process: an attempt whose answer was lost, followed by failed ones (a
                # store that vanished mid-write and came back), so neither of the last two bytes match.
                self.status_version = stored.version
                self._write_status(document)
                return
            self._status_taken(other)
        self.status_version = version

    def _status_taken(self, other: HostStatus) -> None:
        """Another installation wrote our status: record the conflict and stop (raises HostIdInUse)."""
        registration = read_document(self.store, registration_key(self.host_id), HostRegistration)
        owner = registration.document if registration is not None else None
        same = other.installation_id == self.installation.installation_id
        who = "a copy of this installation (the same installation id, e.g. a deployment root copied with a " \
              "cloned VM image on a machine without a machine id)" if same else \
              describe_installation(
                  owner if owner is not None and owner.installation_id == other.installation_id else None, other)
        message = (f"the status of host id {self.host_id!r} is being written by another agent: {who}. This "
                   "agent stopped writing rather than fight over it. Give one of the two machines its own host "
                   "id (hostId in agent.yaml or --host-id)"
                   + (f", and remove {self.settings.root_dir / INSTALLATION_FILE} on the copy" if same else ""))
        self._record_conflict(ConflictReason.OVERWRITTEN, owner, message, other=other)
        raise HostIdInUse(message) from None

    # ----------------------------------------------------------------------------------------------
    # Conflict records for `reconcile status`

    def _record_conflict(self, reason: ConflictReason, owner: HostRegistration | None, message: str,
                         other: HostStatus | None = None) -> None:
        """Leave a HostConflict for `reconcile status`; best effort, the exit and its message come first."""
        record = HostConflict(
            host_id=self.host_id,
            installation_id=self.installation.installation_id,
            hostname=self.hostname,
            reason=reason,
            detected_at=self.now(),
            other_installation_id=owner.installation_id if owner is not None else (
                other.installation_id if other is not None else None),
            other_hostname=owner.hostname if owner is not None else None,
            message=message,
        )
        try:
            write_document(self.store, conflict_key(self.host_id, self.installation.installation_id), record)
        except StoreError as exc:
            self.log.warning("conflict.not_recorded", error=str(exc))

    def _resolve_conflict_record(self) -> None:
        """This installation owns the host id now: mark an earlier conflict of its own resolved (a PUT, since
        agents may not delete). Costs one GET per start, usually a 404."""
        key = conflict_key(self.host_id, self.installation.installation_id)
        try:
            found = read_document(self.store, key, HostConflict)
            if found is not None and found.document.resolved_at is None:
                write_document(self.store, key, found.document.model_copy(update={"resolved_at": self.now()}))
        except StoreError as exc:
            self.log.warning("conflict.not_resolved", key=key, error=str(exc))


def _same_process(stored: HostStatus, ours: HostStatus) -> bool:
    """The stored status was written by the process writing `ours`: same installation and same process start
    time (a copy of the installation on another machine, or this agent after a restart, has another)."""
    return (
        ours.started_at is not None
        and stored.started_at == ours.started_at
        and stored.installation_id == ours.installation_id
    )
