"""The command provider: any load balancer fleetshift has no API client for (nginx, Consul, an F5), driven by a
program the user writes.

The program is run as `<run...> ACTION HOST ADDRESS` (ADDRESS empty when the host registered none), ACTION being:

- `block`: stop sending the host new requests, let open ones finish. Exit 0 when done (or already so).
- `finish`: the drain is over or timed out, take the host fully out. Optional: a program that has nothing more
  to do exits 64 (EX_USAGE, what `*) exit 64` in a `case` gives) or prints `unsupported`, and the step goes on.
  So a program written for block, allow and status only keeps working, while one that can tell "draining" from
  "out" gets the second call.
- `allow`: put the host back. Exit 0 when done (or already so).
- `status`: print where the host stands, one line: `in-service`, `starting`, `draining [SESSIONS]` or
  `out-of-service`, optionally followed by ` - ` and free text shown as the detail
  (`draining 3 - 3 connections left`). The last non-empty line of stdout is the answer: earlier lines and
  stderr are the program's own logging. Anything else reads `Unknown`, quoting the line.

Every call must be idempotent (a crash between a call and the record of it repeats the call next pass), and
quick: a pass waits for it, up to `timeout`. The environment adds FLEETSHIFT_ACTION, FLEETSHIFT_HOST,
FLEETSHIFT_ADDRESS and FLEETSHIFT_INSTANCE_ID (empty when unknown) for programs that prefer variables to
arguments. Stdin is closed. The program runs in its own process group, so that on timeout everything it started
(a `curl` stuck on a dead admin API, a `sleep` in a retry loop) is killed with it, not left behind holding the
reconciler's pipes. Only the last ~2 KB of its output are kept: enough for an error message, bounded however much
a broken program prints.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from reconciler.core.observed import TargetObservation, TargetState
from reconciler.desired.traffic_spec import CommandProviderSpec
from reconciler.traffic.base import HostEndpoint, TrafficError

log = structlog.get_logger(__name__)

#: Output kept per call (the tail: a failing program says why last).
OUTPUT_TAIL = 2048
#: `finish` is optional: this exit code (sysexits' EX_USAGE) or this answer means "nothing to do here".
UNSUPPORTED_EXIT = 64
UNSUPPORTED_WORD = "unsupported"
#: After the program itself exits, how long a child it left behind may keep writing to our pipes.
PIPE_GRACE = 0.5
#: How often to look whether the program has exited while its pipes are quiet.
POLL_INTERVAL = 0.05
#: After SIGTERM to the process group on timeout, how long before SIGKILL.
KILL_GRACE = 1.0

_STATUS = re.compile(
    r"(?P<word>in-service|starting|draining|out-of-service)(?:\s+(?P<sessions>\d+))?(?:\s+-\s+(?P<text>.*))?",
    re.IGNORECASE,
)
_STATES = {
    "in-service": TargetState.IN_SERVICE,
    "starting": TargetState.STARTING,
    "draining": TargetState.DRAINING,
    "out-of-service": TargetState.OUT_OF_SERVICE,
}


@dataclass(frozen=True)
class _Run:
    """One finished (or killed) call."""

    returncode: int
    timed_out: bool
    #: Tail of stdout alone, for `status`.
    stdout: str
    #: Tail of stdout and stderr in the order they were read, for error messages.
    output: str


class _Tail:
    """The last `limit` bytes written, and whether anything was dropped before them."""

    def __init__(self, limit: int = OUTPUT_TAIL) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.dropped = True

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return ("…" + text) if self.dropped else text


class CommandBalancer:
    """A user's program as a load balancer (the `LoadBalancer` protocol, reconciler/traffic/base.py)."""

    def __init__(self, spec: CommandProviderSpec) -> None:
        self._spec = spec
        self._program = spec.run[0]
        self._name = spec.name or os.path.basename(self._program)
        self._timeout = spec.timeout.total_seconds()

    @property
    def name(self) -> str:
        return self._name

    def target_name(self, host: HostEndpoint) -> str:
        return f"{host.host_id} ({host.address})" if host.address else host.host_id

    def observe(self, hosts: Sequence[HostEndpoint]) -> dict[str, TargetObservation]:
        """One `status` call per host, one after the other: each bounded by the timeout, so the whole by the
        timeout times the hosts (only hosts in a traffic step are observed, a handful per pass)."""
        result: dict[str, TargetObservation] = {}
        for host in hosts:
            try:
                run = self._call("status", host)
            except TrafficError as exc:
                result[host.host_id] = _unknown(str(exc))
                continue
            if run.timed_out or run.returncode != 0:
                result[host.host_id] = _unknown(self._failure("status", host, run))
                continue
            result[host.host_id] = self._status(host, run.stdout)
        return result

    def block(self, host: HostEndpoint) -> str:
        return self._act("block", host)

    def finish_block(self, host: HostEndpoint) -> str:
        run = self._call("finish", host)
        if not run.timed_out and (
            run.returncode == UNSUPPORTED_EXIT or _last_line(run.stdout).lower() == UNSUPPORTED_WORD
        ):
            return f"{self.name} finish {host.host_id}: nothing to do (the program does not support finish)"
        return self._done("finish", host, run)

    def allow(self, host: HostEndpoint) -> str:
        return self._act("allow", host)

    def drain_hint_seconds(self) -> float | None:
        return None

    def close(self) -> None:
        return None

    # -- helpers -----------------------------------------------------------------------------------------------

    def _act(self, action: str, host: HostEndpoint) -> str:
        return self._done(action, host, self._call(action, host))

    def _done(self, action: str, host: HostEndpoint, run: _Run) -> str:
        if run.timed_out or run.returncode != 0:
            raise TrafficError(self._failure(action, host, run))
        said = _last_line(run.stdout)
        return f"{self.name} {action} {host.host_id}: done" + (f" ({said})" if said else "")

    def _status(self, host: HostEndpoint, stdout: str) -> TargetObservation:
        line = _last_line(stdout)
        match = _STATUS.fullmatch(line)
        detail = f"{self.name} {host.host_id}: {line}"
        if match is None:
            return _unknown(
                f"{self.name} status {host.host_id}: answered {line!r}; expected one line: in-service, "
                "starting, draining [SESSIONS] or out-of-service (optionally followed by ' - ' and text)",
                detail=detail,
            )
        state = _STATES[match["word"].lower()]
        sessions = match["sessions"]
        if sessions is not None and state is not TargetState.DRAINING:
            return _unknown(f"{self.name} status {host.host_id}: answered {line!r}; only draining takes a count")
        return TargetObservation(state, detail, sessions=int(sessions) if sessions is not None else None)

    def _failure(self, action: str, host: HostEndpoint, run: _Run) -> str:
        if run.timed_out:
            how = f"did not finish within {self._timeout:g}s; its process group was killed"
        elif run.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-run.returncode).name}"
            except ValueError:
                how = f"killed by signal {-run.returncode}"
        else:
            how = f"exit code {run.returncode}"
        output = run.output.strip()
        return f"{self.name} ({self._program}) {action} {host.host_id}: {how}" + (
            f"; output: {output}" if output else "; no output"
        )

    def _call(self, action: str, host: HostEndpoint) -> _Run:
        """Run the program once. Raises TrafficError only when it cannot be started at all."""
        argv = [*self._spec.run, action, host.host_id, host.address or ""]
        env = {
            **os.environ,
            "FLEETSHIFT_ACTION": action,
            "FLEETSHIFT_HOST": host.host_id,
            "FLEETSHIFT_ADDRESS": host.address or "",
            "FLEETSHIFT_INSTANCE_ID": host.instance_id or "",
        }
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise TrafficError(f"{self.name} {action} {host.host_id}: program not found: {self._program}") from exc
        except PermissionError as exc:
            raise TrafficError(
                f"{self.name} {action} {host.host_id}: program not executable: {self._program} ({exc.strerror})"
            ) from exc
        except OSError as exc:
            raise TrafficError(f"{self.name} {action} {host.host_id}: cannot run {self._program}: {exc}") from exc
        run = _collect(process, deadline=started + self._timeout)
        log.info(
            "traffic.command",
            balancer=self.name,
            action=action,
            host=host.host_id,
            returncode=run.returncode,
            timed_out=run.timed_out,
            seconds=round(time.monotonic() - started, 3),
        )
        return run


def _collect(process: subprocess.Popen[bytes], *, deadline: float) -> _Run:
    """Read both pipes until they close, the program has exited (plus a grace for children still writing), or
    the deadline passes (then kill the process group). Reads in this thread with a selector: no reader threads
    left blocked on a pipe some orphan holds open."""
    assert process.stdout is not None and process.stderr is not None
    stdout, output = _Tail(), _Tail()
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, "stdout")
    selector.register(process.stderr, selectors.EVENT_READ, "stderr")
    timed_out = False
    exited_at: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = process.poll() is None
                break
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at >= PIPE_GRACE:
                break
            for key, _ in selector.select(min(deadline - now, POLL_INTERVAL)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                output.add(chunk)
                if key.data == "stdout":
                    stdout.add(chunk)
        if not timed_out:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            _kill_group(process)
    finally:
        selector.close()
        process.stdout.close()
        process.stderr.close()
        if process.returncode is None:
            _kill_group(process)
    return _Run(returncode=process.returncode, timed_out=timed_out, stdout=stdout.text(), output=output.text())


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever is left of it: the program's children too, which may
    ignore SIGTERM or outlive a leader that exits on it. The group id is the leader's pid (start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _unknown(error: str, *, detail: str | None = None) -> TargetObservation:
    return TargetObservation(TargetState.UNKNOWN, detail or error, error=error)
