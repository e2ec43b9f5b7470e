"""How the `file://` store reports an OSError: one StoreError in the user's terms, keeping the OS's reason.

Shared by the store itself (`file.py`) and its marker (`marker.py`), so both say the same thing for the same
failure: a permission or layout problem is a `StoreError` ("fix the configuration"), anything else is a
`StoreUnavailable` ("try again later").
"""

from __future__ import annotations

import errno
from pathlib import Path

from contract.store.base import StoreError, StoreUnavailable

#: These mean "fix the configuration", not "try again later".
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def translate(exc: OSError, action: str, path: Path | str) -> StoreError:
    """One OSError -> a StoreError saying what failed in the user's terms, keeping the OS's reason.

    `action` is a verb phrase that reads after "cannot" ("write", "create the store folder")."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"cannot {action} {path}: {reason}; run as a user that can write the store folder "
            "or fix its permissions"
        )
    if exc.errno == errno.EROFS:
        return StoreError(f"cannot {action} {path}: {reason} (the file system is read-only)")
    if exc.errno in _PERMANENT_ERRNOS:
        return StoreError(f"cannot {action} {path}: {reason}; is something else in the way of the store layout?")
    return StoreUnavailable(f"cannot {action} {path}: {reason}")
