"""Bounding and interrupting a fetch: every step of DownloadBundle and the check before the first event.

A bundle source can hang the agent: a Git remote that accepts and never answers, an S3 endpoint trickling bytes,
a FIFO or `/dev/zero` given as a local bundle. A `FetchBudget` is handed down into every fetcher and into
unpacking; each blocking step either runs in small pieces that call `check()` (local reads, unpacking), as a
child process polled with `check()` (git, contract/gitrun.py) or in a worker thread the caller watches with
`run_watched` (S3). The budget ends a step when:

- the agent is asked to stop (`should_stop`: SIGTERM, or a newer command for the host: a rollback takes over a
  host stuck in a superseded command) -> `FetchStopped`;
- the command's time budget runs out (`deadline`, a `time.monotonic()` value: `HostCommand.timeout_seconds`, or
  `FetchLimits.default_timeout_seconds` when the command has none) -> `FetchTimedOut`;
- a network download stalls: less than `min_bytes_per_second` over `stall_seconds` -> `FetchTimedOut`;
- more than `max_bytes` arrive (an endless body, `/dev/zero`) -> `UnsafeBundle`.

Every message names the step and its source, how long it waited and how many bytes had arrived. Progress
(`on_progress(text)`) is reported at most every `progress_seconds`, and at once when a step starts.

kill -9 at any point: the budget itself keeps nothing on disk. What a step leaves is the step's own: a partial
`bundle.tar` in this deployment's folder (never unpacked: the command is reported FailedAfterRestart at the next
start, and the folder is pruned with old revisions), a git child process (killed at the next start from the
state file, see agent/daemon/orphans.py), a partial `deployment-archive/` (removed before the next unpack).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from agent.errors import BundleError, BundleUnavailable, UnsafeBundle
from agent.limits import FetchLimits

T = TypeVar("T")

#: How often a watched step looks at the stop request and the deadline.
POLL_SECONDS = 0.05


class FetchStopped(BundleError):
    """The agent was asked to stop (shutdown, or a newer command for this host) during the step."""


class FetchTimedOut(BundleUnavailable):
    """The command's time budget ran out, or the source stalled, during the step."""


def size_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


class FetchBudget:
    """The time, stop request and size limits one command's fetch runs under. Used from one thread (the one
    running the command); `run_watched` lets that thread watch a worker."""

    def __init__(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
        limit_seconds: float | None = None,
        limits: FetchLimits | None = None,
        on_progress: Callable[[str], None] | None = None,
        on_child: Callable[[int | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or FetchLimits()
        self.should_stop = should_stop or (lambda: False)
        self.clock = clock
        self.deadline = deadline
        #: The budget in seconds, for messages.
        self.limit_seconds = limit_seconds
        self.on_progress = on_progress
        #: Told the process group of a child started for the fetch (git), then None when it is gone.
        self.on_child = on_child
        self.step_name = "fetching the bundle"
        self.step_started = clock()
        self.received = 0
        self.total: int | None = None
        self._window_start = self.step_started
        self._window_bytes = 0
        self._watch_throughput = False
        self._progress_at = 0.0

    @classmethod
    def unbounded(cls) -> FetchBudget:
        return cls()

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.clock())

    # -- steps

    def step(self, name: str, *, network: bool = False, total: int | None = None) -> None:
        """Start a step (`name` says what and from where: "downloading s3://b/k"); reported at once."""
        self.step_name = name
        self.step_started = self._window_start = self.clock()
        self.received = self._window_bytes = 0
        self.total = total
        self._watch_throughput = network
        self._progress_at = 0.0
        self.check()
        self._report(force=True)

    def count(self, count: int) -> None:
        """`count` more bytes arrived, without checking (for a worker thread; the watching thread checks)."""
        self.received += count
        self._window_bytes += count

    def advance(self, count: int) -> None:
        """`count` more bytes arrived; checks the size cap, the budget and the stop request."""
        self.count(count)
        self.check()

    def check(self) -> None:
        """Raise if the step must end now: stop requested, budget spent, download stalled, too many bytes."""
        if self.received > self.limits.max_bytes:
            raise UnsafeBundle(
                f"{self.step_name}: more than {size_text(self.limits.max_bytes)} arrived, the agent's limit for a "
                "bundle download; nothing was unpacked"
            )
        now = self.clock()
        waited = now - self.step_started
        got = f"{size_text(self.received)} received" if self._watch_throughput or self.received else ""
        so_far = f" ({got})" if got else ""
        if self.should_stop():
            raise FetchStopped(
                f"{self.step_name}: interrupted after {waited:.1f} s{so_far}: the agent was asked to stop (it is "
                "shutting down, or a newer command for this host arrived)"
            )
        if self.deadline is not None and now >= self.deadline:
            limit = f" of {self.limit_seconds:g} s" if self.limit_seconds is not None else ""
            raise FetchTimedOut(
                f"{self.step_name}: did not finish within the command's time limit{limit} (this step waited "
                f"{waited:.1f} s{so_far}); it was abandoned"
            )
        if self._watch_throughput and now - self._window_start >= self.limits.stall_seconds:
            needed = self.limits.min_bytes_per_second * (now - self._window_start)
            if self._window_bytes < needed:
                raise FetchTimedOut(
                    f"{self.step_name}: stalled: only {size_text(self._window_bytes)} arrived in the last "
                    f"{now - self._window_start:.0f} s (at least {self.limits.min_bytes_per_second:g} B/s needed; "
                    f"waited {waited:.1f} s in all{so_far}); it was abandoned"
                )
            self._window_start, self._window_bytes = now, 0
        self._report()

    def _report(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = self.clock()
        if not force and now - self._progress_at < self.limits.progress_seconds:
            return
        self._progress_at = now
        waited = now - self.step_started
        amount = ""
        if self._watch_throughput or self.received:
            of = f" of {size_text(self.total)}" if self.total is not None else ""
            amount = f", {size_text(self.received)}{of} so far"
        self.on_progress(f"{self.step_name} ({waited:.0f} s{amount})")

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, checking all along."""
        end = self.clock() + seconds
        while True:
            self.check()
            left = end - self.clock()
            if left <= 0:
                return
            time.sleep(min(POLL_SECONDS, left))

    # -- a blocking call in a worker thread

    def run_watched(self, work: Callable[[threading.Event], T], *, abort: Callable[[], None] | None = None) -> T:
        """Run `work(aborted)` in a daemon thread while this thread checks the budget. When the budget ends
        the step, `aborted` is set (the worker must write nothing after seeing it), `abort()` is called to
        break a blocking read (closing the connection), and the error is raised without waiting for the worker
        beyond one second: a read that cannot be broken ends on its own with its socket timeout."""
        aborted = threading.Event()
        result: list[T] = []
        failure: list[BaseException] = []

        def body() -> None:
            try:
                result.append(work(aborted))
            except BaseException as exc:  # handed to the watching thread
                failure.append(exc)

        worker = threading.Thread(target=body, name="fetch", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                self.check()
                worker.join(POLL_SECONDS)
        except BaseException:
            aborted.set()
            if abort is not None:
                with contextlib.suppress(Exception):  # best effort: the worker still writes nothing more
                    abort()
            worker.join(1.0)
            raise
        if failure:
            raise failure[0]
        return result[0]
