"""A bundle fetch is bounded by the command's time budget and interrupted by a stop request: a FIFO or
`/dev/zero` as a local bundle, a Git remote that accepts and never answers, an S3 endpoint trickling bytes or
sending an endless body. Each ends within a fraction of a second of its cause, fails DownloadBundle with a
message naming the source and how long it waited, and shows progress in DownloadBundle's report meanwhile."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.fetch import FetchLimits
from contract.vocabulary import EventStatus
from contract.wire import EventReport, GitLocation, LocalLocation, Revision, S3Location
from tests.agent.conftest import Sandbox, make_sandbox

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def download_bundle(reports: list[EventReport]) -> EventReport:
    return [r for r in reports if r.name == "DownloadBundle"][-1]


def run(sandbox: Sandbox, revision: Revision, *, timeout: float | None = 2.0,
        stop_after: float | None = None) -> tuple[float, EventReport, list[EventReport]]:
    reports: list[EventReport] = []
    started = time.monotonic()
    stop_at = None if stop_after is None else started + stop_after
    command = sandbox.command(sandbox.tmp, revision=revision, timeout_seconds=timeout)
    outcome = sandbox.runner.run(command, on_event=reports.append,
                                 should_stop=lambda: stop_at is not None and time.monotonic() >= stop_at)
    elapsed = time.monotonic() - started
    assert outcome.status.value == "Failed"
    report = download_bundle(reports)
    assert report.status == EventStatus.FAILED
    before = [r for r in outcome.events if r.name in ("BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop")]
    assert all(r.status == EventStatus.SKIPPED for r in before)
    return elapsed, report, reports


# -- local bundles


def test_a_fifo_as_a_local_bundle_is_refused_at_once_even_with_a_stop_request(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path)
    os.chdir(tmp_path)
    os.mkfifo("b.zip")
    revision = Revision(local=LocalLocation(path=str(tmp_path / "b.zip"), bundle_type="zip"))
    elapsed, report, _ = run(sandbox, revision, timeout=2.0, stop_after=0.0)
    assert elapsed < 2.0
    assert "b.zip: interrupted after" in (report.message or "")
    elapsed, report, _ = run(sandbox, revision, timeout=2.0)  # no stop request: refused up front all the same
    assert elapsed < 1.0 and "is a FIFO" in (report.message or "")


def test_dev_zero_with_a_sha256_pin_is_never_read(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path)
    revision = Revision(local=LocalLocation(path="/dev/zero", bundle_type="zip"), sha256="0" * 64)
    elapsed, report, _ = run(sandbox, revision, timeout=None)
    assert elapsed < 1.0
    assert "/dev/zero is a character device" in (report.message or "")


def test_a_local_bundle_past_the_size_cap_is_refused_before_reading(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path, fetch_limits=FetchLimits(max_bytes=1 << 20))
    big = tmp_path / "big.zip"
    with big.open("wb") as handle:
        handle.truncate(64 << 20)  # sparse: costs no disk
    elapsed, report, _ = run(sandbox, Revision(local=LocalLocation(path=str(big), bundle_type="zip"), sha256="0" * 64))
    assert elapsed < 1.0 and "more than the agent's limit of 1.0 MiB" in (report.message or "")


# -- Git


@pytest.fixture
def silent_git() -> Iterator[str]:
    """A git:// server that accepts connections and never answers."""
    held: list[socket.socket] = []

    class Hold(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            held.append(self.request)
            while not closing.is_set():
                closing.wait(0.1)

    closing = threading.Event()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hold)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"git://127.0.0.1:{server.server_address[1]}/app.git"
    closing.set()
    server.shutdown()
    server.server_close()


def git_children(tmp_path: Path, sandbox: Sandbox, revision: Revision, **kwargs: float | None
                 ) -> tuple[float, EventReport, list[int | None]]:
    seen: list[int | None] = []
    reports: list[EventReport] = []
    started = time.monotonic()
    stop_after = kwargs.get("stop_after")
    command = sandbox.command(sandbox.tmp, revision=revision, timeout_seconds=kwargs.get("timeout"))
    outcome = sandbox.runner.run(
        command, on_event=reports.append,
        should_stop=lambda: stop_after is not None and time.monotonic() - started >= stop_after,
        on_child=lambda pid, what: seen.append(pid),
    )
    assert outcome.status.value == "Failed"
    return time.monotonic() - started, download_bundle(reports), seen


def assert_gone(pids: list[int | None]) -> None:
    for pid in pids:
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)


def test_a_git_remote_that_never_answers_ends_at_the_command_deadline(tmp_path: Path, silent_git: str) -> None:
    sandbox = make_sandbox(tmp_path)
    revision = Revision(git=GitLocation(repository=silent_git, commit=COMMIT))
    elapsed, report, children = git_children(tmp_path, sandbox, revision, timeout=2.0)
    assert 1.5 < elapsed < 5.0, elapsed
    message = report.message or ""
    assert f"fetching commit {COMMIT} from Git repository {silent_git}" in message
    assert "did not finish within the command's time limit of 2 s" in message and "waited" in message
    assert children and children[-1] is None  # recorded, then cleared once git was killed
    assert_gone(children)


def test_a_stop_request_kills_a_stuck_git_fetch(tmp_path: Path, silent_git: str) -> None:
    sandbox = make_sandbox(tmp_path)
    revision = Revision(git=GitLocation(repository=silent_git, commit=COMMIT))
    elapsed, report, children = git_children(tmp_path, sandbox, revision, timeout=None, stop_after=0.5)
    assert elapsed < 3.0, elapsed
    assert "interrupted after" in (report.message or "") and silent_git in (report.message or "")
    assert_gone(children)


def test_a_git_revision_still_deploys(tmp_path: Path, make_bundle) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    repo = tmp_path / "repo"
    bundle = make_bundle("git")
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /srv/app\n")
    bundle.file("app/index.html", "hello")
    subprocess.run(["git", "init", "-q", str(bundle.path)], check=True)
    subprocess.run(["git", "-C", str(bundle.path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(bundle.path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1"],
                   check=True)
    commit = subprocess.run(["git", "-C", str(bundle.path), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    del repo
    sandbox = make_sandbox(tmp_path)
    command = sandbox.command(sandbox.tmp, revision=Revision(git=GitLocation(repository=str(bundle.path),
                                                                             commit=commit)))
    outcome = sandbox.runner.run(command)
    assert outcome.status.value == "Succeeded", outcome.message
    assert sandbox.on_host("/srv/app/index.html").read_text() == "hello"


# -- S3


class _S3Handler(BaseHTTPRequestHandler):
    mode = "trickle"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10 << 20))
        self.send_header("ETag", '"abc"')
        self.end_headers()
        try:
            if self.server.mode == "trickle":  # type: ignore[attr-defined]
                for _ in range(10_000):
                    self.wfile.write(b"x" * 5)
                    self.wfile.flush()
                    time.sleep(0.1)  # 50 B/s
            else:
                for _ in range(10 << 4):
                    self.wfile.write(b"\0" * (64 << 10))
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _S3Handler)
    server.daemon_threads = True
    server.mode = "trickle"  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield server
    server.shutdown()
    server.server_close()


S3_REVISION = Revision(s3=S3Location(bucket="bundles", key="app.zip", bundle_type="zip"))


def test_an_s3_trickle_ends_at_the_deadline_with_progress_shown(tmp_path: Path, s3_endpoint: object) -> None:
    sandbox = make_sandbox(tmp_path, fetch_limits=FetchLimits(progress_seconds=0.2))
    elapsed, report, reports = run(sandbox, S3_REVISION, timeout=2.0)
    assert 1.5 < elapsed < 4.0, elapsed
    message = report.message or ""
    assert "downloading s3://bundles/app.zip" in message and "time limit of 2 s" in message
    progress = [r.message or "" for r in reports if r.name == "DownloadBundle" and r.status == EventStatus.PENDING]
    assert len(progress) >= 3 and all("downloading s3://bundles/app.zip" in text for text in progress)
    assert "so far" in progress[-1]


def test_an_s3_trickle_is_abandoned_as_stalled(tmp_path: Path, s3_endpoint: object) -> None:
    sandbox = make_sandbox(tmp_path, fetch_limits=FetchLimits(stall_seconds=1.0, min_bytes_per_second=1024))
    elapsed, report, _ = run(sandbox, S3_REVISION, timeout=None)
    assert elapsed < 4.0, elapsed
    assert "stalled" in (report.message or "") and "s3://bundles/app.zip" in (report.message or "")


def test_an_s3_stop_request_ends_the_download(tmp_path: Path, s3_endpoint: object) -> None:
    sandbox = make_sandbox(tmp_path)
    elapsed, report, _ = run(sandbox, S3_REVISION, timeout=None, stop_after=0.5)
    assert elapsed < 2.5, elapsed
    assert "interrupted after" in (report.message or "")


def test_an_s3_body_past_the_size_cap_is_cut_off(tmp_path: Path, s3_endpoint: ThreadingHTTPServer) -> None:
    s3_endpoint.mode = "flood"  # type: ignore[attr-defined]
    sandbox = make_sandbox(tmp_path, fetch_limits=FetchLimits(max_bytes=1 << 20))
    elapsed, report, _ = run(sandbox, S3_REVISION, timeout=None)
    assert elapsed < 5.0
    assert "more than 1.0 MiB arrived" in (report.message or "")
