"""How the reconciler's metrics leave the process, with `reconcile` as a real process (docs/metrics.md):

- `--once --metrics-textfile`: the file node-exporter would read, parsed with prometheus_client's parser, says what
  the run did; it is written even when the run fails before its first pass; a folder that does not exist is exit 1
  before anything is written.
- `--once --metrics-push-url`: one PUT of the text format to /metrics/job/fleetshift_reconcile on a small in-test
  HTTP server standing in for a Pushgateway (no Pushgateway binary is installed here), with the URL's credentials
  as basic auth; a push that fails is a warning and the exit code stays the run's.
- `watch --metrics-address` on a port already taken: exit 1 naming the address and the system's words.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.store import open_store
from tests.reconciler.fleet import Config, ScriptedAgents, answering, group_manifest, local_revision
from tests.reconciler.procs import Reconciler

pytestmark = pytest.mark.slow

ENV = {
    "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "50ms",
    "FLEETSHIFT_RECONCILE_LEASE_DURATION": "5s",
    "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "1h",
    "FLEETSHIFT_RECONCILE_TIMEOUT": "60s",
}


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PushTarget:
    """A Pushgateway stand-in: records every request and answers `status`."""

    status: int = 200
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def push_target() -> Iterator[PushTarget]:
    target = PushTarget()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            target.requests.append(Received(self.command, self.path, dict(self.headers.items()),
                                            self.rfile.read(length)))
            self.send_response(target.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_POST = _record

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    target.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield target
    server.shutdown()
    server.server_close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Config, str, ScriptedAgents]]:
    """A config repo deploying v1 to three scripted agents that answer every 20 ms."""
    store_url = f"file://{tmp_path / 'store'}"
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)), message="v1")
    agents = ScriptedAgents(open_store(store_url), ["h1", "h2", "h3"])
    agents.register()
    with answering(agents):
        yield config, store_url, agents


def run(tmp_path: Path, name: str, args: list[str]) -> tuple[int, Reconciler]:
    process = Reconciler(args, tmp_path / f"{name}.log", ENV)
    try:
        return process.wait(timeout=90), process
    finally:
        process.stop()


def test_once_writes_a_textfile_and_pushes_what_the_run_did(
    tmp_path: Path, world: tuple[Config, str, ScriptedAgents], push_target: PushTarget
) -> None:
    config, store_url, _ = world
    textfile = tmp_path / "textfile" / "fleetshift.prom"
    textfile.parent.mkdir()
    push_url = push_target.url.replace("http://", "http://ci:s3cret@")
    code, process = run(tmp_path, "once", [*config.args(), "--store", store_url, "--once",
                                           "--metrics-textfile", str(textfile), "--metrics-push-url", push_url])
    assert code == 0, process.log.read_text()

    found = parse(textfile.read_text())
    web = {("application", "hello"), ("group", "web")}
    succeeded = frozenset({*web, ("creator", "user"), ("outcome", "Succeeded")})
    assert found[("fleetshift_deployments_total", succeeded)] == 1
    assert found[("fleetshift_group_hosts", frozenset({*web, ("state", "online")}))] == 3
    assert found[("fleetshift_group_state", frozenset({*web, ("state", "converged")}))] == 1
    assert found[("fleetshift_passes_total", frozenset({("result", "ok")}))] >= 2
    assert found[("fleetshift_lease_held", frozenset())] == 0  # written after the lease was released
    assert ("fleetshift_last_pass_timestamp_seconds", frozenset()) in found
    assert [p.name for p in textfile.parent.iterdir()] == ["fleetshift.prom"]  # no temporary file left behind

    (push,) = push_target.requests
    assert (push.method, push.path) == ("PUT", "/metrics/job/fleetshift_reconcile")
    assert push.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert push.headers["Authorization"] == "Basic " + base64.b64encode(b"ci:s3cret").decode()
    pushed = parse(push.body.decode())
    assert pushed[("fleetshift_deployments_total", succeeded)] == 1
    logged = process.events("metrics.pushed")
    assert logged and "s3cret" not in json.dumps(logged)  # the password never reaches the log


@pytest.mark.parametrize("refused", [True, False], ids=["nothing-listens", "gateway-answers-500"])
def test_a_push_that_fails_is_a_warning_and_the_exit_code_stays_the_runs(
    tmp_path: Path, world: tuple[Config, str, ScriptedAgents], push_target: PushTarget, refused: bool
) -> None:
    config, store_url, _ = world
    if refused:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: connection refused
            code, process = run(tmp_path, "once", [*config.args(), "--store", store_url, "--once",
                                                   "--metrics-push-url", url])
    else:
        push_target.status = 500
        code, process = run(tmp_path, "once", [*config.args(), "--store", store_url, "--once",
                                               "--metrics-push-url", push_target.url])
        assert len(push_target.requests) == 1
    assert code == 0, process.log.read_text()
    (warning,) = process.events("metrics.push_failed")
    assert warning["level"] == "warning"
    assert ("500" in warning["error"]) if not refused else ("refused" in warning["error"].lower())


def test_the_textfile_is_written_when_the_run_fails_before_its_first_pass(tmp_path: Path) -> None:
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)).replace("deploymentConfig:", "deploymentConfg:"))
    textfile = tmp_path / "fleetshift.prom"
    code, process = run(tmp_path, "once", [*config.args(), "--store", f"file://{tmp_path / 'store'}", "--once",
                                           "--metrics-textfile", str(textfile)])
    assert code == 1, process.log.read_text()  # invalid manifests
    found = parse(textfile.read_text())
    assert found[("fleetshift_passes_total", frozenset({("result", "ok")}))] == 0
    # No pass ran: no pass time, so "no pass for 10 minutes" alerts on this run rather than trusting it.
    assert ("fleetshift_last_pass_timestamp_seconds", frozenset()) not in found


def test_a_textfile_in_a_folder_that_does_not_exist_is_exit_1_before_anything_is_written(tmp_path: Path) -> None:
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)))
    store = tmp_path / "store"
    code, process = run(tmp_path, "once", [*config.args(), "--store", f"file://{store}", "--once",
                                           "--metrics-textfile", str(tmp_path / "nowhere" / "fleetshift.prom")])
    assert code == 1
    text = process.log.read_text()
    assert f"metrics textfile {tmp_path / 'nowhere' / 'fleetshift.prom'}: the folder {tmp_path / 'nowhere'} " \
           "does not exist" in text
    assert "Traceback" not in text
    assert not store.exists()  # nothing was written, not even the store


def test_watch_on_an_address_in_use_exits_1_naming_it_and_the_systems_words(tmp_path: Path) -> None:
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        code, process = run(tmp_path, "watch", [*config.args(), "--store", f"file://{tmp_path / 'store'}", "watch",
                                                "--metrics-address", address])
    assert code == 1
    text = process.log.read_text()
    assert f"reconcile: cannot serve metrics on {address}: [Errno 98] Address already in use" in text
    assert "Traceback" not in text
    assert process.events("watch.started") == []  # it stopped before watching anything
