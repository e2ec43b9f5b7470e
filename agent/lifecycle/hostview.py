"""What the install planner may look at on the host: a read-only view, so planning changes nothing.

`DiskView` is the real host as it will be once the previous revision's files are removed; tests and
`deploy-agent validate` plan against it without side effects.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import Literal, Protocol

Kind = Literal["missing", "file", "dir", "symlink", "other"]


class FileSystemView(Protocol):
    """Read-only questions the planner asks about the host (and the unpacked bundle)."""

    def kind(self, path: Path | str) -> Kind:
        """What is at `path` itself, not following a final symlink."""
        ...

    def is_dir(self, path: Path | str) -> bool:
        """True for a folder or a symlink to one (an admin's `/var/www -> /data/www` is a folder)."""
        ...

    def children(self, path: Path | str) -> list[str]:
        ...

    def tool_exists(self, name: str) -> bool:
        ...

    def user_exists(self, name: str) -> bool:
        ...

    def group_exists(self, name: str) -> bool:
        ...


class DiskView:
    """The real host, seen as it will be once the previous revision's files are removed."""

    def __init__(self, removed: frozenset[str] = frozenset()) -> None:
        self.removed = removed

    def kind(self, path: Path | str) -> Kind:
        if str(path) in self.removed:
            return "missing"
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError:
            return "other"
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        return "other"

    def is_dir(self, path: Path | str) -> bool:
        if str(path) in self.removed:
            return False
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            return False

    def children(self, path: Path | str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def tool_exists(self, name: str) -> bool:
        return shutil.which(name) is not None

    def user_exists(self, name: str) -> bool:
        return lookup_user(name) is not None

    def group_exists(self, name: str) -> bool:
        return lookup_group(name) is not None


def resolves_inside(path: Path | str, folder: Path | str) -> bool:
    """Whether `path`, every symlink resolved, is `folder` (resolved too) or lies inside it: the one test
    for "a link of the bundle that leads out of it" (appspec, install plan, hook scripts)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root + os.sep)


def lookup_user(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else None


def lookup_group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else None
