"""A revision in S3: bucket, key, optional version id and eTag (checked). The client and the meaning of a
failure come from contract/aws.py (shared with the S3 store), which imports boto3 on first use.

Bounded: the request and the body are read in a worker thread (`FetchBudget.run_watched`) while the command's
thread checks the budget, so a stop, the command's deadline, a stall (an endpoint trickling 50 B/s) or more
bytes than `FetchLimits.max_bytes` end the download within a fraction of a second; the connection is then shut
down to break the worker's read. Sockets also time out per read (`READ_TIMEOUT_SECONDS`).

kill -9 mid-download leaves a partial `bundle.tar` in this deployment's folder; it is never unpacked (the
command is reported FailedAfterRestart at the next start) and goes with the folder when old revisions are pruned.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from pathlib import Path
from typing import Any

import structlog

from agent.errors import BundleError, BundleNotFound, BundleUnavailable, ChecksumMismatch
from agent.fetch.bounds import FetchBudget
from agent.fetch.revision import FetchedBundle
from contract import aws
from contract.wire import Revision

log = structlog.get_logger("agent.fetch.s3")

#: Each read of the body: small enough that progress and the size cap are seen often.
READ_CHUNK = 256 << 10
#: A socket read that gets nothing for this long fails (botocore then retries the request).
READ_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 20.0


def fetch_s3(revision: Revision, bundle_path: Path, budget: FetchBudget | None = None) -> FetchedBundle:
    location = revision.s3
    assert location is not None
    budget = budget or FetchBudget.unbounded()
    where = f"s3://{location.bucket}/{location.key}" + (f" (version {location.version})" if location.version else "")
    digest = hashlib.sha256()
    budget.step(f"downloading {where}", network=True)
    opened: list[Any] = []

    def download(aborted: threading.Event) -> Any:
        # AWS_ENDPOINT_URL, AWS_REGION and credentials come from the environment, as boto3 reads them natively.
        # botocore retries for us here (standard mode, 5 retries); the budget bounds the whole of it.
        client = aws.s3_client(total_attempts=6, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                               read_timeout=READ_TIMEOUT_SECONDS)
        if location.version:
            response = client.get_object(Bucket=location.bucket, Key=location.key, VersionId=location.version)
        else:
            response = client.get_object(Bucket=location.bucket, Key=location.key)
        body = response["Body"]
        opened.append(body)
        if aborted.is_set():
            return response
        budget.total = int(response.get("ContentLength") or 0) or None
        with body, bundle_path.open("wb") as out:
            while chunk := body.read(READ_CHUNK):
                if aborted.is_set():
                    break  # the watching thread has given up: write nothing more
                digest.update(chunk)
                out.write(chunk)
                budget.count(len(chunk))  # the watching thread checks the cap, the stall and the deadline
                if budget.received > budget.limits.max_bytes:
                    break
        return response

    try:
        response = budget.run_watched(download, abort=lambda: _shut(opened))
        budget.advance(0)  # the size cap, for a body that ended past it
    except aws.InvalidEndpoint as exc:
        raise BundleError(f"cannot download {where}: the S3 endpoint is not usable: {exc}") from exc
    except BundleError:
        raise
    except Exception as exc:
        failure = aws.classify(exc)
        if failure is None:
            raise
        raise _bundle_error(failure, where, versioned=bool(location.version)) from exc
    actual_etag = str(response.get("ETag", "")).strip('"')
    if location.e_tag and location.e_tag.strip('"') != actual_etag:
        raise ChecksumMismatch(
            f"{where} has eTag {actual_etag}, but the revision pins {location.e_tag.strip(chr(34))}: the object "
            "was replaced since the revision was written; pin its version or update the eTag"
        )
    log.info("bundle.downloaded", source=where, bytes=bundle_path.stat().st_size)
    return FetchedBundle(bundle_path, location.bundle_type, digest.hexdigest())


def _shut(opened: list[Any]) -> None:
    """Break a read blocked on the body's socket by shutting the connection down. Closing the body from this
    thread would wait for the reader's lock, and closing a socket does not wake a thread blocked in recv; the
    worker sees the error, or `aborted`, and closes the body itself."""
    for body in opened:
        raw = getattr(body, "_raw_stream", None)
        candidates = [
            getattr(getattr(raw, "_connection", None), "sock", None),
            getattr(getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None),
        ]
        for sock in candidates:
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _bundle_error(failure: aws.AwsFailure, where: str, *, versioned: bool) -> BundleError:
    """The agent's error for a failed download, by what contract/aws.py says the failure is."""
    if failure.kind is aws.Kind.CREDENTIALS and not failure.answered:
        return BundleError(f"cannot download {where}: no AWS credentials found for the agent")
    if failure.kind is aws.Kind.NOT_FOUND:
        return BundleNotFound(f"{where} does not exist ({failure.message})")
    if failure.kind in (aws.Kind.ACCESS_DENIED, aws.Kind.CREDENTIALS):
        return BundleError(
            f"access to {where} was denied ({failure.message}); the agent's credentials need s3:GetObject"
            + (" and s3:GetObjectVersion" if versioned else "")
        )
    if failure.kind is aws.Kind.UNAVAILABLE:
        return BundleUnavailable(f"S3 could not serve {where} right now ({failure.message}); retry later")
    if failure.retryable:
        return BundleUnavailable(f"cannot download {where}: {failure.message}")
    return BundleError(f"cannot download {where}: {failure.message}")
