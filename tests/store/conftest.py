"""Store fixtures: every contract test runs on `file://`, on `s3://` over HTTP (moto server) and on the
in-memory store; tests that need a URL (other processes open it) run on the first two only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.store import Store, open_store
from contract.store.memory import MemoryStore
from tests.conftest import S3Server
from tests.store.s3proxy import S3Proxy, running_proxy

BUCKET = "fleetshift-store-tests"


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    s3_server.client().create_bucket(Bucket=BUCKET)
    return BUCKET


def s3_url(s3_server: S3Server, bucket: str, *, endpoint: str | None = None) -> str:
    """A fresh prefix per test, so tests share one bucket and never see each other's keys."""
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}/store?endpoint={endpoint or s3_server.endpoint_url}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`store_backend` drives `store` and `store_url`. The memory store has no URL (it lives in one process), so
    a test that asks for `store_url` runs on the two real backends only."""
    if "store_backend" in metafunc.fixturenames:
        with_url = "store_url" in metafunc.fixturenames
        metafunc.parametrize("store_backend", ["file", "s3"] if with_url else ["file", "s3", "memory"])


@pytest.fixture
def store_url(store_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if store_backend == "file":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return s3_url(server, bucket)


@pytest.fixture
def store(store_backend: str, request: pytest.FixtureRequest) -> Store:
    if store_backend == "memory":
        return MemoryStore()
    url: str = request.getfixturevalue("store_url")
    return open_store(url)


@pytest.fixture
def s3_proxy(s3_server: S3Server) -> Iterator[S3Proxy]:
    with running_proxy(s3_server.endpoint_url) as proxy:
        yield proxy
