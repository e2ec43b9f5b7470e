"""Bounded reads on every backend: an oversized document is not read, and comes back as an unreadable
document (`DocumentInvalid`), like any other that does not parse; so does one nested deeper than any parser
goes. One bad document must not crash a process or take it to gigabytes."""

from __future__ import annotations

import pytest

from contract.models import Deployment, HostCommand
from contract.store import Store
from contract.store.base import LARGE_DOCUMENT_LIMIT, SMALL_DOCUMENT_LIMIT, read_limit
from contract.store.docs import DocumentCache, DocumentInvalid, read_document, read_if_changed


def test_limits_by_key() -> None:
    assert read_limit("commands/web-1.json") == SMALL_DOCUMENT_LIMIT
    assert read_limit("hosts/web-1/status.json") == SMALL_DOCUMENT_LIMIT
    assert read_limit("deployments/d-1.json") == LARGE_DOCUMENT_LIMIT
    assert read_limit("groups/app/prod.json") == LARGE_DOCUMENT_LIMIT


def test_an_oversized_command_is_not_read(store: Store, store_backend: str) -> None:
    big = b'{"x": "' + b"a" * SMALL_DOCUMENT_LIMIT + b'"}'
    version = store.put("commands/web-1.json", big)
    stored = store.get("commands/web-1.json")
    assert stored is not None and stored.data == b"" and stored.oversize == len(big) and stored.version == version
    with pytest.raises(DocumentInvalid, match="more than the 1048576 bytes") as raised:
        read_document(store, "commands/web-1.json", HostCommand)
    assert raised.value.version == version
    with pytest.raises(DocumentInvalid):
        read_if_changed(store, "commands/web-1.json", HostCommand, None)
    # Exactly at the limit is read (and then fails as JSON that is not a command, not as too big).
    store.put("commands/web-2.json", b" " * (SMALL_DOCUMENT_LIMIT - 2) + b"{}")
    at_limit = store.get("commands/web-2.json")
    assert at_limit is not None and at_limit.oversize is None and len(at_limit.data) == SMALL_DOCUMENT_LIMIT


def test_a_deployment_may_be_larger(store: Store) -> None:
    data = b'{"x": "' + b"a" * (2 * SMALL_DOCUMENT_LIMIT) + b'"}'
    store.put("deployments/d-1.json", data)
    stored = store.get("deployments/d-1.json")
    assert stored is not None and stored.oversize is None and stored.data == data


def test_deep_nesting_is_an_unreadable_document_not_a_crash(store: Store) -> None:
    for payload in (b"[" * 100_000, b'{"schemaVersion": ' + b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000):
        store.put("commands/web-1.json", payload)
        with pytest.raises(DocumentInvalid):
            read_document(store, "commands/web-1.json", HostCommand)
        store.put("deployments/d-1.json", payload)
        cache = DocumentCache(store, "deployments/", Deployment)
        cache.refresh()
        assert "deployments/d-1.json" in cache.invalid
