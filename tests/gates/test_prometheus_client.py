"""The gates' Prometheus client (reconciler/gates/prometheus.py): real answers from a real Prometheus, and the
answers no Prometheus should give (from a small server in the test, since a real one cannot be made to send
them), each of which must end as an Inconclusive measurement with the cause kept, never as an exception."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contract.models import GateResult
from fleetlab.prometheus import LocalPrometheus
from reconciler.core.gates import DueMeasurement
from reconciler.desired.gates_spec import AnalysisGateSpec
from reconciler.gates.prometheus import measure
from tests.conftest import require_tool

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def due(address: str, query: str, condition: str = "result < 0.01") -> DueMeasurement:
    gate = AnalysisGateSpec.model_validate(
        {"name": "errors", "prometheus": {"address": address, "query": query, "timeout": "2s"},
         "successCondition": condition}
    )
    return DueMeasurement(deployment_id="d", group="g", checkpoint="batch-0", gate=gate, index=0, due_at=NOW,
                          variables={"batchHosts": "web-1"})


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    require_tool("prometheus", "prometheus")
    with LocalPrometheus(tmp_path_factory.mktemp("prometheus"), [("nobody", "127.0.0.1", 9)]) as server:
        yield server


def test_real_answers_are_judged_per_series(prometheus: LocalPrometheus) -> None:
    ok = measure(due(prometheus.url, "vector(0.001)"), now=NOW)
    assert ok.result is GateResult.SUCCESSFUL and ok.value == 0.001
    bad = measure(due(prometheus.url, 'label_replace(vector(0.2), "host", "{{ batchHosts }}", "", "")'), now=NOW)
    assert bad.result is GateResult.FAILED and bad.value == 0.2
    assert bad.message == 'errors = 0.2 on {host="web-1"}, not result < 0.01'
    assert bad.query == 'label_replace(vector(0.2), "host", "web-1", "", "")'
    scalar = measure(due(prometheus.url, "scalar(vector(0))"), now=NOW)
    assert scalar.result is GateResult.SUCCESSFUL
    empty = measure(due(prometheus.url, 'up{job="no-such-job"}'), now=NOW)
    assert empty.result is GateResult.INCONCLUSIVE and empty.message.startswith("no data")
    nan = measure(due(prometheus.url, "vector(0) / vector(0)"), now=NOW)
    assert nan.result is GateResult.INCONCLUSIVE and nan.value is None
    wrong = measure(due(prometheus.url, "sum(rate(x[1m]"), now=NOW)
    assert wrong.result is GateResult.INCONCLUSIVE
    assert "the query could not be run" in wrong.message and "bad_data" in wrong.message
    matrix = measure(due(prometheus.url, "up[1m]"), now=NOW)
    assert matrix.result is GateResult.INCONCLUSIVE and "returned a matrix" in matrix.message


class Answers(BaseHTTPRequestHandler):
    body: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return


ODD = {
    "a series without a value": b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}',
    "a series that is a list": b'{"status":"success","data":{"resultType":"vector","result":[[1,2]]}}',
    "data that is a list": b'{"status":"success","data":[1]}',
    "a value that is not a number": b'{"status":"success","data":{"resultType":"scalar","result":[1,"many"]}}',
    "not JSON": b"<html>login</html>",
    "JSON nested past any limit": b"[" * 100_000,
    "an error status": b'{"status":"error","errorType":"timeout","error":"query timed out"}',
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_an_odd_answer_is_inconclusive_with_its_cause(case: str) -> None:
    class Handler(Answers):
        body = ODD[case]

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        taken = measure(due(f"http://127.0.0.1:{server.server_address[1]}", "up"), now=NOW)
    finally:
        server.shutdown()
        server.server_close()
    assert taken.result is GateResult.INCONCLUSIVE, taken
    assert taken.message.startswith("the query could not be run: "), taken.message


def test_something_that_is_not_http_is_inconclusive() -> None:
    class Garbage(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        taken = measure(due(f"http://127.0.0.1:{server.server_address[1]}", "up"), now=NOW)
    finally:
        server.shutdown()
        server.server_close()
    assert taken.result is GateResult.INCONCLUSIVE
    assert "the query could not be run" in taken.message


def test_nobody_listening_is_inconclusive_in_the_os_words(tmp_path: Path) -> None:
    from fleetlab.service import free_port

    taken = measure(due(f"http://127.0.0.1:{free_port()}", "up"), now=NOW)
    assert taken.result is GateResult.INCONCLUSIVE
    assert "could not be reached" in taken.message and "refused" in taken.message.lower()
