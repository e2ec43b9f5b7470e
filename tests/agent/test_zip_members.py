"""Zip members are read by the agent's own member reader (agent/fetch/formats.py, `_MemberReader`) when small and
stored or deflated, and by `ZipFile.open` otherwise (issue 18: per-member overhead was most of a 10,000-file
unpack). Both must give the same files, and the fast one must refuse what `ZipFile.open` refuses."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from agent.errors import BundleError
from agent.fetch import FetchedBundle, unpack_bundle

CONTENT = {
    "stored.txt": (b"stored " * 100, zipfile.ZIP_STORED),
    "deflated.txt": (b"deflated " * 1000, zipfile.ZIP_DEFLATED),
    "empty.txt": (b"", zipfile.ZIP_DEFLATED),
    "bzip2.txt": (b"bzip2 " * 500, zipfile.ZIP_BZIP2),
    "lzma.txt": (b"lzma " * 500, zipfile.ZIP_LZMA),
    "large.bin": (bytes(range(256)) * 8192, zipfile.ZIP_DEFLATED),  # 2 MiB: streamed by ZipFile.open
    "dir/nested/ü-name.txt": (b"unicode name", zipfile.ZIP_DEFLATED),
}


def _write_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, (data, method) in CONTENT.items():
            archive.writestr(name, data, compress_type=method)
    return path


def _member_offsets(path: Path, name: str) -> tuple[int, int]:
    """(local header offset, central directory entry offset) of `name`."""
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(name).header_offset
    data = path.read_bytes()
    central = data.index(b"PK\x01\x02")  # the first central directory entry, then on to `name`'s
    while data[central + 46:central + 46 + len(name.encode())] != name.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    return local, central


def test_every_kind_of_member_is_unpacked_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    unpack_bundle(FetchedBundle(_write_zip(tmp_path / "b.zip"), "zip"), target)
    for name, (data, _) in CONTENT.items():
        assert (target / name).read_bytes() == data, name


def _refused(path: Path, tmp_path: Path, fragment: str) -> None:
    target = tmp_path / "out"
    with pytest.raises(BundleError) as caught:
        unpack_bundle(FetchedBundle(path, "zip"), target)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("zip bundle b.zip: ")
    assert not target.exists()


def test_a_damaged_member_fails_its_check(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "b.zip")
    local, _ = _member_offsets(path, "stored.txt")
    data = bytearray(path.read_bytes())
    data[local + 30 + len("stored.txt") + 3] ^= 0xFF  # one byte of the stored data
    path.write_bytes(bytes(data))
    _refused(path, tmp_path, "entry 'stored.txt' fails its CRC check")


def test_a_member_named_differently_in_its_local_header_is_refused(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "b.zip")
    local, _ = _member_offsets(path, "deflated.txt")
    data = bytearray(path.read_bytes())
    data[local + 30:local + 30 + len("deflated.txt")] = b"../evil.txt!"
    path.write_bytes(bytes(data))
    _refused(path, tmp_path, "is named '../evil.txt!' in its local header")


@pytest.mark.parametrize("name", ["stored.txt", "deflated.txt"])
def test_a_member_larger_than_its_declared_size_is_refused(tmp_path: Path, name: str) -> None:
    """The central directory says 10 bytes; the data holds more. The output is capped at the declared size."""
    path = _write_zip(tmp_path / "b.zip")
    _, central = _member_offsets(path, name)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, central + 24, 10)  # uncompressed size
    path.write_bytes(bytes(data))
    _refused(path, tmp_path, f"entry {name!r}")


def test_a_member_whose_data_is_cut_short_is_refused(tmp_path: Path) -> None:
    """The local header moved past the end of the data (a truncated or forged member)."""
    path = _write_zip(tmp_path / "b.zip")
    _, central = _member_offsets(path, "deflated.txt")
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, central + 42, len(data) - 40)  # local header offset near the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        unpack_bundle(FetchedBundle(path, "zip"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
