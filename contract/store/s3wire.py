"""The S3 store's two hot requests, GetObject and ListObjectsV2, sent without botocore's per-call machinery.

Where it sits: under `contract/store/s3.py`, which calls it for every `get` and every listing page once botocore
has made one such request itself. Everything else (writes, deletes, error cases it does not know) goes through
the boto3 client as before.

Why: a reconciler's first pass over a 10,000-host fleet reads about 31,000 documents, and botocore spends about
2.3 ms of CPU on each GET (validating parameters, resolving the endpoint rules, a dozen event hooks, parsing
the answer into a dict) and about 60 ms on each 1,000-key listing page (it parses every `LastModified` into a
datetime), all of it under one GIL: a cold pass was CPU-bound at ~70 s whatever the concurrency (issue 18).
Here a GET is a signed request sent through the client's own HTTP session, and a listing page is parsed for
keys and ETags only.

What is kept from botocore, so behaviour does not drift: the URL, signing region and signature version of
the first request botocore made itself (captured by a `before-sign` hook, so endpoint rules, path-style
addressing, FIPS or dual-stack settings all come from the same place), its signer and credential provider
(refreshed credentials, session tokens), and its HTTP session (connection pool, timeouts, proxies, TLS
verification and CA bundle, and its translation of socket failures into botocore's exceptions, which
`contract.aws.classify` already knows). Errors are raised as botocore's `ClientError` built from S3's error
document, so the store's one retry policy and error messages apply unchanged. Answers it does not handle
(redirects, 400) return `DELEGATE` and the caller repeats the request through botocore, whose region
redirector knows what to do with them.

What it rests on: one botocore internal, the client's `_endpoint.http_session`. Without it (a botocore that
moved it) nothing is captured, and every request keeps going through botocore: slower, never wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import select
import socket
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import unescape
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import SplitResult, quote, unquote, urlsplit

import structlog

from contract.store.base import StoredObject

if TYPE_CHECKING:
    import ssl

    from mypy_boto3_s3 import S3Client

log = structlog.get_logger(__name__)

#: Returned for an answer this module does not handle: repeat the request through botocore.
DELEGATE: Final = object()

#: The most bytes read of an answer that is not an object (an error document, a listing page).
ANSWER_LIMIT = 8 * 1024 * 1024
_S3_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_ERROR_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
#: Checksums S3 returns with `x-amz-checksum-mode: ENABLED`, that the standard library can verify.
_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "x-amz-checksum-crc32": lambda data: zlib.crc32(data).to_bytes(4, "big"),
    "x-amz-checksum-sha1": lambda data: hashlib.sha1(data, usedforsecurity=False).digest(),
    "x-amz-checksum-sha256": lambda data: hashlib.sha256(data).digest(),
}


@dataclass(frozen=True, slots=True)
class _Target:
    """What botocore used for one operation on this bucket: where to send, how to sign."""

    #: The URL without the query; for GetObject, without the object key either.
    root: str
    signing_name: str
    region: str
    signature_version: str
    user_agent: str | None
    signer: Any
    host: str
    pool: _Connections


@dataclass(frozen=True, slots=True)
class ListedPage:
    """One ListObjectsV2 page: (full key, ETag) in key order, and where the next page starts."""

    items: list[tuple[str, str]]
    truncated: bool
    next_token: str | None


class Wire:
    """Lean GetObject and ListObjectsV2 for one bucket of one boto3 client (see the module docstring)."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.bucket = bucket
        self._targets: dict[str, _Target] = {}
        self._pools: dict[str, _Connections] = {}
        self._lock = threading.Lock()
        self._session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        config: Any = client.meta.config
        self._timeouts = (float(config.connect_timeout or 60), float(config.read_timeout or 60))
        self._keep = int(config.max_pool_connections or 10)
        unusable = _unusable(self._session)
        if unusable is not None:
            log.debug("store.s3_wire_off", reason=unusable)
            return
        for operation in ("GetObject", "ListObjectsV2"):
            client.meta.events.register(f"before-sign.s3.{operation}", self._capture)

    def ready(self, operation: str) -> bool:
        """Whether botocore has shown how to send `operation` (its first request goes through botocore)."""
        return operation in self._targets

    def _capture(self, request: Any, signature_version: Any, request_signer: Any, operation_name: str,
                 region_name: str | None = None, **_: Any) -> None:
        """botocore's `before-sign` hook: note the URL and signing parameters of a request botocore is about to
        sign. Requests it signs in ways this module does not (S3 Express sessions, SigV4a, unsigned), and
        endpoints reached through a proxy, are never taken over."""
        if operation_name in self._targets:
            return
        context = request.context if isinstance(request.context, dict) else {}
        signing = context.get("signing", {})
        if signature_version not in ("s3v4", "v4") or signing.get("request_credentials") or signing.get(
            "identity_cache"
        ):
            return
        url = str(request.url).split("?", 1)[0]
        if operation_name == "GetObject":
            key = context.get("input_params", {}).get("Key")
            encoded = _encode_key(key) if isinstance(key, str) else None
            if encoded is None or not url.endswith(encoded):
                return
            url = url[: -len(encoded)]
        region = signing.get("region") or region_name
        parts = urlsplit(url)
        if not region or parts.scheme not in ("http", "https") or not parts.hostname or _proxied(self._session, url):
            return
        origin = f"{parts.scheme}://{parts.netloc}"
        user_agent = request.headers.get("User-Agent")
        with self._lock:
            if origin not in self._pools:
                self._pools[origin] = _Connections(
                    parts.scheme, parts.hostname, parts.port, verify=self._session._verify,  # type: ignore[union-attr]
                    timeouts=self._timeouts, keep=self._keep,
                )
            self._targets[operation_name] = _Target(
                root=url, signing_name=signing.get("signing_name") or "s3", region=str(region),
                signature_version="s3v4", user_agent=str(user_agent) if user_agent else None, signer=request_signer,
                host=_host_header(parts), pool=self._pools[origin],
            )

    # ----------------------------------------------------------------------------------------------

    def get_object(self, key: str, full_key: str, *, if_version_not: str | None, limit: int) -> Any:
        """A `StoredObject`, None (no such key) or `DELEGATE`; raises botocore's exceptions like a boto3 call."""
        target = self._targets["GetObject"]
        headers = {"x-amz-checksum-mode": "ENABLED"}
        if if_version_not is not None and ("\r" in if_version_not or "\n" in if_version_not):
            return DELEGATE  # not a header value: botocore's validation says so
        if if_version_not is not None:
            headers["If-None-Match"] = if_version_not
        answer = self._send(target, target.root + _encode_key(full_key), headers, None, limit)
        if answer.status == 200:
            version = answer.headers.get("etag", "")
            if answer.oversize is not None:
                return StoredObject(key, b"", version, oversize=answer.oversize)
            _verify(answer.headers, answer.body, full_key)
            return StoredObject(key, answer.body, version)
        if answer.status == 304 and if_version_not is not None:
            return StoredObject(key, b"", if_version_not)
        if answer.status == 404 and _error_code(answer.body) == "NoSuchKey":
            return None
        return self._failure(answer, "GetObject")

    def list_page(self, full_prefix: str, *, start_after: str | None, token: str | None) -> Any:
        """One `ListedPage`, or `DELEGATE`; raises botocore's exceptions like a boto3 call."""
        target = self._targets["ListObjectsV2"]
        params = {"list-type": "2", "prefix": full_prefix, "encoding-type": "url"}
        if token is not None:
            params["continuation-token"] = token
        elif start_after is not None:
            params["start-after"] = start_after
        answer = self._send(target, target.root, {}, params, ANSWER_LIMIT)
        if answer.status != 200:
            return self._failure(answer, "ListObjectsV2")
        if answer.oversize is not None:
            from botocore.exceptions import ResponseStreamingError

            raise ResponseStreamingError(error=f"listing page larger than {ANSWER_LIMIT} bytes")
        return _parse_listing(answer.body)

    def _failure(self, answer: _Answer, operation: str) -> Any:
        """`_failure`; on `DELEGATE`, what was captured for `operation` is forgotten, so the request botocore now
        makes (to the region its redirector found) shows the way again."""
        outcome = _failure(answer, operation)
        if outcome is DELEGATE:
            with self._lock:
                self._targets.pop(operation, None)
        return outcome

    def _send(self, target: _Target, url: str, headers: dict[str, str], params: dict[str, str] | None,
              limit: int) -> _Answer:
        """Sign (credentials from botocore's signer, refreshed as botocore refreshes them) and send."""
        from botocore.exceptions import NoCredentialsError

        auth: Any = target.signer.get_auth_instance(target.signing_name, target.region, target.signature_version)
        if auth.credentials is None:
            raise NoCredentialsError()
        path = urlsplit(url).path
        query = canonical_query(params or {})
        signed = sign_get(auth.credentials, region=target.region, service=target.signing_name, host=target.host,
                          path=path, query=query, headers=headers, now=datetime.now(UTC))
        if target.user_agent:
            signed.append(("User-Agent", target.user_agent))
        return target.pool.exchange(f"{path}?{query}" if query else path, signed, limit)


#: SHA-256 of an empty body: every request here is a GET.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_signing_keys: dict[tuple[str, str, str, str], bytes] = {}


def canonical_query(params: dict[str, str]) -> str:
    """The query string as SigV4 canonicalises it, which is also a valid one to send: names and values
    percent-encoded except `-_.~`, sorted."""
    return "&".join(sorted(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}" for name, value in params.items()))


def sign_get(credentials: Any, *, region: str, service: str, host: str, path: str, query: str,
             headers: dict[str, str], now: datetime) -> list[tuple[str, str]]:
    """The headers of a GET signed with AWS Signature Version 4, as botocore's S3 signer signs it (every header
    sent but User-Agent, the payload's SHA-256 in `x-amz-content-sha256`, a session token when there is one).
    `path` is the URL path as sent (S3 does not normalise it), `query` from `canonical_query`. Written here
    rather than calling botocore's signer because that costs about a third of a lean GET's CPU; checked against
    botocore's in tests/store/test_s3wire.py."""
    timestamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = timestamp[:8]
    sent = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    sent["host"] = host
    sent["x-amz-content-sha256"] = _EMPTY_SHA256
    sent["x-amz-date"] = timestamp
    if credentials.token:
        sent["x-amz-security-token"] = credentials.token
    names = sorted(sent)
    signed_names = ";".join(names)
    canonical = "\n".join([
        "GET", path, query, *(f"{name}:{sent[name]}" for name in names), "", signed_names, _EMPTY_SHA256,
    ])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    cache_key = (credentials.secret_key, day, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = f"AWS4{credentials.secret_key}".encode()
        for part in (day, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(_signing_keys) > 16:
            _signing_keys.clear()
        _signing_keys[cache_key] = key
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                     f"SignedHeaders={signed_names}, Signature={signature}")
    return [*((name, sent[name]) for name in names), ("authorization", authorization)]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    #: Header names in lower case; repeated headers joined with ", ".
    headers: dict[str, str]
    #: The body, or b"" when it was larger than the limit asked for (then `oversize` is its size, or more).
    body: bytes
    oversize: int | None = None


class _Connection:
    """One kept-alive HTTP/1.1 connection: a socket (TLS-wrapped for https) and a buffered reader over it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class _Connections:
    """Kept-alive HTTP/1.1 connections to one S3 endpoint, and the little of HTTP/1.1 that GET needs.

    Why not urllib3 (botocore's) or http.client: their layers (retry and timeout objects, header dictionaries,
    the email parser for headers) cost 0.4 to 0.6 ms of CPU per request here, and a cold pass makes 31,000 of
    them under one GIL; this costs about 0.1 ms. What it does: one GET at a time per connection; a body by
    `Content-Length`, chunked, or up to the connection's close; a connection reused only after its answer was
    read to the end and when the server did not ask to close it; a reused connection the server had closed
    meanwhile replaced once, transparently (GETs are safe to repeat). Only direct connections use it (a proxy
    or a client certificate leaves every request to botocore); TLS verifies the server against the CA bundle
    botocore resolved (`AWS_CA_BUNDLE`, the profile's `ca_bundle`, or its default), or not at all when
    botocore was told not to."""

    def __init__(self, scheme: str, host: str, port: int | None, *, verify: Any, timeouts: tuple[float, float],
                 keep: int) -> None:
        self.host = host
        self.port = port or (443 if scheme == "https" else 80)
        self.url = f"{scheme}://{host}" + (f":{port}" if port else "")
        self.connect_timeout, self.read_timeout = timeouts
        self.keep = keep
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        if scheme == "https":
            import ssl

            from botocore.httpsession import get_cert_path

            if verify is False:
                self._context = ssl._create_unverified_context()  # noqa: S323 - botocore was told not to verify
            else:
                self._context = ssl.create_default_context(cafile=get_cert_path(verify))

    def exchange(self, path: str, headers: list[tuple[str, str]], limit: int) -> _Answer:
        request = "".join([f"GET {path} HTTP/1.1\r\n", *(f"{name}: {value}\r\n" for name, value in headers), "\r\n"])
        payload = request.encode("latin-1")
        reused, connection = self._take()
        try:
            return self._exchange(connection, payload, limit)
        except _Stale:
            if not reused:
                raise _stale_error(self.url) from None
            return self._exchange(self._connect(), payload, limit)

    def _exchange(self, connection: _Connection, payload: bytes, limit: int) -> _Answer:
        from botocore.exceptions import ReadTimeoutError, ResponseStreamingError

        try:
            connection.sock.sendall(payload)
            status, headers = _read_head(connection.reader)
        except (ConnectionResetError, BrokenPipeError, _Stale) as exc:
            connection.close()
            raise _Stale from exc
        except TimeoutError as exc:
            connection.close()
            raise ReadTimeoutError(endpoint_url=self.url, error=exc) from exc
        except (OSError, ValueError) as exc:
            connection.close()
            raise _stale_error(self.url) from exc
        try:
            answer, reusable = _read_body(connection.reader, status, headers, limit)
        except (OSError, ValueError) as exc:
            connection.close()
            raise ResponseStreamingError(error=exc) from exc
        if reusable:
            self._give_back(connection)
        else:
            connection.close()
        return answer

    def _take(self) -> tuple[bool, _Connection]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return False, self._connect()
            if not _dropped(connection.sock):
                return True, connection
            connection.close()

    def _give_back(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(connection)
                return
        connection.close()

    def _connect(self) -> _Connection:
        import ssl

        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, SSLError

        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=self.url, error=exc) from exc
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=self.url, error=exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(endpoint_url=self.url, error=exc) from exc
        except ssl.SSLError as exc:
            sock.close()
            raise SSLError(endpoint_url=self.url, error=exc) from exc
        except OSError as exc:
            sock.close()
            raise EndpointConnectionError(endpoint_url=self.url, error=exc) from exc
        sock.settimeout(self.read_timeout)
        return _Connection(sock)


#: Bounds on an answer's head: a line, and the number of header lines.
_LINE_LIMIT = 64 * 1024
_HEADER_LIMIT = 200


def _read_head(reader: Any) -> tuple[int, dict[str, str]]:
    """The status and headers of the next final answer (informational 1xx answers are skipped). A connection
    closed before the first byte raises `_Stale`: the server dropped an idle connection."""
    while True:
        line = reader.readline(_LINE_LIMIT)
        if not line:
            raise _Stale
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {line[:80]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for _ in range(_HEADER_LIMIT):
            line = reader.readline(_LINE_LIMIT)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        else:
            raise ValueError("more than 200 header lines")
        if version == "HTTP/1.0":
            headers.setdefault("connection", "close")
        if status >= 200:
            return status, headers


def _read_body(reader: Any, status: int, headers: dict[str, str], limit: int) -> tuple[_Answer, bool]:
    """The body, at most `limit` bytes, and whether the connection can carry another request."""
    reusable = "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return _Answer(status, headers, b""), reusable
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int(reader.readline(_LINE_LIMIT).split(b";")[0], 16)
            if size == 0:
                while reader.readline(_LINE_LIMIT) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return _Answer(status, headers, bytes(body)), reusable
            if len(body) + size > limit:
                return _Answer(status, headers, b"", len(body) + size), False
            body += _exactly(reader, size)
            reader.readline(_LINE_LIMIT)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > limit:
            return _Answer(status, headers, b"", length), False
        return _Answer(status, headers, _exactly(reader, length)), reusable
    body = reader.read(limit + 1)  # no length: the body ends when the server closes
    if len(body) > limit:
        return _Answer(status, headers, b"", len(body)), False
    return _Answer(status, headers, body), False


def _exactly(reader: Any, size: int) -> bytes:
    data: bytes = reader.read(size)
    if len(data) != size:
        raise ConnectionError(f"the answer ended after {len(data)} of {size} bytes")
    return data


class _Stale(Exception):
    """A connection the server had closed: answered nothing, so the request can go again on a new one."""


def _stale_error(url: str) -> Exception:
    from botocore.exceptions import ConnectionClosedError

    return ConnectionClosedError(endpoint_url=url)


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive socket that is readable has been closed by the server (or sent something unasked).
    `poll`, not `select`: a process with more than 1,024 descriptors is no reason to drop every connection."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _unusable(session: Any) -> str | None:
    """Why requests must stay with botocore's session, or None."""
    if session is None or not hasattr(session, "_verify") or not hasattr(session, "_proxy_config"):
        return "botocore's client has no _endpoint.http_session as expected"
    if getattr(session, "_cert_file", None):
        return "a client certificate is configured"
    return None


def _proxied(session: Any, url: str) -> bool:
    try:
        return bool(session._proxy_config.proxy_url_for(url))
    except Exception:  # an unexpected botocore: be safe, leave it to botocore
        return True


def _host_header(parts: SplitResult) -> str:
    """The Host header for a URL, without the scheme's default port (as botocore signs it)."""
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _encode_key(key: str) -> str:
    from botocore.utils import percent_encode

    return str(percent_encode(key, safe="/~"))


def _verify(headers: Any, data: bytes, full_key: str) -> None:
    """The checksum S3 stored with the object, checked as botocore checks it (a mismatch is its
    FlexibleChecksumError). Composite checksums of multipart uploads and algorithms the standard library lacks
    (CRC32C, CRC64NVME) are not checked."""
    if headers.get("x-amz-checksum-type", "FULL_OBJECT") != "FULL_OBJECT":
        return
    for header, digest in _CHECKSUMS.items():
        expected = headers.get(header)
        if expected and base64.b64encode(digest(data)).decode() != expected:
            from botocore.exceptions import FlexibleChecksumError

            raise FlexibleChecksumError(error_msg=f"{header} does not match the body of {full_key}")


def _error_code(body: bytes) -> str:
    found = _ERROR_CODE.search(body)
    return unescape(found.group(1).decode("utf-8", "replace")) if found else ""


def _failure(answer: _Answer, operation: str) -> Any:
    """S3's error answer as the ClientError botocore would raise; redirects and 400 are botocore's to handle
    (a bucket in another region)."""
    from botocore.exceptions import ClientError

    status, body = answer.status, answer.body
    if 300 <= status < 400 or status == 400:
        return DELEGATE
    message = _ERROR_MESSAGE.search(body)
    error: Any = {
        "Error": {
            "Code": _error_code(body) or str(status),
            "Message": unescape(message.group(1).decode("utf-8", "replace")) if message else "",
        },
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    raise ClientError(error, operation)


def _parse_listing(body: bytes) -> ListedPage:
    """Keys (URL-decoded: requested with `encoding-type=url`, so any key survives XML) and ETags only."""
    from xml.etree import ElementTree

    # Not defusedxml (S314): this is the answer of the store's own endpoint, read with the parser botocore uses
    # for every S3 answer; expat >= 2.4 bounds entity expansion, and `ANSWER_LIMIT` the body.
    root = ElementTree.fromstring(body)  # noqa: S314
    items = [
        (unquote(entry.findtext(f"{_S3_NAMESPACE}Key") or ""), entry.findtext(f"{_S3_NAMESPACE}ETag") or "")
        for entry in root.iter(f"{_S3_NAMESPACE}Contents")
    ]
    truncated = (root.findtext(f"{_S3_NAMESPACE}IsTruncated") or "").lower() == "true"
    return ListedPage(items, truncated, root.findtext(f"{_S3_NAMESPACE}NextContinuationToken"))
