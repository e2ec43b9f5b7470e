"""The agent's status writes by compare-and-swap (agent/daemon/claim.py): a write of its own whose answer was lost
is recognised, however many failed attempts came after it; another writer of the same host id is not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from agent.daemon.claim import HostIdInUse, HostIdOwner
from agent.daemon.identity import Installation
from agent.settings import AgentSettings
from contract.keys import status_key
from contract.store.memory import MemoryStore
from contract.wire import HostStatus

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def owner(store: MemoryStore, tmp_path: Path) -> HostIdOwner:
    settings = AgentSettings(host_id="web-1", store="file:///unused", root_dir=tmp_path)
    installation = Installation(installation_id="i-1", created_at=T0, hostname="web-1")
    found = HostIdOwner(settings, store, installation, take_over=False, hostname="web-1",
                        log=structlog.get_logger("test"), now=lambda: T0, monotonic=lambda: 0.0)
    found.claim()
    return found


def status(seconds: int, *, started_at: datetime = T0, installation: str = "i-1") -> HostStatus:
    return HostStatus(host_id="web-1", heartbeat_at=T0 + timedelta(seconds=seconds), agent_version="t",
                      installation_id=installation, started_at=started_at)


def test_a_landed_write_whose_answer_was_lost_before_several_failed_ones_is_ours(tmp_path: Path) -> None:
    store = MemoryStore()
    agent = owner(store, tmp_path)
    agent.write_status(status(1))
    # The store vanished mid-write: attempt 2 landed but its answer was lost, attempts 3 and 4 failed outright.
    store.put(status_key("web-1"), status(2).to_json())
    agent._last_status_attempt = status(4).to_json()  # what the agent tried last, before the store came back

    agent.write_status(status(5))

    stored = store.get(status_key("web-1"))
    assert stored is not None and stored.data == status(5).to_json()


def test_a_copy_of_the_installation_writing_the_same_status_is_still_a_conflict(tmp_path: Path) -> None:
    store = MemoryStore()
    agent = owner(store, tmp_path)
    agent.write_status(status(1))
    # Same installation id (a cloned root), but another process: it started at another time.
    store.put(status_key("web-1"), status(2, started_at=T0 + timedelta(minutes=5)).to_json())

    with pytest.raises(HostIdInUse, match="a copy of this installation"):
        agent.write_status(status(3))
