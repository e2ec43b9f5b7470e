"""`s3://bucket/prefix`: the store for real fleets, the same key layout under a prefix of an S3 bucket.

Where it sits: behind `open_store` for any URL starting with `s3://`; works against AWS S3 and any
S3-compatible server (MinIO, Ceph, moto) via `?endpoint=` or `AWS_ENDPOINT_URL`.

How it maps the `Store` protocol onto S3, and why:

- Versions are ETags. Compare-and-swap is S3's conditional write: `If-None-Match: *` for create-only and
  `If-Match: <etag>` for replace-if-unchanged; S3 answers 412 when the condition fails.
- `get(if_version_not=...)` sends `If-None-Match: <etag>`; S3 answers 304 with no body, so an idle agent's
  poll moves a few hundred bytes of headers, not the document.
- Listing is `ListObjectsV2`, page by page, keys and ETags only.
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
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import structlog

from contract import aws
from contract.store.base import (
    InvalidStoreURL,
    ObjectVersion,
    PreconditionFailed,
    StoredObject,
    StoreError,
    StoreUnavailable,
    check_key,
    read_limit,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger(__name__)

T = TypeVar("T")

_QUERY_PARAMS = ("endpoint", "region")


class BucketNotFound(StoreError):
    """The store's bucket does not exist (or the endpoint points at the wrong server)."""


class AccessDenied(StoreError):
    """The credentials in use may not perform this operation on the store's bucket or prefix."""


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

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def _make_client(self, region: str | None, connect_timeout: float, read_timeout: float) -> S3Client:
        try:
            # botocore's retries off (total_attempts=1): `_retrying` is the one retry policy. The reconciler
            # reads changed statuses with up to 16 threads, hence the pool of 32 connections.
            return aws.s3_client(
                endpoint=self.endpoint,
                region=region,
                total_attempts=1,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=32,
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

        def attempt() -> StoredObject | None:
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
            limit = read_limit(key)
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

        return self._retrying("get", key, attempt)

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
        full_prefix = self.prefix + prefix
        found: list[ObjectVersion] = []
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if token:
                arguments["ContinuationToken"] = token
            page = self._retrying("list", prefix, partial(self._client.list_objects_v2, **arguments))
            for item in page.get("Contents", []):
                found.append(ObjectVersion(item["Key"][len(self.prefix) :], str(item["ETag"])))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        found.sort(key=lambda item: item.key)
        return found

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
