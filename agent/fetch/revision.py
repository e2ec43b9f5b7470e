"""What every fetcher shares: the bundle's types, the fetched bytes' description, and the hooks' BUNDLE_*.

A fetcher (`local`, `s3`, `git`) brings a revision's bytes into the deployment folder as `bundle.tar`
(whatever the format, like the reference agent, reference 3.1) and describes them as a `FetchedBundle`;
`agent.fetch.fetch_bundle` picks the fetcher and checks the pinned sha256; `agent.fetch.extract` unpacks.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.errors import UsageError
from contract.models import Revision

BundleType = Literal["zip", "tar", "tgz", "directory"]
BUNDLE_TYPES: tuple[str, ...] = ("zip", "tar", "tgz", "directory")
#: The reference agent names the downloaded artifact bundle.tar whatever its format (reference 3.1).
BUNDLE_FILE_NAME = "bundle.tar"
#: Read and write size for bundle bytes.
CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchedBundle:
    """The revision's bytes on this host. For a directory bundle `path` is the source folder itself."""

    path: Path
    bundle_type: BundleType
    #: Computed while downloading, when the fetcher streamed the bytes anyway (saves reading them again).
    sha256: str | None = None


def bundle_environment(revision: Revision) -> dict[str, str]:
    """BUNDLE_* variables for hooks (reference 2.3): S3 bucket/key/version/eTag, or the Git commit."""
    if revision.s3 is not None:
        environment = {"BUNDLE_BUCKET": revision.s3.bucket, "BUNDLE_KEY": revision.s3.key}
        if revision.s3.version:
            environment["BUNDLE_VERSION"] = revision.s3.version
        if revision.s3.e_tag:
            environment["BUNDLE_ETAG"] = revision.s3.e_tag.strip('"')
        return environment
    if revision.git is not None:
        return {"BUNDLE_COMMIT": revision.git.commit}
    return {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def detect_bundle_type(path: Path) -> BundleType:
    """Guess a local bundle's type from what it is, not only from its name (used when --type is absent)."""
    if path.is_dir():
        return "directory"
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tgz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if name.endswith(".tar"):
        return "tar"
    raise UsageError(f"cannot tell what kind of bundle {path} is; pass --type zip, tar, tgz or directory")


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree at `path`, if anything is there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
