"""`MemoryStore`: the `Store` protocol in a dict, for unit tests of code that only talks to a `Store`.

Where it sits: beside the protocol, never behind `open_store` (a store that lives in one process cannot be
the channel between a reconciler and its agents). Component tests keep using the real backends (`file://`,
`s3://` over moto); the store contract suite (tests/store/test_contract.py) runs on all three, so the
semantics match: key rules, versions that never repeat for a key, compare-and-swap, conditional reads that
move no bytes, listings sorted by key with versions.
"""

from __future__ import annotations

import builtins
import itertools
import threading

from contract.store.base import ObjectVersion, PreconditionFailed, StoredObject, check_key, read_limit


class MemoryStore:
    """A thread-safe in-process store. Versions come from one counter, so a version never repeats."""

    #: In process: reads need no threads.
    local = True

    _instances = itertools.count(1)

    def __init__(self, url: str | None = None) -> None:
        self.url = url if url is not None else f"memory://{next(self._instances)}"
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    def _write(self, key: str, data: bytes) -> str:
        version = f"m{next(self._versions):x}"
        self._objects[key] = (bytes(data), version)
        return version

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            return None
        data, version = found
        if if_version_not is not None and version == if_version_not:
            return StoredObject(key, b"", version)
        if len(data) > read_limit(key):
            return StoredObject(key, b"", version, oversize=len(data))
        return StoredObject(key, data, version)

    def put(self, key: str, data: bytes) -> str:
        check_key(key)
        with self._lock:
            return self._write(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        check_key(key)
        with self._lock:
            if key in self._objects:
                raise PreconditionFailed(f"{key} already exists")
            return self._write(key, data)

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
            if found is None:
                raise PreconditionFailed(f"{key} does not exist (expected version {version})")
            if found[1] != version:
                raise PreconditionFailed(f"{key} changed: version {found[1]}, expected {version}")
            return self._write(key, data)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def list(self, prefix: str) -> builtins.list[ObjectVersion]:
        with self._lock:
            found = [ObjectVersion(key, version) for key, (_, version) in self._objects.items()
                     if key.startswith(prefix)]
        found.sort(key=lambda item: item.key)
        return found
