"""Reading many keys at once, each backend its fastest way: what a reconciler pass does with 20,000 documents.

Where it sits: beside the `Store` protocol, used by the reconciler's snapshot (reconciler/shell/observe.py) and
`DocumentCache`. It is not part of the protocol on purpose: a backend or wrapper that only has `get` still works,
one key at a time.

Why it exists (issue 18): a pass over 10,000 hosts reads about 20,000 small documents. One `get` at a time on
the file store paid, per key, a `pathlib` path, a store-marker check and a read buffer sized to the read limit:
~120 µs a key where the system calls cost ~13 µs. `FileStore.get_many` does the marker check once for the
batch, builds paths as strings and reads each file at its size. A remote store (S3) is read from a pool of
threads instead: there each read is mostly a wait for the network.

The wrappers (signing, metrics) define `get_many` themselves: they unseal and count each key as `get` would.
A wrapper that only forwards unknown attributes to what it wraps (a test's fault-injecting store) must not
have its own `get` bypassed, so `get_many` is looked up on the class, never through such forwarding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from contract.store.base import Store, StoredObject, StoreError, check_key

#: Reads from a remote store (S3) at once. Each is mostly a wait for the network (a 20 ms round trip plus S3's own
#: 10-20 ms) against about 0.35 ms of this process's CPU (contract/store/s3wire.py): 128 at once keep a cold pass
#: over 10,000 hosts (31,000 documents) near its CPU bound of ~11 s instead of a latency bound of ~17 s at 64.
READ_WORKERS = 128


def get_many(store: Store, keys: Sequence[str], *, workers: int = READ_WORKERS) -> dict[str, StoredObject | None]:
    """Every key's object (None where absent), as `store.get` would return each: the backend's own batch read
    where its class has one, else one `get` after another on a local store and `workers` threads on a remote
    one. Raises what `get` raises; nothing is returned from a batch in which one read failed."""
    own = getattr(type(store), "get_many", None)
    if own is not None:
        found: dict[str, StoredObject | None] = own(store, keys)
        return found
    if getattr(store, "local", False) or len(keys) <= 1 or workers <= 1:
        return {key: store.get(key) for key in keys}
    with ThreadPoolExecutor(max_workers=min(workers, len(keys)), thread_name_prefix="store-read") as pool:
        return dict(zip(keys, pool.map(store.get, keys), strict=True))


def read_folders(
    store: Store,
    prefix: str,
    names: Sequence[str],
    subfolders: Sequence[str] = (),
    keep: Callable[[str], bool] = lambda key: True,
) -> list[StoredObject]:
    """For every folder directly under `prefix` (`hosts/`: every host), its objects named in `names` and every
    object directly in its `subfolders`, that `keep` accepts, read, sorted by key: what a listing of `prefix` then a
    `get_many` of those keys returns (objects deleted in between left out). `keep` is asked before anything is
    read: a writer of the prefix must not make a reader load files it has no use for (1 MiB each, by the thousand).

    The file store opens the named files by name, listing only `prefix` itself and the subfolders that exist, and
    takes each version from the open file: for the first pass of `reconcile --once` over 20,000 host documents
    that skips the listing's `stat` of every file and a listing of every host's folder. Other stores list."""
    _check_folder_read(prefix, [*names, *subfolders])
    own = getattr(type(store), "read_folders", None)
    if own is not None:
        read: list[StoredObject] = own(store, prefix, names, subfolders, keep)
        return read
    wanted_names, wanted_folders = set(names), set(subfolders)

    def wanted(key: str) -> bool:
        parts = key[len(prefix):].split("/")
        shaped = (len(parts) == 2 and parts[1] in wanted_names) or (len(parts) == 3 and parts[1] in wanted_folders)
        return shaped and keep(key)

    listed = [item for item in store.list(prefix) if wanted(item.key)]
    found = get_many(store, [item.key for item in listed])
    return [stored for stored in (found[item.key] for item in listed) if stored is not None]


def open_raw(store: Store, objects: Sequence[StoredObject]) -> list[StoredObject]:
    """Objects read earlier as the backend holds them (their `raw` bytes, or `data` where no wrapper changed it),
    each as `store.get` would return it now: the signing wrapper checks a sealed key's envelope against the keys
    trusted now. For the warm-start cache (reconciler/shell/warmstart.py), which stands in for reads. A store
    without wrappers returns them as they are; a wrapper without its own `open_raw` returns none of them."""
    # Objects a wrapper already opened go back to their stored bytes first.
    stored = [replace(item, data=item.raw, raw=None, refused=None) if item.raw is not None else item
              for item in objects]
    own = getattr(type(store), "open_raw", None)
    if own is not None:
        opened: list[StoredObject] = own(store, stored)
        return opened
    if hasattr(store, "inner"):
        # A wrapper that does not say how its reads change what the backend holds: none is vouched for, so the
        # caller reads them all.
        return []
    return stored


def stored_form(store: Store, key: str, data: bytes) -> bytes | None:
    """The bytes `store.put(key, data)` left in the backend, worked out again without reading them: `data` as it is
    where no wrapper changes it, the signing wrapper's envelope for a sealed key (the same bytes again: an Ed25519
    signature and an HMAC of the same message by the same keys do not change), None from a wrapper that does not
    say how it changes what it writes. For the warm-start cache (reconciler/shell/warmstart.py), which keeps what
    the reconciler wrote itself as the backend holds it, without a GET of it."""
    own = getattr(type(store), "stored_form", None)
    if own is not None:
        form: bytes | None = own(store, key, data)
        return form
    if hasattr(store, "inner"):
        return None
    return data


def _check_folder_read(prefix: str, names: Sequence[str]) -> None:
    """A caller's mistake, refused the same way whatever the store, before anything is read: `prefix` is a folder
    whose every part is a valid key's (`hosts/`, or "" for the top), and each name one plain name (no slash, no
    leading dot: dot files are the file store's own)."""
    if isinstance(names, str):
        raise ValueError(f"read_folders: names are a sequence of names, not the string {names!r}")
    if prefix and (not prefix.endswith("/") or not _plain_key(prefix[:-1])):
        raise ValueError(f"read_folders: the prefix must be a folder ending with one slash, not {prefix!r}")
    for name in names:
        if "/" in name or not _plain_key(name):
            raise ValueError(f"read_folders: {name!r} is not a plain file or folder name")


def _plain_key(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True


__all__ = ["READ_WORKERS", "get_many", "open_raw", "read_folders", "stored_form"]
