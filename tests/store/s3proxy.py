"""A real HTTP proxy in front of the moto server that counts requests and bytes and can inject S3 faults.

Used by the S3 backend tests (throttling, 5xx, denied access, a write applied whose answer is lost) and by
the idle-agent benchmark (GETs, PUTs and bytes of a real agent). Requests travel over real sockets both
ways, so botocore's signing, conditional headers and error parsing are all exercised.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    #: Forward the request to the server first (so it is applied), then answer with the fault anyway: the
    #: "write landed but the answer was lost" case.
    after_forwarding: bool = False
    methods: frozenset[str] | None = None


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int
    request_bytes: int
    response_bytes: int
    response_body_bytes: int


class S3Proxy:
    def __init__(self, upstream: str, *, port: int = 0, tls: ssl.SSLContext | None = None,
                 close_after_reply: bool = False) -> None:
        """`port`: listen on this port (0: any free one). A test that needs an endpoint that is down, then
        up, points a store at a free port and starts the proxy on it later. `tls`: serve HTTPS with this server
        context. `close_after_reply`: close every connection after its answer without saying so (no
        `Connection: close`), as a server dropping idle kept-alive connections does."""
        self.tls = tls
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.exchanges: list[Exchange] = []
        #: Connections clients opened (kept-alive ones carry several exchanges).
        self.connections = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def setup(self) -> None:
                with proxy._lock:
                    proxy.connections += 1
                super().setup()

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.close_after_reply = close_after_reply
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, count: int, status: int, code: str, *, after_forwarding: bool = False,
                  methods: set[str] | None = None) -> None:
        with self._lock:
            fault = Fault(status, code, after_forwarding, frozenset(methods) if methods else None)
            self._faults.extend([fault] * count)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.exchanges.clear()

    def _next_fault(self, method: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.methods is None or method in fault.methods:
                    return self._faults.pop(index)
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            body = _read_chunked(handler)  # botocore streams uploads over HTTPS with a checksum trailer
        else:
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length else b""
        request_bytes = len(handler.requestline) + 2 + len(bytes(handler.headers)) + len(body)
        fault = self._next_fault(handler.command)
        if fault is not None and fault.after_forwarding:
            self._forward(handler, body)
        if fault is not None:
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                f"<Message>injected by the test proxy</Message></Error>"
            ).encode()
            self._reply(handler, fault.status, [("Content-Type", "application/xml")], payload, request_bytes)
            return
        status, headers, payload = self._forward(handler, body)
        self._reply(handler, status, headers, payload, request_bytes)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            connection.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                if name.lower() not in ("connection", "transfer-encoding"):
                    connection.putheader(name, value)
            if "Content-Length" not in handler.headers:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, headers, payload
        finally:
            connection.close()

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
               payload: bytes, request_bytes: int) -> None:
        handler.send_response(status)
        sent_headers = 0
        for name, value in headers:
            handler.send_header(name, value)
            sent_headers += len(name) + len(value) + 4
        if status not in (204, 304) and handler.command != "HEAD":
            handler.send_header("Content-Length", str(len(payload)))
        else:
            payload = b""
        # Recorded before the answer leaves, so a client that has its answer always finds it counted.
        with self._lock:
            self.exchanges.append(
                Exchange(handler.command, handler.path, status, request_bytes, sent_headers + 17 + len(payload),
                         len(payload))
            )
        handler.end_headers()
        if payload:
            handler.wfile.write(payload)
        if self.close_after_reply:
            handler.close_connection = True


def _read_chunked(handler: BaseHTTPRequestHandler) -> bytes:
    body = bytearray()
    while True:
        size = int(handler.rfile.readline().split(b";")[0], 16)
        if size == 0:
            while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return bytes(body)
        body += handler.rfile.read(size)
        handler.rfile.readline()


@contextmanager
def running_proxy(upstream: str) -> Iterator[S3Proxy]:
    proxy = S3Proxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
