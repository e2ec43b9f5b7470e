"""contract/atomic.py: the one atomic write (the file store's and the agent's files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.atomic import write_atomic


def test_replace_and_create_only(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    assert write_atomic(target, b"one")
    assert write_atomic(target, "two")
    assert target.read_bytes() == b"two"
    assert not write_atomic(target, b"three", create_only=True), "create-only never replaces"
    assert target.read_bytes() == b"two"
    fresh = tmp_path / "identity.json"
    assert write_atomic(fresh, b"mine", create_only=True)
    assert fresh.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.json", "state.json"], "no temporary left"


def test_mode_is_exact_and_default_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "shared", b"x", mode=0o644)
        write_atomic(tmp_path / "default", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "default").stat().st_mode & 0o777 == 0o600


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record"
    write_atomic(target, b"old")

    def fail(fd: int) -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        write_atomic(target, b"new", before_commit=fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["record"]


def test_temporary_names(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def look(fd: int) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    write_atomic(tmp_path / "a.json", b"x", before_commit=look)
    write_atomic(tmp_path / "b.json", b"x", prefix=".tmp-", suffix="", before_commit=look, durable=False)
    write_atomic(tmp_path / "c.json", b"x", temp_name=".c.json.tmp", before_commit=look)
    first, second, third = seen
    assert len(first) == 1 and first[0].startswith(".a.json.") and first[0].endswith(".tmp")
    assert any(name.startswith(".tmp-") for name in second)
    assert ".c.json.tmp" in third
