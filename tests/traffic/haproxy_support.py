"""Real HTTP servers for the HAProxy tests, each its own process so a test can kill one abruptly.

Run as `python -m tests.traffic.haproxy_support PORT NAME`: answers `/healthz` with `ok`, `/slow?seconds=S`
after S seconds, anything else with the demo app's JSON (`{"greeting","version","host"}`), over HTTP/1.1
keep-alive. HAProxy closes each health check with a reset, which Python's server would print as a traceback
every 100 ms: errors are not printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_tag = "?"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            body = b"ok\n"
        else:
            if url.path == "/slow":
                time.sleep(float(urllib.parse.parse_qs(url.query).get("seconds", ["1"])[0]))
            body = json.dumps({"greeting": "hello", "version": "v1", "host": self.server_name_tag}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return None


class AppProcess:
    """One server process on 127.0.0.1:port."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AppProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.traffic.haproxy_support", str(self.port), self.name],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.02)
        raise RuntimeError(f"test server {self.name} did not listen on port {self.port} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the abrupt death of an application, no goodbye to open connections."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    _Handler.server_name_tag = name
    _Server(("127.0.0.1", port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
