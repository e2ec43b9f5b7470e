"""Store fixtures: every contract test runs once on `file://` and once on `s3://` over HTTP (moto server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.store import Store, open_store
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


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return s3_url(server, bucket)


@pytest.fixture
def store(store_url: str) -> Store:
    return open_store(store_url)


@pytest.fixture
def s3_proxy(s3_server: S3Server) -> Iterator[S3Proxy]:
    with running_proxy(s3_server.endpoint_url) as proxy:
        yield proxy
