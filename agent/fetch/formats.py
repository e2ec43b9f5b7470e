"""The bundle formats: zip, tar (plain or gzip-compressed) and a directory, each read entry by entry and
handed to an `Extractor` (agent/fetch/extract.py), which applies the rules; nothing here writes a file."""

from __future__ import annotations

import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from agent.errors import BundleError, UnsafeBundle
from agent.fetch.iothreads import GzipDamaged, ThreadedGunzip
from agent.fetch.revision import CHUNK

if TYPE_CHECKING:
    from agent.fetch.extract import Extractor


def extract_zip(extractor: Extractor, path: Path) -> None:
    source = extractor.source = f"zip bundle {path.name}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{source} is not a readable zip archive: {exc}") from exc
    with archive, path.open("rb") as raw:
        infos = archive.infolist()
        if len(infos) > extractor.limits.max_entries:
            raise UnsafeBundle(
                f"{source}: {len(infos)} entries, more than the limit of {extractor.limits.max_entries}"
            )
        if sum(info.file_size for info in infos) > extractor.limits.max_bytes:
            raise extractor.too_big(source)
        try:
            reader = _MemberReader(raw.fileno(), source)
            try:
                for info in infos:
                    _zip_entry(extractor, archive, reader, info, source)
                extractor.drain_writer()  # queued members read from `raw`: done before it is closed
            except BaseException:
                extractor.cancel_writer()
                raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
            raise BundleError(f"{source} is damaged or uses an unsupported feature: {exc}") from exc
        except RuntimeError as exc:  # zipfile reports encrypted entries this way
            raise BundleError(f"{source}: {exc}") from exc



class _MemberReader:
    """Reads a small stored or deflated zip member with two `pread`s and one `zlib` call.

    Why not `ZipFile.open` for every member: its shared-file bookkeeping (a seek and a `tell` around each read,
    under a lock) and per-member objects cost more than the inflating itself on a bundle of 10,000 small files
    (issue 18). The central directory is still zipfile's; only the member's bytes are read here, with the same
    checks `ZipFile.open` makes: the local header's signature, the size the central directory declares (the
    output is capped there, so a lying entry cannot inflate past it), the stream's end, and the CRC-32. Larger
    members and other compression methods go through `ZipFile.open` (streamed, never whole in memory)."""

    def __init__(self, fd: int, source: str) -> None:
        self.fd = fd
        self.source = source

    def handles(self, info: zipfile.ZipInfo) -> bool:
        return (info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
                and info.file_size <= CHUNK and info.compress_size <= CHUNK)

    def read(self, info: zipfile.ZipInfo, name: str) -> bytes:
        size = _LOCAL_HEADER.size
        header = os.pread(self.fd, size + _NAME_GUESS, info.header_offset)
        if len(header) < size:
            raise BundleError(f"{self.source}: entry {name!r} is cut short; the bundle is truncated")
        signature, flags, name_length, extra_length = _LOCAL_HEADER.unpack_from(header)
        if signature != _LOCAL_SIGNATURE:
            raise BundleError(f"{self.source}: entry {name!r} has no valid local header; the zip is damaged")
        raw_name = header[size:size + name_length]
        if len(raw_name) < name_length:
            raw_name += os.pread(self.fd, name_length - len(raw_name), info.header_offset + size + len(raw_name))
        # The name before the data must be the central directory's, as `ZipFile.open` insists.
        local_name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if local_name != info.orig_filename:
            raise BundleError(f"{self.source}: entry {name!r} is named {local_name!r} in its local header; the "
                              "zip is damaged or forged")
        start = info.header_offset + size + name_length + extra_length
        packed = os.pread(self.fd, info.compress_size, start)
        if len(packed) != info.compress_size:
            raise BundleError(f"{self.source}: entry {name!r} is cut short; the bundle is truncated")
        if info.compress_type == zipfile.ZIP_STORED:
            data = packed
        else:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                data = inflater.decompress(packed, info.file_size + 1)
            except zlib.error as exc:
                raise BundleError(f"{self.source}: entry {name!r} does not inflate: {exc}") from exc
            if not inflater.eof and len(data) <= info.file_size:
                data += inflater.flush()
            if not inflater.eof:
                raise BundleError(f"{self.source}: entry {name!r} is larger than its header says, or damaged")
        if len(data) != info.file_size:
            raise BundleError(f"{self.source}: entry {name!r} is {len(data)} bytes, not the {info.file_size} its "
                              "header says; the zip is damaged")
        if zlib.crc32(data) != info.CRC:
            raise BundleError(f"{self.source}: entry {name!r} fails its CRC check; the zip is damaged")
        return data


#: A zip local file header: signature, version (skipped), flags, then (skipped) method, time, date, CRC and
#: sizes, then the lengths of the name and the extra field that come before the data.
_LOCAL_HEADER = struct.Struct("<I2xH18xHH")
_LOCAL_SIGNATURE = 0x04034B50
#: Bytes of name read with the header, so most members need no third read.
_NAME_GUESS = 256


def _zip_entry(extractor: Extractor, archive: zipfile.ZipFile, reader: _MemberReader, info: zipfile.ZipInfo,
               source: str) -> None:
    name = extractor.safe_name(info.filename, source=source)
    if name is None:
        return
    extractor.count(name, source)
    if info.flag_bits & 0x1:
        raise BundleError(f"{source}: entry {name!r} is encrypted; encrypted bundles are not supported")
    unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(unix_mode)
    mtime = time.mktime((*info.date_time, 0, 0, -1))
    if kind and kind not in {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK}:
        raise UnsafeBundle(f"{source}: entry {name!r} is a device, FIFO or socket; only files are allowed")
    if info.is_dir() or kind == stat.S_IFDIR:
        # unzip, like the reference agent's extractor, keeps permission bits but not setuid/setgid.
        extractor.make_dir(name, (unix_mode & 0o777) or None, mtime, None)
    elif kind == stat.S_IFLNK:
        if info.file_size > 4096:
            raise UnsafeBundle(f"{source}: symlink {name!r} has an implausibly long target")
        extractor.symlink(name, archive.read(info).decode("utf-8", "surrogateescape"), source)
    else:
        mode = unix_mode & 0o777 if unix_mode & 0o777 else None
        if reader.handles(info):
            extractor.write_member(name, partial(reader.read, info, name), size=info.file_size, mode=mode,
                                   mtime=mtime, source=source)
            return
        with archive.open(info) as stream:
            extractor.write_file(name, stream, mode=mode, mtime=mtime, owner=None, source=source, size=info.file_size)



def extract_tar(extractor: Extractor, path: Path, *, compressed: bool) -> None:
    source = extractor.source = f"{'tgz' if compressed else 'tar'} bundle {path.name}"
    try:
        # Members are read strictly in order, so a forward-only gzip reader is enough; it is much faster
        # than tarfile's own stream mode, which re-slices its whole buffer on every small read.
        with path.open("rb") as raw, (ThreadedGunzip(raw) if compressed else raw) as stream, \
                tarfile.open(fileobj=cast(IO[bytes], stream), mode="r:") as archive:
            while (member := archive.next()) is not None:
                _tar_entry(extractor, archive, member, source)
                # Forget each header once handled: a huge bundle must not pile them up in memory.
                archive.members.clear()  # type: ignore[attr-defined]
    except (tarfile.TarError, EOFError, zlib.error, GzipDamaged) as exc:
        kind = "gzip-compressed tar" if compressed else "tar archive"
        raise BundleError(f"{source} is not a readable {kind} (damaged or truncated?): {exc}") from exc



def _tar_entry(extractor: Extractor, archive: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> None:
    name = extractor.safe_name(member.name, source=source)
    if name is None:
        return
    extractor.count(name, source)
    owner = extractor.owner_of(member.uname, member.gname, member.uid, member.gid)
    if member.isreg():
        if extractor.written + member.size > extractor.limits.max_bytes:
            raise extractor.too_big(source)
        if member.sparse is None:
            # Read the data straight from the archive stream, which sits right at it: no per-file
            # wrapper objects (tarfile seeks forward past the padding to the next header itself).
            stream: IO[bytes] = archive.fileobj  # type: ignore[assignment]
            stream.seek(member.offset_data)
        else:
            extracted = archive.extractfile(member)
            assert extracted is not None
            stream = extracted
        extractor.write_file(
            name, stream, mode=extractor.file_mode(member.mode), mtime=member.mtime, owner=owner, source=source,
            size=member.size,
        )
    elif member.isdir():
        extractor.make_dir(name, extractor.file_mode(member.mode), member.mtime, owner)
    elif member.issym():
        extractor.symlink(name, member.linkname, source)
    elif member.islnk():
        extractor.hard_link(name, member.linkname, source)
    elif member.ischr() or member.isblk():
        raise UnsafeBundle(f"{source}: entry {name!r} is a device file; only files are allowed")
    elif member.isfifo():
        raise UnsafeBundle(f"{source}: entry {name!r} is a FIFO; only files are allowed")
    else:
        raise UnsafeBundle(f"{source}: entry {name!r} has an unsupported type ({member.type!r})")



def copy_directory(extractor: Extractor, root: Path) -> None:
    """A directory bundle is copied like `cp -r` (reference: modes kept minus the umask, owner and times
    not kept), under the same rules as an archive."""
    source = extractor.source = f"directory bundle {root}"
    stack = [""]
    while stack:
        relative = stack.pop()
        with os.scandir(root / relative if relative else root) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                extractor.count(name, source)
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    extractor.symlink(name, os.readlink(entry.path), source)
                elif stat.S_ISDIR(info.st_mode):
                    extractor.make_dir(name, info.st_mode & 0o777 & ~extractor.umask, None, None)
                    stack.append(name)
                elif stat.S_ISREG(info.st_mode):
                    if extractor.written + info.st_size > extractor.limits.max_bytes:
                        raise extractor.too_big(source)
                    with open(entry.path, "rb") as stream:
                        extractor.write_file(
                            name, stream, mode=info.st_mode & 0o777 & ~extractor.umask, mtime=None, owner=None,
                            source=source,
                        )
                else:
                    raise UnsafeBundle(f"{source}: {name!r} is a device, FIFO or socket; only files are allowed")
