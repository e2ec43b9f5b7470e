"""What every fetcher shares: the bundle's types, the fetched bytes' description, and the hooks' BUNDLE_*.

A fetcher (`local`, `s3`, `git`) brings a revision's bytes into the deployment folder as `bundle.tar`
(whatever the format, like the reference agent, reference 3.1) and describes them as a `FetchedBundle`;
`agent.fetch.fetch_bundle` picks the fetcher and checks the pinned sha256; `agent.fetch.extract` unpacks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from agent.errors import BundleError, UsageError
from contract.wire import Revision

if TYPE_CHECKING:
    from agent.fetch.bounds import FetchBudget

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


def sha256_of(path: Path, budget: FetchBudget | None = None) -> str:
    """The file's sha256, read in chunks under `budget` (stop request, deadline, size cap). Only a regular
    file is read (`open_regular`): a FIFO or a device (`/dev/zero`) is refused instead of read forever."""
    digest = hashlib.sha256()
    if budget is not None:
        budget.step(f"computing the sha256 of {path}")
    with open_regular(path) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if budget is not None:
                budget.advance(len(chunk))
    return digest.hexdigest()


def not_a_bundle_file(path: Path | str, mode: int) -> BundleError:
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    return BundleError(f"{path} is {kind}; a bundle is a regular file (zip, tar, tgz) or a folder, so it was not read")


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file. Opened non-blocking first, so a FIFO with no
    writer cannot block the open itself, then checked on the open descriptor (no race with a swap)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise not_a_bundle_file(path, info.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


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
