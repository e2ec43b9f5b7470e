"""A revision that is a path on this host: a bundle folder, or a zip/tar/tgz file."""

from __future__ import annotations

from pathlib import Path

from agent.errors import BundleNotFound, UsageError
from agent.fetch.revision import BundleType, FetchedBundle
from contract.models import Revision


def fetch_local(revision: Revision, bundle_path: Path) -> FetchedBundle:
    assert revision.local is not None
    location = Path(revision.local.path).expanduser().absolute()
    bundle_type: BundleType = revision.local.bundle_type
    if not location.exists():
        raise BundleNotFound(f"the bundle {location} does not exist")
    if bundle_type == "directory":
        if not location.is_dir():
            raise UsageError(f"{location} is a file, but the bundle type is directory; pass its type (zip, tar, tgz)")
        return FetchedBundle(location, "directory")
    if location.is_dir():
        raise UsageError(f"{location} is a directory, but the bundle type is {bundle_type}; use type directory")
    # Like the reference agent: a symlink rather than a copy, so a large local bundle is not stored twice.
    bundle_path.symlink_to(location)
    return FetchedBundle(bundle_path, bundle_type)

