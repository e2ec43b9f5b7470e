"""Daemon fixtures: a simulated host whose agent talks to a file store or to the S3 server over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contract.store import open_store
from tests.conftest import S3Server
from tests.daemon.agentproc import AgentHost

BUCKET = "fleetshift-agent-tests"


@pytest.fixture(scope="session")
def agent_bucket(s3_server: S3Server) -> str:
    s3_server.client().create_bucket(Bucket=BUCKET)
    return BUCKET


HostFactory = Callable[..., AgentHost]


@pytest.fixture(params=["file", "s3"])
def make_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HostFactory]:
    """Builds hosts on the parametrized backend. For S3 the agent finds the server via AWS_ENDPOINT_URL,
    as a real S3-compatible deployment would configure it."""
    made: list[AgentHost] = []

    def factory(host_id: str = "web-1", *, gated: bool = False) -> AgentHost:
        base = tmp_path / host_id
        if request.param == "file":
            host = AgentHost(host_id, base, open_store(f"file://{tmp_path / 'store'}"), gated=gated)
        else:
            server: S3Server = request.getfixturevalue("s3_server")
            bucket: str = request.getfixturevalue("agent_bucket")
            prefix = f"fleet-{uuid.uuid4().hex[:8]}"
            store = open_store(f"s3://{bucket}/{prefix}?endpoint={server.endpoint_url}")
            host = AgentHost(host_id, base, store, env=server.env(), gated=gated,
                             agent_store_url=f"s3://{bucket}/{prefix}")
        made.append(host)
        return host

    yield factory
    for host in made:
        host.kill_hooks()


@pytest.fixture
def file_host(tmp_path: Path) -> Iterator[HostFactory]:
    made: list[AgentHost] = []

    def factory(host_id: str = "web-1", *, gated: bool = False) -> AgentHost:
        host = AgentHost(host_id, tmp_path / host_id, open_store(f"file://{tmp_path / 'store'}"), gated=gated)
        made.append(host)
        return host

    yield factory
    for host in made:
        host.kill_hooks()
