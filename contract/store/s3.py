"""`s3://bucket/prefix`: the store for real fleets, the same key layout under a prefix of an S3 bucket.

Where it sits: behind `open_store` for any URL starting with `s3://`; works against AWS S3 and any
S3-compatible server (MinIO, Ceph, moto) via `?endpoint=` or `AWS_ENDPOINT_URL`.

How it maps the `Store` protocol onto S3, and why:

- Versions are ETags. Compare-and-swap is S3's conditional write: `If-None-Match: *` for create-only and
  `If-Match: <etag>` for replace-if-unchanged; S3 answers 412 when the condition fails.
- `get(if_version_not=...)` sends `If-None-Match: <etag>`; S3 answers 304 with no body, so an idle agent's
  poll moves a few hundred bytes of headers, not the document.
- Listing is `ListObjectsV2`, keys and ETags only. The first listing of a prefix goes page by page; later
  ones ask for the key ranges between keys the previous one saw all at once (`ListObjectsV2`'s
  `StartAfter`), so listing 20,000 host keys costs about one round trip, not twenty (issue 18).
- GETs and listing pages after the first of each are sent by `contract/store/s3wire.py` (signed with
  botocore's signer, through the client's own connection pool) instead of a full boto3 call, which costs
  about five times the CPU: a cold pass over a big fleet is CPU-bound on these (issue 18).
- Throttling (503 SlowDown, 429), 5xx, conflicting concurrent conditional writes (409) and dropped
  connections are retried here with capped, jittered exponential backoff, then surface as
  `StoreUnavailable` so callers back off for longer. botocore's own retries are switched off so there is
  one retry policy, visible in the logs, not two stacked ones.
- A conditional write that was retried after an ambiguous failure (the connection dropped after S3 may
  have applied it) can come back 412 because the first attempt won. The store then reads the object and,
  if it holds exactly the bytes it wrote, reports success instead of a lost race.
- Keys obey the file store's rules (`check_key`), so a store can be copied between backends as is.
- Reads are bounded (`read_limit`): an object bigger than its key's limit is not downloaded (its
  `ContentLength` says so before the body is read) and comes back with `oversize` set.
- Missing buckets, denied access and bad credentials raise `StoreError` subclasses whose messages say what
  to change; they are not retried because waiting does not fix them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

import structlog

from contract import aws
from contract.store.base import (
    AccessDenied,
    InvalidStoreURL,
    ObjectVersion,
    PreconditionFailed,
    StoredObject,
    StoreError,
    StoreUnavailable,
    check_key,
    read_limit,
)
from contract.store.s3wire import DELEGATE, ListedPage, Wire

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: (full key, ETag) pairs, as listed.
_Listed = list[tuple[str, str]]

_QUERY_PARAMS = ("endpoint", "region")
#: A listing remembers every this-many-th key as the end of a range for the next listing of the prefix: S3's
#: page, so listing in ranges costs no more requests than page by page. A range that gained keys since takes
#: one more page, once: the listing that does so draws new ranges.
SPLIT_EVERY = 1000
#: Ranges of one listing requested at once.
LIST_WORKERS = 16
#: Connections kept to S3: the reconciler's parallel reads (`READ_WORKERS` in contract/store/bulk.py) and
#: listings together.
POOL_CONNECTIONS = 160


class BucketNotFound(StoreError):
    """The store's bucket does not exist (or the endpoint points at the wrong server)."""


class CredentialsError(StoreError):
    """No usable AWS credentials: none found, unknown key id, bad secret or expired session."""


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """`s3://bucket/some/prefix?endpoint=http://host:9000&region=eu-west-1` -> bucket, `some/prefix/`, params."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise InvalidStoreURL(f"invalid S3 store URL {url!r}: write s3://bucket/prefix")
    bucket = parts.netloc
    if not 3 <= len(bucket) <= 63:
        raise InvalidStoreURL(f"invalid bucket name {bucket!r} in {url!r}: S3 bucket names have 3 to 63 characters")
    prefix = parts.path.strip("/")
    params: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name not in _QUERY_PARAMS:
            raise InvalidStoreURL(
                f"unknown parameter {name!r} in store URL {url!r}: known parameters are {', '.join(_QUERY_PARAMS)}"
            )
        params[name] = values[-1]
    return bucket, f"{prefix}/" if prefix else "", params


class S3Store:
    """The `Store` protocol over one bucket and prefix. Thread-safe (boto3 clients are)."""

    #: Every read is a network round trip: readers fetch in parallel.
    local = False

    def __init__(
        self,
        url: str,
        *,
        max_attempts: int = 5,
        backoff_base_seconds: float = 0.1,
        backoff_cap_seconds: float = 5.0,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 20.0,
    ) -> None:
        self.url = url
        self.bucket, self.prefix, params = parse_s3_url(url)
        self.endpoint = params.get("endpoint") or None
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base_seconds
        self.backoff_cap = backoff_cap_seconds
        self._client = self._make_client(params.get("region"), connect_timeout_seconds, read_timeout_seconds)
        self._wire = Wire(self._client, self.bucket)
        self._lock = threading.Lock()
        #: Per full prefix, the keys that end the ranges its next listing asks for at once (see `list`).
        self._splits: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def _make_client(self, region: str | None, connect_timeout: float, read_timeout: float) -> S3Client:
        try:
            # botocore's retries off (total_attempts=1): `_retrying` is the one retry policy. The reconciler
            # reads and lists with many threads at once (`POOL_CONNECTIONS`).
            return aws.s3_client(
                endpoint=self.endpoint,
                region=region,
                total_attempts=1,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=POOL_CONNECTIONS,
            )
        except aws.InvalidEndpoint as exc:
            raise StoreError(f"invalid S3 endpoint for store {self.url!r}: {exc}") from exc

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    # ----------------------------------------------------------------------------------------------
    # The protocol

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        full = self._full(key)
        limit = read_limit(key)

        def attempt() -> StoredObject | None:
            if self._wire.ready("GetObject"):
                found = self._wire.get_object(key, full, if_version_not=if_version_not, limit=limit)
                if found is not DELEGATE:
                    return cast("StoredObject | None", found)
            return self._botocore_get(key, full, if_version_not, limit)

        return self._retrying("get", key, attempt)

    def _botocore_get(self, key: str, full: str, if_version_not: str | None, limit: int) -> StoredObject | None:
        """A GET through boto3's full call: the first of a process (it shows `s3wire` how to send the rest), and
        any answer `s3wire` hands back (redirects)."""
        extra: dict[str, Any] = {"IfNoneMatch": if_version_not} if if_version_not is not None else {}
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full, **extra)
        except Exception as exc:
            failure = aws.classify(exc)
            if failure is not None and failure.answered:
                if failure.kind is aws.Kind.NOT_MODIFIED and if_version_not is not None:
                    return StoredObject(key, b"", if_version_not)
                if failure.code in ("NoSuchKey", "404") and failure.status == 404:
                    return None
            raise
        body = response["Body"]
        version = str(response["ETag"])
        size = int(response.get("ContentLength") or 0)
        try:
            # Checked before reading a byte, and the read itself is bounded too (a server may not say the
            # length): a huge object is closed unread (see `read_limit`).
            data = b"" if size > limit else body.read(limit + 1)
        finally:
            body.close()
        if size > limit or len(data) > limit:
            return StoredObject(key, b"", version, oversize=max(size, len(data)))
        return StoredObject(key, data, version)

    def put(self, key: str, data: bytes) -> str:
        full = self._full(key)
        return self._retrying(
            "put", key, lambda: str(self._client.put_object(Bucket=self.bucket, Key=full, Body=data)["ETag"])
        )

    def put_if_absent(self, key: str, data: bytes) -> str:
        full = self._full(key)
        return self._conditional_put(
            key,
            data,
            lambda: str(self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")["ETag"]),
            lost=f"{key} already exists",
        )

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        full = self._full(key)
        return self._conditional_put(
            key,
            data,
            lambda: str(self._client.put_object(Bucket=self.bucket, Key=full, Body=data, IfMatch=version)["ETag"]),
            lost=f"{key} changed or was deleted since version {version}",
        )

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._retrying("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def list(self, prefix: str) -> list[ObjectVersion]:
        """Every key under `prefix`, in key order. The first listing of a prefix in a process goes page by page
        (each page names where the next starts); later ones list the key ranges between the keys the previous
        listing saw every `SPLIT_EVERY` keys, all at once (see `_split`), so a 20-page listing costs about one
        page's round trip instead of twenty."""
        full_prefix = self.prefix + prefix
        with self._lock:
            bounds = self._splits.get(full_prefix, [])
        ranges = list(zip([None, *bounds], [*bounds, None], strict=True))
        if len(ranges) == 1:
            found = self._list_range(prefix, full_prefix, None, None)
        else:
            with ThreadPoolExecutor(max_workers=min(LIST_WORKERS, len(ranges)), thread_name_prefix="s3-list") as pool:
                parts = list(pool.map(lambda bound: self._list_range(prefix, full_prefix, *bound), ranges))
            found = [item for part in parts for item in part]
        with self._lock:
            self._splits[full_prefix] = [found[end - 1][0] for end in range(SPLIT_EVERY, len(found), SPLIT_EVERY)]
        strip = len(self.prefix)
        return [ObjectVersion(key[strip:], version) for key, version in found]

    def _list_range(self, prefix: str, full_prefix: str, after: str | None, until: str | None) -> _Listed:
        """The keys in (`after`, `until`] (open ends: None), page by page. A range whose keys grew since the
        listing that drew it takes one more page; keys past `until` belong to the next range and are dropped."""
        found: _Listed = []
        token: str | None = None
        while True:
            page = self._retrying("list", prefix, partial(self._list_page, full_prefix, after, token))
            for key, version in page.items:
                if until is not None and key > until:
                    return found
                found.append((key, version))
            if not page.truncated or not page.items or (until is not None and page.items[-1][0] >= until):
                return found
            token = page.next_token

    def _list_page(self, full_prefix: str, after: str | None, token: str | None) -> ListedPage:
        if self._wire.ready("ListObjectsV2"):
            page = self._wire.list_page(full_prefix, start_after=after, token=token)
            if page is not DELEGATE:
                return cast(ListedPage, page)
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        if token is not None:
            arguments["ContinuationToken"] = token
        elif after is not None:
            arguments["StartAfter"] = after
        answer = self._client.list_objects_v2(**arguments)
        return ListedPage(
            [(item["Key"], str(item["ETag"])) for item in answer.get("Contents", [])],
            bool(answer.get("IsTruncated")),
            answer.get("NextContinuationToken"),
        )

    # ----------------------------------------------------------------------------------------------
    # Retries and error translation

    def _conditional_put(self, key: str, data: bytes, send: Callable[[], str], *, lost: str) -> str:
        retried = False

        def attempt() -> str:
            nonlocal retried
            try:
                return send()
            except Exception as exc:
                failure = aws.classify(exc)
                if failure is not None and failure.retryable:
                    retried = True
                raise

        try:
            return self._retrying("conditional put", key, attempt, precondition_message=lost)
        except PreconditionFailed:
            if retried:
                # An earlier attempt may have been applied before its answer was lost: if the object holds
                # exactly our bytes, that attempt won (see the module docstring).
                current = self.get(key)
                if current is not None and current.data == data:
                    log.info("store.conditional_put_recovered", key=key)
                    return current.version
            raise

    def _retrying(
        self, operation: str, key: str, attempt: Callable[[], T], *, precondition_message: str | None = None
    ) -> T:
        last: Exception | None = None
        for number in range(1, self.max_attempts + 1):
            try:
                return attempt()
            except Exception as exc:
                translated = self._translate(exc, operation, key, precondition_message)
                if translated is None:
                    raise
                if not translated.retryable:
                    raise translated from exc
                last = translated
                if number < self.max_attempts:
                    delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (number - 1)))
                    log.debug("store.retry", operation=operation, key=key, attempt=number, error=str(translated),
                              delay=round(delay, 3))
                    time.sleep(delay)
        assert last is not None
        raise StoreUnavailable(f"{last} (gave up after {self.max_attempts} attempts)") from last

    def _translate(
        self, exc: Exception, operation: str, key: str, precondition_message: str | None
    ) -> StoreError | None:
        """botocore's exceptions -> the store's error tree, once, here. None: not ours to translate."""
        failure = aws.classify(exc)
        if failure is None:
            return None
        where = self._where(key)
        kind, status, code, message = failure.kind, failure.status, failure.code, failure.message
        if kind is aws.Kind.PRECONDITION_FAILED:
            return PreconditionFailed(precondition_message or f"{where}: precondition failed")
        if operation == "conditional put" and code == "NoSuchKey":
            # If-Match on a key that is gone: the object changed under us, like a lost race.
            return PreconditionFailed(precondition_message or f"{where} does not exist")
        if code == "NoSuchBucket":
            hint = f" at {self.endpoint}" if self.endpoint else ""
            return BucketNotFound(
                f"the store's bucket {self.bucket!r} does not exist{hint}: create it "
                f"(aws s3 mb s3://{self.bucket}) or fix the store URL {self.url!r}"
            )
        if kind is aws.Kind.CREDENTIALS and failure.answered:
            return CredentialsError(
                f"S3 rejected the credentials for {operation} {where} ({code}: {message}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the AWS profile or the instance role"
            )
        if kind is aws.Kind.CREDENTIALS:
            return CredentialsError(
                f"no AWS credentials for the store {self.url!r}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host an instance role"
            )
        if kind is aws.Kind.ACCESS_DENIED:
            action = {"get": "s3:GetObject", "list": "s3:ListBucket", "delete": "s3:DeleteObject"}.get(
                operation, "s3:PutObject"
            )
            return AccessDenied(
                f"access denied: {operation} {where} ({message}); allow {action} on "
                f"arn:aws:s3:::{self.bucket}/{self.prefix}* for these credentials "
                "(see examples/iam/ for the agent's and the reconciler's policies)"
            )
        if kind is aws.Kind.UNAVAILABLE:
            return StoreUnavailable(f"S3 could not serve {operation} {where} right now ({code}: {message})")
        if kind is aws.Kind.UNREACHABLE:
            endpoint = self.endpoint or self._client.meta.endpoint_url
            return StoreUnavailable(f"cannot reach S3 at {endpoint} for {operation} {where}: {exc}")
        if kind is aws.Kind.IO:
            return StoreUnavailable(f"S3 {operation} {where} failed: {exc}")
        if failure.answered:
            return StoreError(f"S3 refused {operation} {where} ({code or status}: {message})")
        return StoreError(f"S3 {operation} {where} failed: {exc}")
