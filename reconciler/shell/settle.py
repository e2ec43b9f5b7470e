"""The `reconcile --once` loop: passes a poll interval apart until nothing is in flight, then an exit code.

Where it sits: the CLI (`reconciler.cli.run`) loads the manifests, takes the lease and calls
`run_until_settled`; each pass is `PassRunner.run_pass` (`reconciler.shell.passes`), and what ended is turned
into an exit code and summary lines by `reconciler.shell.summary`. Nothing here prints: progress goes to an
`on_pass` callback. Nothing sleeps inside a pass, so stopping between two passes loses nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from contract.exitcodes import ExitCode
from contract.keys import status_key
from contract.models import HostDeploymentStatus
from contract.store import StoreError
from reconciler.desired.manifests import Desired
from reconciler.shell.observe import Snapshot
from reconciler.shell.passes import WAKE_FLOOR_SECONDS, PassOutcome, PassRunner
from reconciler.shell.summary import RunLedger, summarize, timed_out_lines

log = structlog.get_logger(__name__)

#: How long a transient store failure may last before `--once` gives up with STORE_UNAVAILABLE.
STORE_RETRY_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    #: One line per fact a person needs at the end: what succeeded, failed, was rolled back, is still running.
    lines: list[str]
    passes: int
    last: PassOutcome | None
    #: Whether any deployment ended during this run. With exit 3 or 4 and nothing ended, the code comes only
    #: from `held`: the summary must then say that nothing was deployed, not "failed, rolled back".
    ran: bool = False
    #: Groups whose desired revision is quarantined from an earlier failure (and so was not deployed).
    held: tuple[str, ...] = ()


@dataclass
class _StoreOutage:
    """Since when the store has been failing with retryable errors (None while it answers)."""

    since: float | None = None

    def gives_up(self, deadline: float) -> bool:
        """Record one more failure; True once it has lasted past the retry window or the run's deadline."""
        now = time.monotonic()
        self.since = self.since or now
        return now - self.since > STORE_RETRY_WINDOW.total_seconds() or now >= deadline


def run_until_settled(
    runner: PassRunner,
    desired: Desired,
    *,
    timeout: timedelta,
    no_wait: bool = False,
    on_pass: Callable[[PassOutcome], None] | None = None,
    before_first_decide: Callable[[Snapshot], None] | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """`reconcile --once`: passes a poll interval apart until nothing is in flight, `timeout` passes, or
    `stop` is set. The lease must already be held by `runner.lease`."""
    deadline = time.monotonic() + timeout.total_seconds()
    poll = runner.settings.poll_interval.total_seconds()
    ledger = RunLedger()
    last: PassOutcome | None = None
    outage = _StoreOutage()
    while True:
        try:
            outcome = runner.run_pass(desired, before_decide=before_first_decide if last is None else None)
        except StoreError as exc:
            if not exc.retryable or outage.gives_up(deadline):
                raise
            log.warning("pass.store_unavailable", error=str(exc), retry_in=poll)
            if _pause(stop, poll):
                break
            continue
        outage.since = None
        last = outcome
        ledger.record(outcome)
        if on_pass is not None:
            on_pass(outcome)
        if no_wait or outcome.settled:
            break
        if time.monotonic() >= deadline:
            return RunResult(int(ExitCode.TIMED_OUT), timed_out_lines(ledger, outcome), runner.passes, outcome)
        if outcome.conflict is not None:
            continue  # re-read now: the documents that changed are fresher than anything we would wait for
        if outcome.wrote and not outcome.in_flight and not outcome.waiting:
            continue  # something just changed and nothing waits on agents: confirm at once
        if _pause_for_reports(runner, outcome, _next_pause(runner, outcome, poll, deadline), stop):
            break
    return _result(runner, ledger, last, no_wait=no_wait, stop=stop)


#: How often `--once` looks at the reports of the hosts it waits for, on a local store (issue 18: a OneAtATime
#: rollout used to spend a whole poll interval per host between the host's result and the next dispatch).
REPORT_CHECK_SECONDS = 0.05
#: Above this many hosts in flight, the poll interval alone paces the passes (a batch that large ends slower than
#: the interval anyway).
REPORT_CHECK_HOSTS = 200


def _pause_for_reports(runner: PassRunner, outcome: PassOutcome, seconds: float, stop: threading.Event | None) -> bool:
    """Wait `seconds` (True when stopped), ending early when a host the pass waits for writes its status. Only on a
    local store, where checking is a `stat` per host; on S3 each check would be a billed request, so the poll
    interval paces the passes there."""
    store = runner.reader.store
    waiting = _hosts_in_flight(outcome)
    if not getattr(store, "local", False) or not waiting or len(waiting) > REPORT_CHECK_HOSTS:
        return _pause(stop, seconds)
    end = time.monotonic() + seconds
    try:
        seen: dict[str, str | None] = {}
        for key in waiting:
            found = store.get(key)
            seen[key] = found.version if found is not None else None
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            if _pause(stop, min(REPORT_CHECK_SECONDS, left)):
                return True
            for key, version in seen.items():
                found = store.get(key, if_version_not=version) if version is not None else store.get(key)
                if found is not None and found.version != version:
                    return False
    except StoreError:
        # The store went away meanwhile: the next pass meets it and handles it as an outage (retried, logged).
        return _pause(stop, max(0.0, end - time.monotonic()))


def _hosts_in_flight(outcome: PassOutcome) -> list[str]:
    """The status keys of hosts dispatched and not finished in the deployments in flight."""
    keys: list[str] = []
    for deployment_id in outcome.in_flight.values():
        deployment = outcome.state_after.deployments.get(deployment_id)
        if deployment is None:
            continue
        keys.extend(status_key(host) for host, state in deployment.hosts.items()
                    if state.status is HostDeploymentStatus.IN_PROGRESS)
    return keys


def _next_pause(runner: PassRunner, outcome: PassOutcome, poll: float, deadline: float) -> float:
    """Seconds until the next pass: a poll interval, or less when a bake ends, the run's deadline comes or
    the lease needs renewing (never sleep through the renewal, however long the poll interval)."""
    pause = poll
    wake = outcome.wake_at()
    if wake is not None:
        pause = min(pause, max(WAKE_FLOOR_SECONDS, (wake - runner.clock()).total_seconds()))
    pause = min(pause, max(0.0, deadline - time.monotonic()))
    renew = runner.lease.renew_due()
    if renew is not None:
        pause = min(pause, max(0.0, (renew - runner.clock()).total_seconds()))
    return pause


def _result(runner: PassRunner, ledger: RunLedger, last: PassOutcome | None, *, no_wait: bool,
            stop: threading.Event | None) -> RunResult:
    """The result of a run that settled, was stopped, or (with --no-wait) made one pass."""
    if stop is not None and stop.is_set() and (last is None or not last.settled):
        in_flight = sorted(last.in_flight.items()) if last else []
        lines = [f"{group}: {deployment} still in flight" for group, deployment in in_flight]
        return RunResult(int(ExitCode.TERMINATED),
                         ["stopped before the rollout finished; re-run to continue", *lines], runner.passes, last)
    code, lines = summarize(ledger, last)
    if no_wait and last is not None and last.in_flight and code == ExitCode.OK:
        lines = [f"{group}: {deployment} in flight (not waiting: --no-wait)"
                 for group, deployment in sorted(last.in_flight.items())]
    held = tuple(sorted({b.group for b in last.blocked if b.code == "QUARANTINED"})) if last else ()
    return RunResult(int(code), lines, runner.passes, last, ran=bool(ledger.finished), held=held)


def _pause(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep `seconds` or until `stop` is set; True when stopped."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


__all__ = ["STORE_RETRY_WINDOW", "RunResult", "run_until_settled"]
