"""Living with store outages: the backoff between retries (up to 30 s) and one log line when an outage starts
and one when it ends, not one per retry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from contract.clock import Monotonic
from contract.store import StoreError

log = structlog.get_logger("agent.daemon.loop")

BACKOFF_START_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0


class Backoff:
    def __init__(self) -> None:
        self.delay = 0.0

    def next(self) -> float:
        self.delay = BACKOFF_START_SECONDS if self.delay == 0 else min(BACKOFF_MAX_SECONDS, self.delay * 2)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


@dataclass
class StoreHealth:
    """Logs an outage once when it starts and once when it ends, not on every retry."""

    monotonic: Monotonic = field(default=time.monotonic)
    down_since: float | None = None
    last_error: str | None = None

    def failed(self, exc: StoreError, doing: str) -> None:
        message = str(exc)
        if self.down_since is None:
            self.down_since = self.monotonic()
            log.warning("store.unavailable", doing=doing, error=message, retryable=exc.retryable)
        elif message != self.last_error:
            log.warning("store.still_unavailable", doing=doing, error=message, retryable=exc.retryable)
        self.last_error = message

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.info("store.recovered", outage_seconds=round(self.monotonic() - self.down_since, 1))
        self.down_since = None
        self.last_error = None
