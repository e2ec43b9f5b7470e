#!/usr/bin/env python3
"""hello: answers GET / with the host, the revision and the greeting from its config file.

It also serves `GET /metrics` in Prometheus' text format (0.0.4), which the analysis gates query (issue 14),
and has one fault knob for the demo's bad revision: `error_rate=<fraction>` in etc/faults.conf makes that
fraction of the answers to GET / a 500, while /healthz stays 200 (so ValidateService and the load balancer's
health checks pass, and only metrics can tell the revision is bad). Standard library only: it runs with the
host's python3.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOME = Path(__file__).resolve().parent
VERSION = (HOME / "VERSION").read_text().strip()
GREETING = (HOME / "etc" / "hello.conf").read_text().strip()
FAULTS = HOME / "etc" / "faults.conf"
#: Paths that are not the service's work: counting them would let the load balancer's health checks and
#: Prometheus' scrapes (several a second, always 200) dilute the error rate the gates measure.
UNCOUNTED = ("/healthz", "/metrics")


def read_error_rate(path: Path) -> float:
    """`error_rate=<fraction between 0 and 1>` from `path` (lines `key=value`, `#` comments); 0 if absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:  # installed before the knob existed: no faults
        return 0.0
    rate = 0.0
    for number, raw in enumerate(text.splitlines(), start=1):
        setting = raw.split("#", 1)[0].strip()
        if not setting:
            continue
        key, sep, value = (part.strip() for part in setting.partition("="))
        if not sep or key != "error_rate":
            sys.exit(f"{path}:{number}: expected error_rate=<fraction between 0 and 1>, got {setting!r}")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            sys.exit(f"{path}:{number}: error_rate must be a number between 0 and 1, got {value!r}")
    return rate


ERROR_RATE = read_error_rate(FAULTS)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters shared by the server's threads (ThreadingHTTPServer: one thread per connection)."""

    def __init__(self, error_rate: float) -> None:
        self._lock = threading.Lock()
        # 200 and 500 exist from the start at 0, so a healthy host's error ratio is 0, not "no data".
        self.requests = {"200": 0, "500": 0}
        self.errors = {"500": 0}
        self.error_rate = error_rate
        self._served = 0

    def next_code(self) -> int:
        """The status the next counted request answers with. Deterministic, not random, so tests are stable:
        request n fails when floor(n * rate) steps up, i.e. every 5th request for 0.2."""
        with self._lock:
            self._served += 1
            n = self._served
        return 500 if int(n * self.error_rate) > int((n - 1) * self.error_rate) else 200

    def count(self, code: int) -> None:
        key = str(code)
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            if code >= 500:
                self.errors[key] = self.errors.get(key, 0) + 1

    def exposition(self) -> bytes:
        with self._lock:
            requests, errors = dict(self.requests), dict(self.errors)
        lines = [
            "# HELP hello_http_requests_total Requests answered, by status code (not /metrics nor /healthz).",
            "# TYPE hello_http_requests_total counter",
            *(f'hello_http_requests_total{{code="{code}"}} {n}' for code, n in sorted(requests.items())),
            "# HELP hello_http_errors_total Requests answered with a 5xx status, by status code.",
            "# TYPE hello_http_errors_total counter",
            *(f'hello_http_errors_total{{code="{code}"}} {n}' for code, n in sorted(errors.items())),
            "# HELP hello_info The running revision of hello.",
            "# TYPE hello_info gauge",
            f'hello_info{{version="{_label(VERSION)}"}} 1',
        ]
        return ("\n".join(lines) + "\n").encode()


METRICS = Metrics(ERROR_RATE)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        content_type = "application/json"
        code = 200
        if self.path == "/healthz":
            body = b"ok\n"
        elif self.path == "/metrics":
            body = METRICS.exposition()
            content_type = "text/plain; version=0.0.4; charset=utf-8"
        else:
            code = METRICS.next_code()
            if code == 500:
                text = json.dumps({"error": f"injected fault (error_rate={ERROR_RATE:g} in {FAULTS})"})
            else:
                text = json.dumps({"greeting": GREETING, "version": VERSION, "host": os.environ.get("HELLO_HOST", "?")})
            body = (text + "\n").encode()
        if self.path not in UNCOUNTED:
            METRICS.count(code)  # before the answer goes out, so a scrape right after it sees it counted
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the log file stays small
        if self.path not in UNCOUNTED:  # a load balancer checks several times a second, Prometheus scrapes
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
