"""A store that signs what the reconciler writes and checks signatures on what is read (docs/trust.md).

Where it sits: between the raw backend and everything else, on both sides. `seal_store` wraps the store a
process opened: the reconciler passes its `Signer` (and the keys it trusts), an agent only the keys pinned in
its agent.yaml. Code above it reads and writes plain documents and never sees an envelope.

What is sealed: every key the reconciler writes and something acts on (`SEALED_PREFIXES`): commands (agents
run them), traffic steps (an agent stops its service once BlockTraffic is recorded done), deployments and
group records (the reconciler re-sends a deployment's revision from them, and rolls back to a group's last
good revision: without signatures a store writer could have the reconciler sign a command of its choosing),
analysis records (a forged "Successful" gate would let a bad canary through), and `config/applied.json` (where
`repository.verify: strict` starts), the fleet event log and notification cursors (`events/`: a forged one
could hide a refused command or replay notifications), and the warm-start cache (`cache/`: it stands in for reads of
all of these). Not sealed: what agents write (`hosts/`: agents hold no
keys; a forged status can lie about a host but cannot make anything run, docs/trust.md says what it can do) and
the lease (forging it only stops reconcilers, which deleting the store could do anyway).

A document that fails verification is returned with `refused` set and no data, and
`contract.store.docs.parse_document` raises `DocumentRefused` for it: every reader already treats an
unreadable document as absent (the reconciler) or refuses to act on it (the agent), which is exactly what a
forged one needs. Without trusted keys (signing not configured) envelopes are unwrapped unchecked and plain
documents pass, which is how a store worked before signing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from contract.keys import (
    ANALYSIS_PREFIX,
    CACHE_PREFIX,
    COMMANDS_PREFIX,
    CONFIG_PREFIX,
    DEPLOYMENTS_PREFIX,
    EVENTS_PREFIX,
    GROUPS_PREFIX,
    TRAFFIC_PREFIX,
)
from contract.signing import Refused, Signer, Trust, open_envelope, unwrap
from contract.store.base import ObjectVersion, Store, StoredObject
from contract.store.bulk import get_many, open_raw, read_folders, stored_form

SEALED_PREFIXES = (
    COMMANDS_PREFIX, TRAFFIC_PREFIX, DEPLOYMENTS_PREFIX, GROUPS_PREFIX, ANALYSIS_PREFIX, CONFIG_PREFIX, EVENTS_PREFIX,
    CACHE_PREFIX,
)


def is_sealed_key(key: str) -> bool:
    return key.startswith(SEALED_PREFIXES)


def store_audience(store: Store) -> str:
    """The identity a signature binds a document to, the same whichever side computes it, and taken from each
    side's own settings, never from the store's content (a store writer could rewrite anything in it, the
    `.fleetshift-store` marker included): an S3 store is its bucket and prefix (not the endpoint or region, which
    differ between clients of one bucket); a file store the real path of its folder (so the folder must be
    mounted at the same path on every machine that shares it); any other store its URL."""
    inner = getattr(store, "inner", store)
    bucket = getattr(inner, "bucket", None)
    if isinstance(bucket, str):
        return f"s3://{bucket}/{getattr(inner, 'prefix', '')}"
    root = getattr(inner, "root", None)
    if root is not None:
        return f"file://{os.path.realpath(root)}"
    return str(inner.url)


class SealedStore:
    """`Store` with signatures on `SEALED_PREFIXES` (see the module docstring)."""

    def __init__(self, inner: Store, *, signer: Signer | None, trust: Trust | None) -> None:
        self.inner = inner
        self.url = inner.url
        self.signer = signer
        #: None or empty: nothing is checked (envelopes are unwrapped as they are).
        self.trust = trust if trust else None
        #: Records this signer wrote are checked by their MAC, not their (slower) signature.
        self._mac_key = signer.mac_key if signer is not None else None

    @property
    def audience(self) -> str:
        return store_audience(self.inner)

    def __repr__(self) -> str:
        return f"SealedStore({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        # The backend's own attributes (`local`, `store_id`, `probe`, `root`...) stay reachable.
        return getattr(self.inner, name)

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        stored = self.inner.get(key, if_version_not=if_version_not)
        if stored is None or (if_version_not is not None and stored.version == if_version_not):
            return stored  # absent, or unchanged: no body came back
        return self._checked(stored)

    def get_many(self, keys: Sequence[str]) -> dict[str, StoredObject | None]:
        """`get` of every key, read by the backend's own batch read (contract/store/bulk.py)."""
        return {key: None if stored is None else self._checked(stored)
                for key, stored in get_many(self.inner, keys).items()}

    def read_folders(
        self,
        prefix: str,
        names: Sequence[str],
        subfolders: Sequence[str] = (),
        keep: Callable[[str], bool] = lambda key: True,
    ) -> list[StoredObject]:
        """The objects `bulk.read_folders` names, read by the backend's own way, checked as `get`."""
        return [self._checked(stored) for stored in read_folders(self.inner, prefix, names, subfolders, keep)]

    def _checked(self, stored: StoredObject) -> StoredObject:
        """A read object as this store returns it: a sealed key's envelope opened (`open`), anything else, and an
        object too big to have been read, as it is."""
        if stored.oversize is not None or not is_sealed_key(stored.key):
            return stored
        return self.open(stored)

    def open(self, stored: StoredObject) -> StoredObject:
        """A stored object of a sealed key with its payload in place of the envelope, or `refused` set."""
        if self.trust is None:
            return dataclasses.replace(stored, data=unwrap(stored.data), raw=stored.data)
        try:
            payload, _ = open_envelope(stored.data, trust=self.trust, audience=self.audience, key=stored.key,
                                       mac_key=self._mac_key)
        except Refused as exc:
            return dataclasses.replace(stored, data=b"", refused=str(exc), raw=stored.data)
        return dataclasses.replace(stored, data=payload, raw=stored.data)

    def open_raw(self, objects: Sequence[StoredObject]) -> list[StoredObject]:
        """Objects read earlier as the backend holds them (`raw`), each checked now as `get` would check it."""
        return [self._checked(stored) for stored in open_raw(self.inner, objects)]

    def stored_form(self, key: str, data: bytes) -> bytes | None:
        """What `put(key, data)` left in the backend (`bulk.stored_form`): the envelope `seal` makes, as the wrapped
        store keeps it."""
        return stored_form(self.inner, key, self.seal(key, data))

    def seal(self, key: str, data: bytes) -> bytes:
        if self.signer is None or not is_sealed_key(key):
            return data
        return self.signer.sign(audience=self.audience, key=key, payload=data)

    def put(self, key: str, data: bytes) -> str:
        return self.inner.put(key, self.seal(key, data))

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self.inner.put_if_absent(key, self.seal(key, data))

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        return self.inner.put_if_version(key, self.seal(key, data), version)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[ObjectVersion]:
        return self.inner.list(prefix)


def seal_store(inner: Store, *, signer: Signer | None = None, trust: Trust | None = None) -> Store:
    """`inner` with signing and checking (see the module docstring)."""
    return SealedStore(inner, signer=signer, trust=trust)
