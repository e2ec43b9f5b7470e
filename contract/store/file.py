"""`file://DIR`: the embedded store, one file per key under a folder, shared by every process on one machine.

Where it sits: the default backend behind `open_store`, used by the demo, most tests, and any single-machine
setup where the reconciler and the agents run side by side.

How it stays correct with many agents and one reconciler writing at once:

- **Atomic writes.** A value is written to a temporary file in the key's folder, fsynced, renamed over the
  key, and the folder is fsynced. Readers see the old bytes or the new bytes, never a torn file, even after a
  power cut. Files are never modified in place, so an open file's bytes always match its `fstat`.
- **Compare-and-swap across processes.** Writers take an exclusive `flock` on one of 64 lock stripes
  (`DIR/.locks/NN`, chosen by a hash of the key) and a thread lock for the same stripe (flock does not
  exclude threads sharing one open file). The check and the rename happen under the lock. Readers take no
  lock. Stripes keep 10,000 agents each writing their own status from queueing behind one global lock.
- **Versions come from `stat`, not from content.** A version is `mtime_ns.size.inode` of the file. Listing
  10,000 keys with versions then costs one `stat` per key and reads no file, which is what lets the
  reconciler re-read only the statuses that changed. A content hash would be just as safe for CAS but would
  read every object on every listing. Stat alone is not safe on its own: an inode freed by a rename can be
  reused, and kernels stamp mtimes from a coarse clock, so two quick writes of the same size could look
  identical and fool a compare-and-swap (ABA). The writer closes that gap: under the stripe lock it sets
  the new file's mtime to `max(now, previous mtime + 1ns)` (stepping up to whole seconds on file systems
  that store coarser times), so a key's version never repeats while the key exists.

Keys are `/`-separated relative paths; no segment may be empty, `.`, `..`, or start with a dot (dot files
are this backend's temporary and lock files, and listing skips them).

Who creates the store, and why a vanished folder is an outage, not an empty fleet: a store is a folder with
a marker file, `DIR/.fleetshift-store`, written once by a writer and checked by every operation afterwards;
the rules are in `contract/store/marker.py`.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import unquote

from contract.atomic import fsync_dir, write_atomic
from contract.store.base import (
    InvalidStoreURL,
    ObjectVersion,
    PreconditionFailed,
    StoredObject,
    StoreError,
    check_key,
    read_limit,
)
from contract.store.marker import StoreMarker
from contract.store.oserrors import translate as _translate

LOCK_DIR = ".locks"
LOCK_STRIPES = 64
TEMP_PREFIX = ".tmp-"
#: Steps tried when the file system rounds the mtime we set (ns, then µs, ms, s, 2 s for FAT-like systems).
_MTIME_STEPS_NS = (1, 1_000, 1_000_000, 1_000_000_000, 2_000_000_000)


def path_from_url(url: str) -> Path:
    """`file:///abs/dir` (or `file://localhost/abs/dir`) -> /abs/dir; `file://~/dir` -> in the home folder;
    `file://./dir`, `file://../dir`, `file://.hidden/dir` -> relative to the working directory.

    Anything else between `file://` and the next `/` is a host name, and a file store cannot live on another
    host: `file://tmp/x` is almost always `file:///tmp/x` with a slash missing, and reading it as the relative
    folder `tmp/x` would quietly put the store somewhere else than the other side looks. So it is refused,
    showing the three-slash form."""
    if not url.startswith("file://"):
        raise InvalidStoreURL(f"not a file store URL: {url!r} (expected file:///path/to/dir)")
    rest = unquote(url[len("file://") :].split("?", 1)[0])
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest:
        raise InvalidStoreURL(f"the store URL {url!r} names no folder: write file:///path/to/dir")
    if not rest.startswith(("/", ".", "~")):
        host = rest.split("/", 1)[0]
        raise InvalidStoreURL(
            f"the store URL {url!r} names a host ({host!r}), but a file store is a folder on this machine: "
            f"write file:///{rest} (three slashes) for the folder /{rest}, or file://./{rest} for a folder "
            "relative to the working directory"
        )
    return Path(rest).expanduser()


def missing_folder(store: object) -> Path | None:
    """The folder of a file store opened with `create=False` that holds no store yet (it does not exist, or
    is empty and unmarked, like the mount point of a share that is not mounted), else None.

    Readers use it to say "no store at PATH yet: nothing has been deployed there" rather than showing an
    empty fleet without a word (a mistyped path looks exactly like that)."""
    store = getattr(store, "inner", store)  # under a SealedStore
    if isinstance(store, FileStore) and store.store_id is None and store.probe() in ("missing", "empty"):
        return store.root
    return None


def _read_to_end(fd: int, size: int, limit: int) -> bytes:
    """The file's bytes, reading up to `limit + 1`. Files are replaced, never written in place, so the first read
    of `size + 1` bytes (a buffer the size of the file, not of the read limit) is almost always all of it; a
    short read or a file that grew anyway (a hand edit in place) is read on until its end or past the limit."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    chunks = [data]
    total = len(data)
    while total <= limit:
        chunk = os.read(fd, min(limit + 1 - total, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


#: How a key's file is opened for reading.
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
#: How `read_folders` opens a file by name, having not listed it: not through a symbolic link, and without waiting
#: for a writer should it be a named pipe (either is then left out, as a listing leaves it out).
_NAMED_FLAGS = _READ_FLAGS | os.O_NOFOLLOW | os.O_NONBLOCK
#: What `O_NOFOLLOW` gives for a symbolic link: ELOOP on Linux, EMLINK on FreeBSD.
_NOT_FOLLOWED = frozenset({errno.ELOOP, errno.EMLINK})
#: What opening a socket gives (on Linux).
_NOT_OPENED = frozenset({errno.ENXIO})
#: How long a read by name waits for a lease's holder: past the kernel's own default limit (45 s).
_LEASE_WAIT = 60.0


def version_of(info: os.stat_result) -> str:
    return f"{info.st_mtime_ns:x}.{info.st_size:x}.{info.st_ino:x}"


class FileStore:
    """The `Store` protocol over a local folder. Safe to share between threads and between processes."""

    #: A local folder: reads are fast and need no threads.
    local = True

    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create=True` (writers) creates the store or adopts one from before the marker; `create=False`
        (readers) never writes the marker (see contract/store/marker.py)."""
        self.url = url
        self.root = path_from_url(url)
        self.create = create
        self._stripe_locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._lock_fds: dict[int, int] = {}
        self._stale_lock_fds: builtins.list[int] = []
        self._lock_fds_guard = threading.Lock()
        self._pid = os.getpid()
        self._marker = StoreMarker(
            self.root, create=create, temp_prefix=TEMP_PREFIX, on_replaced=self._marker_replaced
        )
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the store path {self.root} exists but is not a folder")
        try:
            self._marker.open()
        except OSError as exc:
            raise _translate(exc, "open the store folder", self.root) from exc

    @property
    def store_id(self) -> str | None:
        """The id in the store's marker, once this object has seen it (None: a reader of an unmarked folder)."""
        return self._marker.store_id

    def probe(self) -> str:
        """What the folder holds now: "marked", "missing", "empty", "legacy" or "foreign" (StoreMarker.probe)."""
        return self._marker.probe()

    def _marker_replaced(self) -> None:
        """The same store, restored or remounted: lock files opened before may be other files now."""
        with self._lock_fds_guard:
            self._stale_lock_fds.extend(self._lock_fds.values())
            self._lock_fds = {}

    def _check(self) -> bool:
        """Is the store still there? (StoreMarker.check: StoreUnavailable once a marker seen has gone.)"""
        return self._marker.check()

    def _writable(self) -> None:
        """Before a write: StoreUnavailable if the store vanished, StoreMissing for a reader's empty folder."""
        self._marker.writable()

    def __repr__(self) -> str:
        return f"FileStore({self.url!r})"

    # ----------------------------------------------------------------------------------------------
    # Reads: no lock, one stat (and one read when the object changed)

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        found = self._read(os.path.join(self.root, check_key(key)), key, if_version_not)
        self._check()  # after the read: "absent" from a folder that vanished meanwhile is an outage
        return found

    def get_many(self, keys: Sequence[str]) -> dict[str, StoredObject | None]:
        """`get` of every key, checking the store's marker once after the batch instead of after each read
        (contract/store/bulk.py says why)."""
        base = os.path.join(self.root, "")
        found = {key: self._read(base + check_key(key), key, None) for key in keys}
        self._check()
        return found

    def read_folders(
        self,
        prefix: str,
        names: Sequence[str],
        subfolders: Sequence[str] = (),
        keep: Callable[[str], bool] = lambda key: True,
    ) -> builtins.list[StoredObject]:
        """For every folder directly under `prefix`, its files named in `names` and the files directly in its
        `subfolders`, that `keep` accepts, read and sorted by key (contract/store/bulk.py, which checks the
        arguments). Named files are opened by name, without listing their folder: on a cold read of `hosts/` that is
        a `scandir` of each host's folder saved, a quarter of the read's system calls (issue 18). Dot files, symbolic
        links and what is not a regular file are left out, as `list` leaves them out, but a host folder the reader
        may search and not list is read here where `list` fails (the next, listing pass says so)."""
        folder_part = prefix.rstrip("/")
        if folder_part:
            check_key(folder_part)
        base = os.path.join(self.root, folder_part) if folder_part else os.fspath(self.root)
        try:
            with os.scandir(base) as entries:
                # Sorted as their keys sort: a folder's keys all start with its name and a slash.
                folders = sorted((entry.name for entry in entries
                                  if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)),
                                 key=lambda name: f"{name}/")
        except (FileNotFoundError, NotADirectoryError):
            folders = []
        except OSError as exc:
            raise _translate(exc, "list", base) from exc
        # What each folder holds that is wanted, in key order: a subfolder as its name and a slash.
        wanted = sorted({*names, *(f"{name}/" for name in subfolders)})
        key_prefix = f"{folder_part}/" if folder_part else ""
        found: builtins.list[StoredObject] = []
        for folder in folders:
            key_base = f"{key_prefix}{folder}/"
            path_base = f"{base}/{folder}/"
            for name in wanted:
                if name.endswith("/"):
                    # No slash after the name: a link there must be opened as the link, not resolved.
                    found.extend(self._read_folder(path_base + name[:-1], key_base + name, keep))
                elif keep(key_base + name):
                    stored = self._read_named(path_base + name, key_base + name)
                    if stored is not None:
                        found.append(stored)
        self._check()  # after the reads: nothing found in a folder that vanished is an outage
        return found

    def _read_folder(self, folder: str, key_base: str, keep: Callable[[str], bool]) -> builtins.list[StoredObject]:
        """The files directly in `folder` that `keep` accepts, read, sorted by key; none when it does not exist or is
        not a folder (a symbolic link to one included: a listing does not follow it, and neither does this)."""
        if not os.access(folder, os.F_OK, effective_ids=True):
            # The usual answer for a host's conflicts/, given without an exception: a third of the cost of a failed
            # open, ten thousand times per cold read. With the ids (and capabilities) `open` uses, not the real ones.
            # (Followed, a link may say yes; it is then refused below.)
            return []
        try:
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            if exc.errno in _NOT_FOLLOWED:
                return []
            raise _translate(exc, "list", folder) from exc
        try:
            with os.scandir(folder_fd) as entries:
                files = sorted(entry.name for entry in entries
                               if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
                               and keep(key_base + entry.name))
            # Opened inside the folder just listed, so a link put in its place meanwhile is not followed either.
            read = (self._read_named(name, key_base + name, folder_fd, shown=f"{folder}/{name}") for name in files)
            return [stored for stored in read if stored is not None]
        except OSError as exc:
            raise _translate(exc, "list", folder) from exc
        finally:
            os.close(folder_fd)

    def _read(self, path: str, key: str, if_version_not: str | None) -> StoredObject | None:
        try:
            if if_version_not is not None:
                current = version_of(os.stat(path))
                if current == if_version_not:
                    return StoredObject(key, b"", current)
            fd = os.open(path, _READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _translate(exc, "read", path) from exc
        return self._read_open(fd, path, key)

    def _read_named(
        self, path: str, key: str, dir_fd: int | None = None, *, shown: str | None = None
    ) -> StoredObject | None:
        """A file opened by name, not listed first (`read_folders`): absent when it is a symbolic link, a socket or
        anything but a regular file, without waiting on a named pipe (which is opened, though never read: a writer
        blocked opening it goes on and finds no reader). `shown` is its path in messages when `path` is relative to
        `dir_fd`."""
        fd = self._open_named(path, dir_fd, shown or path)
        return None if fd is None else self._read_open(fd, shown or path, key)

    @staticmethod
    def _open_named(path: str, dir_fd: int | None, shown: str) -> int | None:
        """`path` opened with `_NAMED_FLAGS`, or None when it is absent, a link or a socket. A file under a lease (a
        file server's oplock or delegation) refuses a non-blocking open, and each refusal asks the holder to let go:
        it is tried again until it opens, as `get`'s blocking open waits, or until the kernel would have broken the
        lease itself (`/proc/sys/fs/lease-break-time`, 45 s by default). Never blocking, so a named pipe put there
        meanwhile cannot hang the read."""
        deadline: float | None = None
        while True:
            try:
                return os.open(path, _NAMED_FLAGS, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                if exc.errno in _NOT_FOLLOWED or exc.errno in _NOT_OPENED:
                    return None  # a symbolic link or a socket, which a listing leaves out too
                deadline = deadline or time.monotonic() + _LEASE_WAIT
                if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                    raise _translate(exc, "read", shown) from exc
            time.sleep(0.01)

    @staticmethod
    def _read_open(fd: int, path: str, key: str) -> StoredObject | None:
        """The object in the open file `fd` (closed here), None unless it is a regular file."""
        limit = read_limit(key)
        try:
            # The version of the very file we read: a rename after a stat cannot mismatch them.
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_size > limit:
                return StoredObject(key, b"", version_of(info), oversize=info.st_size)
            data = _read_to_end(fd, info.st_size, limit)
        except OSError as exc:
            raise _translate(exc, "read", path) from exc
        finally:
            os.close(fd)
        if len(data) > limit:
            return StoredObject(key, b"", version_of(info), oversize=len(data))
        return StoredObject(key, data, version_of(info))

    def list(self, prefix: str) -> list[ObjectVersion]:
        folder_part, _, name_start = prefix.rpartition("/")
        if folder_part:
            check_key(folder_part)
        folder = self.root / folder_part if folder_part else self.root
        key_base = f"{folder_part}/" if folder_part else ""
        found: list[ObjectVersion] = []

        def listed(key: str, entry: os.DirEntry[str]) -> None:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                return  # deleted between readdir and stat
            found.append(ObjectVersion(key, version_of(info)))

        try:
            self._walk(folder, key_base, name_start, listed)
        except OSError as exc:
            raise _translate(exc, "list", folder) from exc
        self._check()  # after the listing: an empty one from a folder that vanished is an outage
        found.sort(key=lambda item: item.key)
        return found

    @staticmethod
    def _walk(
        folder: Path | str, key_base: str, name_start: str, visit: Callable[[str, os.DirEntry[str]], None]
    ) -> None:
        """`visit(key, entry)` for every file under `folder` whose name at the top starts with `name_start`,
        skipping dot files (this backend's temporary and lock files) and whatever is neither file nor folder."""
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.startswith(name_start):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    FileStore._walk(entry.path, f"{key_base}{name}/", "", visit)
                elif entry.is_file(follow_symlinks=False):
                    visit(key_base + name, entry)

    # ----------------------------------------------------------------------------------------------
    # Writes: under the key's stripe lock

    def put(self, key: str, data: bytes) -> str:
        path = self.root / check_key(key)
        with self._locked(key, path):
            return self._replace(path, data, self._current(path))

    def put_if_absent(self, key: str, data: bytes) -> str:
        path = self.root / check_key(key)
        with self._locked(key, path):
            if self._current(path) is not None:
                raise PreconditionFailed(f"{key} already exists")
            return self._replace(path, data, None)

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        path = self.root / check_key(key)
        with self._locked(key, path):
            current = self._current(path)
            if current is None:
                raise PreconditionFailed(f"{key} does not exist (expected version {version})")
            if version_of(current) != version:
                raise PreconditionFailed(f"{key} changed: version {version_of(current)}, expected {version}")
            return self._replace(path, data, current)

    def delete(self, key: str) -> None:
        path = self.root / check_key(key)
        if not self._check() and self.probe() != "legacy":
            return  # nothing can be stored in a store that does not exist, and a reader must not create it
        with self._locked(key, path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise _translate(exc, "delete", path) from exc
            with suppress(OSError):
                fsync_dir(path.parent)

    # ----------------------------------------------------------------------------------------------
    # Internals

    def _current(self, path: Path) -> os.stat_result | None:
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _translate(exc, "read", path) from exc
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{path} is in the way of a store key: it is not a regular file")
        return info

    def _replace(self, path: Path, data: bytes, previous: os.stat_result | None) -> str:
        """Temp file, fsync, rename, fsync the folder (contract/atomic.py). Called with the stripe lock held."""
        stamped: list[os.stat_result] = []
        try:
            self._make_key_dirs(path.parent)
            write_atomic(
                path,
                data,
                # Readable by the other side (reconciler and agents may run as different users).
                mode=0o644,
                prefix=TEMP_PREFIX,
                suffix="",
                before_commit=lambda fd: stamped.append(self._stamp(fd, previous)),
            )
        except OSError as exc:
            raise _translate(exc, "write", path) from exc
        return version_of(stamped[0])

    @staticmethod
    def _stamp(fd: int, previous: os.stat_result | None) -> os.stat_result:
        """Give the new file an mtime strictly after the one it replaces, so versions never repeat (see the
        module docstring: inode reuse plus a coarse clock would otherwise allow ABA)."""
        floor = previous.st_mtime_ns if previous is not None else -1
        wanted = max(time.time_ns(), floor + 1)
        for step in _MTIME_STEPS_NS:
            os.utime(fd, ns=(wanted, wanted))
            info = os.fstat(fd)
            if info.st_mtime_ns > floor:
                return info
            wanted = max(wanted, floor) + step
        raise StoreError("the store's file system does not keep modification times; use another folder")

    def _make_key_dirs(self, folder: Path) -> None:
        """The folders between the store folder and a key, never the store folder itself: a write to a store
        whose folder vanished fails (ENOENT: StoreUnavailable) instead of re-creating it empty."""
        probe = self.root
        for part in folder.relative_to(self.root).parts:
            probe = probe / part
            try:
                os.mkdir(probe)
            except FileExistsError:
                continue
            with suppress(OSError):
                fsync_dir(probe.parent)

    @contextmanager
    def _locked(self, key: str, path: Path) -> Iterator[None]:
        """The stripe lock, with the marker checked before the lock file is opened, again under the lock, and
        after the write: a write that may have gone into a folder standing in for the store is reported as
        an outage, never as done."""
        self._writable()
        stripe = zlib.crc32(key.encode()) % LOCK_STRIPES
        with self._stripe_locks[stripe]:
            fd = self._lock_fd(stripe)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                self._forget_lock_fd(stripe)
                raise _translate(exc, "lock", path) from exc
            try:
                self._writable()
                yield
            finally:
                with suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
        self._check()

    def _forget_lock_fd(self, stripe: int) -> None:
        """A lock file that failed (a stale handle on a remounted share) is opened afresh next time."""
        with self._lock_fds_guard:
            fd = self._lock_fds.pop(stripe, None)
            if fd is not None:
                self._stale_lock_fds.append(fd)

    def _lock_fd(self, stripe: int) -> int:
        """One open lock file per stripe per process. After a fork the inherited descriptors share the
        parent's open file description, so flock would not exclude parent and child: reopen them."""
        with self._lock_fds_guard:
            if self._pid != os.getpid():
                self._lock_fds = {}
                self._pid = os.getpid()
            fd = self._lock_fds.get(stripe)
            if fd is None:
                lock_dir = self.root / LOCK_DIR
                path = lock_dir / f"{stripe:02d}"
                try:
                    lock_dir.mkdir(exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                except OSError as exc:
                    raise _translate(exc, "open the lock file", path) from exc
                self._lock_fds[stripe] = fd
            return fd

    def close(self) -> None:
        with self._lock_fds_guard:
            for fd in [*self._lock_fds.values(), *self._stale_lock_fds]:
                with suppress(OSError):
                    os.close(fd)
            self._lock_fds = {}
            self._stale_lock_fds = []

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()
