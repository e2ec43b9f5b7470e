"""The S3 store's lean requests (contract/store/s3wire.py) and its listing in ranges (contract/store/s3.py): the
same answers as botocore's full calls, the same errors, fewer CPU cycles. Everything goes over HTTP to moto,
most of it through a proxy that counts requests and connections and injects faults."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import FlexibleChecksumError

from contract.store import StoreUnavailable
from contract.store.s3 import AccessDenied, BucketNotFound, S3Store
from contract.store.s3wire import _encode_key, _verify, canonical_query, sign_get
from tests.conftest import S3Server
from tests.store.s3proxy import S3Proxy, running_proxy

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def store_at(endpoint: str, bucket: str, **options: float) -> S3Store:
    return S3Store(f"s3://{bucket}/w-{uuid.uuid4().hex[:10]}/store?endpoint={endpoint}", **options)  # type: ignore[arg-type]


def botocore_calls(store: S3Store, operation: str) -> list[str]:
    """The requests of `operation` that go through boto3's full call (its public event hooks)."""
    calls: list[str] = []
    store._client.meta.events.register(f"before-call.s3.{operation}", lambda **_: calls.append(operation))
    return calls


# --------------------------------------------------------------------------------------------------
# Signing


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBYaDH+session/token="])
@pytest.mark.parametrize(
    ("key", "params", "headers"),
    [
        ("fleet/hosts/web-1/status.json", {}, {"x-amz-checksum-mode": "ENABLED"}),
        ("fleet/hosts/wéb 1+x~y%/status.json", {}, {"If-None-Match": '"0123abcd"', "x-amz-checksum-mode": "ENABLED"}),
        ("", {"list-type": "2", "prefix": "fleet/hosts/", "start-after": "fleet/hosts/a b/é.json",
              "encoding-type": "url"}, {}),
        ("", {"list-type": "2", "prefix": "p/", "continuation-token": "1/abc+def=="}, {}),
    ],
)
def test_signature_is_botocores(token: str | None, key: str, params: dict[str, str], headers: dict[str, str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The SigV4 signature of our GETs, header for header, is the one botocore's S3 signer computes for the same
    request at the same instant."""
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token).get_frozen_credentials()
    host = "127.0.0.1:9000"
    path = "/bucket/" + _encode_key(key)
    query = canonical_query(params)
    ours = dict(sign_get(credentials, region="eu-west-1", service="s3", host=host, path=path, query=query,
                         headers=dict(headers), now=NOW))

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method="GET", url=f"http://{host}{path}", headers=dict(headers), params=params)
    S3SigV4Auth(credentials, "s3", "eu-west-1").add_auth(request)
    theirs = {name.lower(): value for name, value in request.headers.items()}

    assert ours["authorization"] == theirs["authorization"]
    for name in ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token"):
        assert ours.get(name) == theirs.get(name)
    # The same request on the wire: botocore writes a space in the query as `+`, we as `%20` (both mean one).
    sent = urlsplit(request.prepare().url)
    assert sent.path == path and parse_qs(sent.query) == parse_qs(query)


def test_a_changed_body_fails_its_checksum() -> None:
    data = b'{"schemaVersion": 1}'
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    _verify({"x-amz-checksum-crc32": crc}, data, "k")
    _verify({"x-amz-checksum-crc32": crc, "x-amz-checksum-type": "COMPOSITE"}, b"other", "k")  # not checkable
    with pytest.raises(FlexibleChecksumError, match="x-amz-checksum-crc32"):
        _verify({"x-amz-checksum-crc32": crc}, data + b" ", "k")


# --------------------------------------------------------------------------------------------------
# Reads


def test_reads_after_the_first_bypass_boto3_on_one_kept_alive_connection(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = store_at(s3_proxy.endpoint_url, s3_bucket)
    versions = {f"hosts/h{n}/status.json": store.put(f"hosts/h{n}/status.json", f"status {n}".encode())
                for n in range(20)}
    calls = botocore_calls(store, "GetObject")
    s3_proxy.clear()
    connections = s3_proxy.connections
    for key, version in versions.items():
        stored = store.get(key)
        assert stored is not None and stored.data == f"status {key[7:-12].lstrip('h')}".encode()
        assert stored.version == version
    assert calls == ["GetObject"], "only the first GET goes through boto3"
    assert [e.method for e in s3_proxy.exchanges] == ["GET"] * 20
    assert s3_proxy.connections - connections <= 2, "boto3's connection, then one kept alive for the rest"
    assert {item.key: item.version for item in store.list("hosts/")} == versions


def test_conditional_reads_missing_keys_and_big_objects(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = store_at(s3_proxy.endpoint_url, s3_bucket)
    assert store.get("commands/none.json") is None  # the first GET: boto3's
    version = store.put("commands/h.json", b"x" * 5000)
    s3_proxy.clear()
    unchanged = store.get("commands/h.json", if_version_not=version)
    assert unchanged is not None and unchanged.data == b"" and unchanged.version == version
    changed = store.get("commands/h.json", if_version_not='"0000"')
    assert changed is not None and changed.data == b"x" * 5000
    assert store.get("commands/none.json") is None
    assert [(e.status, e.response_body_bytes) for e in s3_proxy.exchanges[:2]] == [(304, 0), (200, 5000)]
    assert [e.status for e in s3_proxy.exchanges[2:]] == [404]

    big = store.put("commands/big.json", b"y" * (1024 * 1024 + 1))
    stored = store.get("commands/big.json")
    assert stored is not None and stored.oversize == 1024 * 1024 + 1 and stored.data == b"" and stored.version == big
    assert store.get("commands/h.json") is not None, "the store still reads after closing an unread answer"


def test_errors_through_the_lean_path_are_the_stores(s3_server: S3Server, s3_proxy: S3Proxy) -> None:
    bucket = f"fleetshift-wire-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    store = store_at(s3_proxy.endpoint_url, bucket, backoff_base_seconds=0.01)
    store.put("k.json", b"v")
    assert store.get("k.json") is not None
    calls = botocore_calls(store, "GetObject")

    s3_proxy.fail_next(1, 503, "SlowDown")
    s3_proxy.fail_next(1, 500, "InternalError")
    stored = store.get("k.json")
    assert stored is not None and stored.data == b"v"

    s3_proxy.fail_next(1, 403, "AccessDenied")
    with pytest.raises(AccessDenied, match="s3:GetObject"):
        store.get("k.json")

    s3_proxy.fail_next(10, 503, "ServiceUnavailable")
    with pytest.raises(StoreUnavailable, match=r"ServiceUnavailable.*gave up after 5 attempts"):
        store.get("k.json")
    s3_proxy.clear()

    store.delete("k.json")
    s3_server.client().delete_bucket(Bucket=bucket)
    with pytest.raises(BucketNotFound, match="does not exist"):
        store.get("k.json")
    assert calls == [], "every answer was the lean path's own"


def test_answers_for_botocore_go_back_to_botocore(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    """A 400 (S3's answer for a request signed for the wrong region) is repeated through boto3, whose region
    redirector knows what to do; what boto3 sends next shows the lean path the way again."""
    store = store_at(s3_proxy.endpoint_url, s3_bucket)
    store.put("k.json", b"v")
    assert store.get("k.json") is not None
    calls = botocore_calls(store, "GetObject")
    s3_proxy.fail_next(1, 400, "AuthorizationHeaderMalformed")
    stored = store.get("k.json")
    assert stored is not None and stored.data == b"v"
    assert calls == ["GetObject"]
    for _ in range(3):
        assert store.get("k.json") is not None
    assert calls == ["GetObject"], "captured again from boto3's request"


def test_a_server_that_drops_idle_connections(s3_server: S3Server, s3_bucket: str) -> None:
    """Kept-alive connections the server closed without a word are noticed and replaced, never an error."""
    with running_proxy_closing(s3_server.endpoint_url) as proxy:
        store = store_at(proxy.endpoint_url, s3_bucket)
        for n in range(5):
            store.put(f"k{n}.json", b"v")
        for _ in range(3):
            for n in range(5):
                stored = store.get(f"k{n}.json")
                assert stored is not None and stored.data == b"v"
            assert [item.key for item in store.list("")] == [f"k{n}.json" for n in range(5)]


def running_proxy_closing(upstream: str) -> S3ProxyContext:
    return S3ProxyContext(S3Proxy(upstream, close_after_reply=True))


class S3ProxyContext:
    def __init__(self, proxy: S3Proxy) -> None:
        self.proxy = proxy

    def __enter__(self) -> S3Proxy:
        return self.proxy.start()

    def __exit__(self, *_: object) -> None:
        self.proxy.stop()


def test_an_http_proxy_leaves_every_request_to_boto3(s3_server: S3Server, s3_bucket: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a forward proxy (HTTP_PROXY) the lean path stays off: botocore knows how to talk to proxies."""
    with running_proxy(s3_server.endpoint_url) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        store = store_at(s3_server.endpoint_url, s3_bucket)
        calls = botocore_calls(store, "GetObject")
        store.put("k.json", b"v")
        for _ in range(3):
            assert store.get("k.json") is not None
        assert calls == ["GetObject"] * 3
        assert not store._wire.ready("GetObject")
        assert sum(e.method == "GET" for e in proxy.exchanges) == 3


# --------------------------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, and an unrelated one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")

    def make(name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    cert, key = make("store")
    other, _ = make("other")
    return cert, key, other


@pytest.fixture
def tls_proxy(s3_server: S3Server, certificates: tuple[Path, Path, Path]) -> Iterator[S3Proxy]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates[0], certificates[1])
    proxy = S3Proxy(s3_server.endpoint_url, tls=context).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_https_with_the_configured_ca_bundle(tls_proxy: S3Proxy, s3_bucket: str,
                                             certificates: tuple[Path, Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificates[0]))
    store = store_at(tls_proxy.endpoint_url, s3_bucket)
    calls = botocore_calls(store, "GetObject")
    version = store.put("k.json", b"over TLS")
    for _ in range(3):
        stored = store.get("k.json")
        assert stored is not None and stored.data == b"over TLS" and stored.version == version
    assert calls == ["GetObject"], "the lean path speaks TLS too"
    assert [item.key for item in store.list("")] == ["k.json"]


def test_https_refuses_a_certificate_the_bundle_does_not_trust(tls_proxy: S3Proxy, s3_bucket: str,
                                                               certificates: tuple[Path, Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificates[2]))
    store = store_at(tls_proxy.endpoint_url, s3_bucket, max_attempts=1)
    with pytest.raises(StoreUnavailable, match=r"(?i)certificate"):
        store.get("k.json")


# --------------------------------------------------------------------------------------------------
# Listing in ranges


def test_listing_in_ranges_sees_what_a_listing_page_by_page_sees(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    """The second listing of a prefix asks for its ranges at once; keys added in the middle of a range, before
    the first, after the last, and removed (split points included) all come out right."""
    store = store_at(s3_proxy.endpoint_url, s3_bucket)
    keys = {f"hosts/h{n:05d}/status.json" for n in range(0, 5000, 2)}  # 2,500 keys
    put_all(store, keys)
    s3_proxy.clear()
    assert [item.key for item in store.list("hosts/")] == sorted(keys)
    first = [e for e in s3_proxy.exchanges if "list-type=2" in e.path]
    assert len(first) == 3 and not any("start-after" in e.path for e in first), "first listing: page by page"

    added = {"hosts/a/status.json", "hosts/h00501/status.json", "hosts/h01999/status.json",
             "hosts/h02001/status.json", "hosts/z/status.json", *{f"hosts/h{n:05d}/x.json" for n in range(1, 200, 2)}}
    removed = {"hosts/h00000/status.json", "hosts/h01998/status.json", "hosts/h03998/status.json",
               "hosts/h04998/status.json"}
    put_all(store, added)
    for key in removed:
        store.delete(key)
    truth = sorted((keys | added) - removed)
    s3_proxy.clear()
    assert [item.key for item in store.list("hosts/")] == truth
    ranged = [e for e in s3_proxy.exchanges if "list-type=2" in e.path]
    assert sum("start-after" in e.path for e in ranged) == 2, "three ranges: from the start, after each split"
    # The first range now holds 1,100 keys and the second 1,001: each takes a second page; the third, 500, one.
    assert len(ranged) == 5

    s3_proxy.clear()
    assert [item.key for item in store.list("hosts/")] == truth
    assert sum("list-type=2" in e.path for e in s3_proxy.exchanges) == 3, "new ranges drawn from the last listing"


def test_listing_keys_that_need_encoding(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    store = store_at(s3_proxy.endpoint_url, s3_bucket)
    keys = ["hosts/a b/status.json", "hosts/a+b/status.json", "hosts/a%20b/x.json", "hosts/é€/status.json",
            "hosts/a&b<c>/status.json"]
    versions = {key: store.put(key, key.encode()) for key in keys}
    assert {item.key: item.version for item in store.list("hosts/")} == versions  # boto3's listing
    assert {item.key: item.version for item in store.list("hosts/")} == versions  # the lean one
    for key in keys:
        stored = store.get(key)
        assert stored is not None and stored.data == key.encode()


def put_all(store: S3Store, keys: set[str]) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: store.put(key, b"{}"), sorted(keys)))


# --------------------------------------------------------------------------------------------------
# A reconciler pass on S3


def test_a_pass_on_s3_lists_and_reads_only_what_changed(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    """The reconciler's reader on S3: a quiet pass is its listings (each prefix once, all at the same time);
    after heartbeats it reads exactly the statuses that moved, in one batch."""
    from reconciler.shell.observe import StoreReader
    from tests.reconciler.fleet import ScriptedAgents

    store = store_at(s3_proxy.endpoint_url, s3_bucket)
    agents = ScriptedAgents(store, [f"h{i:03}" for i in range(12)])
    agents.register()
    reader = StoreReader(store)
    assert len(reader.snapshot().observed.statuses) == 12

    s3_proxy.clear()
    reader.snapshot()
    listed = sorted(parse_qs(urlsplit(e.path).query)["prefix"][0].removeprefix(store.prefix)
                    for e in s3_proxy.exchanges)
    assert listed == ["commands/", "deployments/", "events/fleet.json", "groups/", "hosts/", "traffic/"]

    agents.heartbeat()
    s3_proxy.clear()
    assert len(reader.snapshot().observed.statuses) == 12
    reads = [e.path for e in s3_proxy.exchanges if "list-type=2" not in e.path]
    assert len(reads) == 12 and all(path.endswith("/status.json") for path in reads)
