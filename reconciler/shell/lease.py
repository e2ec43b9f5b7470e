"""The write lease: only one reconciler writes to a store at a time.

Where it sits: `reconcile --once` and `reconcile watch` take the lease before their first pass and keep it
until they exit; the executor checks it before every action it applies. The operator commands (`retry`,
`stop`, `forget`) take it for their single write when it is free.

The lease is one document, `leases/reconciler.json` (holder, acquired at, expires at), changed only by
compare-and-swap:

- Taking a free lease is `put_if_absent`; taking an expired one, renewing and releasing are `put_if_version`
  against the version this process last saw. Of two reconcilers racing for it, exactly one write wins.
- A renewal that fails means somebody else took the lease after it expired: the holder learns it has lost it
  (`LeaseLost`) before its next write, instead of writing on. Because a renewal is conditional on the lease
  document being unchanged since our own last write, renewing "late" (after `expires_at`) is still safe: if
  nobody took the lease meanwhile, nobody else can have written either.
- Releasing writes an already-expired lease (still by compare-and-swap) rather than deleting the key, so a
  release can never remove a lease that another process took in between, and the document keeps saying who
  held it last.

A holder that is shutting down stops writing before it lets go: `stop_writing_on(event)` makes `ensure()`,
which the executor calls before every action, raise `StopWriting` once the event is set. A pass in progress
therefore ends after the action it is applying (any prefix of a pass's actions is safe, see
`reconciler.shell.executor`), and only then is the lease released.

Expiry compares the holder's clock (which wrote `expires_at`) with the reader's: machines running
reconcilers against one store need roughly synchronised clocks (NTP), as with any lease. A crashed holder
blocks others for at most `lease_duration`.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from pydantic import ValidationError

from contract.clock import Now, utc_now
from contract.keys import LEASE_KEY
from contract.models import Lease
from contract.store import PreconditionFailed, Store, StoreError
from reconciler.errors import ReconcilerError

log = structlog.get_logger(__name__)


class LeaseHeld(ReconcilerError):
    """Another reconciler holds the write lease (exit code LEASE_HELD)."""

    def __init__(self, holder: str, expires_at: datetime | None, waited: timedelta) -> None:
        self.holder = holder
        self.expires_at = expires_at
        until = f" until {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
        waited_text = f" (waited {waited.total_seconds():.0f}s)" if waited > timedelta(0) else ""
        super().__init__(
            f"another reconciler ({holder}) holds the write lease{until}{waited_text}; only one reconciler "
            f"writes at a time. Stop it, or wait for it to finish; a crashed reconciler's lease expires by itself."
        )


class LeaseLost(ReconcilerError):
    """The lease expired and another reconciler took it; this process must stop writing."""


class StopWriting(ReconcilerError):
    """This process was asked to stop (SIGTERM): it writes nothing more, though it still holds the lease."""


def default_holder() -> str:
    """Who holds the lease, as a person reading `leases/reconciler.json` needs it: machine, process, nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseView:
    """The lease as read from the store, for messages and `status`."""

    holder: str
    expires_at: datetime
    acquired_at: datetime

    def active(self, now: datetime) -> bool:
        return now < self.expires_at


def read_lease(store: Store) -> LeaseView | None:
    stored = store.get(LEASE_KEY)
    if stored is None:
        return None
    try:
        lease = Lease.model_validate_json(stored.data)
    except ValidationError:
        return None
    return LeaseView(lease.holder, lease.expires_at, lease.acquired_at)


def _outage_tolerated(exc: StoreError, since: float | None, store_outage: timedelta | None) -> float | None:
    """When the store outage that `exc` belongs to began (`since`, or now for a new one), while it is still
    waited out: `exc` is retryable and the outage is shorter than `store_outage`. None: raise `exc`."""
    now = time.monotonic()
    since = since or now
    if not exc.retryable or store_outage is None or now - since >= store_outage.total_seconds():
        return None
    return since


def _pause(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep for `seconds`, or until `stop` is set: True when it was (the caller gives up)."""
    if stop is not None:
        return stop.wait(seconds)
    time.sleep(seconds)
    return False


class WriteLease:
    """This process's claim on the store's write lease."""

    def __init__(
        self,
        store: Store,
        *,
        duration: timedelta,
        holder: str | None = None,
        clock: Now = utc_now,
    ) -> None:
        if duration <= timedelta(0):
            raise ValueError("lease duration must be positive")
        self.store = store
        self.duration = duration
        self.holder = holder or default_holder()
        self._clock = clock
        self._version: str | None = None
        self._acquired_at: datetime | None = None
        self._expires_at: datetime | None = None
        #: The other holder seen by the last failed attempt, for the LeaseHeld message.
        self._other: LeaseView | None = None
        self._stop: threading.Event | None = None

    # ----------------------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True while this process holds the lease and it has not expired by our clock."""
        return self._version is not None and self._expires_at is not None and self._clock() < self._expires_at

    @property
    def expires_at(self) -> datetime | None:
        return self._expires_at

    def stop_writing_on(self, stop: threading.Event) -> None:
        """Once `stop` is set, `ensure()` raises StopWriting: the write in progress finishes, no other starts."""
        self._stop = stop

    def renew_due(self) -> datetime | None:
        """When the lease should be renewed next: half-way to its expiry."""
        if self._expires_at is None:
            return None
        return self._expires_at - self.duration / 2

    def _document(self, now: datetime, *, acquired_at: datetime | None = None, expires_at: datetime | None = None
                  ) -> bytes:
        return Lease(
            holder=self.holder,
            acquired_at=acquired_at or now,
            expires_at=expires_at or now + self.duration,
        ).to_json()

    def try_acquire(self) -> bool:
        """One attempt: True when this process now holds the lease."""
        if self.held:
            return True
        now = self._clock()
        stored = self.store.get(LEASE_KEY)
        try:
            if stored is None:
                version = self.store.put_if_absent(LEASE_KEY, self._document(now))
            else:
                current: Lease | None
                try:
                    current = Lease.model_validate_json(stored.data)
                except ValidationError:
                    current = None  # an unreadable lease protects nothing: take it over, by CAS
                if current is not None and current.holder != self.holder and now < current.expires_at:
                    self._other = LeaseView(current.holder, current.expires_at, current.acquired_at)
                    return False
                version = self.store.put_if_version(LEASE_KEY, self._document(now), stored.version)
        except PreconditionFailed:
            self._other = read_lease(self.store)
            return False
        self._version = version
        self._acquired_at = now
        self._expires_at = now + self.duration
        self._other = None
        log.info("lease.acquired", holder=self.holder, expires_at=self._expires_at.isoformat())
        return True

    def acquire(
        self,
        *,
        wait: timedelta | None,
        stop: threading.Event | None = None,
        retry_every: timedelta = timedelta(seconds=1),
        store_outage: timedelta | None = None,
    ) -> bool:
        """Take the lease, waiting up to `wait` (None: until `stop` is set). Raises LeaseHeld when the wait
        ends with the lease still held elsewhere; returns False only when `stop` was set.

        `store_outage`: how long a store that fails with retryable errors (`StoreUnavailable`) is tried
        again, every `retry_every`, before its error is raised; `reconcile --once` passes the same window
        its passes get, so a store that is down at start-up is waited for like one that goes down mid-run.
        None: raised at once (the watcher has its own outage handling)."""
        started = time.monotonic()
        deadline = None if wait is None else started + wait.total_seconds()
        announced = False
        outage_since: float | None = None
        while True:
            try:
                taken = self.try_acquire()
            except StoreError as exc:
                outage_since = _outage_tolerated(exc, outage_since, store_outage)
                if outage_since is None:
                    raise
                log.warning("lease.store_unavailable", error=str(exc), retry_in=retry_every.total_seconds())
                if _pause(stop, retry_every.total_seconds()):
                    return False
                continue
            if outage_since is not None:
                log.info("lease.store_back", after=round(time.monotonic() - outage_since, 1))
                outage_since = None
            if taken:
                return True
            if not announced and self._other is not None:
                log.info("lease.waiting", holder=self._other.holder, expires_at=self._other.expires_at.isoformat())
                announced = True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._held_elsewhere(timedelta(seconds=now - started))
            if _pause(stop, self._retry_pause(retry_every, deadline, now)):
                return False

    def _held_elsewhere(self, waited: timedelta) -> LeaseHeld:
        """The error `acquire` raises when its wait ran out: who holds the lease, and until when."""
        other = self._other or read_lease(self.store)
        return LeaseHeld(other.holder if other else "unknown", other.expires_at if other else None, waited)

    def _retry_pause(self, retry_every: timedelta, deadline: float | None, now: float) -> float:
        """How long `acquire` sleeps before its next attempt: `retry_every`, but no later than when the
        holder's lease would expire, and never past the deadline."""
        pause = retry_every.total_seconds()
        if self._other is not None:
            # Wake up right when the holder's lease would expire, not up to a full period later.
            until_expiry = (self._other.expires_at - self._clock()).total_seconds()
            pause = max(0.05, min(pause, until_expiry + 0.05))
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - now))
        return pause

    def renew(self) -> None:
        """Extend the lease by a full duration; LeaseLost if another process took it."""
        if self._version is None:
            raise LeaseLost("this reconciler does not hold the write lease")
        now = self._clock()
        try:
            self._version = self.store.put_if_version(
                LEASE_KEY, self._document(now, acquired_at=self._acquired_at), self._version
            )
        except PreconditionFailed:
            self._version = None
            self._expires_at = None
            other = read_lease(self.store)
            holder = other.holder if other else "unknown"
            log.error("lease.lost", holder=self.holder, taken_by=holder)
            raise LeaseLost(
                f"the write lease expired and {holder} took it; this reconciler stopped writing"
            ) from None
        self._expires_at = now + self.duration
        log.debug("lease.renewed", holder=self.holder, expires_at=self._expires_at.isoformat())

    def ensure(self) -> None:
        """Called before every write: renew when half the lease has run out. Cheap when it has not. Raises
        StopWriting once this process is stopping (see `stop_writing_on`)."""
        if self._stop is not None and self._stop.is_set():
            raise StopWriting("stopping: no further writes")
        if self._version is None:
            raise LeaseLost("this reconciler does not hold the write lease")
        due = self.renew_due()
        if due is None or self._clock() >= due:
            self.renew()

    def release(self) -> None:
        """Give the lease up now so another reconciler need not wait for it to expire. Never raises for a
        lease that was already lost: there is nothing left to give up."""
        if self._version is None:
            return
        now = self._clock()
        try:
            self.store.put_if_version(
                LEASE_KEY, self._document(now, acquired_at=self._acquired_at, expires_at=now), self._version
            )
            log.info("lease.released", holder=self.holder)
        except PreconditionFailed:
            log.warning("lease.release_skipped", holder=self.holder, reason="taken by another reconciler")
        except StoreError as exc:
            # Releasing is a courtesy; the lease still expires by itself. Do not hide the error we exit with.
            log.warning("lease.release_failed", holder=self.holder, error=str(exc))
        finally:
            self._version = None
            self._expires_at = None
