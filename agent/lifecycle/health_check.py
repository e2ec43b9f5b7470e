"""HealthCheck on the agent: after ValidateService, GET the service until it has stayed healthy long enough.

Where it sits: a group with a `healthCheck` gets the HealthCheck step in its commands right after ValidateService
(issue 14; the reconciler resolves the URL for the host, contract/models.py `HostHealthCheck`). `CommandRun`
(agent/lifecycle/command_run.py) runs it like BlockTraffic and AllowTraffic: no script, the agent itself does the
work, the event's report carries progress while it runs and the outcome when it ends. With traffic control it
comes before BeforeAllowTraffic, so a host that is not healthy is never put back in its load balancers.

The rules (times from the start of the step, on the monotonic clock; reported times come from the runner's clock
through the event's report):

- a GET every `interval_seconds`, each answering within `timeout_seconds`;
- a check passes when the status is one of `expected_status` and, if `body_match` is set, the regex is found in
  the first BODY_LIMIT bytes of the body; redirects are not followed (a 301 counts as 301: the check is about
  this host, and a redirect can lead to another one) and no proxy from the environment is used;
- failures are tolerated until the first check passes (the service may still be warming up);
- from the first pass on, every check must pass until `min_healthy_seconds` have gone by: one failure and the
  host flapped, the step fails ("it passed for 4 s (3 checks passed), then GET ... -> 503");
- the step succeeds at the first passing check at least `min_healthy_seconds` after the first pass (a check is
  scheduled exactly then, so the step does not outlast the window by up to an interval);
- not done `healthy_deadline_seconds` after the step began: the step fails with the last check's result.

Like every other event it ends early, failed, when the agent is asked to stop (`should_stop`: SIGTERM, or a
newer command for the host) or the command's time limit (`deadline`) runs out; a stop is noticed between checks
(every POLL_SECONDS while waiting), so at most one check's `timeout_seconds` after it is asked for.

kill -9 during the step: nothing of the check is kept on disk and no child process runs for it. The daemon's
state file (agent/daemon/statefile.py, agent/daemon/loop.py) says the command was running, so at the next start
HealthCheck is reported Failed with FailedAfterRestart, the events after it Skipped, and the command is not run
again (exactly once, docs/design.md). The new revision's files stay installed (Install has run): the command is
failed, so the reconciler treats the host like any other failed host (its rollback, if the group has one,
deploys the previous revision with a new command). tests/agent/test_health_check.py kills a real agent mid-step.
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from contract.wire import HostHealthCheck

#: Bytes of an answer's body read (and matched against `body_match`); the rest is never read.
BODY_LIMIT = 64 * 1024
#: How often the event's report is updated while the check runs.
PROGRESS_SECONDS = 2.0
#: How often the wait between checks looks at the stop request and the deadlines.
POLL_SECONDS = 0.05

MISSING_SETTINGS = (
    "the command lists the HealthCheck step but carries no healthCheck settings, so there is nothing to check; "
    "the reconciler that wrote it is out of step with this agent (a bug): deploy again after updating both"
)


@dataclass(frozen=True)
class HealthOutcome:
    succeeded: bool
    #: The success note ("healthy for 10 s: 6 checks passed (GET ... -> 200)") or why the step failed.
    message: str


@dataclass(frozen=True)
class Probe:
    """What one GET got, in words: "GET http://10.0.0.5:8080/health -> 503", "...: connection refused"."""

    passed: bool
    text: str


def seconds_text(value: float) -> str:
    """4 -> "4", 4.25 -> "4.2", 123.4 -> "123": enough to read, never "4.000000001"."""
    if value >= 10:
        return f"{value:.0f}"
    return f"{round(value, 1):g}"


def shown_url(url: str) -> str:
    """The URL as reports show it: without a user and password, should one be in it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def settings_problem(check: HostHealthCheck) -> str | None:
    """What makes the settings unusable before any GET (a URL urllib cannot fetch, a regex that does not compile)."""
    parts = urlsplit(check.url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"healthCheck url {shown_url(check.url)!r} is not an http:// or https:// URL with a host"
    try:
        parts.port  # noqa: B018 (read for its check: a port that is not a number in 0-65535 raises)
    except ValueError as exc:
        return f"healthCheck url {shown_url(check.url)!r} has an invalid port: {exc}"
    if parts.username is not None:
        # urllib would take `user:password@host` for a host name; a check needing credentials is not supported.
        return f"healthCheck url {shown_url(check.url)!r} carries a user name or password, which is not supported"
    if check.body_match is not None:
        try:
            re.compile(check.body_match)
        except re.error as exc:
            return f"healthCheck bodyMatch {check.body_match!r} is not a valid regular expression: {exc}"
    if not check.expected_status:
        return "healthCheck expectedStatus is empty, so no answer could ever pass"
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other: its status is checked, its target never fetched."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Prober:
    """One host's GETs: no proxy from the environment, no redirects, bounded in time and size."""

    def __init__(self, check: HostHealthCheck, clock: Callable[[], float]) -> None:
        self.check = check
        self.clock = clock
        self.request_text = f"GET {shown_url(check.url)}"
        self.pattern = re.compile(check.body_match) if check.body_match is not None else None
        # Only the handlers a health check needs: no file:// or ftp://, no proxy from the environment (the check
        # is about this host, not the path through a proxy), redirects reported rather than followed.
        self.opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler({}), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                        _NoRedirect(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                        urllib.request.UnknownHandler()):
            self.opener.add_handler(handler)

    def probe(self, timeout: float) -> Probe:
        started = self.clock()
        # http and https only: `settings_problem` refused any other scheme and the opener has no other handler.
        request = urllib.request.Request(  # noqa: S310
            self.check.url, method="GET", headers={"User-Agent": "deploy-agent"}
        )
        try:
            with self.opener.open(request, timeout=timeout) as answer:
                return self._judge(answer.status, answer, timeout, started)
        except urllib.error.HTTPError as exc:  # 4xx, 5xx and the 3xx not followed: still an answer
            with exc:
                return self._judge(exc.code, exc, timeout, started)
        except urllib.error.URLError as exc:
            return Probe(False, f"{self.request_text}: {self._reason(exc.reason, timeout)}")
        except (OSError, http.client.HTTPException) as exc:
            return Probe(False, f"{self.request_text}: {self._reason(exc, timeout)}")

    def _judge(self, status: int, answer: IO[bytes], timeout: float, started: float) -> Probe:
        got = f"{self.request_text} -> {status}"
        if status not in self.check.expected_status:
            return Probe(False, got)
        if self.pattern is None:
            return Probe(True, got)
        try:
            body = _read_bounded(answer, BODY_LIMIT)
        except (OSError, http.client.HTTPException) as exc:
            return Probe(False, f"{got}, but reading the body failed: {self._reason(exc, timeout)}")
        # Each socket read has `timeout`; a body trickled in over many reads must not stretch the check.
        if self.clock() - started > timeout:
            return Probe(False, f"{got}, but the body did not arrive within {seconds_text(timeout)} s")
        if self.pattern.search(body.decode("utf-8", errors="replace")) is None:
            limit = f" (first {BODY_LIMIT // 1024} KiB)" if len(body) >= BODY_LIMIT else ""
            return Probe(False, f"{got}, but the body{limit} does not match {self.pattern.pattern!r}")
        return Probe(True, got)

    @staticmethod
    def _reason(error: object, timeout: float) -> str:
        if isinstance(error, TimeoutError | socket.timeout):
            return f"no answer within {seconds_text(timeout)} s"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, ssl.SSLError):
            return f"TLS error: {getattr(error, 'reason', None) or error}"
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
        if isinstance(error, http.client.HTTPException):
            return f"not a valid HTTP answer ({type(error).__name__}: {error})"
        return str(error) or type(error).__name__


def _read_bounded(answer: IO[bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = answer.read(min(16 * 1024, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class HealthWatch:
    """The rules above over a series of check results, as pure bookkeeping: every time is handed in (seconds on
    the monotonic clock), so the decisions are testable without a server or a clock."""

    def __init__(self, check: HostHealthCheck, started: float) -> None:
        self.check = check
        self.started = started
        self.deadline_at = started + check.healthy_deadline_seconds
        self.checks = 0
        self.failed_before_first_pass = 0
        self.passed_since_first = 0
        self.first_pass_at: float | None = None
        self.last: Probe | None = None

    def record(self, probe: Probe, at: float) -> HealthOutcome | None:
        """The check that started at `at` got `probe`: the step's outcome if that decides it, else None."""
        self.checks += 1
        self.last = probe
        if self.first_pass_at is None:
            if not probe.passed:
                self.failed_before_first_pass += 1
                return None
            self.first_pass_at = at
        elif not probe.passed:
            healthy = at - self.first_pass_at
            return HealthOutcome(False, f"the host flapped: it passed for {seconds_text(healthy)} s "
                                        f"({self._count(self.passed_since_first)} passed), then {probe.text}")
        self.passed_since_first += 1
        if at - self.first_pass_at >= self.check.min_healthy_seconds:
            return HealthOutcome(True, self._success_note())
        return None

    def next_check_at(self, last_started: float) -> float:
        """An interval after the last check started, or sooner: exactly when the healthy window ends."""
        following = last_started + self.check.interval_seconds
        if self.first_pass_at is not None:
            following = min(following, self.first_pass_at + self.check.min_healthy_seconds)
        return following

    def progress(self, now: float) -> str:
        """The event's message while the check runs."""
        if self.first_pass_at is None:
            left = max(0.0, self.deadline_at - now)
            last = f", last {self.last.text}" if self.last is not None else ""
            return (f"not healthy yet: {self._count(self.checks)}{last}; gives up in {seconds_text(left)} s "
                    f"(healthyDeadline)")
        return (f"healthy for {seconds_text(now - self.first_pass_at)} s of "
                f"{seconds_text(self.check.min_healthy_seconds)} s, {self._count(self.passed_since_first)}")

    def state(self, now: float) -> str:
        """Where the check got to, for a step that ends before it decided."""
        last = f"; last check: {self.last.text}" if self.last is not None else ""
        if self.first_pass_at is None:
            if self.checks == 0:
                return "no check had run yet"
            return f"no check passed ({self._count(self.checks)}){last}"
        return (f"healthy for only {seconds_text(now - self.first_pass_at)} s of "
                f"{seconds_text(self.check.min_healthy_seconds)} s ({self._count(self.passed_since_first)} "
                f"passed){last}")

    def deadline_outcome(self, now: float) -> HealthOutcome:
        check = self.check
        hint = ""
        if check.min_healthy_seconds >= check.healthy_deadline_seconds:
            hint = " (minHealthyTime is not shorter than healthyDeadline, so this check can never pass)"
        return HealthOutcome(False, f"not healthy for {seconds_text(check.min_healthy_seconds)} s within the "
                                    f"healthy deadline of {seconds_text(check.healthy_deadline_seconds)} s{hint}: "
                                    f"{self.state(now)}")

    def _success_note(self) -> str:
        assert self.last is not None and self.first_pass_at is not None
        note = (f"healthy for {seconds_text(self.check.min_healthy_seconds)} s: "
                f"{self._count(self.passed_since_first)} passed ({self.last.text})")
        if self.failed_before_first_pass:
            note += (f"; the first pass came {seconds_text(self.first_pass_at - self.started)} s into the step, "
                     f"after {self._count(self.failed_before_first_pass)} failed")
        return note

    @staticmethod
    def _count(number: int) -> str:
        return f"{number} check" if number == 1 else f"{number} checks"


def run_health_check(
    check: HostHealthCheck,
    *,
    should_stop: Callable[[], bool] | None,
    deadline: float | None,
    command_timeout: float | None,
    on_progress: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress_seconds: float = PROGRESS_SECONDS,
) -> HealthOutcome:
    """Run the step to its outcome. `deadline` is the command's (monotonic, None: none; `command_timeout` is its
    length in seconds, for the message); `on_progress(text)` updates the event's report, at most every
    `progress_seconds`. `clock` and `sleep` go together: the monotonic clock and a way to wait on it."""
    problem = settings_problem(check)
    if problem is not None:
        return HealthOutcome(False, problem)
    step = _Step(check, should_stop, deadline, command_timeout, clock, sleep)
    reported_at = -math.inf
    next_at = step.watch.started
    while True:
        ended = step.wait_until(next_at)
        if ended is not None:
            return ended
        started = clock()
        probe = step.probe(started)
        if not probe.passed:
            # A GET cut short by a deadline failed because time ran out, not because the host did: say so.
            ended = step.wait_until(clock())
            if ended is not None:
                return ended
        outcome = step.watch.record(probe, started)
        if outcome is not None:
            return outcome
        now = clock()
        if now - reported_at >= progress_seconds:
            on_progress(step.watch.progress(now))
            reported_at = now
        next_at = step.watch.next_check_at(started)


@dataclass
class _Step:
    """One run of the step: the check, what ends it early, and the clock it waits on."""

    check: HostHealthCheck
    should_stop: Callable[[], bool] | None
    deadline: float | None
    command_timeout: float | None
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def __post_init__(self) -> None:
        self.prober = Prober(self.check, self.clock)
        self.watch = HealthWatch(self.check, self.clock())

    def probe(self, started: float) -> Probe:
        """One GET, its timeout cut short so it cannot outlast the healthy deadline or the command's."""
        limits = [self.check.timeout_seconds, self.watch.deadline_at - started]
        if self.deadline is not None:
            limits.append(self.deadline - started)
        return self.prober.probe(max(0.01, min(limits)))

    def wait_until(self, moment: float) -> HealthOutcome | None:
        """Wait for `moment`; an outcome instead if the agent stops or a deadline comes first."""
        watch = self.watch
        while True:
            now = self.clock()
            if self.should_stop is not None and self.should_stop():
                return HealthOutcome(False, f"the agent is shutting down; stopped the health check: "
                                            f"{watch.state(now)}")
            if self.deadline is not None and now >= self.deadline:
                limit = f"{self.command_timeout:g} s" if self.command_timeout else "its time limit"
                return HealthOutcome(False, f"the command's time limit of {limit} ran out during the health "
                                            f"check: {watch.state(now)}")
            if now >= watch.deadline_at:
                return watch.deadline_outcome(now)
            if now >= moment:
                return None
            ends = [moment, watch.deadline_at] + ([self.deadline] if self.deadline is not None else [])
            self.sleep(max(0.0, min(POLL_SECONDS, min(ends) - now)))
