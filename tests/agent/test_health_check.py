"""The HealthCheck step (issue 14) against a real HTTP server whose answers each test scripts.

The rules are timed on a fake monotonic clock (its `sleep` moves it on), so a 10 s window takes no 10 s; every
GET is real, over a socket, and the timeouts are real socket timeouts. A few tests run on the real clock with
short intervals: the runner end to end, `deploy-agent local`, and a real agent process killed with kill -9.
"""

from __future__ import annotations

import http.server
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.errors import RevisionInvalid, UsageError
from agent.lifecycle.appspec import parse_appspec
from agent.lifecycle.health_check import (
    BODY_LIMIT,
    MISSING_SETTINGS,
    HealthOutcome,
    HealthWatch,
    Probe,
    run_health_check,
)
from agent.lifecycle.revision_check import check_event_order
from contract.store import open_store
from contract.vocabulary import DEFAULT_EVENTS, HEALTH_CHECK, CommandStatus, EventStatus, LifecycleErrorCode
from contract.wire import HostHealthCheck
from tests.agent.conftest import Bundle, Sandbox, run_cli, statuses

# --------------------------------------------------------------------------------------------------
# A service whose answers the test scripts


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    #: Seconds to wait before answering (a slow service).
    delay: float = 0.0
    #: Close the connection without any answer.
    hang_up: bool = False


OK = Answer()
DOWN = Answer(503, b"unavailable")


@dataclass
class Service:
    """An HTTP server in a thread: the n-th GET gets `answers[n]`, the last answer repeats."""

    answers: list[Answer] = field(default_factory=lambda: [OK])
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, *answers: Answer) -> None:
        with self.lock:
            self.answers = list(answers)
            self.requests = 0

    def next_answer(self) -> Answer:
        with self.lock:
            answer = self.answers[min(self.requests, len(self.answers) - 1)]
            self.requests += 1
            return answer


@pytest.fixture
def service() -> Iterator[tuple[Service, str]]:
    scripted = Service()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = scripted.next_answer()
            if answer.delay:
                time.sleep(answer.delay)
            if answer.hang_up:
                self.close_connection = True
                return
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield scripted, f"http://127.0.0.1:{server.server_port}/health"
    finally:
        server.shutdown()
        server.server_close()


class FakeClock:
    """A monotonic clock that moves only when the step waits (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Run:
    outcome: HealthOutcome
    progress: list[str]
    clock: FakeClock


def run(
    url: str,
    *,
    should_stop: Callable[[], bool] | None = None,
    deadline_in: float | None = None,
    progress_seconds: float = 2.0,
    **settings: object,
) -> Run:
    """The step on the fake clock; `deadline_in` is the command's deadline, seconds from the start."""
    clock = FakeClock()
    progress: list[str] = []
    check = HostHealthCheck(url=url, **settings)  # type: ignore[arg-type]
    outcome = run_health_check(
        check,
        should_stop=should_stop,
        deadline=clock.now + deadline_in if deadline_in is not None else None,
        command_timeout=deadline_in,
        on_progress=progress.append,
        clock=clock,
        sleep=clock.sleep,
        progress_seconds=progress_seconds,
    )
    return Run(outcome, progress, clock)


# --------------------------------------------------------------------------------------------------
# The rules, over real GETs


def test_a_healthy_service_succeeds_once_min_healthy_time_has_passed(service: tuple[Service, str]) -> None:
    server, url = service
    done = run(url, interval_seconds=2, min_healthy_seconds=10)
    assert done.outcome == HealthOutcome(True, f"healthy for 10 s: 6 checks passed (GET {url} -> 200)")
    assert server.requests == 6  # at 0, 2, 4, 6, 8 and 10 s
    assert done.clock.now == pytest.approx(1010.0)


def test_a_check_is_made_exactly_when_the_window_ends(service: tuple[Service, str]) -> None:
    server, url = service
    done = run(url, interval_seconds=3, min_healthy_seconds=10)
    assert done.outcome.succeeded
    assert server.requests == 5  # 0, 3, 6, 9, then 10 rather than 12
    assert done.clock.now == pytest.approx(1010.0)


def test_no_min_healthy_time_succeeds_at_the_first_pass(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(DOWN, DOWN, OK)
    done = run(url, interval_seconds=1, min_healthy_seconds=0)
    assert done.outcome == HealthOutcome(
        True, f"healthy for 0 s: 1 check passed (GET {url} -> 200); the first pass came 2 s into the step, "
              "after 2 checks failed")


def test_failures_before_the_first_pass_are_tolerated(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(Answer(hang_up=True), DOWN, Answer(500), OK)
    done = run(url, interval_seconds=1, min_healthy_seconds=4)
    assert done.outcome.succeeded, done.outcome.message
    assert done.outcome.message.startswith(f"healthy for 4 s: 5 checks passed (GET {url} -> 200); the first pass "
                                           "came 3 s into the step, after 3 checks failed")
    assert server.requests == 8


def test_a_failure_after_the_first_pass_is_a_flap(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(DOWN, OK, OK, OK, Answer(500, b"boom"), OK)
    done = run(url, interval_seconds=1, min_healthy_seconds=10)
    assert done.outcome == HealthOutcome(
        False, f"the host flapped: it passed for 3 s (3 checks passed), then GET {url} -> 500")
    assert server.requests == 5  # nothing after the flap


def test_a_connection_error_after_the_first_pass_is_a_flap(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(OK, OK, Answer(hang_up=True))
    done = run(url, interval_seconds=1, min_healthy_seconds=10)
    assert not done.outcome.succeeded
    assert done.outcome.message.startswith(f"the host flapped: it passed for 2 s (2 checks passed), then GET {url}: ")
    assert "Remote end closed connection without response" in done.outcome.message


def test_connection_refused(service: tuple[Service, str]) -> None:
    with socket.socket() as placeholder:  # a port nothing listens on once it is closed
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    url = f"http://127.0.0.1:{port}/health"
    done = run(url, interval_seconds=1, min_healthy_seconds=1, healthy_deadline_seconds=3)
    assert done.outcome == HealthOutcome(
        False, f"not healthy for 1 s within the healthy deadline of 3 s: no check passed (3 checks); last check: "
               f"GET {url}: connection refused")


def test_an_answer_slower_than_the_timeout_fails_the_check(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(OK, Answer(delay=0.5))
    started = time.monotonic()
    done = run(url, interval_seconds=1, min_healthy_seconds=5, timeout_seconds=0.1)
    assert done.outcome == HealthOutcome(
        False, f"the host flapped: it passed for 1 s (1 check passed), then GET {url}: no answer within 0.1 s")
    assert time.monotonic() - started < 0.45  # the GET was abandoned at its timeout, not at the answer


def test_the_body_must_match(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(Answer(body=b'{"status": "starting"}'), Answer(body=b'{"status": "ready"}'))
    done = run(url, interval_seconds=1, min_healthy_seconds=2, body_match=r'"status":\s*"ready"')
    assert done.outcome.succeeded, done.outcome.message
    assert "after 1 check failed" in done.outcome.message
    server.script(OK, Answer(body=b'{"status": "degraded"}'))
    flapped = run(url, interval_seconds=1, min_healthy_seconds=2, body_match="ok|ready")
    assert flapped.outcome == HealthOutcome(
        False, f"the host flapped: it passed for 1 s (1 check passed), then GET {url} -> 200, but the body does not "
               "match 'ok|ready'")


def test_only_the_first_64_kib_of_a_body_are_read(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(Answer(body=b"x" * BODY_LIMIT + b"ready"))
    done = run(url, interval_seconds=1, min_healthy_seconds=0, healthy_deadline_seconds=1, body_match="ready")
    assert done.outcome.message.endswith(f"GET {url} -> 200, but the body (first 64 KiB) does not match 'ready'")


def test_an_unexpected_status_is_not_healthy_and_expected_ones_are(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(Answer(204, b""))
    assert not run(url, min_healthy_seconds=0, healthy_deadline_seconds=1).outcome.succeeded
    assert run(url, min_healthy_seconds=0, expected_status=[200, 204]).outcome.succeeded


def test_never_healthy_fails_at_the_healthy_deadline_with_the_last_result(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(DOWN)
    done = run(url, interval_seconds=1, min_healthy_seconds=2, healthy_deadline_seconds=5)
    assert done.outcome == HealthOutcome(
        False, f"not healthy for 2 s within the healthy deadline of 5 s: no check passed (5 checks); last check: "
               f"GET {url} -> 503")
    assert done.clock.now == pytest.approx(1005.0)


def test_healthy_too_late_fails_at_the_healthy_deadline(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(DOWN, DOWN, DOWN, OK)
    done = run(url, interval_seconds=1, min_healthy_seconds=4, healthy_deadline_seconds=5)
    assert done.outcome == HealthOutcome(
        False, f"not healthy for 4 s within the healthy deadline of 5 s: healthy for only 2 s of 4 s (2 checks "
               f"passed); last check: GET {url} -> 200")


def test_a_window_longer_than_the_deadline_is_called_out(service: tuple[Service, str]) -> None:
    _, url = service
    done = run(url, interval_seconds=1, min_healthy_seconds=10, healthy_deadline_seconds=3)
    assert "minHealthyTime is not shorter than healthyDeadline, so this check can never pass" in done.outcome.message


def test_a_stop_request_ends_the_step_between_checks(service: tuple[Service, str]) -> None:
    server, url = service
    done = run(url, interval_seconds=1, min_healthy_seconds=10, should_stop=lambda: server.requests >= 3)
    assert done.outcome == HealthOutcome(
        False, f"the agent is shutting down; stopped the health check: healthy for only 2 s of 10 s (3 checks "
               f"passed); last check: GET {url} -> 200")
    assert done.clock.now == pytest.approx(1002.0)  # noticed before waiting for the next check


def test_the_commands_time_limit_ends_the_step(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(DOWN)
    done = run(url, interval_seconds=1, min_healthy_seconds=10, deadline_in=2.5)
    assert done.outcome == HealthOutcome(
        False, f"the command's time limit of 2.5 s ran out during the health check: no check passed (3 checks); "
               f"last check: GET {url} -> 503")
    assert done.clock.now == pytest.approx(1002.5)


def test_a_get_cut_short_by_the_commands_time_limit_is_not_called_a_flap(service: tuple[Service, str]) -> None:
    """The last GET is cut to what is left of the command's time: its failure is time running out, not the host."""
    server, url = service
    server.script(OK, Answer(delay=1.0))

    class RealTimeClock:
        """Real time, with the step's sleeps skipped (so the window passes at once and a GET still takes time)."""

        def __init__(self) -> None:
            self.skipped = 0.0

        def __call__(self) -> float:
            return time.monotonic() + self.skipped

        def sleep(self, seconds: float) -> None:
            self.skipped += seconds

    clock = RealTimeClock()
    check = HostHealthCheck(url=url, interval_seconds=1, min_healthy_seconds=5, timeout_seconds=2)
    outcome = run_health_check(check, should_stop=None, deadline=clock() + 1.2, command_timeout=1.2,
                               on_progress=lambda text: None, clock=clock, sleep=clock.sleep)
    assert not outcome.succeeded
    assert outcome.message.startswith("the command's time limit of 1.2 s ran out during the health check"), outcome
    assert "flapped" not in outcome.message


def test_progress_is_reported_at_most_every_two_seconds(service: tuple[Service, str]) -> None:
    server, url = service
    server.script(DOWN, DOWN, OK)
    done = run(url, interval_seconds=0.5, min_healthy_seconds=5, healthy_deadline_seconds=60)
    assert done.outcome.succeeded
    assert server.requests == 13
    assert done.progress == [
        f"not healthy yet: 1 check, last GET {url} -> 503; gives up in 60 s (healthyDeadline)",
        "healthy for 1 s of 5 s, 3 checks",
        "healthy for 3 s of 5 s, 7 checks",
    ]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"url": "file:///etc/passwd"}, "is not an http:// or https:// URL with a host"),
        ({"url": "http:///health"}, "is not an http:// or https:// URL with a host"),
        ({"url": "http://user:secret@127.0.0.1/"}, "carries a user name or password"),
        ({"url": "http://127.0.0.1:99999/"}, "has an invalid port"),
        ({"url": "http://127.0.0.1/", "body_match": "("}, "bodyMatch '(' is not a valid regular expression"),
        ({"url": "http://127.0.0.1/", "expected_status": []}, "expectedStatus is empty"),
    ],
)
def test_unusable_settings_fail_before_any_get(settings: dict[str, object], fragment: str) -> None:
    done = run(**settings)  # type: ignore[arg-type]
    assert not done.outcome.succeeded
    assert fragment in done.outcome.message
    assert "secret" not in done.outcome.message


def test_the_rules_without_a_server() -> None:
    """HealthWatch is pure: times in, decisions out."""
    watch = HealthWatch(HostHealthCheck(url="http://h/", interval_seconds=2, min_healthy_seconds=5), started=0.0)
    up, down = Probe(True, "GET http://h/ -> 200"), Probe(False, "GET http://h/ -> 503")
    assert watch.record(down, 0.0) is None
    assert watch.next_check_at(0.0) == 2.0
    assert watch.record(up, 2.0) is None
    assert watch.next_check_at(6.0) == 7.0  # the end of the window, not 8
    assert watch.record(up, 7.0) == HealthOutcome(
        True, "healthy for 5 s: 2 checks passed (GET http://h/ -> 200); the first pass came 2 s into the step, "
              "after 1 check failed")


# --------------------------------------------------------------------------------------------------
# The step in a command


def hello_bundle(make_bundle: Callable[[str], Bundle]) -> Bundle:
    bundle = make_bundle("hello")
    bundle.appspec("""
        version: 0.0
        os: linux
        files:
          - source: index.html
            destination: /srv/app
        hooks:
          ValidateService:
            - location: validate.sh
          BeforeAllowTraffic:
            - location: validate.sh
        """)
    bundle.file("index.html", "hello\n")
    bundle.script("validate.sh", 'echo "$LIFECYCLE_EVENT ran"\n')
    return bundle


def health_events() -> list[str]:
    return [*DEFAULT_EVENTS, HEALTH_CHECK, "BeforeAllowTraffic"]


def test_a_command_runs_health_check_after_validate_service(
    sandbox: Sandbox, make_bundle: Callable[[str], Bundle], service: tuple[Service, str]
) -> None:
    server, url = service
    server.script(DOWN, OK)
    check = HostHealthCheck(url=url, interval_seconds=0.05, min_healthy_seconds=0.2, timeout_seconds=1)
    outcome = sandbox.deploy(hello_bundle(make_bundle), events=health_events(), health_check=check)
    assert outcome.status == CommandStatus.SUCCEEDED, outcome.message
    final = outcome.events[health_events().index(HEALTH_CHECK)]
    assert final.status == EventStatus.SUCCEEDED
    assert final.message is not None
    assert re.fullmatch(rf"healthy for 0.2 s: \d+ checks passed \(GET {url} -> 200\); the first pass came [\d.]+ s "
                        r"into the step, after 1 check failed", final.message), final.message
    assert final.started_at is not None and final.ended_at is not None
    running = [r for r in sandbox.reports if r.name == HEALTH_CHECK and r.status == EventStatus.IN_PROGRESS]
    assert [r.message for r in running] == [None, f"not healthy yet: 1 check, last GET {url} -> 503; gives up in "
                                                  "300 s (healthyDeadline)"]
    assert outcome.installed is not None


def test_a_flapping_host_fails_the_command_and_gets_no_traffic(
    sandbox: Sandbox, make_bundle: Callable[[str], Bundle], service: tuple[Service, str]
) -> None:
    server, url = service
    server.script(OK, OK, DOWN)
    check = HostHealthCheck(url=url, interval_seconds=0.05, min_healthy_seconds=5)
    outcome = sandbox.deploy(hello_bundle(make_bundle), events=health_events(), health_check=check)
    assert outcome.status == CommandStatus.FAILED
    assert statuses(outcome)[HEALTH_CHECK] == "Failed"
    assert statuses(outcome)["BeforeAllowTraffic"] == "Skipped"
    assert outcome.message is not None
    assert re.match(rf"HealthCheck failed: the host flapped: it passed for [\d.]+ s \(2 checks passed\), then GET "
                    rf"{url} -> 503\. Full log: ", outcome.message), outcome.message
    failed = outcome.events[health_events().index(HEALTH_CHECK)]
    assert failed.error_code == LifecycleErrorCode.UNKNOWN_ERROR
    assert outcome.installed is None


def test_health_check_without_settings_is_refused_before_anything_runs(
    sandbox: Sandbox, make_bundle: Callable[[str], Bundle]
) -> None:
    outcome = sandbox.deploy(hello_bundle(make_bundle), events=health_events())
    assert outcome.status == CommandStatus.FAILED
    assert outcome.message == f"the command could not start: {MISSING_SETTINGS}"
    assert set(statuses(outcome).values()) == {"Failed", "Skipped"}
    assert not sandbox.on_host("/srv/app").exists()


@pytest.mark.parametrize(
    "events",
    [
        [HEALTH_CHECK, *DEFAULT_EVENTS],
        [*DEFAULT_EVENTS[:-1], HEALTH_CHECK, "ValidateService"],
        [*DEFAULT_EVENTS, "BeforeAllowTraffic", HEALTH_CHECK],
    ],
)
def test_health_check_comes_right_after_validate_service(events: list[str]) -> None:
    with pytest.raises(UsageError, match="HealthCheck must come directly after ValidateService"):
        check_event_order(events)
    check_event_order([*DEFAULT_EVENTS, HEALTH_CHECK, "BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"])


def test_an_appspec_cannot_attach_scripts_to_health_check() -> None:
    text = "version: 0.0\nos: linux\nhooks:\n  HealthCheck:\n    - location: check.sh\n"
    with pytest.raises(RevisionInvalid) as raised:
        parse_appspec(text)
    assert "hooks.HealthCheck: HealthCheck is the agent's own check of the service; scripts cannot be attached" in (
        str(raised.value))


def test_deploy_agent_local_runs_the_health_check(
    tmp_path: Path, make_bundle: Callable[[str], Bundle], service: tuple[Service, str]
) -> None:
    server, url = service
    bundle = hello_bundle(make_bundle)
    common = ("local", "-l", str(bundle.path), "--root-dir", str(tmp_path / "root"),
              "--host-root", str(tmp_path / "host"))
    refused = run_cli(*common, "--events", "ValidateService,HealthCheck")
    assert refused.code == 2 and "HealthCheck in --events needs --health-check URL" in refused.err
    no_validate = run_cli(*common, "--events", "BeforeInstall", "--health-check", url)
    assert no_validate.code == 2 and "add ValidateService to --events" in no_validate.err
    assert server.requests == 0
    deployed = run_cli(*common, "--health-check", url, "--min-healthy-time", "0")
    assert deployed.code == 0, deployed.err
    assert re.search(r"^  HealthCheck +Succeeded .*healthy for 0 s: 1 check passed", deployed.out, re.M), deployed.out
    assert f"healthy for 0 s: 1 check passed (GET {url} -> 200)" in deployed.out
    assert server.requests == 1


# --------------------------------------------------------------------------------------------------
# kill -9 during the step (a real agent process)


@pytest.mark.slow
def test_kill_9_during_health_check_fails_it_after_restart_and_never_checks_again(
    tmp_path: Path, service: tuple[Service, str]
) -> None:
    from tests.daemon.agentproc import AgentHost, make_bundle, make_command, wait_for

    server, url = service
    server.script(DOWN)
    host = AgentHost("web-1", tmp_path / "web-1", open_store(f"file://{tmp_path / 'store'}"))
    plain = make_command("web-1", 1, make_bundle(tmp_path / "v1"))
    command = plain.model_copy(update={
        "events": [*DEFAULT_EVENTS, HEALTH_CHECK],
        "health_check": HostHealthCheck(url=url, interval_seconds=0.05, min_healthy_seconds=1),
        "created_at": datetime.now(UTC),
    })
    agent = host.start()
    try:
        host.send(command)

        def checking() -> bool:
            status = host.status()
            report = status.command.events[-1] if status is not None and status.command is not None else None
            return report is not None and report.status == EventStatus.IN_PROGRESS and server.requests >= 3

        wait_for(checking, "HealthCheck in progress", process=agent)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
    checks_before = server.requests

    restarted = host.once()
    assert restarted.returncode == 4, restarted.stderr
    status = host.status()
    assert status is not None and status.command is not None
    assert status.command.status == CommandStatus.FAILED
    assert status.command.message == (
        "failed after restart: the agent stopped during HealthCheck; the command was not run again")
    report = status.command.events[-1]
    assert report.name == HEALTH_CHECK and report.status == EventStatus.FAILED
    assert report.error_code == LifecycleErrorCode.FAILED_AFTER_RESTART
    assert [e.status for e in status.command.events[:-1]] == [EventStatus.SUCCEEDED] * len(DEFAULT_EVENTS)
    # Not run again: at most the one GET the killed agent had already sent, still in the server's backlog.
    assert server.requests - checks_before <= 1
    assert host.hook_runs().count("ValidateService d-000000001") == 1
