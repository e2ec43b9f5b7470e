"""A revision in S3: bucket, key, optional version id and eTag (checked). boto3 is imported on first use."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import structlog

from agent.errors import BundleError, BundleNotFound, BundleUnavailable, ChecksumMismatch
from agent.fetch.revision import CHUNK, FetchedBundle
from contract.models import Revision

log = structlog.get_logger("agent.fetch.s3")


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    # AWS_ENDPOINT_URL, AWS_REGION and credentials come from the environment, as boto3 reads them natively.
    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def fetch_s3(revision: Revision, bundle_path: Path) -> FetchedBundle:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    location = revision.s3
    assert location is not None
    where = f"s3://{location.bucket}/{location.key}" + (f" (version {location.version})" if location.version else "")
    params: dict[str, str] = {"Bucket": location.bucket, "Key": location.key}
    if location.version:
        params["VersionId"] = location.version
    digest = hashlib.sha256()
    try:
        response = _s3_client().get_object(**params)
        with bundle_path.open("wb") as out:
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except NoCredentialsError as exc:
        raise BundleError(f"cannot download {where}: no AWS credentials found for the agent") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = error.get("Message") or code
        if code in {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404"} or status == 404:
            raise BundleNotFound(f"{where} does not exist ({detail})") from exc
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or status == 403:
            raise BundleError(
                f"access to {where} was denied ({detail}); the agent's credentials need s3:GetObject"
                + (" and s3:GetObjectVersion" if location.version else "")
            ) from exc
        if status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout", "InternalError"}:
            raise BundleUnavailable(f"S3 could not serve {where} right now ({detail}); retry later") from exc
        raise BundleError(f"cannot download {where}: {detail}") from exc
    except (BotoCoreError, OSError) as exc:
        raise BundleUnavailable(f"cannot download {where}: {exc}") from exc
    actual_etag = str(response.get("ETag", "")).strip('"')
    if location.e_tag and location.e_tag.strip('"') != actual_etag:
        raise ChecksumMismatch(
            f"{where} has eTag {actual_etag}, but the revision pins {location.e_tag.strip(chr(34))}: the object "
            "was replaced since the revision was written; pin its version or update the eTag"
        )
    log.info("bundle.downloaded", source=where, bytes=bundle_path.stat().st_size)
    return FetchedBundle(bundle_path, location.bundle_type, digest.hexdigest())
