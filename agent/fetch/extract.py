"""Unpacking a fetched bundle safely into `deployment-archive/` (the second half of DownloadBundle).

`unpack_bundle` drives an `Extractor`, which owns every rule below; the format readers (zip, tar, tgz,
directory) live in `agent.fetch.formats`, the helper threads in `agent.fetch.iothreads`.

Every extractor is our own code over `zipfile`/`tarfile`, with the same rules and no fallback to another
tool (the reference agent falls back from `unzip` to rubyzip, which writes `../` entries outside the target,
reference 3.8). Rules, for zip, tar, tgz and directory bundles alike:

- entry names must be relative and free of `..` components;
- symlinks are kept as symlinks, their target text unchanged, wherever they point (`config ->
  /etc/myapp/config.yml`, `../shared`, or nowhere yet), as the reference agent keeps them: they are created
  only after every regular file and folder is written, and no entry may sit under a name the bundle has as a
  link, so nothing is ever written through one. What a link points at is only looked at later, by the
  installer, which copies a link leading out of the bundle as a link and never follows it;
- hard links must point at a regular file extracted earlier from the same archive;
- device files, FIFOs and sockets are refused;
- entry count and total size are capped (`ExtractLimits`), checked against the archive's own headers
  before writing and against the bytes actually written while writing.

A refused bundle leaves nothing behind but a partial `deployment-archive/` inside the deployment folder,
which is removed before the error is raised.
"""

from __future__ import annotations

import errno
import grp
import io
import os
import posixpath
import pwd
import re
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

import structlog

from agent.errors import BundleError, UnsafeBundle, UsageError
from agent.fetch import formats
from agent.fetch.bounds import FetchBudget
from agent.fetch.iothreads import CREATE_FLAGS, BackgroundWriter, finish_file, write_all
from agent.fetch.revision import CHUNK, FetchedBundle, remove_path
from agent.limits import ExtractLimits

log = structlog.get_logger("agent.fetch.extract")

#: Threads that inflate and write small files while the unpacking thread parses the archive (never more than the
#: host's cores). Two: a 10,000-file, 100 MB zip unpacks and installs in 10-20 % less time than with one on two
#: cores (`bench_agent_big_bundle.py`); a third only adds contention for the GIL there.
WRITER_THREADS = 2


def unpack_bundle(fetched: FetchedBundle, archive_dir: Path, limits: ExtractLimits | None = None,
                  budget: FetchBudget | None = None) -> None:
    """Replace `archive_dir` with the bundle's contents, then unwrap a single top-level folder that holds
    the appspec (reference 1.1). On any error the partial folder is removed. `budget` is checked at every
    entry (a stop request or the command's deadline ends unpacking; kill -9 leaves a partial
    `deployment-archive/`, removed before the next unpack into it)."""
    limits = limits or ExtractLimits()
    remove_path(archive_dir)
    archive_dir.mkdir(parents=True)
    started = time.monotonic()
    extractor = Extractor(archive_dir, limits)
    extractor.budget = budget
    if budget is not None:
        budget.step(f"unpacking the {fetched.bundle_type} bundle {fetched.path.name}")
    try:
        if fetched.bundle_type != "directory":
            extractor.start_writer()
        if fetched.bundle_type == "directory":
            formats.copy_directory(extractor, fetched.path)
        elif fetched.bundle_type == "zip":
            formats.extract_zip(extractor, fetched.path)
        elif fetched.bundle_type in {"tar", "tgz"}:
            formats.extract_tar(extractor, fetched.path, compressed=fetched.bundle_type == "tgz")
        else:
            raise UsageError(f"unknown bundle type {fetched.bundle_type!r}; use zip, tar, tgz or directory")
        extractor.finish()
        _unwrap_single_folder(archive_dir)
    except OSError as exc:
        _abandon(extractor, archive_dir)
        if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
            raise BundleError(f"the disk filled up while unpacking the bundle into {archive_dir}") from exc
        raise BundleError(f"cannot unpack the bundle into {archive_dir}: {exc}") from exc
    except BaseException:
        _abandon(extractor, archive_dir)
        raise
    log.info(
        "bundle.unpacked",
        type=fetched.bundle_type,
        entries=extractor.entries,
        bytes=extractor.written,
        seconds=round(time.monotonic() - started, 3),
    )


def _abandon(extractor: Extractor, archive_dir: Path) -> None:
    """After a failure: let the writer threads finish (their own errors no longer matter), then remove the
    partial folder, so nothing is written into it after it is gone."""
    with suppress(BaseException):
        extractor.stop_writer()
    remove_path(archive_dir)


def _unwrap_single_folder(archive_dir: Path) -> None:
    entries = os.listdir(archive_dir)
    if len(entries) != 1:
        return
    only = archive_dir / entries[0]
    if only.is_symlink() or not only.is_dir():
        return
    if not any(re.search("appspec", name, re.IGNORECASE) for name in os.listdir(only)):
        return
    staging = archive_dir.with_name(archive_dir.name + ".unwrap")
    remove_path(staging)
    os.rename(only, staging)
    os.rmdir(archive_dir)
    os.rename(staging, archive_dir)


class Extractor:
    """Writes entries under one target folder, enforcing the module's rules for every bundle format.
    The format readers in `agent.fetch.formats` call `safe_name`, `count`, `make_dir`, `write_file`, `symlink`
    and `hard_link` for each entry."""

    def __init__(self, target: Path, limits: ExtractLimits) -> None:
        self.target = target
        self.target_text = str(target)
        #: Set while unpacking an archive with many small files (see `BackgroundWriter`).
        self.writer: BackgroundWriter | None = None
        self.limits = limits
        #: The command's fetch budget, checked at every entry (None: unbounded, as for `deploy-agent validate`).
        self.budget: FetchBudget | None = None
        self.entries = 0
        self.written = 0
        self.regular: set[str] = set()
        #: Names given to the writer threads since the queue was last drained: a second entry of one of them waits
        #: for the first to be written (see `_submit`), whatever came between (a symlink of that name, say).
        self.queued: set[str] = set()
        self.made_dirs: set[str] = {""}
        self.symlinks: dict[str, str] = {}
        self.dir_attrs: list[tuple[str, int | None, float | None, tuple[int, int] | None]] = []
        self.as_root = os.geteuid() == 0
        #: Names the bundle in messages ("zip bundle app.zip"); set by the format's entry point.
        self.source = "bundle"
        self.umask = _current_umask()
        self._ids: dict[tuple[str, str], int] = {}

    # -- naming and accounting

    def safe_name(self, raw: str, *, source: str) -> str | None:
        """The entry's path relative to the target, or None for the archive's own root (`./`)."""
        name = raw.replace("\\", "/") if "\\" in raw and "/" not in raw else raw
        if "\x00" in name:
            raise UnsafeBundle(f"{source}: entry {raw!r} has a NUL byte in its name")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise UnsafeBundle(f"{source}: entry {raw!r} has an absolute path; bundle entries must be relative")
        parts = [p for p in name.split("/") if p not in {"", "."}]
        if ".." in parts:
            raise UnsafeBundle(f"{source}: entry {raw!r} climbs out of the bundle with '..'")
        if not parts:
            return None
        return "/".join(parts)

    def count(self, name: str, source: str) -> None:
        if self.budget is not None:
            self.budget.check()
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnsafeBundle(
                f"{source}: more than {self.limits.max_entries} entries; raise the agent's bundle entry limit if "
                "this bundle is legitimate"
            )

    def too_big(self, source: str) -> UnsafeBundle:
        return UnsafeBundle(
            f"{source}: unpacks to more than {self.limits.max_bytes} bytes (a zip bomb, or a bundle larger than "
            "the agent's limit); nothing was installed"
        )

    # -- writing

    def ensure_parent(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent in self.made_dirs:
            return
        # Every missing ancestor must be a plain folder-to-be, never a file or a link of the bundle, so
        # os.makedirs below cannot follow a link (links only exist once `finish` runs, but be strict anyway).
        ancestor = parent
        while ancestor and ancestor not in self.made_dirs:
            if ancestor in self.regular or ancestor in self.symlinks:
                raise UnsafeBundle(
                    f"{self.source}: entry {name!r} is inside {ancestor!r}, which the bundle also has as a file "
                    "or link (writing through a link is refused)"
                )
            ancestor = posixpath.dirname(ancestor)
        os.makedirs(self.target / parent, exist_ok=True)
        while parent and parent not in self.made_dirs:
            self.made_dirs.add(parent)
            parent = posixpath.dirname(parent)

    def make_dir(self, name: str, mode: int | None, mtime: float | None, owner: tuple[int, int] | None) -> None:
        if name in self.regular or name in self.symlinks:
            raise UnsafeBundle(f"{self.source}: entry {name!r} is both a folder and a file or link in the bundle")
        self.ensure_parent(name)
        path = self.target / name
        if name not in self.made_dirs:
            with suppress(FileExistsError):
                os.mkdir(path)
            self.made_dirs.add(name)
        # Modes and times are applied at the end, deepest first, so a read-only folder can still be filled.
        self.dir_attrs.append((name, mode, mtime, owner))

    def write_file(
        self,
        name: str,
        stream: IO[bytes],
        *,
        mode: int | None,
        mtime: float | None,
        owner: tuple[int, int] | None,
        source: str,
        size: int | None = None,
    ) -> None:
        """Write one regular file from `stream` (exactly `size` bytes when given, else to its end)."""
        if name in self.made_dirs:
            raise UnsafeBundle(f"{source}: entry {name!r} is both a folder and a file in the bundle")
        self.ensure_parent(name)
        self.symlinks.pop(name, None)
        final_mode = mode if mode is not None else 0o666 & ~self.umask
        if size is not None and size <= CHUNK and self.writer is not None:
            data = stream.read(size)
            if len(data) != size:
                raise BundleError(f"{source}: entry {name!r} is cut short; the bundle is truncated")
            if self.written + size > self.limits.max_bytes:
                raise self.too_big(source)
            self.written += size
            self._submit(name, data, final_mode, mtime, owner)
            return
        self.drain_writer()
        fd = os.open(f"{self.target_text}/{name}", CREATE_FLAGS, 0o600)
        try:
            budget = self.limits.max_bytes - self.written
            remaining = size if size is not None else -1
            while remaining:
                chunk = stream.read(CHUNK if remaining < 0 else min(remaining, CHUNK))
                if not chunk:
                    if remaining > 0:
                        raise BundleError(f"{source}: entry {name!r} is cut short; the bundle is truncated")
                    break
                remaining -= len(chunk) if remaining > 0 else 0
                budget -= len(chunk)
                if budget < 0:
                    raise self.too_big(source)
                write_all(fd, chunk)
            self.written = self.limits.max_bytes - budget
            finish_file(fd, final_mode, mtime, owner)
        finally:
            os.close(fd)
        self.regular.add(name)

    def write_member(self, name: str, read: Callable[[], bytes], *, size: int, mode: int | None, mtime: float | None,
                     source: str) -> None:
        """Write one regular file of `size` bytes (at most `CHUNK`) that `read()` returns, checked and complete:
        on a writer thread when there are any (see `BackgroundWriter.submit`), else here."""
        if self.writer is None:
            self.write_file(name, io.BytesIO(read()), mode=mode, mtime=mtime, owner=None, source=source, size=size)
            return
        if name in self.made_dirs:
            raise UnsafeBundle(f"{source}: entry {name!r} is both a folder and a file in the bundle")
        self.ensure_parent(name)
        self.symlinks.pop(name, None)
        if self.written + size > self.limits.max_bytes:
            raise self.too_big(source)
        self.written += size
        final_mode = mode if mode is not None else 0o666 & ~self.umask
        self._submit(name, read, final_mode, mtime, None)

    def _submit(self, name: str, data: bytes | Callable[[], bytes], mode: int, mtime: float | None,
                owner: tuple[int, int] | None) -> None:
        """Queue a small file for the writer threads. A name queued since the last drain waits for what is queued:
        with several writers the later entry could otherwise be written first, and the earlier one win."""
        if name in self.queued:
            self.drain_writer()
        assert self.writer is not None
        self.writer.submit(f"{self.target_text}/{name}", data, mode, mtime, owner)
        self.queued.add(name)
        self.regular.add(name)

    def drain_writer(self) -> None:
        """Wait until every queued file is written (raising the first error a writer hit)."""
        if self.writer is not None:
            self.writer.drain()
        self.queued.clear()

    def cancel_writer(self) -> None:
        """After a failure: drop what the writer threads have queued, and stop them."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.cancel()

    def hard_link(self, name: str, link_target_raw: str, source: str) -> None:
        self.drain_writer()
        if link_target_raw.startswith("/") or ".." in link_target_raw.replace("\\", "/").split("/"):
            raise UnsafeBundle(f"{source}: hard link {name!r} points outside the bundle ({link_target_raw!r})")
        link_target = self.safe_name(link_target_raw, source=source)
        if link_target is None or link_target not in self.regular:
            raise UnsafeBundle(
                f"{source}: hard link {name!r} -> {link_target_raw!r} does not point at a file extracted earlier "
                "from the same bundle"
            )
        self.ensure_parent(name)
        path = self.target / name
        if path.is_symlink() or path.exists():
            path.unlink()
        os.link(self.target / link_target, path, follow_symlinks=False)
        self.regular.add(name)

    def symlink(self, name: str, link_target: str, source: str) -> None:
        # Any target is accepted, absolute or outside the bundle or dangling: the link is data, installed
        # as a link. Safety comes from never writing or reading through it (see `ensure_parent`, `finish`).
        if "\x00" in link_target:
            raise UnsafeBundle(f"{source}: symlink {name!r} has a NUL byte in its target")
        if not link_target:
            raise UnsafeBundle(f"{source}: symlink {name!r} has an empty target")
        if name in self.made_dirs:
            raise UnsafeBundle(f"{source}: entry {name!r} is both a folder and a symlink in the bundle")
        self.regular.discard(name)
        self.symlinks[name] = link_target

    def finish(self) -> None:
        """Create the symlinks (after every file, so nothing was written through one; `ensure_parent` refuses
        a link under a name that is itself a link), then set folder modes and times deepest first."""
        self.stop_writer()
        for name, link_target in self.symlinks.items():
            self.ensure_parent(name)
            path = self.target / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            os.symlink(link_target, path)
        for name, mode, mtime, owner in sorted(self.dir_attrs, key=lambda item: item[0].count("/"), reverse=True):
            path = self.target / name
            if owner is not None:
                os.lchown(path, *owner)
            if mode is not None:
                os.chmod(path, mode)
            if mtime is not None:
                os.utime(path, (mtime, mtime))

    def start_writer(self) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if self.writer is None and cpus > 1:
            self.writer = BackgroundWriter(workers=min(cpus, WRITER_THREADS))

    def stop_writer(self) -> None:
        """Wait for queued files and stop the threads; raises an error a thread hit."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.drain()
            finally:
                writer.close()

    # -- ownership, like `tar -p` run as root (names first, then numeric ids)

    def owner_of(self, uname: str, gname: str, uid: int, gid: int) -> tuple[int, int] | None:
        if not self.as_root:
            return None
        return self._lookup("u", uname, uid), self._lookup("g", gname, gid)

    def _lookup(self, kind: str, name: str, fallback: int) -> int:
        key = (kind, name)
        if not name:
            return fallback
        if key not in self._ids:
            try:
                self._ids[key] = pwd.getpwnam(name).pw_uid if kind == "u" else grp.getgrnam(name).gr_gid
            except KeyError:
                self._ids[key] = fallback
        return self._ids[key]

    def file_mode(self, mode: int) -> int:
        return mode & 0o7777 if self.as_root else mode & 0o777 & ~self.umask


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
