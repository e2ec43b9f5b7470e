"""Bringing a revision onto this host: fetch its bytes (`local`, `s3`, `git`), check them, unpack them.

The DownloadBundle step of the lifecycle (reference 3.2, 3.7). `fetch_bundle` puts the revision's bytes in
the deployment folder (as `bundle.tar`, whatever the format, like the reference agent) and checks the
pinned sha256 / S3 eTag before anything is unpacked; `unpack_bundle` (agent/fetch/extract.py) turns it into
`deployment-archive/` under the rules written there.

Every step is bounded and interruptible by the command's `FetchBudget` (agent/fetch/bounds.py).

Importing this package loads neither boto3 nor GitPython: each fetcher imports its library on first use.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import ChecksumMismatch, UsageError
from agent.fetch.bounds import FetchBudget, FetchStopped, FetchTimedOut
from agent.fetch.extract import unpack_bundle
from agent.fetch.git import fetch_git
from agent.fetch.local import fetch_local
from agent.fetch.revision import (
    BUNDLE_FILE_NAME,
    BUNDLE_TYPES,
    BundleType,
    FetchedBundle,
    bundle_environment,
    detect_bundle_type,
    remove_path,
    sha256_of,
)
from agent.fetch.s3 import fetch_s3
from agent.limits import ExtractLimits, FetchLimits
from contract.wire import Revision


def fetch_bundle(revision: Revision, deployment_dir: Path, *, git_cache_dir: Path,
                 budget: FetchBudget | None = None) -> FetchedBundle:
    """Bring the revision's bytes into `deployment_dir` and verify them. Raises a `BundleError`; every step
    runs under `budget` (agent/fetch/bounds.py: stop request, deadline, stall, size cap)."""
    budget = budget or FetchBudget.unbounded()
    deployment_dir.mkdir(parents=True, exist_ok=True)
    bundle_path = deployment_dir / BUNDLE_FILE_NAME
    remove_path(bundle_path)
    if revision.s3 is not None:
        fetched = fetch_s3(revision, bundle_path, budget)
    elif revision.git is not None:
        fetched = fetch_git(revision, bundle_path, git_cache_dir, budget)
    else:
        fetched = fetch_local(revision, bundle_path, budget)
    if revision.sha256 is not None:
        if fetched.bundle_type == "directory":
            raise UsageError("a sha256 can only be checked for a bundle file, not for a directory bundle")
        actual = fetched.sha256 or sha256_of(fetched.path, budget)
        if actual != revision.sha256:
            raise ChecksumMismatch(
                f"the bundle's sha256 is {actual}, but the revision pins {revision.sha256}: the bundle at the "
                "source changed or is not the one the revision names; nothing was unpacked"
            )
        fetched = FetchedBundle(fetched.path, fetched.bundle_type, actual)
    return fetched


__all__ = [
    "BUNDLE_FILE_NAME",
    "BUNDLE_TYPES",
    "BundleType",
    "ExtractLimits",
    "FetchBudget",
    "FetchLimits",
    "FetchStopped",
    "FetchTimedOut",
    "FetchedBundle",
    "bundle_environment",
    "detect_bundle_type",
    "fetch_bundle",
    "sha256_of",
    "unpack_bundle",
]
