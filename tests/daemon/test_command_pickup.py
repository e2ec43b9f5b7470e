"""How fast a host sees a command written for it (issue 18), with real agent processes.

- File store: the agent watches its command key (agent/daemon/command_watch.py), so a command is picked up in a
  fraction of a second even with a poll interval of minutes, also when `commands/` did not exist at its start.
- S3: while a deployment of one of its groups is in flight (agent/daemon/rollout_signal.py) the agent polls its
  command at the busy interval; idle, it still sends one GET per poll interval, some of them for the group
  record; an IAM policy that refuses `groups/` costs one request and changes nothing else.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.daemon.command_watch import CommandWatch
from agent.daemon.rollout_signal import RolloutSignal
from agent.lifecycle.layout import DeploymentRoot
from contract.keys import command_key, group_state_key
from contract.models import GroupState
from contract.store import Store, open_store
from contract.store.docs import write_document
from contract.wire import InstalledRevision
from tests.conftest import S3Server
from tests.daemon.agentproc import AgentHost, make_bundle, make_command, stop_agent, wait_for
from tests.daemon.conftest import HostFactory
from tests.store.s3proxy import S3Proxy, running_proxy

#: Far longer than any wait below: a command seen in time cannot have been found by an ordinary poll.
SLOW_POLL = "60s"


def _received_within(host: AgentHost, written: float, process: object) -> float:
    record = wait_for(lambda: host.log_events("command.received"), "the command to be received", timeout=20,
                      process=process)  # type: ignore[arg-type]
    received = datetime.fromisoformat(record[0]["timestamp"]).timestamp()
    return received - written


# --------------------------------------------------------------------------------------------------
# File store: the command key is watched


@pytest.mark.slow
@pytest.mark.parametrize("commands_folder_exists", [True, False])
def test_a_file_store_agent_sees_its_command_at_once(file_host: HostFactory, tmp_path: Path,
                                                     commands_folder_exists: bool) -> None:
    host = file_host("web-1")
    host.env["FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL"] = SLOW_POLL
    other = make_command("web-2", 1, make_bundle(tmp_path / "other"))
    if commands_folder_exists:
        write_document(host.store, command_key("web-2"), other)
    process = host.start("--poll-interval", SLOW_POLL)
    try:
        wait_for(lambda: host.log_events("agent.registered") or host.log_events("agent.started"),
                 "the agent to start", process=process)
        # The first poll is done once the status is written; give the watch time to be in place.
        wait_for(lambda: (host.store.get(f"hosts/{host.host_id}/status.json")), "the first status")
        time.sleep(1.5)
        write_document(host.store, command_key(host.host_id), make_command(host.host_id, 1, make_bundle(
            tmp_path / "bundle")))
        written = time.time()
        assert _received_within(host, written, process) < 2.0
    finally:
        assert stop_agent(process) == 0


def test_the_watch_wakes_for_its_own_key_only(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    write_document(store, command_key("web-2"), make_command("web-2", 1, tmp_path))  # commands/ exists
    stop = threading.Event()
    watch = CommandWatch(tmp_path / "store", "web-1", stop)
    watch.start()
    try:
        wait_for(watch.watching.is_set, "the watch to be in place", timeout=15)
        assert watch.wait(0.05) is False
        write_document(store, command_key("web-2"), make_command("web-2", 2, tmp_path))
        assert watch.wait(1.0) is False  # another host's command
        started = time.monotonic()
        write_document(store, command_key("web-1"), make_command("web-1", 1, tmp_path))
        assert watch.wait(10.0) is True
        assert time.monotonic() - started < 2.0
        assert watch.wait(0.2) is False  # one change, one wake-up
    finally:
        stop.set()
    # Stopping ends the wait of whoever waits, and the thread.
    assert watch.wait(5.0) is False
    watch._thread.join(timeout=5)
    assert not watch._thread.is_alive()


def test_a_missing_commands_folder_is_watched_for(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    stop = threading.Event()
    watch = CommandWatch(tmp_path / "store", "web-1", stop)
    watch.start()
    try:
        wait_for(watch.watching.is_set, "the watch on the store's folder", timeout=15)
        write_document(store, command_key("web-1"), make_command("web-1", 1, tmp_path))
        assert watch.wait(10.0) is True  # the folder appeared, with the command in it
        watch.watching.clear()
        wait_for(watch.watching.is_set, "the watch on commands/", timeout=15)
        write_document(store, command_key("web-1"), make_command("web-1", 2, tmp_path))
        assert watch.wait(10.0) is True
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------------
# S3: a rollout of the host's group makes it poll at the busy interval


def _in_group(host: AgentHost) -> None:
    """The host has had a revision of hello/production installed: it tracks that group's record."""
    DeploymentRoot(host.root_dir).group("dg-production").record_installed(InstalledRevision(
        application="hello", deployment_group="production", revision=make_command(host.host_id, 1, host.base).revision,
        deployment_id="d-000000001", installed_at=datetime.now(UTC)))


def _write_group(store: Store, in_flight: str | None) -> None:
    write_document(store, group_state_key("hello", "production"), GroupState(
        application="hello", deployment_group="production", deployment_in_flight=in_flight,
        updated_at=datetime.now(UTC)))


def _s3_host(tmp_path: Path, s3_server: S3Server, agent_bucket: str, proxy: S3Proxy) -> AgentHost:
    prefix = f"fleet-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{agent_bucket}/{prefix}?endpoint={s3_server.endpoint_url}")
    return AgentHost("web-1", tmp_path / "web-1", store, env={**s3_server.env(), "AWS_ENDPOINT_URL":
                     proxy.endpoint_url}, agent_store_url=f"s3://{agent_bucket}/{prefix}")


def _gets(proxy: S3Proxy, part: str) -> int:
    return sum(1 for e in proxy.exchanges if e.method == "GET" and part in e.path)


@pytest.mark.slow
def test_an_s3_agent_polls_fast_while_its_group_rolls_out(tmp_path: Path, s3_server: S3Server,
                                                          agent_bucket: str) -> None:
    with running_proxy(s3_server.endpoint_url) as proxy:
        host = _s3_host(tmp_path, s3_server, agent_bucket, proxy)
        host.env["FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL"] = "200ms"
        _in_group(host)
        _write_group(host.store, "d-000000002")
        process = host.start("--poll-interval", "3s")
        try:
            # Idle, the agent reads its command, waits a poll interval, reads the group record: in flight.
            wait_for(lambda: _gets(proxy, "/groups/"), "a read of the group record", process=process)
            before = _gets(proxy, "/commands/web-1.json")
            time.sleep(2.0)
            # At the busy pace (200 ms) that is about ten reads; at the idle pace (3 s, every other one spent on
            # the group record) at most one.
            assert _gets(proxy, "/commands/web-1.json") - before >= 4
            write_document(host.store, command_key("web-1"), make_command("web-1", 2, make_bundle(tmp_path / "b")))
            assert _received_within(host, time.time(), process) < 1.5
        finally:
            assert stop_agent(process) == 0


@pytest.mark.slow
def test_an_idle_s3_agent_in_a_group_sends_one_get_per_poll_interval(tmp_path: Path, s3_server: S3Server,
                                                                     agent_bucket: str) -> None:
    with running_proxy(s3_server.endpoint_url) as proxy:
        host = _s3_host(tmp_path, s3_server, agent_bucket, proxy)
        _in_group(host)
        _write_group(host.store, None)
        process = host.start("--poll-interval", "250ms", "--heartbeat-interval", "1h")
        try:
            wait_for(lambda: _gets(proxy, "/groups/"), "a read of the group record", process=process)
            proxy.clear()
            started = time.monotonic()
            time.sleep(3.0)
            elapsed = time.monotonic() - started
            gets = [e for e in proxy.exchanges if e.method == "GET"]
        finally:
            assert stop_agent(process) == 0
    group_reads = sum(1 for e in gets if "/groups/" in e.path)
    assert len(gets) <= elapsed / 0.25 + 1  # the budget of an agent that only polls its command
    assert group_reads >= 3 and len(gets) - group_reads >= 3  # shared between the command and the group record
    # Conditional reads of the group record: it did not change, so no body moved.
    assert all(e.status == 304 for e in gets if "/groups/" in e.path)


def test_the_signal_follows_the_group_record(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    signal = RolloutSignal(store)
    assert not signal.usable and signal.read_next() is False and signal.reads == 0
    signal.track("hello", "production")
    signal.track("hello", "production")
    assert signal.usable and signal.read_next() is False  # no record yet
    _write_group(store, "d-000000002")
    assert signal.read_next() is True and signal.in_flight
    assert signal.read_next() is True  # unchanged: still in flight
    _write_group(store, None)
    assert signal.read_next() is False
    store.put(group_state_key("hello", "production"), b"{not json")
    assert signal.read_next() is False  # unreadable: no hint, the idle poll goes on


def test_a_policy_that_refuses_group_records_costs_one_request(s3_server: S3Server, agent_bucket: str) -> None:
    with running_proxy(s3_server.endpoint_url) as proxy:
        store = open_store(f"s3://{agent_bucket}/fleet-{uuid.uuid4().hex[:8]}?endpoint={proxy.endpoint_url}")
        _write_group(store, "d-000000002")
        signal = RolloutSignal(store)
        signal.track("hello", "production")
        proxy.clear()
        proxy.fail_next(1, 403, "AccessDenied", methods={"GET"})
        assert signal.read_next() is False
        assert signal.denied and not signal.usable
        assert signal.read_next() is False and not signal.in_flight
        assert len(proxy.exchanges) == 1
