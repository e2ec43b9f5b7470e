"""What only the S3 backend does: URLs and endpoints, retries with backoff, errors that say what to do, bytes
moved by conditional reads, pagination. Everything goes over HTTP to moto, some of it through a proxy that
counts requests and injects faults."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contract.store import PreconditionFailed, StoreError, StoreUnavailable, open_store
from contract.store.s3 import AccessDenied, BucketNotFound, CredentialsError, S3Store, parse_s3_url
from tests.conftest import S3Server
from tests.store.conftest import s3_url
from tests.store.s3proxy import S3Proxy


def test_url_parsing() -> None:
    assert parse_s3_url("s3://bucket/fleet/prod") == ("bucket", "fleet/prod/", {})
    assert parse_s3_url("s3://bucket") == ("bucket", "", {})
    assert parse_s3_url("s3://bucket/p/?endpoint=http://h:9000&region=eu-west-1") == (
        "bucket", "p/", {"endpoint": "http://h:9000", "region": "eu-west-1"})
    with pytest.raises(StoreError, match="unknown parameter 'endpont'"):
        parse_s3_url("s3://bucket/p?endpont=http://h:9000")
    with pytest.raises(StoreError, match="3 to 63 characters"):
        parse_s3_url("s3://ab/p")
    with pytest.raises(StoreError, match="write s3://bucket/prefix"):
        parse_s3_url("s3:///p")


def test_prefix_is_invisible_to_callers(s3_server: S3Server, s3_bucket: str) -> None:
    store = open_store(s3_url(s3_server, s3_bucket))
    store.put("hosts/a/status.json", b"x")
    assert [item.key for item in store.list("")] == ["hosts/a/status.json"]
    assert isinstance(store, S3Store)
    raw = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=store.prefix)
    assert [item["Key"] for item in raw["Contents"]] == [store.prefix + "hosts/a/status.json"]


def test_whole_bucket_store_without_prefix(s3_server: S3Server) -> None:
    s3_server.client().create_bucket(Bucket="fleetshift-whole-bucket")
    store = open_store(f"s3://fleetshift-whole-bucket?endpoint={s3_server.endpoint_url}")
    store.put("commands/h.json", b"{}")
    assert [item.key for item in store.list("commands/")] == ["commands/h.json"]


def test_aws_endpoint_url_environment_variable_points_it_at_the_server(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    store = open_store(f"s3://{s3_bucket}/via-env")
    store.put("k.json", b"through AWS_ENDPOINT_URL")
    stored = store.get("k.json")
    assert stored is not None and stored.data == b"through AWS_ENDPOINT_URL"


def test_listing_follows_pages(s3_server: S3Server, s3_bucket: str) -> None:
    store = open_store(s3_url(s3_server, s3_bucket))
    keys = [f"hosts/h{index:05d}/status.json" for index in range(1010)]  # more than one 1,000-key page
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: store.put(key, b"{}"), keys))
    listed = store.list("hosts/")
    assert [item.key for item in listed] == keys


def test_missing_bucket_says_how_to_create_it(s3_server: S3Server) -> None:
    store = open_store(f"s3://no-such-bucket-here/p?endpoint={s3_server.endpoint_url}")
    with pytest.raises(BucketNotFound, match=r"bucket 'no-such-bucket-here' does not exist.*aws s3 mb"):
        store.get("hosts/a/status.json")
    with pytest.raises(BucketNotFound):
        store.list("hosts/")
    with pytest.raises(BucketNotFound):
        store.put("hosts/a/status.json", b"x")


def test_access_denied_names_the_permission_to_grant(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = S3Store(f"s3://{s3_bucket}/denied?endpoint={s3_proxy.endpoint_url}")
    s3_proxy.fail_next(1, 403, "AccessDenied")
    with pytest.raises(AccessDenied, match=r"allow s3:PutObject on arn:aws:s3:::fleetshift-store-tests/denied/\*"):
        store.put("hosts/a/status.json", b"x")
    assert len(s3_proxy.exchanges) == 1, "access denied is not retried"
    s3_proxy.fail_next(1, 403, "AccessDenied")
    with pytest.raises(AccessDenied, match="s3:ListBucket"):
        store.list("hosts/")


def test_bad_credentials_are_a_clear_error(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = S3Store(f"s3://{s3_bucket}/creds?endpoint={s3_proxy.endpoint_url}")
    s3_proxy.fail_next(1, 403, "InvalidAccessKeyId")
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        store.get("x.json")


def test_no_credentials_at_all(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(f"s3://{s3_bucket}/p?endpoint={s3_server.endpoint_url}")
    with pytest.raises(CredentialsError, match="no AWS credentials"):
        store.put("x.json", b"x")


def test_throttling_and_server_errors_are_retried_with_backoff(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = S3Store(f"s3://{s3_bucket}/retry?endpoint={s3_proxy.endpoint_url}", backoff_base_seconds=0.01)
    s3_proxy.fail_next(1, 503, "SlowDown")
    s3_proxy.fail_next(1, 500, "InternalError")
    s3_proxy.fail_next(1, 429, "TooManyRequests")
    version = store.put("k.json", b"eventually")
    assert [e.status for e in s3_proxy.exchanges] == [503, 500, 429, 200]
    stored = store.get("k.json")
    assert stored is not None and stored.version == version


def test_persistent_outage_becomes_store_unavailable(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = S3Store(f"s3://{s3_bucket}/down?endpoint={s3_proxy.endpoint_url}", max_attempts=3,
                    backoff_base_seconds=0.01)
    s3_proxy.fail_next(10, 503, "ServiceUnavailable")
    with pytest.raises(StoreUnavailable, match=r"ServiceUnavailable.*gave up after 3 attempts") as raised:
        store.get("k.json")
    assert raised.value.retryable
    assert len(s3_proxy.exchanges) == 3


def test_unreachable_endpoint_is_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    store = S3Store(f"s3://some-bucket/p?endpoint=http://127.0.0.1:{port}", max_attempts=2,
                    backoff_base_seconds=0.01)
    with pytest.raises(StoreUnavailable, match=f"cannot reach S3 at http://127.0.0.1:{port}"):
        store.list("hosts/")


def test_conditional_read_of_an_unchanged_object_moves_no_body(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = S3Store(f"s3://{s3_bucket}/poll?endpoint={s3_proxy.endpoint_url}")
    version = store.put("commands/h.json", b"x" * 5000)
    s3_proxy.clear()
    for _ in range(3):
        unchanged = store.get("commands/h.json", if_version_not=version)
        assert unchanged is not None and unchanged.data == b""
    assert [(e.method, e.status, e.response_body_bytes) for e in s3_proxy.exchanges] == [("GET", 304, 0)] * 3


def test_write_applied_but_answer_lost_is_recognised_as_won(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    """The first PUT reaches S3 and is applied, but the client sees a 500; the retry then meets 412 from its
    own write. The store must report success, not a lost race."""
    store = S3Store(f"s3://{s3_bucket}/ambiguous?endpoint={s3_proxy.endpoint_url}", backoff_base_seconds=0.01)
    s3_proxy.fail_next(1, 500, "InternalError", after_forwarding=True, methods={"PUT"})
    version = store.put_if_absent("leases/reconciler.json", b"mine")
    stored = store.get("leases/reconciler.json")
    assert stored is not None and stored.data == b"mine" and stored.version == version

    s3_proxy.fail_next(1, 500, "InternalError", after_forwarding=True, methods={"PUT"})
    newer = store.put_if_version("leases/reconciler.json", b"mine, renewed", version)
    stored = store.get("leases/reconciler.json")
    assert stored is not None and stored.data == b"mine, renewed" and stored.version == newer

    # Someone else's bytes are a genuine loss.
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("leases/reconciler.json", b"theirs")
