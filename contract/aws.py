"""AWS in one place: how a boto3 client is built, and what a botocore error means.

Where it sits: under both sides. The S3 store (contract/store/s3.py) and the agent's S3 bundle fetcher both
build their clients here and both ask `classify` what went wrong, so "is this worth retrying?" has one answer
everywhere. Each caller then raises its own error type (StoreUnavailable, BundleUnavailable, ...) with its own
message: this module decides the kind of failure, never the words shown to the user.

boto3 and botocore are imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Error codes that mean "slow down or try again", whatever the HTTP status says.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404"})
ACCESS_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)


class InvalidEndpoint(ValueError):
    """The endpoint URL cannot be used (botocore refused it). The message is botocore's."""


class Kind(enum.Enum):
    """What a failed AWS call means for the caller."""

    #: AWS answered "not now": throttling (429, SlowDown, Throttling, ...) or a 5xx. Retryable.
    UNAVAILABLE = "unavailable"
    #: No usable answer: connection refused or reset, DNS failure, connect or read timeout, a body cut off
    #: mid-stream (botocore's ConnectionError, HTTPClientError, ResponseStreamingError). Retryable.
    UNREACHABLE = "unreachable"
    #: An OSError from outside botocore (a socket error that escaped its wrapping, or the caller's own file
    #: while streaming a body to it). Retryable.
    IO = "io"
    #: 404, NoSuchKey, NoSuchBucket, NoSuchVersion.
    NOT_FOUND = "not found"
    #: 403 and the codes that mean "these credentials may not do this".
    ACCESS_DENIED = "access denied"
    #: No credentials at all, or credentials AWS rejects (unknown key id, bad secret, expired token).
    CREDENTIALS = "credentials"
    #: 412: a conditional write's condition did not hold.
    PRECONDITION_FAILED = "precondition failed"
    #: 304: a conditional read's object has not changed.
    NOT_MODIFIED = "not modified"
    #: Anything else: a request AWS refused (a bad request), or a botocore error raised before sending
    #: (invalid parameters, ...). Waiting does not fix it.
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class AwsFailure:
    """One classified failure. `code` is AWS's error code (or the HTTP status as text, or "" for errors that
    never reached AWS); `message` is AWS's message, else the code, else the exception's text."""

    kind: Kind
    status: int
    code: str
    message: str

    @property
    def retryable(self) -> bool:
        return self.kind in (Kind.UNAVAILABLE, Kind.UNREACHABLE, Kind.IO)

    @property
    def answered(self) -> bool:
        """AWS answered with an error (a ClientError: `status` and `code` are AWS's)."""
        return self.code != ""


def status_and_code(exc: Any) -> tuple[int, str]:
    """HTTP status and AWS error code of a botocore ClientError (the code falls back to the status, so it is
    never empty)."""
    response = exc.response
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    code = str(response.get("Error", {}).get("Code", "") or status)
    return status, code


def classify(exc: BaseException) -> AwsFailure | None:
    """Classify an exception raised by a boto3 call; None when it is not an AWS or I/O failure at all (a bug
    of ours, KeyboardInterrupt, ...), which callers let through."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ResponseStreamingError,
    )

    if isinstance(exc, ClientError):
        status, code = status_and_code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if status == 304:
            kind = Kind.NOT_MODIFIED
        elif status == 412 or code == "PreconditionFailed":
            kind = Kind.PRECONDITION_FAILED
        elif code in CREDENTIAL_CODES:
            kind = Kind.CREDENTIALS
        elif code in NOT_FOUND_CODES or status == 404:
            kind = Kind.NOT_FOUND
        elif code in ACCESS_CODES or status == 403:
            kind = Kind.ACCESS_DENIED
        elif code in RETRYABLE_CODES or status == 429 or status >= 500:
            kind = Kind.UNAVAILABLE
        else:
            kind = Kind.OTHER
        return AwsFailure(kind, status, code, message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AwsFailure(Kind.CREDENTIALS, 0, "", str(exc))
    # Before OSError: some of these (read timeouts) are OSErrors too.
    if isinstance(exc, ConnectionError | HTTPClientError | ResponseStreamingError):
        return AwsFailure(Kind.UNREACHABLE, 0, "", str(exc))
    if isinstance(exc, BotoCoreError):
        return AwsFailure(Kind.OTHER, 0, "", str(exc))
    if isinstance(exc, OSError):
        return AwsFailure(Kind.IO, 0, "", str(exc))
    return None


def custom_endpoint(endpoint: str | None = None) -> str | None:
    """The S3 endpoint in use when it is not AWS's own: `endpoint` (a store URL's `?endpoint=`), else
    AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (which boto3 also reads by itself)."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(
    *,
    endpoint: str | None = None,
    region: str | None = None,
    total_attempts: int = 1,
    connect_timeout: float = 5.0,
    read_timeout: float = 20.0,
    max_pool_connections: int = 32,
) -> S3Client:
    """An S3 client. `endpoint` and `region` override the environment; credentials come from the environment,
    the profile or the instance role, as boto3 finds them.

    `total_attempts=1` (the default) switches botocore's own retries off, for callers that retry themselves
    (the store: one retry policy, visible in the logs, not two stacked ones). Against a custom endpoint
    (MinIO, Ceph, moto on a host:port) requests use path-style addressing: such servers rarely resolve
    bucket.host names. Raises InvalidEndpoint for an endpoint URL botocore refuses."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": max(1, total_attempts), "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if custom_endpoint(endpoint) else None,
    )
    session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
    try:
        return session.client("s3", endpoint_url=endpoint or None, config=config)
    except ValueError as exc:  # botocore rejects malformed endpoint URLs with ValueError
        raise InvalidEndpoint(str(exc)) from exc


def failure_words(exc: BaseException) -> str:
    """AWS's code and message when it answered, else what went wrong on the way: the cause kept in a message
    of the caller's own. Re-raises what is not an AWS failure at all: a bug must not read like AWS's answer."""
    failure = classify(exc)
    if failure is None:
        raise exc
    if failure.answered:
        return f"{failure.code}: {failure.message}"
    return f"{failure.kind.value}: {failure.message}"
