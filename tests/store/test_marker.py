"""The file store's marker: who creates a store, adopting one from before the marker, and a folder that
vanishes (renamed away, an unmounted share) being an outage, never an empty fleet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from contract.store import StoreError, StoreMissing, StoreUnavailable, open_store
from contract.store.file import FileStore, missing_folder
from contract.store.marker import MARKER


def test_a_writer_creates_a_marked_store_in_a_missing_or_empty_folder(tmp_path: Path) -> None:
    missing = FileStore(f"file://{tmp_path / 'a' / 'store'}")
    marker = json.loads((tmp_path / "a/store" / MARKER).read_text())
    assert marker["kind"] == "fleetshift-store" and marker["storeId"] == missing.store_id
    (tmp_path / "empty").mkdir()
    empty = FileStore(f"file://{tmp_path / 'empty'}")
    assert empty.store_id and empty.store_id != missing.store_id
    again = FileStore(f"file://{tmp_path / 'empty'}")
    assert again.store_id == empty.store_id  # opened again: the same store, the marker is never rewritten


def test_a_store_from_before_the_marker_is_adopted_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hosts/web-1").mkdir(parents=True)
    (tmp_path / "hosts/web-1/status.json").write_bytes(b"{}")
    reader = FileStore(f"file://{tmp_path}", create=False)
    assert reader.store_id is None and not (tmp_path / MARKER).exists()  # readers never mark
    assert [item.key for item in reader.list("hosts/")] == ["hosts/web-1/status.json"]
    writer = FileStore(f"file://{tmp_path}")
    assert "store.adopted" in capsys.readouterr().out
    assert writer.store_id and (tmp_path / MARKER).is_file()
    FileStore(f"file://{tmp_path}")
    assert "store.adopted" not in capsys.readouterr().out
    assert writer.get("hosts/web-1/status.json") is not None


def test_a_folder_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not a fleetshift store") as raised:
        FileStore(f"file://{tmp_path}")
    assert not raised.value.retryable
    assert not (tmp_path / MARKER).exists()


def test_a_damaged_or_newer_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text("garbage")
    with pytest.raises(StoreError, match="not a fleetshift store marker"):
        FileStore(f"file://{tmp_path}")
    (tmp_path / MARKER).write_text(json.dumps({"kind": "fleetshift-store", "storeId": "x", "schemaVersion": 99}))
    with pytest.raises(StoreError, match="newer fleetshift"):
        FileStore(f"file://{tmp_path}")


def test_a_reader_sees_an_empty_unmarked_folder_as_no_store(tmp_path: Path) -> None:
    """An empty folder is what an unmounted share's mount point looks like: no store there, not an empty one."""
    reader = FileStore(f"file://{tmp_path}", create=False)
    assert missing_folder(reader) == tmp_path
    with pytest.raises(StoreMissing):
        reader.put("hosts/a/status.json", b"{}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("how", ["renamed", "emptied"])
@pytest.mark.parametrize("create", [True, False])
def test_a_store_that_vanishes_mid_run_is_unavailable_until_it_is_back(tmp_path: Path, how: str,
                                                                       create: bool) -> None:
    folder = tmp_path / "store"
    writer = open_store(f"file://{folder}")
    writer.put("hosts/web-1/status.json", b"{}")
    writer.put("groups/app/prod.json", b"{}")
    store = writer if create else open_store(f"file://{folder}", create=False)
    folder.rename(tmp_path / "away")
    if how == "emptied":
        folder.mkdir()  # the mount point left behind by an unmounted share
    for call in (lambda: store.list("hosts/"), lambda: store.get("groups/app/prod.json"),
                 lambda: store.get("groups/app/prod.json", if_version_not="x"),
                 lambda: store.put("hosts/web-1/status.json", b"{}"),
                 lambda: store.put_if_absent("commands/web-1.json", b"{}"),
                 lambda: store.put_if_version("groups/app/prod.json", b"{}", "x"),
                 lambda: store.delete("groups/app/prod.json")):
        with pytest.raises(StoreUnavailable, match="is gone"):
            call()
    # Nothing was written into the stand-in: no phantom store, not even the folder itself.
    assert not folder.exists() if how == "renamed" else os.listdir(folder) == []
    if how == "emptied":
        folder.rmdir()
    (tmp_path / "away").rename(folder)
    assert [item.key for item in store.list("hosts/")] == ["hosts/web-1/status.json"]
    if create:
        store.put("hosts/web-1/status.json", b"{\"back\": true}")
        assert store.get("hosts/web-1/status.json").data == b"{\"back\": true}"  # type: ignore[union-attr]


def test_another_store_in_the_folder_is_not_silently_used(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    store = open_store(f"file://{folder}")
    store.put("hosts/a/status.json", b"{}")
    folder.rename(tmp_path / "old")
    open_store(f"file://{folder}")  # somebody made a new store there
    with pytest.raises(StoreUnavailable, match="another store"):
        store.list("hosts/")


def test_two_writers_starting_on_an_empty_folder_agree_on_one_store(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: FileStore(f"file://{tmp_path}").store_id, range(16)))
    assert len(ids) == 1
