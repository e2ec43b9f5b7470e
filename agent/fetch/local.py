"""A revision that is a path on this host: a bundle folder, or a zip/tar/tgz file.

Only a regular file or a folder is a bundle: a FIFO, a device (`/dev/zero`) or a socket is refused up front
(`stat` does not block on a FIFO, opening it would), because reading one can wait forever or never end. The
size cap of `FetchLimits.max_bytes` applies to a local file as to a download. Nothing here blocks: the bytes
are read later (sha256, unpacking) in chunks under the command's `FetchBudget`.

kill -9 here leaves at most the `bundle.tar` symlink in this deployment's folder, replaced by the next fetch.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.errors import BundleNotFound, UnsafeBundle, UsageError
from agent.fetch.bounds import FetchBudget, size_text
from agent.fetch.revision import BundleType, FetchedBundle, not_a_bundle_file
from contract.wire import Revision


def fetch_local(revision: Revision, bundle_path: Path, budget: FetchBudget | None = None) -> FetchedBundle:
    assert revision.local is not None
    budget = budget or FetchBudget.unbounded()
    location = Path(revision.local.path).expanduser().absolute()
    bundle_type: BundleType = revision.local.bundle_type
    budget.step(f"reading the local bundle {location}")
    try:
        info = os.stat(location)
    except FileNotFoundError:
        raise BundleNotFound(f"the bundle {location} does not exist") from None
    except OSError as exc:
        raise BundleNotFound(f"the bundle {location} cannot be read: {exc.strerror}") from None
    is_dir = stat.S_ISDIR(info.st_mode)
    if not is_dir and not stat.S_ISREG(info.st_mode):
        raise not_a_bundle_file(location, info.st_mode)
    if bundle_type == "directory":
        if not is_dir:
            raise UsageError(f"{location} is a file, but the bundle type is directory; pass its type (zip, tar, tgz)")
        return FetchedBundle(location, "directory")
    if is_dir:
        raise UsageError(f"{location} is a directory, but the bundle type is {bundle_type}; use type directory")
    if info.st_size > budget.limits.max_bytes:
        raise UnsafeBundle(
            f"the bundle {location} is {size_text(info.st_size)}, more than the agent's limit of "
            f"{size_text(budget.limits.max_bytes)}; nothing was unpacked"
        )
    # Like the reference agent: a symlink rather than a copy, so a large local bundle is not stored twice.
    bundle_path.symlink_to(location)
    return FetchedBundle(bundle_path, bundle_type)
