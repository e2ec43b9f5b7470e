"""A store that tells an observer about every operation and every failed one, for metrics (issue 17).

Where it sits: around the store a process opened (the reconciler wraps its signed store with it when metrics are
on, `reconciler.shell.metrics`), so everything above it is counted and nothing above it changes. It knows nothing
of Prometheus: it calls `observe(operation, failed)`, and whoever counts decides how. That keeps `contract/` free
of the metrics library, and lets the agent count its own store writes the same way if it wants to.

What counts as failed: the operation raised a `StoreError` other than `PreconditionFailed`. A lost
compare-and-swap is an answer (someone else wrote first, the next pass re-reads), not the store failing; counting
it would make every standby reconciler polling the lease look like an outage. Outages, throttling, refused or
unreadable answers are failures. Anything else raised is a bug, not a store problem, and is left uncounted.

Operations are the interface's own names (`get`, `put`, `put_if_absent`, `put_if_version`, `delete`, `list`):
a fixed set, so a label made from them stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from contract.store.base import ObjectVersion, PreconditionFailed, Store, StoredObject, StoreError
from contract.store.bulk import get_many, open_raw, read_folders, stored_form

#: Every operation name `observe` can be called with.
OPERATIONS = ("get", "put", "put_if_absent", "put_if_version", "delete", "list")

#: `observe(operation, failed)`: called once per operation, after it returned or raised.
Observer = Callable[[str, bool], None]

ResultT = TypeVar("ResultT")


class InstrumentedStore:
    """`Store` calling `observe` once per operation (see the module docstring)."""

    def __init__(self, inner: Store, observe: Observer) -> None:
        self.inner = inner
        self.url = inner.url
        self._observe = observe

    def __repr__(self) -> str:
        return f"InstrumentedStore({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        # The backend's own attributes (`local`, `root`, `bucket`, `audience`...) stay reachable, as through
        # a SealedStore: code that asks for them (store_audience, missing_folder, parallel reads) sees the same.
        return getattr(self.inner, name)

    def _counted(self, operation: str, call: Callable[[], ResultT]) -> ResultT:
        try:
            result = call()
        except PreconditionFailed:
            self._observe(operation, False)
            raise
        except StoreError:
            self._observe(operation, True)
            raise
        self._observe(operation, False)
        return result

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        return self._counted("get", lambda: self.inner.get(key, if_version_not=if_version_not))

    def get_many(self, keys: Sequence[str]) -> dict[str, StoredObject | None]:
        """The backend's batch read (contract/store/bulk.py), counted as one `get` per key."""
        try:
            found = get_many(self.inner, keys)
        except PreconditionFailed:
            raise
        except StoreError:
            self._observe("get", True)
            raise
        for _ in keys:
            self._observe("get", False)
        return found

    def read_folders(
        self,
        prefix: str,
        names: Sequence[str],
        subfolders: Sequence[str] = (),
        keep: Callable[[str], bool] = lambda key: True,
    ) -> list[StoredObject]:
        """The backend's read of the objects `bulk.read_folders` names, counted as a `list` and a `get` per object
        read."""
        found = self._counted("list", lambda: read_folders(self.inner, prefix, names, subfolders, keep))
        for _ in found:
            self._observe("get", False)
        return found

    def open_raw(self, objects: Sequence[StoredObject]) -> list[StoredObject]:
        """`bulk.open_raw` through the wrapped store; not counted: nothing is asked of the store."""
        return open_raw(self.inner, objects)

    def stored_form(self, key: str, data: bytes) -> bytes | None:
        """`bulk.stored_form` through the wrapped store; not counted: nothing is asked of the store."""
        return stored_form(self.inner, key, data)

    def put(self, key: str, data: bytes) -> str:
        return self._counted("put", lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._counted("put_if_absent", lambda: self.inner.put_if_absent(key, data))

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        return self._counted("put_if_version", lambda: self.inner.put_if_version(key, data, version))

    def delete(self, key: str) -> None:
        self._counted("delete", lambda: self.inner.delete(key))

    def list(self, prefix: str) -> list[ObjectVersion]:
        return self._counted("list", lambda: self.inner.list(prefix))


def instrument_store(inner: Store, observe: Observer) -> Store:
    """`inner`, calling `observe(operation, failed)` after every operation."""
    return InstrumentedStore(inner, observe)


__all__ = ["OPERATIONS", "InstrumentedStore", "Observer", "instrument_store"]
