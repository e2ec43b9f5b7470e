"""Real `deploy-agent run` processes on "EC2": the agent finds the test's IMDSv2 server (tests/agent/
imds_server.py) through AWS_EC2_METADATA_SERVICE_ENDPOINT, as the AWS SDKs do, and registers in a file
store with its instance id as host id, its availability zone as zone, and its EC2 tags under agent.yaml's.
Off EC2 with `ec2.metadata: required`, and against an IMDSv1-only service, it refuses to start: exit 1, one
line that says why, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from contract.keys import registration_key
from contract.store import open_store
from contract.store.docs import read_document
from contract.wire import HostRegistration
from tests.agent.imds_server import Imds, imds_server
from tests.daemon.agentproc import AGENT

pytestmark = pytest.mark.slow


def run_agent(tmp_path: Path, endpoint: str, yaml: str, *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.yaml"
    config.write_text(f"store: file://{tmp_path / 'store'}\nrootDir: {tmp_path / 'root'}\n"
                      f"hostRoot: {tmp_path / 'hostroot'}\n{yaml}")
    # The suite turns instance metadata off for every process (tests/conftest.py); this agent is on "EC2".
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith(("FLEETSHIFT_AGENT_", "AWS_EC2_METADATA_"))}
    environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = endpoint
    return subprocess.run([*AGENT, "--log-format", "json", "run", "--once", "--config", str(config), *flags],
                          env=environ, capture_output=True, text=True, timeout=60, check=False)


def log_events(output: str) -> dict[str, dict[str, object]]:
    events = {}
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events[str(record.get("event"))] = record
    return events


def test_an_agent_on_ec2_registers_with_its_instance_id_zone_and_tags(tmp_path: Path) -> None:
    with imds_server() as imds:
        done = run_agent(tmp_path, imds.url, "hostId: auto\ntags:\n  env: from-agent-yaml\n")
    assert done.returncode == 0, done.stderr
    assert imds.tokenless_gets() == []
    found = read_document(open_store(f"file://{tmp_path / 'store'}"), registration_key("i-0123456789abcdef0"),
                          HostRegistration)
    assert found is not None
    registration = found.document
    assert registration.host_id == registration.instance_id == "i-0123456789abcdef0"
    assert (registration.zone, registration.region, registration.address) == ("eu-west-1b", "eu-west-1", "10.0.1.17")
    # EC2's tags under agent.yaml's: agent.yaml wins key by key.
    assert registration.tags == {"app": "hello", "Name": "web a/b", "env": "from-agent-yaml"}
    identity = log_events(done.stderr)["ec2.identity"]
    assert identity["instance_id"] == "i-0123456789abcdef0" and identity["zone"] == "eu-west-1b"


def test_metadata_required_off_ec2_refuses_to_start(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    started = time.monotonic()
    done = run_agent(tmp_path, endpoint, "hostId: web-1\n", "--ec2-metadata", "required")
    assert time.monotonic() - started < 15
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (f"deploy-agent: ec2.metadata is required, but it could not be read: no instance metadata service at "
            f"{endpoint}") in done.stderr
    assert not (tmp_path / "store").exists()  # refused before it touched anything


def test_an_imdsv1_only_service_is_refused(tmp_path: Path) -> None:
    with imds_server(Imds(v1_only=405)) as imds:
        done = run_agent(tmp_path, imds.url, "hostId: web-1\nec2:\n  metadata: required\n")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "with HTTP 405: it is not an IMDSv2 service" in done.stderr and "never falls back to IMDSv1" in done.stderr
    assert imds.tokenless_gets() == []
