"""One agent installation per host id: real `deploy-agent run` processes sharing a file store. A second
installation configured with a host id that a live one owns is refused with a message that says who holds it
and how to fix it; a restart is never refused; a dead installation's host id is taken over once its heartbeat
is stale; an installation taken over while it runs stops writing instead of fighting back. Plus the identity
file itself (created once, replaced when the root was copied from another machine) and old documents."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.daemon.identity import INSTALLATION_FILE, Installation, StateError, load_installation
from contract.keys import conflict_key, registration_key, status_key
from contract.store import Store, open_store
from contract.store.docs import read_document
from contract.vocabulary import ConflictReason
from contract.wire import HostConflict, HostRegistration, HostStatus
from tests.daemon.agentproc import AgentHost, stop_agent, wait_for

pytestmark = pytest.mark.slow


def installation_id(host: AgentHost) -> str:
    return Installation.model_validate_json((host.root_dir / INSTALLATION_FILE).read_bytes()).installation_id


def registration(store: Store, host_id: str = "web-1") -> HostRegistration | None:
    found = read_document(store, registration_key(host_id), HostRegistration)
    return found.document if found is not None else None


def heartbeat_after(host: AgentHost, moment: datetime) -> HostStatus | None:
    status = host.status()
    return status if status is not None and status.heartbeat_at > moment else None


def exited(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("the agent kept running") from None


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(f"file://{tmp_path / 'store'}")


def test_a_second_installation_with_the_same_host_id_is_refused_and_the_first_keeps_running(
    store: Store, tmp_path: Path
) -> None:
    first = AgentHost("web-1", tmp_path / "first", store)
    second = AgentHost("web-1", tmp_path / "second", store)
    agent = first.start("--heartbeat-interval", "1s")
    try:
        wait_for(first.status, "the first agent's heartbeat", process=agent)
        owner = installation_id(first)
        before = registration(store)
        assert before is not None and before.installation_id == owner

        rival = second.start()
        assert exited(rival) == 1
        output = second.agent_log.read_text()
        assert "Traceback" not in output
        assert "host id 'web-1' is in use by another agent installation" in output
        assert f"installation {owner}" in output and f"host name {socket.gethostname()!r}" in output
        assert "running since" in output and "hostId in agent.yaml" in output and "--take-over" in output

        # The refused agent wrote nothing of the host's and ran nothing; it left a record for `reconcile status`.
        assert registration(store) == before
        conflict = read_document(store, conflict_key("web-1", installation_id(second)), HostConflict)
        assert conflict is not None and conflict.document.reason == ConflictReason.REFUSED
        assert conflict.document.other_installation_id == owner and conflict.document.resolved_at is None
        refused_at = datetime.now(UTC)
        status = wait_for(lambda: heartbeat_after(first, refused_at), "the first agent's next heartbeat",
                          process=agent)
        assert status.installation_id == owner and agent.poll() is None
    finally:
        assert stop_agent(agent) == 0


def test_a_restarted_agent_keeps_its_identity_and_is_not_refused(store: Store, tmp_path: Path) -> None:
    host = AgentHost("web-1", tmp_path / "web-1", store)
    agent = host.start()
    wait_for(host.status, "the first heartbeat", process=agent)
    identity = (host.root_dir / INSTALLATION_FILE).read_bytes()
    assert stop_agent(agent) == 0

    # A clean restart, then a kill -9 and an immediate restart: the heartbeat in the store is fresh both times.
    for restart in ("sigterm", "sigkill"):
        started = datetime.now(UTC)
        agent = host.start()
        status = wait_for(lambda started=started: heartbeat_after(host, started),  # type: ignore[misc]
                          f"a heartbeat after the {restart} restart", process=agent)
        assert status.installation_id == installation_id(host)
        if restart == "sigterm":
            assert stop_agent(agent) == 0
        else:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
    started = datetime.now(UTC)
    agent = host.start()
    try:
        wait_for(lambda: heartbeat_after(host, started), "a heartbeat after kill -9", process=agent)
    finally:
        assert stop_agent(agent) == 0
    assert (host.root_dir / INSTALLATION_FILE).read_bytes() == identity
    assert "is in use" not in host.agent_log.read_text()


def test_a_dead_installation_is_taken_over_once_its_heartbeat_is_stale(store: Store, tmp_path: Path) -> None:
    old = AgentHost("web-1", tmp_path / "old", store)
    new = AgentHost("web-1", tmp_path / "reinstalled", store)
    agent = old.start("--heartbeat-interval", "1s")
    wait_for(old.status, "the old installation's heartbeat", process=agent)
    agent.send_signal(signal.SIGKILL)  # the machine dies; its documents stay in the store
    agent.wait()

    early = new.once()
    assert early.returncode == 1 and "is in use by another agent installation" in early.stderr
    assert "takes the host id over by itself once it has been silent for 8s" in early.stderr

    # 3 missed heartbeats of 1s plus 5s for clock skew, then no manual step: just start again. Rather than
    # wait 8.5 s, the agent starts again in-process with its clock 9 s on.
    later = new.once_in_process(now=lambda: datetime.now(UTC) + timedelta(seconds=9))
    assert later == 0
    owner = registration(store)
    assert owner is not None and owner.installation_id == installation_id(new)
    status = new.status()
    assert status is not None and status.installation_id == installation_id(new)
    conflict = read_document(store, conflict_key("web-1", installation_id(new)), HostConflict)
    assert conflict is not None and conflict.document.resolved_at is not None  # no longer shown as a problem


def test_an_agent_taken_over_while_running_stops_writing_and_exits_1(store: Store, tmp_path: Path) -> None:
    first = AgentHost("web-1", tmp_path / "first", store)
    second = AgentHost("web-1", tmp_path / "second", store)
    agent = first.start("--heartbeat-interval", "300ms")
    rival: subprocess.Popen[bytes] | None = None
    try:
        wait_for(first.status, "the first agent's heartbeat", process=agent)
        rival = second.start("--take-over", "--heartbeat-interval", "300ms")
        assert exited(agent) == 1
        output = first.agent_log.read_text()
        assert "Traceback" not in output and "host_id_conflict" in output
        assert f"installation {installation_id(second)}" in output and "stopped writing" in output
        conflict = read_document(store, conflict_key("web-1", installation_id(first)), HostConflict)
        assert conflict is not None and conflict.document.reason == ConflictReason.OVERWRITTEN

        # The winner keeps both documents; the loser, gone, never wrote again.
        time.sleep(1.0)
        assert rival.poll() is None
        owner = registration(store)
        status = second.status()
        assert owner is not None and owner.installation_id == installation_id(second)
        assert status is not None and status.installation_id == installation_id(second)
    finally:
        stop_agent(agent)
        if rival is not None:
            assert stop_agent(rival) == 0


def test_an_old_registration_is_read_and_adopted_by_the_upgraded_agent_on_the_same_machine(
    store: Store, tmp_path: Path
) -> None:
    now = datetime.now(UTC).isoformat()
    # Exactly what an agent older than installation ids wrote.
    old_registration = {"schemaVersion": 1, "hostId": "web-1", "tags": {"app": "hello"}, "platform": "linux",
                        "hostname": socket.gethostname(), "agentVersion": "0.1.0", "registeredAt": now}
    old_status = {"schemaVersion": 1, "hostId": "web-1", "heartbeatAt": now, "agentVersion": "0.1.0",
                  "installed": {}, "heartbeatIntervalSeconds": 300.0}
    store.put(registration_key("web-1"), json.dumps(old_registration).encode())
    store.put(status_key("web-1"), json.dumps(old_status).encode())
    parsed = registration(store)
    assert parsed is not None and parsed.installation_id is None and parsed.hostname == socket.gethostname()

    host = AgentHost("web-1", tmp_path / "web-1", store)
    upgraded = host.once()
    assert upgraded.returncode == 0, upgraded.stderr
    owner = registration(store)
    assert owner is not None and owner.installation_id == installation_id(host)

    # An old agent on another machine with a fresh heartbeat is someone else: refused.
    store.put(registration_key("web-2"), json.dumps({**old_registration, "hostId": "web-2",
                                                     "hostname": "elsewhere"}).encode())
    store.put(status_key("web-2"), json.dumps({**old_status, "hostId": "web-2"}).encode())
    other = AgentHost("web-2", tmp_path / "web-2", store).once()
    assert other.returncode == 1
    assert "an agent older than installation ids, on host name 'elsewhere'" in other.stderr


def test_identity_is_created_once_and_replaced_when_the_root_comes_from_another_machine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / f".{INSTALLATION_FILE}.4242.tmp").write_bytes(b"half")  # left by a kill -9 mid-write
    created, warning = load_installation(root, machine="a" * 32)
    assert warning is None and not list(root.glob(".*.tmp"))
    assert created.hostname == socket.gethostname() and len(created.installation_id) == 32

    again, warning = load_installation(root, machine="a" * 32)
    assert again == created and warning is None
    unknown, warning = load_installation(root, machine=None)  # no machine id here: cannot tell, keep it
    assert unknown == created and warning is None

    clone, warning = load_installation(root, machine="b" * 32)  # the root was copied to another machine
    assert clone.installation_id != created.installation_id and clone.replaces == created.installation_id
    assert warning is not None and "created on another machine" in warning
    assert created.installation_id in warning and clone.installation_id in warning
    assert load_installation(root, machine="b" * 32) == (clone, None)  # and it sticks

    (root / INSTALLATION_FILE).write_text("{not json")
    with pytest.raises(StateError, match=r"is unreadable .* Remove it to give this installation a new identity"):
        load_installation(root, machine="b" * 32)


def test_old_documents_without_installation_ids_still_parse() -> None:
    registration_json = (b'{"schemaVersion": 1, "hostId": "h", "tags": {}, "platform": "linux", "hostname": "h", '
                         b'"agentVersion": "0.1.0", "registeredAt": "2026-01-01T00:00:00Z"}')
    status_json = b'{"schemaVersion": 1, "hostId": "h", "heartbeatAt": "2026-01-01T00:00:00Z", "agentVersion": "0.1"}'
    old = HostRegistration.model_validate_json(registration_json)
    status = HostStatus.model_validate_json(status_json)
    assert old.installation_id is None and status.installation_id is None and status.started_at is None
    assert old.registered_at == datetime(2026, 1, 1, tzinfo=UTC) and status.heartbeat_at - old.registered_at == \
        timedelta(0)
