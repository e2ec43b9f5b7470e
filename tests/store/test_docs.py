"""Typed documents over the store (contract/store/docs.py), on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contract.keys import HOSTS_PREFIX, status_key
from contract.models import HostRegistration, HostStatus
from contract.store import PreconditionFailed, Store
from contract.store.docs import (
    DocumentCache,
    DocumentInvalid,
    Versioned,
    create_document,
    read_document,
    read_if_changed,
    replace_document,
    write_document,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def status(host: str, minute: int = 0) -> HostStatus:
    return HostStatus(host_id=host, heartbeat_at=NOW.replace(minute=minute), agent_version="0.1.0")


def test_round_trip_with_version_and_schema_version_on_the_wire(store: Store) -> None:
    version = write_document(store, status_key("web-1"), status("web-1"))
    read = read_document(store, status_key("web-1"), HostStatus)
    assert read == Versioned(status("web-1"), version)
    raw = store.get(status_key("web-1"))
    assert raw is not None and b'"schemaVersion": 1' in raw.data and b'"hostId": "web-1"' in raw.data
    assert read_document(store, status_key("nobody"), HostStatus) is None


def test_create_and_replace_are_compare_and_swap(store: Store) -> None:
    key = "hosts/web-1/registration.json"
    registration = HostRegistration(host_id="web-1", platform="linux", hostname="web-1", agent_version="0.1.0",
                                    registered_at=NOW)
    version = create_document(store, key, registration)
    with pytest.raises(PreconditionFailed):
        create_document(store, key, registration)
    moved = registration.model_copy(update={"zone": "a"})
    new_version = replace_document(store, key, moved, version)
    with pytest.raises(PreconditionFailed):
        replace_document(store, key, registration, version)
    assert read_document(store, key, HostRegistration) == Versioned(moved, new_version)


def test_read_if_changed_returns_the_same_object_when_nothing_moved(store: Store) -> None:
    key = status_key("web-1")
    write_document(store, key, status("web-1"))
    first = read_if_changed(store, key, HostStatus, None)
    assert first is not None
    assert read_if_changed(store, key, HostStatus, first) is first
    write_document(store, key, status("web-1", minute=5))
    second = read_if_changed(store, key, HostStatus, first)
    assert second is not None and second.document.heartbeat_at.minute == 5
    store.delete(key)
    assert read_if_changed(store, key, HostStatus, second) is None


def test_invalid_documents_name_the_key_and_the_field(store: Store) -> None:
    store.put(status_key("bad"), b'{"schemaVersion": 1, "hostId": "bad", "heartbeatAt": "soon", "agentVersion": "x"}')
    with pytest.raises(DocumentInvalid, match=r"hosts/bad/status.json: not a valid HostStatus: heartbeatAt: "):
        read_document(store, status_key("bad"), HostStatus)
    store.put(status_key("junk"), b"not json at all")
    with pytest.raises(DocumentInvalid, match=r"hosts/junk/status.json: not a valid HostStatus"):
        read_document(store, status_key("junk"), HostStatus)


def test_newer_schema_says_to_upgrade(store: Store) -> None:
    store.put(status_key("future"), b'{"schemaVersion": 2, "hostId": "future", "somethingNew": true}')
    with pytest.raises(DocumentInvalid, match=r"schemaVersion 2, but this fleetshift reads up to 1: upgrade"):
        read_document(store, status_key("future"), HostStatus)


def test_cache_refetches_only_what_changed(store: Store) -> None:
    for index in range(12):
        write_document(store, status_key(f"h{index}"), status(f"h{index}"))
        store.put(f"hosts/h{index}/registration.json", b"not a status")
    cache = DocumentCache(store, HOSTS_PREFIX, HostStatus)
    result = cache.refresh(suffix="/status.json", workers=4)
    assert cache.last_fetched == 12 and len(result.updated) == 12 and not cache.invalid
    assert cache.refresh(suffix="/status.json").updated == [] and cache.last_fetched == 0

    write_document(store, status_key("h3"), status("h3", minute=9))
    store.put(status_key("h7"), b"{broken")
    store.delete(status_key("h11"))
    result = cache.refresh(suffix="/status.json")
    assert sorted(result.updated) == [status_key("h3"), status_key("h7")]
    assert result.removed == [status_key("h11")]
    assert cache.last_fetched == 2
    assert cache.latest()[status_key("h3")].heartbeat_at.minute == 9
    assert list(cache.invalid) == [status_key("h7")] and status_key("h7") not in cache.documents
    # A broken document is not re-read until it changes.
    cache.refresh(suffix="/status.json")
    assert cache.last_fetched == 0
