"""A real HAProxy on loopback in front of a local fleet, for the demo, the tests and the benchmarks.

It is the HAProxy a user runs (the system's binary, its runtime API over a unix socket), configured so that the
load generator sees every request a deployment breaks: no retries and no redispatch, which would otherwise hide
a dead server's failures by resending the request to another one. Health checks are fast (100 ms by default) so
that a test or a demo does not wait seconds for a server to come back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from fleetlab.service import LocalService, find_binary, free_port
from reconciler.desired.traffic_spec import HAProxySpec
from reconciler.traffic.base import TrafficError
from reconciler.traffic.haproxy import HAProxyBalancer, ServerState

log = structlog.get_logger(__name__)

#: How long `start()` waits for the socket to answer and every server to be UP.
START_TIMEOUT = 15.0


class HAProxyError(RuntimeError):
    """The local HAProxy is missing, would not start, or did not get its servers UP in time."""


def haproxy_path() -> str:
    """The haproxy binary: on PATH, or in /usr/sbin (where Debian puts it, often not on a user's PATH)."""
    return find_binary("haproxy", "/usr/sbin:/usr/local/sbin:/sbin", HAProxyError)


__all__ = ["HAProxyError", "LocalHAProxy", "free_port", "haproxy_path"]


class LocalHAProxy(LocalService):
    """`haproxy -f <workdir>/haproxy.cfg -db` as a child process, one frontend, one backend.

    `servers` are (name, address, port); every one starts in state ready with health checks on `health_path`.
    `admin_tcp_port` adds a second admin socket on 127.0.0.1 (for testing the `tcp:` form of the runtime API).
    """

    def __init__(
        self,
        workdir: Path,
        servers: Sequence[tuple[str, str, int]],
        *,
        health_path: str = "/healthz",
        backend: str = "web",
        check_interval_ms: int = 100,
        rise: int = 2,
        fall: int = 1,
        admin_tcp_port: int | None = None,
        start_timeout: float = START_TIMEOUT,
        wait_up: bool = True,
    ) -> None:
        if not servers:
            raise ValueError("LocalHAProxy needs at least one server")
        super().__init__(Path(workdir), Path(workdir) / "haproxy.log")
        self.servers = list(servers)
        self.health_path = health_path
        self.backend = backend
        self.check_interval_ms = check_interval_ms
        self.rise = rise
        self.fall = fall
        self.admin_tcp_port = admin_tcp_port
        self.start_timeout = start_timeout
        #: Wait at start until every server is UP (False: only until the runtime API answers, for a fleet whose
        #: apps are not deployed yet).
        self.wait_up = wait_up
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket_path = self.workdir / "admin.sock"
        self.runtime_api = f"unix:{self.socket_path}"
        self.tcp_runtime_api = f"tcp:127.0.0.1:{admin_tcp_port}" if admin_tcp_port is not None else None
        self.config_path = self.workdir / "haproxy.cfg"

    name = "haproxy"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, start haproxy and wait until every server is UP. Can start again after `stop()`."""
        if self._process is not None:
            raise HAProxyError("this LocalHAProxy is already running")
        binary = haproxy_path()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.spawn([binary, "-f", str(self.config_path), "-db"], url=self.url, runtime_api=self.runtime_api)

    # -- reading it --------------------------------------------------------------------------------------------

    def balancer(self, *, servers: dict[str, str] | None = None, timeout: float = 5.0) -> HAProxyBalancer:
        """The reconciler's view of this HAProxy's backend."""
        spec = HAProxySpec(runtime_api=self.runtime_api, backend=self.backend, servers=servers or {})
        return HAProxyBalancer(spec, timeout=timeout)

    def server_states(self) -> dict[str, ServerState]:
        """Every server of the backend as the runtime API describes it. Raises TrafficError."""
        return self.balancer().servers()

    def config(self) -> str:
        check = f"check inter {self.check_interval_ms} rise {self.rise} fall {self.fall}"
        server_lines = "\n".join(
            f"    server {name} {address}:{port} {check}" for name, address, port in self.servers
        )
        tcp_socket = (
            f"    stats socket ipv4@127.0.0.1:{self.admin_tcp_port} level admin\n"
            if self.admin_tcp_port is not None
            else ""
        )
        return f"""\
# Written by fleetlab.haproxy.LocalHAProxy: a test and demo load balancer, rewritten on every start.
global
    stats socket {self.socket_path} mode 600 level admin
{tcp_socket}    stats timeout 30s
    maxconn 4096
    # Only requests that went wrong, with HAProxy's termination flags (which side ended them, and when).
    log stdout format iso local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    # A connect that takes long is a busy server, not a dead one (a dead one refuses at once): 5 s lets a SYN
    # the server's accept queue dropped be retried (Linux retransmits after 1 s).
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
    # No second chance for a request: a retry (or `option redispatch` sending it to another server) would hide
    # exactly the failures a deployment without traffic control causes, and the load generator must see them.
    retries 0

frontend fe
    bind 127.0.0.1:{self.port}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
    retry-on none
    option httpchk GET {self.health_path}
    http-check expect status 200
{server_lines}
"""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        seen = "the runtime API never answered"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise HAProxyError(
                    f"haproxy exited with code {self._process.returncode} while starting "
                    f"(config {self.config_path}); its log:\n{self.log_tail()}"
                )
            if self.socket_path.exists():
                try:
                    states = self.server_states()
                except TrafficError as exc:
                    seen = str(exc)
                else:
                    if len(states) == len(self.servers) and (
                        not self.wait_up or all(s.status == "UP" for s in states.values())
                    ):
                        return
                    seen = ", ".join(f"{name} {s.status}" for name, s in sorted(states.items()))
            time.sleep(0.05)
        raise HAProxyError(
            f"haproxy did not get every server UP within {self.start_timeout:g}s (last seen: {seen}); "
            f"its log:\n{self.log_tail()}"
        )
