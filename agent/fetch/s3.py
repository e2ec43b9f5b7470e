"""A revision in S3: bucket, key, optional version id and eTag (checked). The client and the meaning of a
failure come from contract/aws.py (shared with the S3 store), which imports boto3 on first use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import structlog

from agent.errors import BundleError, BundleNotFound, BundleUnavailable, ChecksumMismatch
from agent.fetch.revision import CHUNK, FetchedBundle
from contract import aws
from contract.models import Revision

log = structlog.get_logger("agent.fetch.s3")


def fetch_s3(revision: Revision, bundle_path: Path) -> FetchedBundle:
    location = revision.s3
    assert location is not None
    where = f"s3://{location.bucket}/{location.key}" + (f" (version {location.version})" if location.version else "")
    digest = hashlib.sha256()
    try:
        # AWS_ENDPOINT_URL, AWS_REGION and credentials come from the environment, as boto3 reads them natively.
        # botocore retries for us here (standard mode, 5 retries) with its default 60 s timeouts.
        client = aws.s3_client(total_attempts=6, connect_timeout=60.0, read_timeout=60.0)
        if location.version:
            response = client.get_object(Bucket=location.bucket, Key=location.key, VersionId=location.version)
        else:
            response = client.get_object(Bucket=location.bucket, Key=location.key)
        with bundle_path.open("wb") as out:
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except aws.InvalidEndpoint as exc:
        raise BundleError(f"cannot download {where}: the S3 endpoint is not usable: {exc}") from exc
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
