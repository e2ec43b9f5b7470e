"""HAProxyBalancer, LocalHAProxy and LoadGenerator against a real HAProxy (the system's binary) in front of real
HTTP server processes (tests/traffic/haproxy_support.py). Health checks run every 100 ms, so every state change
a test waits for takes a fraction of a second.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab.haproxy import LocalHAProxy, free_port, haproxy_path
from fleetlab.loadgen import LoadGenerator
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.desired.traffic_spec import HAProxySpec
from reconciler.traffic.base import HostEndpoint, LoadBalancer, TrafficError
from reconciler.traffic.haproxy import HAProxyBalancer
from tests.conftest import require_tool
from tests.traffic.haproxy_support import AppProcess

H1, H2 = HostEndpoint("host-1"), HostEndpoint("host-2")


@pytest.fixture(autouse=True)
def _needs_haproxy() -> None:
    require_tool("haproxy", "haproxy")


@dataclass
class Fleet:
    haproxy: LocalHAProxy
    apps: dict[str, AppProcess]

    @property
    def balancer(self) -> HAProxyBalancer:
        return self.haproxy.balancer()


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    started: list[Fleet] = []

    def make(names: tuple[str, ...] = ("host-1", "host-2"), **haproxy_options: object) -> Fleet:
        apps = {name: AppProcess(name, free_port()).start() for name in names}
        for app in apps.values():
            app.wait_listening()
        servers = [(name, "127.0.0.1", app.port) for name, app in apps.items()]
        haproxy = LocalHAProxy(tmp_path / f"haproxy-{len(started)}", servers, **haproxy_options)  # type: ignore[arg-type]
        fleet = Fleet(haproxy, apps)
        started.append(fleet)
        haproxy.start()
        return fleet

    yield make
    for fleet in started:
        fleet.haproxy.stop()
        for app in fleet.apps.values():
            app.kill()


def wait_for(balancer: LoadBalancer, host: HostEndpoint, state: TargetState, timeout: float = 5.0) -> TargetObservation:
    deadline = time.monotonic() + timeout
    seen = balancer.observe([host])[host.host_id]
    while seen.state is not state and time.monotonic() < deadline:
        time.sleep(0.02)
        seen = balancer.observe([host])[host.host_id]
    assert seen.state is state, f"waited {timeout}s for {state}, last seen {seen}"
    return seen


def slow_request(url: str, seconds: float) -> threading.Thread:
    """A request HAProxy keeps open for `seconds` (its status lands in the thread's `status` attribute)."""
    def run() -> None:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=seconds + 5)
        connection.request("GET", f"/slow?seconds={seconds}")
        response = connection.getresponse()
        response.read()
        thread.status = response.status  # type: ignore[attr-defined]
        connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- observe and the three calls -----------------------------------------------------------------------------


def test_names_and_healthy_servers_are_in_service(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    balancer = fleet.balancer
    assert balancer.name == f"haproxy backend web ({fleet.haproxy.runtime_api})"
    assert balancer.target_name(H1) == "web/host-1"
    renamed = fleet.haproxy.balancer(servers={"i-1": "host-2"})
    assert renamed.target_name(HostEndpoint("i-1")) == "web/host-2"
    seen = balancer.observe([H1, H2])
    assert seen == {
        "host-1": TargetObservation(TargetState.IN_SERVICE, "haproxy web/host-1: UP"),
        "host-2": TargetObservation(TargetState.IN_SERVICE, "haproxy web/host-2: UP"),
    }
    assert renamed.observe([HostEndpoint("i-1")])["i-1"].detail == "haproxy web/host-2: UP"
    assert balancer.drain_hint_seconds() is None
    balancer.close()


def test_block_drains_open_sessions_then_maint_then_allow_waits_for_checks(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    balancer = fleet.balancer
    # Only host-1 takes requests, so the slow one surely lands there.
    assert balancer.finish_block(H2) == "haproxy web/host-2: state maint"
    slow = slow_request(fleet.haproxy.url, 1.5)
    deadline = time.monotonic() + 3
    while fleet.haproxy.server_states()["host-1"].sessions != 1 and time.monotonic() < deadline:
        time.sleep(0.02)

    assert balancer.block(H1) == "haproxy web/host-1: state drain"
    assert balancer.block(H1) == "haproxy web/host-1: state drain"  # idempotent
    draining = balancer.observe([H1])["host-1"]
    assert draining == TargetObservation(TargetState.DRAINING, "haproxy web/host-1: DRAIN, 1 session", sessions=1)

    slow.join(timeout=5)
    assert slow.status == 200  # type: ignore[attr-defined]
    drained = balancer.observe([H1])["host-1"]
    assert (drained.state, drained.sessions, drained.detail) == (
        TargetState.DRAINING, 0, "haproxy web/host-1: DRAIN, 0 sessions"
    )

    balancer.finish_block(H1)
    balancer.finish_block(H1)  # idempotent
    out = balancer.observe([H1])["host-1"]
    assert out == TargetObservation(TargetState.OUT_OF_SERVICE, "haproxy web/host-1: MAINT")

    # Back from maintenance: HAProxy alone would say UP at once; allow makes it earn UP through its checks.
    assert "health down" in balancer.allow(H1)
    first = balancer.observe([H1])["host-1"]
    assert first.state is TargetState.STARTING, first
    assert first.detail.startswith("haproxy web/host-1: DOWN")
    wait_for(balancer, H1, TargetState.IN_SERVICE, timeout=3)
    assert balancer.allow(H1) == "haproxy web/host-1: state ready"  # idempotent, and no second health down
    assert balancer.observe([H1])["host-1"].state is TargetState.IN_SERVICE


def test_allow_of_a_dead_server_never_reads_in_service(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    balancer = fleet.balancer
    balancer.block(H1)
    balancer.finish_block(H1)
    fleet.apps["host-1"].kill()
    balancer.allow(H1)
    deadline = time.monotonic() + 1.0  # 10 check intervals
    while time.monotonic() < deadline:
        seen = balancer.observe([H1])["host-1"]
        assert seen.state is TargetState.STARTING, seen
        time.sleep(0.02)


def test_a_stopped_server_is_starting_and_comes_back(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    balancer = fleet.balancer
    fleet.apps["host-2"].kill()
    down = wait_for(balancer, H2, TargetState.STARTING)
    assert down.detail.startswith("haproxy web/host-2: DOWN")
    assert balancer.observe([H1])["host-1"].state is TargetState.IN_SERVICE
    fleet.apps["host-2"].start().wait_listening()
    wait_for(balancer, H2, TargetState.IN_SERVICE)


def test_a_drained_server_whose_application_dies_stays_draining(make_fleet: Callable[..., Fleet]) -> None:
    """`show stat` alone says DOWN here; the drain must still read as a drain, or block would be re-sent forever."""
    fleet = make_fleet()
    balancer = fleet.balancer
    balancer.block(H1)
    fleet.apps["host-1"].kill()
    deadline = time.monotonic() + 3
    while fleet.haproxy.server_states()["host-1"].status != "DOWN" and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = balancer.observe([H1])["host-1"]
    assert seen == TargetObservation(TargetState.DRAINING, "haproxy web/host-1: DOWN (drained), 0 sessions", sessions=0)


def test_unknown_server_is_unknown_and_refused_by_haproxy(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    balancer = fleet.balancer
    seen = balancer.observe([H1, HostEndpoint("host-9")])
    assert seen["host-1"].state is TargetState.IN_SERVICE
    assert seen["host-9"].state is TargetState.UNKNOWN
    assert seen["host-9"].error == (
        f"haproxy backend web has no server named host-9 (runtime API {fleet.haproxy.runtime_api})"
    )
    with pytest.raises(TrafficError) as raised:
        balancer.block(HostEndpoint("host-9"))
    assert str(raised.value) == (
        f"haproxy runtime API {fleet.haproxy.runtime_api}: set server web/host-9 state drain: No such server."
    )


def test_a_backend_haproxy_does_not_have(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    api = fleet.haproxy.runtime_api
    balancer = HAProxyBalancer(HAProxySpec(runtime_api=api, backend="nosuch"))
    with pytest.raises(TrafficError) as raised:
        balancer.block(H1)
    assert str(raised.value) == f"haproxy runtime API {api}: set server nosuch/host-1 state drain: No such backend."
    seen = balancer.observe([H1])["host-1"]
    assert seen.state is TargetState.UNKNOWN
    assert seen.error == f"haproxy runtime API {api}: show servers state nosuch: Can't find backend."
    # A server name HAProxy cannot parse: its own answer, quoted.
    odd = HAProxyBalancer(HAProxySpec(runtime_api=api, backend="web"))
    with pytest.raises(TrafficError, match="Require 'backend/server'"):
        odd._set("set server host-1 state drain")


def test_unreachable_runtime_api(tmp_path: Path) -> None:
    missing = tmp_path / "admin.sock"
    balancer = HAProxyBalancer(HAProxySpec(runtime_api=f"unix:{missing}", backend="web"), timeout=2.0)
    started = time.monotonic()
    seen = balancer.observe([H1, H2])
    assert time.monotonic() - started < 2.5
    assert {o.state for o in seen.values()} == {TargetState.UNKNOWN}
    error = seen["host-1"].error
    assert error is not None
    assert error.startswith(f"haproxy runtime API unix:{missing}: show servers state web; show stat web 4 -1: ")
    assert "cannot connect: No such file or directory (3 attempts)" in error
    with pytest.raises(TrafficError) as raised:
        balancer.block(H1)
    assert str(raised.value) == (
        f"haproxy runtime API unix:{missing}: set server web/host-1 state drain: "
        "cannot connect: No such file or directory (3 attempts)"
    )
    refused = HAProxyBalancer(HAProxySpec(runtime_api=f"tcp:127.0.0.1:{free_port()}", backend="web"), timeout=2.0)
    with pytest.raises(TrafficError, match=r"set server web/host-1 state ready: cannot connect: Connection refused"):
        refused._set("set server web/host-1 state ready")


def test_a_restarting_haproxy_is_waited_for(make_fleet: Callable[..., Fleet]) -> None:
    """A reload drops the socket briefly: a connection that cannot be made is tried again within the timeout."""
    fleet = make_fleet()
    fleet.haproxy.stop()
    restart = threading.Timer(0.15, fleet.haproxy.start)
    restart.start()
    try:
        seen = fleet.balancer.observe([H1])["host-1"]
    finally:
        restart.join()
    assert seen.state is not TargetState.UNKNOWN, seen


def test_tcp_runtime_api(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(admin_tcp_port=free_port())
    assert fleet.haproxy.tcp_runtime_api is not None
    balancer = HAProxyBalancer(HAProxySpec(runtime_api=fleet.haproxy.tcp_runtime_api, backend="web"))
    assert balancer.name == f"haproxy backend web ({fleet.haproxy.tcp_runtime_api})"
    balancer.block(H2)
    assert balancer.observe([H1, H2])["host-2"].state is TargetState.DRAINING
    balancer.allow(H2)
    assert balancer.observe([H2])["host-2"].state is TargetState.IN_SERVICE  # from drain: checks never stopped


# -- LocalHAProxy and LoadGenerator ------------------------------------------------------------------------------


def test_local_haproxy_start_and_stop_leave_no_process(tmp_path: Path) -> None:
    assert os.path.basename(haproxy_path()) == "haproxy"
    app = AppProcess("host-1", free_port()).start()
    try:
        app.wait_listening()
        with LocalHAProxy(tmp_path, [("host-1", "127.0.0.1", app.port)]) as haproxy:
            pid = haproxy.pid
            assert pid is not None and Path(f"/proc/{pid}").exists()
            assert "option httpchk GET /healthz" in haproxy.config_path.read_text()
            assert haproxy.runtime_api == f"unix:{tmp_path / 'admin.sock'}"
            connection = http.client.HTTPConnection(haproxy.url.removeprefix("http://"), timeout=5)
            connection.request("GET", "/")
            assert b'"host": "host-1"' in connection.getresponse().read()
            connection.close()
        assert not Path(f"/proc/{pid}").exists()
        haproxy.stop()  # twice is fine
        assert haproxy.log_path.exists()
    finally:
        app.kill()


def test_local_haproxy_reports_a_server_that_never_comes_up(tmp_path: Path) -> None:
    from fleetlab.haproxy import HAProxyError

    haproxy = LocalHAProxy(tmp_path, [("host-1", "127.0.0.1", free_port())], start_timeout=1.0)
    with pytest.raises(HAProxyError, match=r"did not get every server UP within 1s \(last seen: host-1 DOWN\)"):
        haproxy.start()
    assert haproxy.pid is None


def test_load_generator_sustains_the_rate_and_counts_a_killed_server(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    with LoadGenerator(fleet.haproxy.url, rate=200) as load:
        time.sleep(2.0)
        steady = load.snapshot()
        fleet.apps["host-2"].kill()  # no traffic control: HAProxy keeps sending it requests until a check fails
        # Until the first request fails (half a second unless the machine is loaded; CI once saw none in 0.5 s).
        deadline = time.monotonic() + 5
        while load.snapshot().failed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    final = load.snapshot()
    assert steady.achieved_rate >= 195, steady  # 200 planned: request k is due at k / 200 s
    assert steady.sent >= 390 and steady.failed == 0, steady
    assert set(steady.by_host) == {"host-1", "host-2"} and min(steady.by_host.values()) > 100, steady
    assert steady.by_version == {"v1": steady.ok}
    assert final.failed > 0, final
    # Mostly HAProxy's 503 (the dead server refused its connection); a request the kill cut mid-way surfaces as a
    # reset or an incomplete response. Each failure counted once, under one reason.
    assert final.by_reason.get("503", 0) > 0, final
    assert sum(final.by_reason.values()) == final.failed, final
    assert final.samples and final.samples[0].reason in final.by_reason
    assert final.ok + final.failed == final.sent  # nothing in flight after stop, nothing retried
