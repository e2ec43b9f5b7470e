#!/usr/bin/env python3
"""hello: answers GET / with the host, the revision and the greeting from its config file."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOME = Path(__file__).resolve().parent
VERSION = (HOME / "VERSION").read_text().strip()
GREETING = (HOME / "etc" / "hello.conf").read_text().strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            body = json.dumps({"greeting": GREETING, "version": VERSION, "host": os.environ.get("HELLO_HOST", "?")})
            body = (body + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the log file stays small
        if self.path != "/healthz":  # a load balancer checks several times a second
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: under a load balancer a short stall would drop connections.
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        # Load balancers close health checks with a reset; that is not worth a traceback in the log.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def main() -> None:
    port = int(os.environ.get("HELLO_PORT", "8080"))
    server = Server(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
