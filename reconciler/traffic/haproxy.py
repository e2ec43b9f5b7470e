"""HAProxy as a load balancer: one backend, driven through HAProxy's runtime API (the `stats socket ... level admin`
of its `global` section), at `unix:/path` or `tcp:host:port`.

Every call opens one connection, sends one line and reads until HAProxy closes it (the API's non-interactive
mode), so there is nothing to keep open between passes and nothing to go stale across an HAProxy reload. A reload
does drop the socket for a moment, so a connection that cannot be made is tried again a couple of times within
`timeout`; a command HAProxy has received is never sent twice by this module (the reconciler's next pass repeats
it if needed, and every call here is idempotent: HAProxy accepts `state drain` on a drained server, `maint` on a
server in maintenance and `ready` on a ready one without a word).

HAProxy answers a `set server` it refuses with text on an otherwise normal connection ("No such server.",
"No such backend.", "Require 'backend/server'."), and a successful one with nothing but an empty line, so any
non-blank answer to a `set server` is an error.

Reading a backend takes one connection carrying two commands, `show servers state <backend>; show stat <backend>
4 -1`, because neither alone says everything in HAProxy 2.6:

- `show servers state` gives the admin state as flags (forced maintenance, drain, maintenance inherited from a
  tracked server or a failed DNS resolution), the operational state and whether health checks are configured,
  but no session count;
- `show stat` gives `scur` (sessions open to the server) and the status word an operator knows (`UP`, `DRAIN`,
  `MAINT (via web/a)`, `DOWN 1/2`), but hides a drain behind `DOWN` when the drained server's checks fail
  (measured: `set server web/h state drain`, stop h, and `show stat` says `DOWN` while `show servers state`
  still has the drain flag). Reading that as "not drained" would make the reconciler send `block` again forever
  to a host whose application died mid-drain.

How the states map (TargetState):

- any maintenance flag: OUT_OF_SERVICE;
- the drain flag (`set server ... state drain`): DRAINING, with `scur` as the sessions still open, whatever the
  checks say;
- otherwise running (checks passed, including `UP 1/3`, a server one failed check into going down: HAProxy still
  sends it requests and calls it up until `fall` checks fail, so this module does not second-guess it, and a
  server without checks, `no check`, which HAProxy sends requests to unconditionally): IN_SERVICE;
- otherwise (`DOWN`, `DOWN 1/2` still rising, `NOLB`, a drain set by an agent check): STARTING, i.e. put back
  but not taking requests yet.

Measured on HAProxy 2.6.12 (Debian 12), and what follows from it:

- `set server b/s state ready` on a server in maintenance makes it `UP` at once, before any health check:
  HAProxy resets the check's health to `rise` on leaving maintenance ("start OK but check immediately"). A server
  whose process was dead during maintenance read `UP` right after `ready` and `DOWN` ~70 ms later, at its first
  check (inter 100ms, fall 1). Had `allow` stopped there, the reconciler would have read IN_SERVICE and finished
  AllowTraffic on a host no health check had looked at, and HAProxy would have sent it requests until `fall`
  checks failed. So `allow`, for a server in forced maintenance that has health checks, sends
  `set server b/s state ready; set server b/s health down` on one connection: the server then reads `DOWN`,
  `DOWN 1/2` ... and `UP` only after `rise` passing checks (measured: ~190 ms for rise 2, inter 100ms), which is
  what "counts as back only once the load balancer's own health checks call it healthy" means. Forcing the
  health down before `ready` does not work: leaving maintenance resets it. A server leaving a drain (not
  maintenance) is only sent `ready`: its checks kept running while it drained, so its health is current.
- `scur` of a drained server counts requests still being answered by it: 1 while a slow request was open, 0 as
  soon as it was answered. A client keeping its keep-alive connection to HAProxy open does not count: HAProxy
  balances each request, so the next one on that connection goes elsewhere (or gets a 503 if nothing is left).
"""

from __future__ import annotations

import csv
import io
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from reconciler.core.observed import TargetObservation, TargetState
from reconciler.desired.traffic_spec import HAProxySpec
from reconciler.traffic.base import HostEndpoint, TrafficError

log = structlog.get_logger(__name__)

#: Connection attempts per call: HAProxy reloads unbind and rebind the socket, a gap of a fraction of a second.
CONNECT_ATTEMPTS = 3
#: Pause before the second and third attempt (never past the call's deadline).
CONNECT_BACKOFF = (0.2, 0.5)
#: Most bytes read from one answer: `show stat` of a backend of a few thousand servers fits with room to spare,
#: and a runaway answer (a wrong address serving something else) does not eat the reconciler's memory.
MAX_ANSWER = 16 * 1024 * 1024

# `show servers state` columns (format version 1) and flags, HAProxy 2.6 include/haproxy/server-t.h.
_SRV_NAME, _SRV_OP_STATE, _SRV_ADMIN_STATE, _SRV_CHECK_STATE = 3, 5, 6, 13
_OP_RUNNING = 2
_ADMIN_FMAINT, _ADMIN_IMAINT, _ADMIN_CMAINT, _ADMIN_FDRAIN, _ADMIN_IDRAIN = 0x01, 0x02, 0x04, 0x08, 0x10
_ADMIN_RMAINT, _ADMIN_HMAINT = 0x20, 0x40
_ADMIN_MAINT = _ADMIN_FMAINT | _ADMIN_IMAINT | _ADMIN_CMAINT | _ADMIN_RMAINT | _ADMIN_HMAINT
_ADMIN_DRAIN = _ADMIN_FDRAIN | _ADMIN_IDRAIN
_CHECK_CONFIGURED = 0x02
#: `show stat` object type filter: servers only (1 frontends, 2 backends, 4 servers).
_STAT_SERVERS = 4


@dataclass(frozen=True)
class ServerState:
    """One server as `show servers state` and `show stat` describe it together."""

    name: str
    admin: int
    op_state: int
    checks: bool
    #: `show stat` status word, e.g. `UP`, `DRAIN`, `DOWN 1/2`, `MAINT (via web/a)`, `no check`.
    status: str
    sessions: int | None

    @property
    def maintenance(self) -> bool:
        return bool(self.admin & _ADMIN_MAINT)

    @property
    def forced_maintenance(self) -> bool:
        return bool(self.admin & _ADMIN_FMAINT)

    @property
    def drained(self) -> bool:
        return bool(self.admin & _ADMIN_DRAIN)


class HAProxyBalancer:
    """One HAProxy backend as a load balancer (the `LoadBalancer` protocol, reconciler/traffic/base.py)."""

    def __init__(self, spec: HAProxySpec, *, timeout: float = 5.0) -> None:
        self._spec = spec
        self._backend = spec.backend
        self._api = spec.runtime_api
        self._timeout = timeout

    @property
    def name(self) -> str:
        return f"haproxy backend {self._backend} ({self._api})"

    def target_name(self, host: HostEndpoint) -> str:
        return f"{self._backend}/{self._server(host)}"

    def observe(self, hosts: Sequence[HostEndpoint]) -> dict[str, TargetObservation]:
        """One connection for the whole backend, whatever the number of hosts."""
        try:
            servers = self.servers()
        except TrafficError as exc:
            return {host.host_id: _unknown(str(exc)) for host in hosts}
        result: dict[str, TargetObservation] = {}
        for host in hosts:
            server = self._server(host)
            found = servers.get(server)
            if found is None:
                result[host.host_id] = _unknown(
                    f"haproxy backend {self._backend} has no server named {server} (runtime API {self._api})"
                )
                continue
            result[host.host_id] = self._observation(found)
        return result

    def block(self, host: HostEndpoint) -> str:
        return self._set_state(host, "drain")

    def finish_block(self, host: HostEndpoint) -> str:
        return self._set_state(host, "maint")

    def allow(self, host: HostEndpoint) -> str:
        """`state ready`, plus `health down` when leaving forced maintenance with checks configured: HAProxy would
        otherwise call the server UP before checking it (module docstring). Reads the server first so that a
        repeated `allow` on a server already back (or rising) never knocks it down again."""
        target = self.target_name(host)
        server = self.servers().get(self._server(host))
        ready = f"set server {target} state ready"
        if server is not None and server.forced_maintenance and server.checks:
            self._set(f"{ready}; set server {target} health down")
            return (
                f"haproxy {target}: state ready, health down (back in the backend once {self._backend}'s health "
                "checks pass)"
            )
        # A missing server is left to HAProxy to refuse, in its own words.
        self._set(ready)
        return f"haproxy {target}: state ready"

    def drain_hint_seconds(self) -> float | None:
        return None

    def close(self) -> None:
        return None

    def servers(self) -> dict[str, ServerState]:
        """Every server of the backend, by name, read in one connection. Raises TrafficError."""
        command = f"show servers state {self._backend}; show stat {self._backend} {_STAT_SERVERS} -1"
        answer = self._command(command)
        states_text, _, stat_text = answer.partition("\n\n")
        if not states_text.lstrip().startswith("1\n"):
            raise self._error(f"show servers state {self._backend}", states_text)
        if not stat_text.lstrip().startswith("# pxname,"):
            raise self._error(f"show stat {self._backend} {_STAT_SERVERS} -1", stat_text)
        stats = _parse_stat(stat_text, self._backend)
        servers: dict[str, ServerState] = {}
        for line in states_text.splitlines()[1:]:
            fields = line.split()
            if not fields or line.startswith("#") or len(fields) <= _SRV_CHECK_STATE:
                continue
            name = fields[_SRV_NAME]
            status, sessions = stats.get(name, ("?", None))
            servers[name] = ServerState(
                name=name,
                admin=int(fields[_SRV_ADMIN_STATE]),
                op_state=int(fields[_SRV_OP_STATE]),
                checks=bool(int(fields[_SRV_CHECK_STATE]) & _CHECK_CONFIGURED),
                status=status,
                sessions=sessions,
            )
        return servers

    # -- helpers -----------------------------------------------------------------------------------------------

    def _server(self, host: HostEndpoint) -> str:
        return self._spec.servers.get(host.host_id, host.host_id)

    def _observation(self, server: ServerState) -> TargetObservation:
        where = f"haproxy {self._backend}/{server.name}"
        if server.maintenance:
            return TargetObservation(TargetState.OUT_OF_SERVICE, f"{where}: {server.status}")
        if server.drained:
            status = server.status if server.status.startswith("DRAIN") else f"{server.status} (drained)"
            count = "unknown" if server.sessions is None else str(server.sessions)
            plural = "" if server.sessions == 1 else "s"
            return TargetObservation(
                TargetState.DRAINING, f"{where}: {status}, {count} session{plural}", sessions=server.sessions
            )
        word = server.status.split(" ", 1)[0].upper()
        if server.op_state == _OP_RUNNING and word in ("UP", "NO"):
            return TargetObservation(TargetState.IN_SERVICE, f"{where}: {server.status}")
        return TargetObservation(TargetState.STARTING, f"{where}: {server.status}")

    def _set_state(self, host: HostEndpoint, state: str) -> str:
        target = self.target_name(host)
        self._set(f"set server {target} state {state}")
        return f"haproxy {target}: state {state}"

    def _set(self, command: str) -> None:
        answer = self._command(command)
        if answer.strip():
            raise self._error(command, answer)

    def _error(self, command: str, answer: str) -> TrafficError:
        said = " ".join(answer.split()) or "(empty answer)"
        if len(said) > 300:
            said = said[:300] + "…"
        return TrafficError(f"haproxy runtime API {self._api}: {command}: {said}")

    def _command(self, command: str) -> str:
        """Send one line, read the answer to EOF. Retries only a connection that could not be made."""
        started = time.monotonic()
        deadline = started + self._timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                sock = self._connect(max(0.001, deadline - time.monotonic()))
            except OSError as exc:
                retryable = not isinstance(exc, PermissionError)
                pause = CONNECT_BACKOFF[min(attempt - 1, len(CONNECT_BACKOFF) - 1)]
                if retryable and attempt < CONNECT_ATTEMPTS and time.monotonic() + pause < deadline:
                    log.debug("traffic.haproxy.retry", api=self._api, command=command, attempt=attempt,
                              error=_os_reason(exc))
                    time.sleep(pause)
                    continue
                raise TrafficError(
                    f"haproxy runtime API {self._api}: {command}: cannot connect: {_os_reason(exc)}"
                    + (f" ({attempt} attempts)" if attempt > 1 else "")
                ) from exc
            break
        try:
            with sock:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.sendall(command.encode() + b"\n")
                chunks: list[bytes] = []
                size = 0
                while size <= MAX_ANSWER:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except TimeoutError as exc:
            raise TrafficError(
                f"haproxy runtime API {self._api}: {command}: no complete answer within {self._timeout:g}s"
            ) from exc
        except OSError as exc:
            raise TrafficError(f"haproxy runtime API {self._api}: {command}: {_os_reason(exc)}") from exc
        # Debug: every pass reads the backend while a host is at a step; the calls that change something are
        # logged by the shell (`traffic.call`).
        log.debug(
            "traffic.haproxy",
            api=self._api,
            command=command,
            attempts=attempt,
            seconds=round(time.monotonic() - started, 3),
        )
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _connect(self, timeout: float) -> socket.socket:
        if self._api.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self._api.removeprefix("unix:"))
            except BaseException:
                sock.close()
                raise
            return sock
        host, port = _tcp_address(self._api)
        return socket.create_connection((host, port), timeout=timeout)


def _tcp_address(api: str) -> tuple[str, int]:
    """`tcp:lb1:9999` or `tcp:[::1]:9999` -> (host, port). A malformed one raises OSError, read as unreachable."""
    host, sep, port = api.removeprefix("tcp:").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OSError(f"not a tcp:HOST:PORT address: {api}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _parse_stat(text: str, backend: str) -> dict[str, tuple[str, int | None]]:
    """`show stat` CSV -> server name -> (status, scur). Columns are found by name, not position."""
    reader = csv.DictReader(io.StringIO(text.lstrip().removeprefix("#").lstrip()))
    result: dict[str, tuple[str, int | None]] = {}
    for row in reader:
        if row.get("pxname") != backend or row.get("svname") in (None, "FRONTEND", "BACKEND"):
            continue
        scur = row.get("scur") or ""
        result[str(row["svname"])] = (row.get("status") or "?", int(scur) if scur.isdigit() else None)
    return result


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def _unknown(error: str) -> TargetObservation:
    return TargetObservation(TargetState.UNKNOWN, error, error=error)
