"""contract/aws.py: one answer to "what does this botocore error mean?" for the store and the bundle fetcher."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from contract import aws


def client_error(status: int, code: str = "") -> ClientError:
    response = {"Error": {"Code": code, "Message": f"{code} message"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (503, "SlowDown", aws.Kind.UNAVAILABLE),
        (429, "", aws.Kind.UNAVAILABLE),
        (400, "ThrottlingException", aws.Kind.UNAVAILABLE),
        (500, "InternalError", aws.Kind.UNAVAILABLE),
        (409, "ConditionalRequestConflict", aws.Kind.UNAVAILABLE),
        (404, "NoSuchKey", aws.Kind.NOT_FOUND),
        (404, "NoSuchBucket", aws.Kind.NOT_FOUND),
        (404, "NoSuchVersion", aws.Kind.NOT_FOUND),
        (403, "AccessDenied", aws.Kind.ACCESS_DENIED),
        (403, "InvalidAccessKeyId", aws.Kind.CREDENTIALS),
        (400, "ExpiredToken", aws.Kind.CREDENTIALS),
        (412, "PreconditionFailed", aws.Kind.PRECONDITION_FAILED),
        (304, "", aws.Kind.NOT_MODIFIED),
        (400, "InvalidArgument", aws.Kind.OTHER),
    ],
)
def test_client_errors(status: int, code: str, kind: aws.Kind) -> None:
    failure = aws.classify(client_error(status, code))
    assert failure is not None
    assert failure.kind is kind
    assert failure.status == status and failure.code == (code or str(status)) and failure.answered
    assert failure.retryable == (kind is aws.Kind.UNAVAILABLE)


def test_errors_without_an_answer() -> None:
    unreachable = aws.classify(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    timeout = aws.classify(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    io = aws.classify(ConnectionResetError("reset"))
    assert unreachable is not None and unreachable.kind is aws.Kind.UNREACHABLE and unreachable.retryable
    assert timeout is not None and timeout.kind is aws.Kind.UNREACHABLE and timeout.retryable
    assert io is not None and io.kind is aws.Kind.IO and io.retryable and not io.answered
    credentials = aws.classify(NoCredentialsError())
    assert credentials is not None and credentials.kind is aws.Kind.CREDENTIALS and not credentials.answered
    invalid = aws.classify(ParamValidationError(report="bad"))
    assert invalid is not None and invalid.kind is aws.Kind.OTHER and not invalid.retryable
    assert aws.classify(KeyError("a bug of ours")) is None


def test_custom_endpoint_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert aws.custom_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:9000")
    assert aws.custom_endpoint() == "http://general:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    assert aws.custom_endpoint() == "http://s3-only:9000"
    assert aws.custom_endpoint("http://from-url:9000") == "http://from-url:9000"


def test_client_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = aws.s3_client(endpoint="http://127.0.0.1:9", total_attempts=6, read_timeout=7)
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries == {"total_max_attempts": 6, "mode": "standard"}
    assert client.meta.config.read_timeout == 7
    assert client.meta.config.s3 == {"addressing_style": "path"}
    with pytest.raises(aws.InvalidEndpoint):
        aws.s3_client(endpoint="not a url")
