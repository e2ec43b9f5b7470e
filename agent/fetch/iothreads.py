"""The helper threads that make unpacking overlap its I/O: writers for small files and a gzip inflater.

Both only move bytes; every decision (names, limits, order) stays on the unpacking thread
(agent/fetch/extract.py).
"""

from __future__ import annotations

import io
import os
import queue
import threading
import zlib
from collections.abc import Callable
from contextlib import suppress
from typing import IO

from agent.fetch.revision import CHUNK

#: Files are created without following a link and truncated if they exist.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class BackgroundWriter:
    """Creates small files on `workers` threads while the main thread parses the archive.

    open/write/close and zlib's inflating release the GIL, so on a host with two or more cores writing overlaps
    with header parsing, much as `tar` overlaps with its gzip child. The main thread stays the only one that
    decides anything: names, limits and folders are checked before a file is queued, and every operation whose
    order matters (a large file, a hard link, the final symlinks, a second entry of the same name) first waits
    for the queue to empty. Files of different names are independent, so their order among the workers does not
    matter; an error a worker hits is raised on the main thread (one of them, when several fail at once).
    """

    _QUEUE_FILES = 64

    def __init__(self, workers: int = 1) -> None:
        self._jobs: queue.Queue[tuple[str, bytes | Callable[[], bytes], int, float | None,
                                      tuple[int, int] | None] | None] = queue.Queue(self._QUEUE_FILES)
        self._error: BaseException | None = None
        #: Set by `cancel`: queued files are dropped, not written.
        self._cancelled = False
        self._threads = [threading.Thread(target=self._work, name=f"bundle-writer-{n}", daemon=True)
                         for n in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None and not self._cancelled:
                    path, data, mode, mtime, owner = job
                    create_file(path, data() if callable(data) else data, mode, mtime, owner)
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def submit(self, path: str, data: bytes | Callable[[], bytes], mode: int, mtime: float | None,
               owner: tuple[int, int] | None) -> None:
        """Queue a file. `data` may be a function that makes the bytes (reads and inflates a zip member): it
        runs on this thread, so inflating (zlib releases the GIL) overlaps with the main thread's parsing. Its
        errors come back like a write's, from the next `submit`, `check` or `drain`."""
        self.check()
        self._jobs.put((path, data, mode, mtime, owner))

    def cancel(self) -> None:
        """Drop whatever is queued and wait for the file being written, then stop: after a failure, before the
        source the queued jobs read from (an open archive) is closed."""
        self._cancelled = True
        with suppress(BaseException):
            self._jobs.join()
        self.close()

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def drain(self) -> None:
        self._jobs.join()
        self.check()

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def finish_file(fd: int, mode: int, mtime: float | None, owner: tuple[int, int] | None) -> None:
    """Owner, then mode (chown clears set-id bits), then mtime, all through the open descriptor so nothing is
    done through a path another entry could have replaced."""
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, mode)
    if mtime is not None:
        os.utime(fd, (mtime, mtime))


def create_file(path: str, data: bytes, mode: int, mtime: float | None, owner: tuple[int, int] | None) -> None:
    fd = os.open(path, CREATE_FLAGS, 0o600)
    try:
        write_all(fd, data)
        finish_file(fd, mode, mtime, owner)
    finally:
        os.close(fd)


class GzipDamaged(Exception):
    pass


class ThreadedGunzip:
    """A forward-only reader of a gzip file whose inflating runs on a background thread.

    zlib releases the GIL while it inflates, so decompression overlaps with parsing and writing the
    entries, the way `tar -z` overlaps with its gzip child process. At most `_QUEUECHUNKS` chunks of
    `CHUNK` bytes wait in memory, so a gzip bomb cannot run ahead of the size checks. `seek` only goes
    forward, which is all `tarfile` needs when members are read in order.
    """

    _QUEUECHUNKS = 16

    def __init__(self, raw: IO[bytes]) -> None:
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(self._QUEUECHUNKS)
        self._stop = threading.Event()
        self._current = b""
        self._offset = 0
        self._position = 0
        self._finished = False
        self._thread = threading.Thread(target=self._inflate, args=(raw,), name="gunzip", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _inflate(self, raw: IO[bytes]) -> None:
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = b""
            while not self._stop.is_set():
                if not pending:
                    pending = raw.read(CHUNK)
                    if not pending:
                        break
                out = inflater.decompress(pending, CHUNK)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    rest = inflater.unused_data + pending
                    if rest.strip(b"\0"):
                        if not rest.startswith(b"\x1f\x8b"):
                            raise GzipDamaged("unexpected data after the end of the gzip stream")
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member follows
                        pending = rest
                    else:
                        pending = b""
                        tail = raw.read(CHUNK)
                        if tail.strip(b"\0"):
                            raise GzipDamaged("unexpected data after the end of the gzip stream")
                if out and not self._put(out):
                    return
            if not inflater.eof and not self._stop.is_set():
                raise GzipDamaged("the gzip stream is truncated")
            self._put(None)
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(exc)

    def _next_chunk(self) -> bool:
        if self._finished:
            return False
        item = self._chunks.get()
        if item is None:
            self._finished = True
            return False
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        self._current, self._offset = item, 0
        return True

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            available = len(self._current) - self._offset
            if available <= 0:
                if not self._next_chunk():
                    break
                continue
            take = min(available, wanted)
            parts.append(self._current[self._offset : self._offset + take])
            self._offset += take
            wanted -= take
        data = b"".join(parts)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        target = position if whence == io.SEEK_SET else self._position + position
        if whence not in {io.SEEK_SET, io.SEEK_CUR} or target < self._position:
            raise io.UnsupportedOperation("a gzip bundle is read forward only")
        while self._position < target:
            if not self.read(min(target - self._position, CHUNK)):
                break
        return self._position

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with suppress(queue.Empty):
                self._chunks.get(timeout=0.05)
        self._thread.join()

    def __enter__(self) -> ThreadedGunzip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
