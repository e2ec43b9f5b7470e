"""The store: the only channel between the reconciler and the agents (docs/design.md, "The contract: the store").

`open_store(url)` picks the backend from the URL scheme; everything else codes against `Store`. `MemoryStore`
is the same protocol in a dict, for unit tests (never behind a URL).
"""

from contract.store.base import (
    InvalidStoreURL,
    NotModified,
    ObjectVersion,
    PreconditionFailed,
    Store,
    StoredObject,
    StoreError,
    StoreMissing,
    StoreUnavailable,
)
from contract.store.memory import MemoryStore
from contract.store.opener import open_store

__all__ = [
    "InvalidStoreURL",
    "MemoryStore",
    "NotModified",
    "ObjectVersion",
    "PreconditionFailed",
    "Store",
    "StoreError",
    "StoreMissing",
    "StoreUnavailable",
    "StoredObject",
    "open_store",
]
