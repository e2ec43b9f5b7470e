"""The store interface, its key rules and its error tree. Imports no backend: `open_store`
(contract/store/opener.py) is the one place that knows them.

Backends translate their own failures (OSError, botocore) into these errors once, at the edge, so callers
decide on one thing: `retryable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class AccessDenied(StoreError):
    """The credentials in use may not perform this operation on the store's bucket or prefix (raised by the S3
    backend; here so that code reacting to it, such as an agent's rollout signal, need not load that backend)."""


class NotModified(StoreError):
    """Raised internally by backends for conditional reads; `get` turns it into returning the same object."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    data: bytes
    #: Opaque version token for compare-and-swap: the ETag on S3, `mtime_ns.size.inode` on the file store
    #: (never repeating for a key, see contract/store/file.py).
    version: str
    #: The object's size when it was larger than `read_limit(key)` and so was not read: `data` is then empty
    #: (never valid JSON), and `contract.store.docs.parse_document` reports it as an unreadable document.
    oversize: int | None = None
    #: Why a signed document was refused (contract/store/sealed.py): `data` is then empty, and
    #: `contract.store.docs.parse_document` raises `DocumentRefused`.
    refused: str | None = None
    #: The bytes as the backend holds them, where a wrapper replaced `data` (a sealed key's envelope, opened or
    #: refused): what the warm-start cache keeps, so that each entry is checked again when it is used
    #: (`contract.store.bulk.open_raw`), against the keys trusted then. Bookkeeping, not part of what was read:
    #: left out of comparisons.
    raw: bytes | None = field(default=None, compare=False, repr=False)


#: Read limits per document, in bytes (see `read_limit`).
SMALL_DOCUMENT_LIMIT = 1024 * 1024
LARGE_DOCUMENT_LIMIT = 32 * 1024 * 1024
#: The reconciler's documents that grow with the fleet: a deployment holds one entry per host of its group,
#: a group record its history, an analysis record a measurement per gate, batch and count; the warm-start cache
#: (reconciler/shell/warmstart.py) a compressed copy of the fleet's slow-changing documents (1-2 MB at 10,000 hosts).
_LARGE_PREFIXES = ("deployments/", "groups/", "analysis/", "events/", "cache/")


def read_limit(key: str) -> int:
    """The most bytes any backend reads for `key`: a bigger object comes back with `oversize` set and no data.

    Why: both sides read documents somebody else wrote; one hostile or broken document must not take a process
    to gigabytes. Commands, statuses, registrations, conflict records and the lease are a few kilobytes (a
    status carries at most a 2 KB log tail per lifecycle event), so 1 MiB is generous. A deployment lists every
    host of its group (about 200 bytes a host: 10,000 hosts is about 2 MB) and a group record its history, so
    they get 32 MiB; only the reconciler reads those."""
    return LARGE_DOCUMENT_LIMIT if key.startswith(_LARGE_PREFIXES) else SMALL_DOCUMENT_LIMIT


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


def check_key(key: str) -> str:
    """Keys become paths on the file store: every backend refuses anything that could climb out of the store
    or hide among the file store's own files, so a store can be copied between backends as is."""
    if not key or key.startswith("/") or "\0" in key:
        raise StoreError(f"invalid store key {key!r}: keys are relative paths like hosts/web-1/status.json")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            raise StoreError(
                f"invalid store key {key!r}: segments must be non-empty and must not start with a dot"
            )
    return key
