"""The store interface and its error tree.

Backends translate their own failures (OSError, botocore) into these errors once, at the edge, so callers
decide on one thing: `retryable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """A store operation failed. `retryable` says whether trying again later can help."""

    retryable: bool = False


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient error (throttling, 5xx, I/O)."""

    retryable = True


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists (put_if_absent) or changed (put_if_version)."""


class StoreMissing(StoreError):
    """A write to a store opened for reading only (`create=False`) whose folder does not exist: readers must
    never create a store, so this is a user mistake (wrong path) or a command that should not write."""


class InvalidStoreURL(StoreError):
    """The store URL itself is wrong: a user mistake to fix, not an outage to wait out."""


class NotModified(StoreError):
    """Raised internally by backends for conditional reads; `get` turns it into returning the same object."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    data: bytes
    #: Opaque version token for compare-and-swap: the ETag on S3, `mtime_ns.size.inode` on the file store
    #: (never repeating for a key, see contract/store/file.py).
    version: str


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    key: str
    version: str


@runtime_checkable
class Store(Protocol):
    """A small key/value blob store with compare-and-swap. Keys are `/`-separated relative paths."""

    url: str

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        """The object, or None if absent. With `if_version_not`, an unchanged object is returned as
        `StoredObject(key, b"", version)` with empty data, so pollers move no bytes when nothing changed."""
        ...

    def put(self, key: str, data: bytes) -> str:
        """Write unconditionally; returns the new version."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create only; raises PreconditionFailed if the key exists."""
        ...

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        """Replace only if the current version is `version`; raises PreconditionFailed otherwise."""
        ...

    def delete(self, key: str) -> None:
        """Remove; absent keys are not an error."""
        ...

    def list(self, prefix: str) -> list[ObjectVersion]:
        """Every key under `prefix` with its version, sorted by key, without reading the objects."""
        ...


def open_store(url: str, *, create: bool = True) -> Store:
    """`file://DIR` (embedded) or `s3://bucket/prefix`.

    `create=False` is for commands that only read (`status`, `history`, `plan`, operator commands that must
    find records first): a file store's folder is then not created, so a mistyped `--store` leaves nothing
    behind. Writers (the agent, `reconcile --once`, `watch`) keep the default and get their folder, and any
    problem making it, at start-up. S3 stores never create buckets either way."""
    if url.startswith("file://"):
        from contract.store.file import FileStore

        store: Store = FileStore(url, create=create)
        return store
    if url.startswith("s3://"):
        from contract.store.s3 import S3Store

        s3_store: Store = S3Store(url)
        return s3_store
    raise InvalidStoreURL(f"unsupported store URL {url!r}: use file:///path/to/dir or s3://bucket/prefix")
