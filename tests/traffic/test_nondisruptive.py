"""The proof of issue "Non-disruptive deployments": real agents, real hooks that kill the app abruptly, a real
HAProxy, a steady 200 req/s through it, and `reconcile --once`. With traffic control not one request fails; the
same rollout without it loses requests, which shows the load generator can see failures at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetlab.fleet import TrafficFleet
from fleetlab.loadgen import LoadGenerator
from reconciler.core.observed import TargetState
from reconciler.desired.traffic_spec import HAProxySpec
from reconciler.traffic.base import HostEndpoint
from reconciler.traffic.haproxy import HAProxyBalancer
from tests.conftest import require_tool

RATE = 200
ONE = "CodeDeployDefault.OneAtATime"
HALF = "CodeDeployDefault.HalfAtATime"


@pytest.fixture
def fleet(tmp_path: Path) -> TrafficFleet:
    require_tool("haproxy", "haproxy")
    started = TrafficFleet(tmp_path / "fleet")
    try:
        started.start()
        yield started  # type: ignore[misc]
    finally:
        started.stop()


def status_of(fleet: TrafficFleet, host: str) -> dict:  # type: ignore[type-arg]
    return json.loads((fleet.workdir / "store" / "hosts" / host / "status.json").read_text())


def events_of(fleet: TrafficFleet, host: str) -> dict[str, dict]:  # type: ignore[type-arg]
    command = status_of(fleet, host)["command"]
    return {event["name"]: event for event in command["events"]}


def _version(home: Path) -> str:
    """The installed app's version; "" while Install is replacing the files."""
    try:
        return (home / "VERSION").read_text().strip()
    except FileNotFoundError:
        return ""


def haproxy_states(fleet: TrafficFleet) -> dict[str, TargetState]:
    assert fleet.haproxy is not None
    balancer = HAProxyBalancer(HAProxySpec(runtime_api=fleet.haproxy.runtime_api, backend=fleet.haproxy.backend))
    seen = balancer.observe([HostEndpoint(h.host_id) for h in fleet.hosts])
    return {host: found.state for host, found in seen.items()}


def wait_all_in_service(fleet: TrafficFleet, timeout: float = 10.0) -> dict[str, TargetState]:
    deadline = time.monotonic() + timeout
    states = haproxy_states(fleet)
    while time.monotonic() < deadline and set(states.values()) != {TargetState.IN_SERVICE}:
        time.sleep(0.1)
        states = haproxy_states(fleet)
    return states


def test_three_rollouts_one_failure_and_rollback_zero_failed_requests(fleet: TrafficFleet) -> None:
    first = fleet.deploy("v1", config=ONE)
    assert first.returncode == 0, first.stderr[-3000:]
    assert wait_all_in_service(fleet) == {h.host_id: TargetState.IN_SERVICE for h in fleet.hosts}

    with LoadGenerator(fleet.url, rate=RATE) as load:
        time.sleep(1)
        second = fleet.deploy("v2", config=ONE)
        assert second.returncode == 0, second.stderr[-3000:]
        third = fleet.deploy("v1", config=HALF)
        assert third.returncode == 0, third.stderr[-3000:]
        # v3 breaks on host-1, the first host of a OneAtATime rollout: it fails there and is rolled back.
        fourth = fleet.deploy("v3", config=ONE)
        assert fourth.returncode == 3, fourth.stderr[-3000:]
        time.sleep(1)
    seen = load.snapshot()

    assert seen.failed == 0, f"{seen.failed} of {seen.sent} requests failed: {seen.by_reason}"
    assert seen.ok >= RATE * seen.elapsed * 0.8, f"only {seen.ok} requests in {seen.elapsed:.1f}s"
    assert {"1", "2"} <= set(seen.by_version), seen.by_version
    assert "3" not in seen.by_version, "host-1 served v3: it was put back in rotation on the bad revision"

    # Every host left and came back in each rollout, and its agent reported both steps with HAProxy's words.
    for host in fleet.hosts:
        events = events_of(fleet, host.host_id)
        assert events["BlockTraffic"]["status"] == "Succeeded", events["BlockTraffic"]
        assert "web/" in events["BlockTraffic"]["message"]
        assert events["AllowTraffic"]["status"] == "Succeeded", events["AllowTraffic"]
        assert "in service" in events["AllowTraffic"]["message"]
    # host-1's last command was the rollback to v1; in the v3 deployment it never reached AllowTraffic.
    assert wait_all_in_service(fleet) == {h.host_id: TargetState.IN_SERVICE for h in fleet.hosts}

    status = fleet.reconcile("status", "--format", "json")
    report = json.loads(status.stdout)
    [group] = report["groups"]
    assert group["loadBalancers"] and "haproxy backend web" in group["loadBalancers"][0]
    assert {h["traffic"] for h in group["hosts"]} == {"InService"}

    history = fleet.reconcile("history", "hello-lb")
    assert history.returncode == 0, history.stderr[-2000:]
    assert "out of rotation: 4 hosts" in history.stdout, history.stdout  # each full rollout
    assert "out of rotation: 1 host," in history.stdout, history.stdout  # v3 on host-1, and its rollback


def test_the_same_rollout_without_traffic_control_loses_requests(fleet: TrafficFleet) -> None:
    first = fleet.deploy("v1", config=ONE, traffic=False)
    assert first.returncode == 0, first.stderr[-3000:]
    assert wait_all_in_service(fleet) == {h.host_id: TargetState.IN_SERVICE for h in fleet.hosts}
    with LoadGenerator(fleet.url, rate=RATE) as load:
        time.sleep(1)
        second = fleet.deploy("v2", config=HALF, traffic=False)
        assert second.returncode == 0, second.stderr[-3000:]
        time.sleep(0.5)
    seen = load.snapshot()
    assert seen.failed > 0, f"no request failed in {seen.sent}: the load generator cannot see failures"
    assert "BlockTraffic" not in events_of(fleet, "host-1")


def _kill_reconciler_after_a_block(fleet: TrafficFleet) -> subprocess.Popen[str]:
    """Start `reconcile --once` and kill -9 it as soon as a host is out of rotation and deploying."""
    command, env = fleet.reconcile_command("--once", lease_duration="3s")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    traffic = fleet.workdir / "store" / "traffic"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in traffic.glob("*.json") if traffic.is_dir() else []:
            found = json.loads(record.read_text())
            if found["step"] == "BlockTraffic" and found["state"] == "Succeeded":
                process.send_signal(signal.SIGKILL)
                process.wait()
                return process
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no host was taken out of rotation within 60 s")


def test_kill_9_of_the_reconciler_between_block_and_allow_is_recovered(fleet: TrafficFleet) -> None:
    first = fleet.deploy("v1", config=ONE)
    assert first.returncode == 0, first.stderr[-3000:]
    with LoadGenerator(fleet.url, rate=RATE) as load:
        fleet.commit("v2", config=ONE)
        _kill_reconciler_after_a_block(fleet)
        # A host is out of rotation and its agent waits for the reconciler; a new one takes over after the lease.
        again = fleet.reconcile("--once")
        assert again.returncode == 0, again.stderr[-3000:]
    seen = load.snapshot()
    assert seen.failed == 0, f"{seen.failed} of {seen.sent} requests failed: {seen.by_reason}"
    assert wait_all_in_service(fleet) == {h.host_id: TargetState.IN_SERVICE for h in fleet.hosts}
    assert {json.loads(p.read_text())["state"] for p in (fleet.workdir / "store" / "traffic").glob("*.json")} == {
        "Succeeded"}


def test_kill_9_of_an_agent_between_block_and_allow_leaves_it_out_until_the_rollback_puts_it_back(
    fleet: TrafficFleet,
) -> None:
    first = fleet.deploy("v1", config=ONE)
    assert first.returncode == 0, first.stderr[-3000:]
    victim = fleet.hosts[0]
    with LoadGenerator(fleet.url, rate=RATE) as load:
        fleet.commit("v2", config=ONE)
        command, env = fleet.reconcile_command("--once")
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        record = fleet.workdir / "store" / "traffic" / f"{victim.host_id}.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = json.loads(record.read_text()) if record.exists() else {}
            if found.get("step") == "BlockTraffic" and found.get("state") == "Succeeded":
                break
            time.sleep(0.02)
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        time.sleep(0.5)
        victim.start(fleet.store_url)
        _, err = run.communicate(timeout=180)
        assert run.returncode == 3, err[-3000:]  # failed (the interrupted host), rolled back
    seen = load.snapshot()
    assert seen.failed == 0, f"{seen.failed} of {seen.sent} requests failed: {seen.by_reason}"
    events = events_of(fleet, victim.host_id)
    assert events["AllowTraffic"]["status"] == "Succeeded"  # the rollback's
    assert wait_all_in_service(fleet) == {h.host_id: TargetState.IN_SERVICE for h in fleet.hosts}


def test_an_unreachable_load_balancer_fails_the_step_with_its_reason_and_nothing_is_stopped(
    fleet: TrafficFleet,
) -> None:
    first = fleet.deploy("v1", config=ONE)
    assert first.returncode == 0, first.stderr[-3000:]
    assert fleet.haproxy is not None
    socket_path = fleet.haproxy.socket_path
    fleet.haproxy.stop()

    second = fleet.deploy("v2", config=ONE)

    # The deployment failed by the usual rules, and so did its rollback (the load balancer is still away).
    assert second.returncode == 4, second.stderr[-3000:]
    events = events_of(fleet, "host-1")
    block = events["BlockTraffic"]
    assert block["status"] == "Failed", block
    # Which API, which target, what it said (the OS's reason for the refused socket).
    assert "haproxy runtime API" in block["message"] and str(socket_path) in block["message"], block["message"]
    assert "web/host-1" in block["message"] or "host-1" in block["message"], block["message"]
    # Nothing of the running application was touched: the events after the failed step never ran.
    assert {events[name]["status"] for name in ("AfterBlockTraffic", "ApplicationStop", "Install")} == {"Skipped"}
    for host in fleet.hosts:
        assert (host.home / "VERSION").read_text().strip() == "1", host.host_id
    assert "BlockTraffic failed" in second.stdout + second.stderr


def test_watch_takes_the_same_steps_as_once(fleet: TrafficFleet) -> None:
    """`reconcile watch` runs the same passes: it wakes when an agent reaches a traffic step, and looks again
    within a second while a host drains or waits for health checks."""
    first = fleet.deploy("v1", config=ONE)
    assert first.returncode == 0, first.stderr[-3000:]
    command, env = fleet.reconcile_command("watch")
    watch = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with LoadGenerator(fleet.url, rate=RATE) as load:
            fleet.commit("v2", config=HALF)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                versions = {_version(h.home) for h in fleet.hosts}
                if versions == {"2"} and all(
                    events_of(fleet, h.host_id)["AfterAllowTraffic"]["status"] == "Succeeded" for h in fleet.hosts
                ):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("watch did not roll v2 out within 90 s")
        seen = load.snapshot()
    finally:
        watch.send_signal(signal.SIGTERM)
        _, err = watch.communicate(timeout=60)
    assert watch.returncode in (0, 143), err[-3000:]
    assert seen.failed == 0, f"{seen.failed} of {seen.sent} requests failed: {seen.by_reason}"
    assert wait_all_in_service(fleet) == {h.host_id: TargetState.IN_SERVICE for h in fleet.hosts}
