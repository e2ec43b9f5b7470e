"""The proof of issue "Monitoring gates", host side: `spec.healthCheck` goes from the manifest through the
reconciler's command to real agents, which check their host after ValidateService. A host whose check flaps
during `minHealthyTime` counts as failed, so a OneAtATime deployment fails there and rolls back.

The checked URL is a small server in the test (the URL template's `{hostId}` picks each host's script): the
hello app's own /healthz never flaps, and a flap is what this test is about.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetlab.fleet import TrafficFleet, commit_all
from tests.conftest import require_tool

HEALTH = """\
  healthCheck:
    url: "http://127.0.0.1:{port}/health/{{hostId}}"
    interval: 200ms
    timeout: 1s
    minHealthyTime: 2s
    healthyDeadline: 20s
"""


class Checks:
    """Answers `/health/<host>`: 200, except host-2 answers 200 three times, then 503, then 200 again."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def status(self, host: str) -> int:
        with self.lock:
            count = self.seen[host] = self.seen.get(host, 0) + 1
        return 503 if host == "host-2" and count == 4 else 200


@pytest.fixture
def checks() -> Iterator[tuple[Checks, int]]:
    script = Checks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = script.status(self.path.rsplit("/", 1)[-1])
            body = b"ok\n" if code == 200 else b"unavailable\n"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield script, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[TrafficFleet]:
    require_tool("haproxy", "haproxy")
    started = TrafficFleet(tmp_path / "fleet", count=3, faulty="none")
    try:
        started.start()
        yield started
    finally:
        started.stop()


def store_doc(fleet: TrafficFleet, key: str) -> dict[str, Any]:
    return json.loads((fleet.workdir / "store" / key).read_text())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_host_whose_check_flaps_during_min_healthy_time_fails_and_the_deployment_rolls_back(
    fleet: TrafficFleet, checks: tuple[Checks, int]
) -> None:
    script, port = checks
    installed = fleet.deploy("v1", config="CodeDeployDefault.AllAtOnce", traffic=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    text = fleet.manifest("v2", config="CodeDeployDefault.OneAtATime", traffic=False) + HEALTH.format(port=port)
    (fleet.config_repo / "manifests" / f"{fleet.group}.yaml").write_text(text)
    commit_all(fleet.config_repo, "deploy hello v2 with a health check")

    result = fleet.reconcile("--once")
    assert result.returncode == 3, result.stdout + result.stderr
    group = store_doc(fleet, f"groups/hello/{fleet.group}.json")
    failed = store_doc(fleet, f"deployments/{group['quarantined'][0]['deploymentId']}.json")
    hosts = failed["hosts"]
    assert hosts["host-1"]["status"] == "Succeeded"
    assert hosts["host-2"]["status"] == "Failed"
    assert "HealthCheck" in hosts["host-2"]["message"] and "flapped" in hosts["host-2"]["message"]
    assert hosts["host-3"]["status"] == "Pending" and hosts["host-3"].get("generation") is None

    assert "503" in hosts["host-2"]["message"]
    # The agent's last report is the rollback's command: it ran its HealthCheck right after ValidateService too
    # (a rollback is held to the same health rule), and passed.
    events = [e for e in store_doc(fleet, "hosts/host-2/status.json")["command"]["events"]]
    names = [e["name"] for e in events]
    assert names[names.index("ValidateService") + 1] == "HealthCheck"
    assert events[names.index("HealthCheck")]["status"] == "Succeeded"
    # host-1 held for minHealthyTime before it counted: about 2 s of checks every 200 ms.
    assert script.seen["host-1"] >= 8
    rollback = store_doc(fleet, f"deployments/{group['history'][-1]}.json")
    assert rollback["creator"] == "rollback" and rollback["status"] == "Succeeded"
    # The --once summary names the host and what its check saw.
    assert "host-2 failed: HealthCheck" in result.stdout and "flapped" in result.stdout, result.stdout
