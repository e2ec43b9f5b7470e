"""The shell on the S3 store, over real HTTP to moto's server: versions are ETags, compare-and-swap is
If-Match / If-None-Match. Same behaviour as on the file store: the lease excludes, a failed rollout is
rolled back (exit 3), `status` and `retry` work, and nothing runs twice."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from pathlib import Path

import pytest

from contract.store import open_store
from reconciler.cli.main import main
from reconciler.shell.lease import LeaseHeld, WriteLease
from tests.conftest import S3Server
from tests.reconciler.fleet import Config, ScriptedAgents, answering, group_manifest, local_revision


@pytest.fixture
def store_url(s3_server: S3Server) -> str:
    bucket = f"fleet-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prod?endpoint={s3_server.endpoint_url}"


def test_lease_on_s3_excludes_and_hands_over(store_url: str) -> None:
    store = open_store(store_url)
    first = WriteLease(store, duration=timedelta(minutes=1), holder="first")
    second = WriteLease(store, duration=timedelta(minutes=1), holder="second")
    assert first.try_acquire()
    with pytest.raises(LeaseHeld, match="first"):
        second.acquire(wait=timedelta(milliseconds=100), retry_every=timedelta(milliseconds=20))
    first.release()
    assert second.try_acquire()


def test_once_status_and_retry_on_s3(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_POLL_INTERVAL", "20ms")
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT", "60s")
    monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")
    store = open_store(store_url)
    config = Config(tmp_path / "config")
    agents = ScriptedAgents(store, ["h1", "h2", "h3"])
    agents.register()

    def once() -> int:
        with answering(agents):
            return main([*config.args(), "--store", store_url, "--once"])

    config.set_group(group_manifest(revision=local_revision(1)), message="v1")
    assert once() == 0
    agents.failing = {"h2": "v2.zip"}
    config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    assert once() == 3
    capsys.readouterr()

    assert main([*config.args(), "--store", store_url, "status", "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["state"] == "quarantined"
    assert group["effectiveRevision"]["short"] == "bundles/v1.zip"

    agents.failing = {}
    assert main([*config.args(), "--store", store_url, "retry", "web"]) == 0
    assert once() == 0
    capsys.readouterr()
    assert main([*config.args(), "--store", store_url, "status", "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["state"] == "converged"
    assert group["effectiveRevision"]["short"] == "bundles/v2.zip"
    assert agents.dispatched_twice() == {}
