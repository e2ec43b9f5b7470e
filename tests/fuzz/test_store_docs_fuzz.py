"""Fuzz the store's document reader: hostile bytes and hostile JSON for every document type, read through
contract/store/docs.py the way both sides read them. The only acceptable outcomes are a document or
`DocumentInvalid`: never another exception (RecursionError, UnicodeDecodeError, MemoryError...), which would
crash a process at every start on one bad document.

Budget: `FLEETSHIFT_FUZZ_EXAMPLES` examples per test (default 50, about 20 s in CI); the seed
corpus in tests/fuzz/corpus/store/ is always run in full, whole and mutated.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.models import (
    Deployment,
    Document,
    GroupState,
    HostCommand,
    HostConflict,
    HostRegistration,
    HostStatus,
    Lease,
)
from contract.store import MemoryStore, StoredObject
from contract.store.base import SMALL_DOCUMENT_LIMIT
from contract.store.docs import DocumentCache, DocumentInvalid, parse_document, read_document, read_if_changed

CORPUS = Path(__file__).parent / "corpus" / "store"
EXAMPLES = int(os.environ.get("FLEETSHIFT_FUZZ_EXAMPLES", "50"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Every document type with a key it lives under.
DOCUMENTS: list[tuple[type[Document], str]] = [
    (HostRegistration, "hosts/web-1/registration.json"),
    (HostStatus, "hosts/web-1/status.json"),
    (HostConflict, "hosts/web-1/conflicts/i-1.json"),
    (HostCommand, "commands/web-1.json"),
    (Deployment, "deployments/d-1.json"),
    (GroupState, "groups/app/prod.json"),
    (Lease, "leases/reconciler.json"),
]
SEEDS = sorted(CORPUS.glob("*.json"))


def read_every_way(model: type[Document], key: str, data: bytes) -> None:
    """parse_document, read_document, read_if_changed and DocumentCache: a document or DocumentInvalid."""
    with contextlib.suppress(DocumentInvalid):
        parse_document(StoredObject(key, data, "v1"), model)
    store = MemoryStore()
    store.put(key, data)
    for read in (lambda: read_document(store, key, model), lambda: read_if_changed(store, key, model, None)):
        with contextlib.suppress(DocumentInvalid):
            read()
    prefix = key.split("/", 1)[0] + "/"
    cache = DocumentCache(store, prefix, model)
    cache.refresh()
    assert set(cache.documents) | set(cache.invalid) == {key}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)
field_names = st.sampled_from(["schemaVersion", "hostId", "generation", "revision", "events", "hosts", "status",
                               "holder", "expiresAt", "installationId", "deploymentId", "history", "installed"])
hostile_objects = st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=8)


@pytest.mark.parametrize(("model", "key"), DOCUMENTS, ids=[model.__name__ for model, _ in DOCUMENTS])
@BUDGET
@given(data=st.binary(max_size=2048))
def test_hostile_bytes(model: type[Document], key: str, data: bytes) -> None:
    read_every_way(model, key, data)


@pytest.mark.parametrize(("model", "key"), DOCUMENTS, ids=[model.__name__ for model, _ in DOCUMENTS])
@BUDGET
@given(value=hostile_objects | json_values)
def test_hostile_json(model: type[Document], key: str, value: Any) -> None:
    read_every_way(model, key, json.dumps(value).encode())


@pytest.mark.parametrize(("model", "key"), DOCUMENTS, ids=[model.__name__ for model, _ in DOCUMENTS])
@BUDGET
@given(depth=st.integers(min_value=1, max_value=120_000),
       opener=st.sampled_from([b"[", b'{"a":', b'{"schemaVersion":[']), closed=st.booleans())
def test_deep_nesting(model: type[Document], key: str, depth: int, opener: bytes, closed: bool) -> None:
    closer = {b"[": b"]", b'{"a":': b"}", b'{"schemaVersion":[': b"]}"}[opener]
    read_every_way(model, key, opener * depth + (closer * depth if closed else b""))


@pytest.mark.parametrize("seed", SEEDS, ids=[seed.name for seed in SEEDS])
@pytest.mark.parametrize(("model", "key"), DOCUMENTS, ids=[model.__name__ for model, _ in DOCUMENTS])
def test_seed_corpus(model: type[Document], key: str, seed: Path) -> None:
    read_every_way(model, key, seed.read_bytes())


@pytest.mark.parametrize(("model", "key"), DOCUMENTS, ids=[model.__name__ for model, _ in DOCUMENTS])
@BUDGET
@given(seed=st.sampled_from(SEEDS), cut=st.integers(min_value=0), insert=st.binary(max_size=16),
       drop=st.integers(min_value=0, max_value=8))
def test_mutated_seeds(model: type[Document], key: str, seed: Path, cut: int, insert: bytes, drop: int) -> None:
    data = seed.read_bytes()
    at = cut % (len(data) + 1)
    read_every_way(model, key, data[:at] + insert + data[at + drop:])


def test_oversized_documents_are_invalid_not_read() -> None:
    for model, key in DOCUMENTS:
        if not key.startswith(("deployments/", "groups/")):
            read_every_way(model, key, b" " * SMALL_DOCUMENT_LIMIT + b"{}")
