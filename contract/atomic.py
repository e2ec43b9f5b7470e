"""Atomic file writes: readers, and whoever looks after a crash or a power cut, see the old file or the new one,
never a torn one.

Where it sits: under the file store (contract/store/file.py) and the agent's own files (its state file, its
installation identity, the records under a deployment root). One implementation of the dance:

1. a temporary file in the target's folder (so the rename never crosses file systems), created exclusively;
2. write, then fsync (the bytes are on disk before the name points at them);
3. rename over the target, or, create-only, hard-link to the target name (link fails if the name exists,
   so a create never replaces anything);
4. fsync the folder (the new name survives a power cut).

`durable=False` skips both fsyncs, for records that only inform people: they still never appear torn.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]


def fsync_dir(path: Path | str) -> None:
    """Make a folder's entries (names created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temporary(folder: Path, prefix: str, suffix: str, mode: int, temp_name: str | None) -> tuple[int, Path]:
    if temp_name is not None:
        # A fixed name for a file with one writer: a leftover from a crash is simply reused.
        temporary = folder / temp_name
        return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode), temporary
    for _ in range(100):
        temporary = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def write_atomic(
    path: Path,
    data: bytes | str,
    *,
    create_only: bool = False,
    durable: bool = True,
    mode: int | None = None,
    prefix: str | None = None,
    suffix: str = ".tmp",
    temp_name: str | None = None,
    before_commit: Callable[[int], None] | None = None,
) -> bool:
    """Write `data` (str is UTF-8 encoded) to `path` atomically; the folder must exist.

    Returns True, or False when `create_only` and `path` already existed (nothing is changed then).

    - `mode`: the new file's permission bits, exactly (umask does not apply). None: as `open()` would create
      it (0o666 minus the umask).
    - The temporary file is `{prefix}{random}{suffix}` in `path`'s folder; `prefix` defaults to
      `.{path.name}.`, so leftovers of a kill -9 are dot files named after their target. `temp_name` fixes
      the whole name instead (single-writer files: a leftover is overwritten next time).
    - `before_commit(fd)` runs after the data is written and before the fsync and rename (the file store
      stamps the file's mtime there).

    Raises OSError as the system reports it; the temporary file never outlives a failure."""
    payload = data.encode() if isinstance(data, str) else data
    folder = path.parent
    fd, temporary = _open_temporary(
        folder, f".{path.name}." if prefix is None else prefix, suffix, 0o666 if mode is None else mode, temp_name
    )
    linked = True
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if before_commit is not None:
                before_commit(fd)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if create_only:
            try:
                os.link(temporary, path)
            except FileExistsError:
                linked = False
            os.unlink(temporary)
        else:
            os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    if linked and durable:
        fsync_dir(folder)
    return linked
