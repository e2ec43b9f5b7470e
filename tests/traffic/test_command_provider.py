"""CommandBalancer with real programs: small shell scripts written into tmp_path, one of them a "load balancer"
that keeps each host's state in a file, as a user's nginx or Consul wrapper would keep it in its config.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.core.observed import TargetState
from reconciler.desired.traffic_spec import CommandProviderSpec
from reconciler.traffic.base import HostEndpoint, LoadBalancer, TrafficError
from reconciler.traffic.command import CommandBalancer

HOST = HostEndpoint(host_id="web-1", address="10.0.1.5", instance_id="i-0123456789abcdef0")
BARE = HostEndpoint(host_id="web-2")

#: The toy load balancer: state/<host> holds the status line; calls.log what each call saw.
LB_SCRIPT = r"""#!/bin/sh
state="$(dirname "$0")/state"
mkdir -p "$state"
read -r from_stdin || from_stdin="<eof>"
echo "$1|$2|$3|$FLEETSHIFT_ACTION|$FLEETSHIFT_HOST|$FLEETSHIFT_ADDRESS|$FLEETSHIFT_INSTANCE_ID|$from_stdin" \
  >> "$(dirname "$0")/calls.log"
case "$1" in
  block)  echo "draining 2 - 2 connections left" > "$state/$2"; echo "set $2 draining" ;;
  finish) echo "out-of-service - in maintenance" > "$state/$2" ;;
  allow)  echo "starting" > "$state/$2" ;;
  status) echo "looking up $2 (a log line)"; echo "oops on stderr" >&2
          if [ -f "$state/$2" ]; then cat "$state/$2"; else echo out-of-service; fi ;;
  *)      exit 64 ;;
esac
"""


def _script(tmp_path: Path, body: str, name: str = "lb") -> Path:
    path = tmp_path / name
    path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _balancer(program: Path, *, timeout: float = 10.0, name: str | None = None) -> CommandBalancer:
    return CommandBalancer(CommandProviderSpec(run=[str(program)], timeout=timedelta(seconds=timeout), name=name))


def _alive(pid: int) -> bool:
    """Still running: a zombie (dead, not yet reaped by whoever adopted it) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_each_action_runs_the_program_with_arguments_environment_and_no_stdin(tmp_path: Path) -> None:
    program = _script(tmp_path, LB_SCRIPT)
    balancer: LoadBalancer = _balancer(program)
    assert balancer.name == "lb"
    assert balancer.target_name(HOST) == "web-1 (10.0.1.5)"
    assert balancer.drain_hint_seconds() is None

    assert balancer.observe([HOST])["web-1"].state is TargetState.OUT_OF_SERVICE
    assert balancer.allow(HOST) == "lb allow web-1: done"
    assert balancer.observe([HOST])["web-1"].state is TargetState.STARTING
    assert balancer.block(HOST) == "lb block web-1: done (set web-1 draining)"
    draining = balancer.observe([HOST])["web-1"]
    assert (draining.state, draining.sessions) == (TargetState.DRAINING, 2)
    assert draining.detail == "lb web-1: draining 2 - 2 connections left"
    assert draining.error is None
    assert balancer.finish_block(HOST) == "lb finish web-1: done"
    out = balancer.observe([HOST])["web-1"]
    assert (out.state, out.detail) == (TargetState.OUT_OF_SERVICE, "lb web-1: out-of-service - in maintenance")
    balancer.block(BARE)
    balancer.close()

    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[:3] == [
        "status|web-1|10.0.1.5|status|web-1|10.0.1.5|i-0123456789abcdef0|<eof>",
        "allow|web-1|10.0.1.5|allow|web-1|10.0.1.5|i-0123456789abcdef0|<eof>",
        "status|web-1|10.0.1.5|status|web-1|10.0.1.5|i-0123456789abcdef0|<eof>",
    ]
    assert calls[-1] == "block|web-2||block|web-2|||<eof>"


def test_observe_reads_every_host(tmp_path: Path) -> None:
    program = _script(tmp_path, LB_SCRIPT)
    balancer = _balancer(program)
    balancer.allow(HOST)
    seen = balancer.observe([HOST, BARE])
    assert {host: obs.state for host, obs in seen.items()} == {
        "web-1": TargetState.STARTING,
        "web-2": TargetState.OUT_OF_SERVICE,
    }


@pytest.mark.parametrize(
    ("line", "state", "sessions"),
    [
        ("in-service", TargetState.IN_SERVICE, None),
        ("in-service - 200 OK from /health", TargetState.IN_SERVICE, None),
        ("starting", TargetState.STARTING, None),
        ("draining", TargetState.DRAINING, None),
        ("draining 0", TargetState.DRAINING, 0),
        ("draining 17 - 17 open", TargetState.DRAINING, 17),
        ("  Out-Of-Service  ", TargetState.OUT_OF_SERVICE, None),
    ],
)
def test_status_lines(tmp_path: Path, line: str, state: TargetState, sessions: int | None) -> None:
    program = _script(tmp_path, f"echo 'some log first'\necho '{line}'\n")
    seen = _balancer(program).observe([HOST])["web-1"]
    assert (seen.state, seen.sessions, seen.error) == (state, sessions, None)
    assert seen.detail == f"lb web-1: {line.strip()}"


@pytest.mark.parametrize("line", ["healthy", "in-service 3", "draining three", "in-service: ok", ""])
def test_any_other_status_answer_is_unknown_quoting_it(tmp_path: Path, line: str) -> None:
    program = _script(tmp_path, f"echo '{line}'\n")
    seen = _balancer(program).observe([HOST])["web-1"]
    assert seen.state is TargetState.UNKNOWN
    assert seen.error is not None
    assert seen.error.startswith(f"lb status web-1: answered {line!r}")


def test_a_failing_program_is_named_with_its_exit_code_and_output_tail(tmp_path: Path) -> None:
    program = _script(
        tmp_path,
        'i=0; while [ $i -lt 400 ]; do echo "noise line $i"; i=$((i+1)); done\n'
        'echo "backend web has no server $2" >&2\nexit 3\n',
        name="nginx-lb",
    )
    balancer = _balancer(program, name="nginx upstream web")

    with pytest.raises(TrafficError) as failed:
        balancer.block(HOST)

    message = str(failed.value)
    assert message.startswith(f"nginx upstream web ({program}) block web-1: exit code 3; output: …")
    assert message.endswith("noise line 399\nbackend web has no server web-1")
    assert "noise line 0\n" not in message
    assert len(message) < 2300
    seen = balancer.observe([HOST])["web-1"]
    assert seen.state is TargetState.UNKNOWN
    assert seen.error is not None and "status web-1: exit code 3" in seen.error


def test_a_program_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    program = _script(tmp_path, "kill -9 $$\n")
    with pytest.raises(TrafficError, match=r"allow web-1: killed by SIGKILL; no output"):
        _balancer(program).allow(HOST)


def test_finish_is_optional(tmp_path: Path) -> None:
    without = _script(tmp_path, 'case "$1" in block|allow) ;; status) echo in-service ;; *) exit 64 ;; esac\n')
    assert "nothing to do" in _balancer(without).finish_block(HOST)
    says_so = _script(tmp_path, 'echo "unsupported"\n', name="says-so")
    assert "nothing to do" in _balancer(says_so).finish_block(HOST)
    broken = _script(tmp_path, "echo 'cannot reach admin API' >&2; exit 1\n", name="broken")
    with pytest.raises(TrafficError, match=r"finish web-1: exit code 1; output: cannot reach admin API"):
        _balancer(broken).finish_block(HOST)


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A child that ignores SIGTERM, a plain child, and the program itself hanging.
    program = _script(
        tmp_path,
        f"(trap '' TERM; sleep 60) & echo $! >> {pids}\n"
        f"sleep 60 & echo $! >> {pids}\n"
        "echo 'waiting for the admin API'\n"
        "sleep 60\n",
    )
    balancer = _balancer(program, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(TrafficError) as failed:
        balancer.block(HOST)
    took = time.monotonic() - started

    assert took < 5
    assert str(failed.value) == (
        f"lb ({program}) block web-1: did not finish within 0.5s; its process group was killed; "
        "output: waiting for the admin API"
    )
    children = [int(pid) for pid in pids.read_text().split()]
    assert len(children) == 2
    assert all(_wait_gone(pid) for pid in children), "a child of the timed-out program survived"
    seen = balancer.observe([HOST])["web-1"]
    assert seen.state is TargetState.UNKNOWN
    assert seen.error is not None and "did not finish within 0.5s" in seen.error


def test_a_child_left_holding_the_pipes_does_not_hold_the_call(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = _script(tmp_path, f"sleep 30 & echo $! > {pid_file}\necho in-service\n")
    started = time.monotonic()
    seen = _balancer(program, timeout=10).observe([HOST])["web-1"]
    took = time.monotonic() - started
    child = int(pid_file.read_text())
    try:
        assert seen.state is TargetState.IN_SERVICE
        assert took < 3
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_missing_or_unrunnable_program_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-lb"
    with pytest.raises(TrafficError, match=rf"no-such-lb block web-1: program not found: {missing}"):
        _balancer(missing).block(HOST)
    seen = _balancer(missing).observe([HOST])["web-1"]
    assert seen.state is TargetState.UNKNOWN
    assert seen.error == f"no-such-lb status web-1: program not found: {missing}"

    not_executable = tmp_path / "plain-file"
    not_executable.write_text("#!/bin/sh\necho in-service\n")
    with pytest.raises(TrafficError, match=rf"plain-file allow web-1: program not executable: {not_executable}"):
        _balancer(not_executable).allow(HOST)
