"""Clocks, passed in so tests can move time instead of sleeping (the agent's daemon and runner, the
reconciler's lease): `now` for the times written into documents and compared with other machines' (heartbeats,
leases), `monotonic` for a process's own schedule. One `utc_now` for both sides."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Now = Callable[[], datetime]
Monotonic = Callable[[], float]


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC, as every store document records it."""
    return datetime.now(UTC)
