"""The daemon's clocks, passed in so tests can move time instead of sleeping: `now` for the times written
into documents and compared with other machines' (heartbeats), `monotonic` for its own schedule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Now = Callable[[], datetime]
Monotonic = Callable[[], float]


def utc_now() -> datetime:
    return datetime.now(UTC)
