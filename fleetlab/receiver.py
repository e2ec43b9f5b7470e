"""A small HTTP server standing in for a webhook receiver, Slack, GitHub's and GitLab's status APIs: it records
every request (method, path, headers, body) and answers from a script, so tests can assert the exact request
shape and auth headers, and play outages (500, 429 with Retry-After, 400) without mocking the client. The demo's
on-call webhook is one too.

No real server exists for these in the test environment; this is the smallest honest stand-in (a real HTTP
server on a loopback port, a real client over a real socket).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    #: The status it was answered with.
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (a slow service).
    delay: float = 0.0


@dataclass
class Receiver:
    """Answers from `script` in order, then `default`; `requests` is everything received, in order."""

    url: str
    requests: list[Request] = field(default_factory=list)
    script: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: Request) -> Reply:
        with self.lock:
            reply = self.script.pop(0) if self.script else self.default
            self.requests.append(dataclasses.replace(request, status=reply.status))
            return reply

    def paths(self) -> list[str]:
        with self.lock:
            return [request.path for request in self.requests]

    def received(self, path_prefix: str = "") -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.path.startswith(path_prefix)]


@contextmanager
def receiver(default: Reply | None = None) -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                              time.monotonic())
            reply = state["receiver"].answer(request)
            if reply.delay:
                time.sleep(reply.delay)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["receiver"] = Receiver(f"http://127.0.0.1:{server.server_port}", default=default or Reply())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()
