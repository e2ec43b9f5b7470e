"""The `Store` contract, one suite for both backends (`file://` on disk, `s3://` over HTTP to moto)."""

from __future__ import annotations

import threading

import pytest

from contract.store import (
    ObjectVersion,
    PreconditionFailed,
    Store,
    StoredObject,
    StoreError,
    open_store,
)
from contract.store.base import SMALL_DOCUMENT_LIMIT
from contract.store.bulk import get_many, read_folders
from contract.store.file import FileStore
from contract.store.s3 import S3Store


def test_open_store_picks_the_backend_from_the_url(store: Store, store_url: str) -> None:
    expected = FileStore if store_url.startswith("file://") else S3Store
    assert isinstance(store, expected)
    assert store.url == store_url
    assert isinstance(store, Store)


def test_absent_key_reads_as_none(store: Store) -> None:
    assert store.get("hosts/nobody/status.json") is None
    assert store.get("hosts/nobody/status.json", if_version_not="whatever") is None


def test_put_then_get_returns_the_bytes_and_the_version(store: Store) -> None:
    version = store.put("hosts/web-1/status.json", b'{"a": 1}')
    stored = store.get("hosts/web-1/status.json")
    assert stored == StoredObject("hosts/web-1/status.json", b'{"a": 1}', version)


def test_put_replaces_and_changes_the_version(store: Store) -> None:
    first = store.put("k/v.json", b"one")
    second = store.put("k/v.json", b"two!")
    assert first != second
    stored = store.get("k/v.json")
    assert stored is not None and stored.data == b"two!" and stored.version == second


def test_put_if_absent_creates_once(store: Store) -> None:
    version = store.put_if_absent("leases/reconciler.json", b"mine")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("leases/reconciler.json", b"theirs")
    stored = store.get("leases/reconciler.json")
    assert stored is not None and (stored.data, stored.version) == (b"mine", version)


def test_put_if_version_is_compare_and_swap(store: Store) -> None:
    v1 = store.put("groups/app/prod.json", b"v1")
    v2 = store.put_if_version("groups/app/prod.json", b"v2", v1)
    assert v2 != v1
    with pytest.raises(PreconditionFailed):
        store.put_if_version("groups/app/prod.json", b"stale writer", v1)
    stored = store.get("groups/app/prod.json")
    assert stored is not None and (stored.data, stored.version) == (b"v2", v2)


def test_put_if_version_on_a_missing_key_loses(store: Store) -> None:
    version = store.put("a/b.json", b"x")
    store.delete("a/b.json")
    with pytest.raises(PreconditionFailed):
        store.put_if_version("a/b.json", b"y", version)
    assert store.get("a/b.json") is None


def test_conditional_get_returns_no_bytes_when_unchanged(store: Store) -> None:
    version = store.put("commands/web-1.json", b'{"generation": 1}')
    unchanged = store.get("commands/web-1.json", if_version_not=version)
    assert unchanged == StoredObject("commands/web-1.json", b"", version)
    new_version = store.put("commands/web-1.json", b'{"generation": 2}')
    changed = store.get("commands/web-1.json", if_version_not=version)
    assert changed == StoredObject("commands/web-1.json", b'{"generation": 2}', new_version)


def test_delete_removes_and_tolerates_absent_keys(store: Store) -> None:
    store.put("deployments/d-1.json", b"x")
    store.delete("deployments/d-1.json")
    assert store.get("deployments/d-1.json") is None
    store.delete("deployments/d-1.json")
    store.delete("never/was.json")
    store.put_if_absent("deployments/d-1.json", b"again")
    stored = store.get("deployments/d-1.json")
    assert stored is not None and stored.data == b"again"


def test_list_returns_keys_under_the_prefix_sorted_with_their_versions(store: Store) -> None:
    versions = {}
    for key in ["hosts/web-2/status.json", "hosts/web-1/status.json", "hosts/web-1/registration.json",
                "hosts/web-10/status.json", "commands/web-1.json", "groups/app/prod.json"]:
        versions[key] = store.put(key, key.encode())
    listed = store.list("hosts/")
    assert listed == [ObjectVersion(k, versions[k]) for k in sorted(k for k in versions if k.startswith("hosts/"))]
    for item in listed:
        stored = store.get(item.key)
        assert stored is not None and stored.version == item.version
    # A prefix need not end at a folder boundary (S3 semantics).
    assert [i.key for i in store.list("hosts/web-1")] == [
        "hosts/web-1/registration.json", "hosts/web-1/status.json", "hosts/web-10/status.json"]
    assert [i.key for i in store.list("")] == sorted(versions)
    assert store.list("nothing/here/") == []
    single = "groups/app/prod.json"
    assert store.list(single) == [ObjectVersion(single, versions[single])]


def test_list_versions_move_only_for_changed_objects(store: Store) -> None:
    for index in range(5):
        store.put(f"hosts/h{index}/status.json", f"status {index}".encode())
    before = {item.key: item.version for item in store.list("hosts/")}
    store.put("hosts/h3/status.json", b"status 3, later")
    after = {item.key: item.version for item in store.list("hosts/")}
    assert [key for key in before if before[key] != after[key]] == ["hosts/h3/status.json"]


def test_binary_and_large_values_round_trip(store: Store) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB
    version = store.put("blobs/one.bin", blob)
    stored = store.get("blobs/one.bin")
    assert stored is not None and stored.data == blob and stored.version == version
    empty = store.put("blobs/empty", b"")
    assert store.get("blobs/empty") == StoredObject("blobs/empty", b"", empty)


def test_keys_with_the_characters_ids_use(store: Store) -> None:
    key = "hosts/web-1.eu-west-1.example.com/status.json"
    store.put(key, b"x")
    store.put("groups/my_app/blue+green@v=2,x.json", b"y")
    assert [i.key for i in store.list("hosts/")] == [key]
    stored = store.get("groups/my_app/blue+green@v=2,x.json")
    assert stored is not None and stored.data == b"y"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../b", "a//b", "hosts/.hidden", "..", "a/b/"])
def test_keys_that_could_escape_or_collide_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StoreError, match="invalid store key"):
        store.put(key, b"x")
    with pytest.raises(StoreError, match="invalid store key"):
        store.get(key)


def test_compare_and_swap_from_threads_has_one_winner(store: Store) -> None:
    """The in-process half of concurrency (the reconciler's parallel reads share one store object); the
    cross-process half is in test_concurrency.py."""
    key = "leases/reconciler.json"
    version = store.put(key, b"round 0")
    winners: list[int] = []
    barrier = threading.Barrier(6)

    def contender(number: int) -> None:
        barrier.wait()
        try:
            store.put_if_version(key, f"won by {number}".encode(), version)
        except PreconditionFailed:
            return
        winners.append(number)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    stored = store.get(key)
    assert stored is not None and stored.data == f"won by {winners[0]}".encode()


def test_open_store_refuses_unknown_schemes() -> None:
    with pytest.raises(StoreError, match=r"use file:///path/to/dir or s3://bucket/prefix"):
        open_store("ftp://example.com/store")


def test_a_batch_read_returns_what_one_get_at_a_time_returns(store: Store) -> None:
    """`get_many` (contract/store/bulk.py): the file store's own batch read, threads on S3; the same answers,
    absent keys, empty and oversized objects included."""
    keys = [f"hosts/web-{n}/status.json" for n in range(40)]
    for n, key in enumerate(keys):
        store.put(key, b"x" * n)
    store.put("commands/big.json", b"y" * (SMALL_DOCUMENT_LIMIT + 1))
    wanted = [*keys, "hosts/nobody/status.json", "commands/big.json"]
    found = get_many(store, wanted)
    assert list(found) == wanted
    assert found == {key: store.get(key) for key in wanted}
    assert found["hosts/nobody/status.json"] is None
    big = found["commands/big.json"]
    assert big is not None and big.data == b"" and big.oversize == SMALL_DOCUMENT_LIMIT + 1
    with pytest.raises(StoreError, match="invalid store key"):
        get_many(store, ["hosts/a/status.json", "hosts/../escape"])


def test_reading_folders_is_listing_then_reading_the_keys_they_name(store: Store) -> None:
    """`read_folders` (contract/store/bulk.py): the file store opens the named files by name, S3 lists then reads;
    both return what a listing followed by a read of every key of that shape returns, sorted by key: the named
    files directly in each folder under the prefix, and the files directly in the named subfolders."""
    for name in ("b", "a", "a-b", "c"):
        store.put(f"hosts/{name}/status.json", name.encode())
    store.put("hosts/a/registration.json", b"r")
    store.put("hosts/a/conflicts/i1.json", b"c1")
    store.put("hosts/a/conflicts/i0.json", b"c0")
    store.put("hosts/b/notes.txt", b"not named")
    store.put("hosts/c/deeper/status.json", b"too deep")
    store.put("hosts/c/conflicts/deeper/x.json", b"too deep")
    store.put("hosts/status.json", b"not in a folder")
    store.put("hosts-other/x/status.json", b"not under the prefix")
    store.put("hosts/big/status.json", b"y" * (SMALL_DOCUMENT_LIMIT + 1))
    found = read_folders(store, "hosts/", ["status.json", "registration.json"], ["conflicts"])
    expected = [
        "hosts/a-b/status.json", "hosts/a/conflicts/i0.json", "hosts/a/conflicts/i1.json", "hosts/a/registration.json",
        "hosts/a/status.json", "hosts/b/status.json", "hosts/big/status.json", "hosts/c/status.json",
    ]
    assert [stored.key for stored in found] == expected
    assert found == [store.get(key) for key in expected]
    big = found[expected.index("hosts/big/status.json")]
    assert big.oversize == SMALL_DOCUMENT_LIMIT + 1 and big.data == b""
    assert read_folders(store, "nothing/", ["status.json"]) == []


def test_reading_folders_reads_only_the_keys_kept(store: Store) -> None:
    """`keep` is asked before reading: what it refuses is never fetched (nor returned)."""
    store.put("hosts/a/status.json", b"a")
    store.put("hosts/a/conflicts/junk.bin", b"x" * 1000)
    store.put("hosts/a/conflicts/i1.json", b"c")
    asked: list[str] = []

    def keep(key: str) -> bool:
        asked.append(key)
        return key.endswith(".json")

    found = read_folders(store, "hosts/", ["status.json"], ["conflicts"], keep=keep)
    assert [stored.key for stored in found] == ["hosts/a/conflicts/i1.json", "hosts/a/status.json"]
    assert "hosts/a/conflicts/junk.bin" in asked
