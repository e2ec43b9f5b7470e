"""A steady HTTP load generator that counts every failed request: the measure of "no request lost" in the demo,
the tests and the benchmarks.

Requests follow a fixed schedule (request k is due at start + k / rate), taken by a pool of threads, each with its
own persistent `http.client` connection: a new connection per request would leave tens of thousands of sockets in
TIME_WAIT over a long demo, and at 200 req/s Python spends most of its time connecting. The pool is larger than the
rate needs so that a slow or hung server (up to `timeout`) does not slow the schedule for everyone else.

A failed request is counted and never retried: a retry is exactly what would hide a deployment's dropped
requests. A connection the server closed is reopened for the next request (http.client does it), and that next
request counts for itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import structlog

from contract.logs import configure_logging

log = structlog.get_logger(__name__)

DEFAULT_RATE = 200.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_CONCURRENCY = 16
DEFAULT_SAMPLES = 20


@dataclass(frozen=True)
class FailureSample:
    """One failed request, as it happened."""

    #: Seconds since the generator started.
    at: float
    when: datetime
    reason: str
    detail: str


@dataclass(frozen=True)
class LoadSnapshot:
    """Counts so far. `ok + failed` may trail `sent` by the requests in flight."""

    sent: int
    ok: int
    failed: int
    by_reason: Mapping[str, int]
    by_version: Mapping[str, int]
    by_host: Mapping[str, int]
    #: Requests sent per second since start (over `elapsed`).
    achieved_rate: float
    elapsed: float
    samples: tuple[FailureSample, ...] = field(default=())

    @property
    def in_flight(self) -> int:
        return self.sent - self.ok - self.failed


class LoadGenerator:
    """GET `url` at `rate` requests per second until stopped."""

    def __init__(
        self,
        url: str,
        *,
        rate: float = DEFAULT_RATE,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_samples: int = DEFAULT_SAMPLES,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"LoadGenerator needs an http:// URL, got {url!r}")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.url = url
        self.rate = rate
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_samples = max_samples
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = 0
        self._started = 0.0
        self._stopped: float | None = None
        self._sent = 0
        self._ok = 0
        self._failed = 0
        self._by_reason: Counter[str] = Counter()
        self._by_version: Counter[str] = Counter()
        self._by_host: Counter[str] = Counter()
        self._samples: list[FailureSample] = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("this LoadGenerator was already started")
        self._started = time.monotonic()
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._worker, name=f"loadgen-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()
        log.info("fleetlab.loadgen.start", url=self.url, rate=self.rate, concurrency=self.concurrency)

    def stop(self) -> LoadSnapshot:
        """Stop scheduling, wait for requests in flight (each bounded by `timeout`), return the final counts."""
        with self._lock:
            if self._stopped is None:
                self._stopped = time.monotonic()  # the rate is over the time requests were being scheduled
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        final = self.snapshot()
        log.info("fleetlab.loadgen.stop", sent=final.sent, ok=final.ok, failed=final.failed,
                 rate=round(final.achieved_rate, 1), by_reason=dict(final.by_reason))
        return final

    def run_for(self, seconds: float) -> LoadSnapshot:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def snapshot(self) -> LoadSnapshot:
        with self._lock:
            end = self._stopped if self._stopped is not None else time.monotonic()
            elapsed = max(end - self._started, 1e-9) if self._started else 0.0
            return LoadSnapshot(
                sent=self._sent,
                ok=self._ok,
                failed=self._failed,
                by_reason=dict(self._by_reason),
                by_version=dict(self._by_version),
                by_host=dict(self._by_host),
                achieved_rate=self._sent / elapsed if elapsed else 0.0,
                elapsed=elapsed,
                samples=tuple(self._samples),
            )

    # -- the workers -------------------------------------------------------------------------------------------

    def _ticket(self) -> float | None:
        """When this worker's next request is due (monotonic), or None when stopped."""
        with self._lock:
            due = self._started + self._next / self.rate
            self._next += 1
        while not self._stop.is_set():
            wait = due - time.monotonic()
            if wait <= 0:
                return due
            self._stop.wait(min(wait, 0.5))
        return None

    def _worker(self) -> None:
        connection: http.client.HTTPConnection | None = None
        try:
            while self._ticket() is not None:
                if connection is None:
                    connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
                with self._lock:
                    self._sent += 1
                try:
                    connection.request("GET", self._path, headers={"User-Agent": "fleetlab-loadgen"})
                    response = connection.getresponse()
                    body = response.read()  # all of it: what is left unread would be taken for the next answer
                    if response.will_close:
                        connection.close()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    connection = None
                    self._record_failure(_reason(exc), f"{type(exc).__name__}: {exc}")
                    continue
                if 200 <= response.status < 300:
                    self._record_ok(body)
                else:
                    self._record_failure(str(response.status), f"HTTP {response.status} {response.reason}")
        finally:
            if connection is not None:
                connection.close()

    def _record_ok(self, body: bytes) -> None:
        served = _served_by(body)
        with self._lock:
            self._ok += 1
            for key, counter in (("version", self._by_version), ("host", self._by_host)):
                if key in served:
                    counter[served[key]] += 1

    def _record_failure(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._failed += 1
            self._by_reason[reason] += 1
            if len(self._samples) < self.max_samples:
                self._samples.append(
                    FailureSample(at=now - self._started, when=datetime.now(UTC), reason=reason, detail=detail)
                )


def _served_by(body: bytes) -> dict[str, str]:
    """The "host" and "version" fields of a JSON object body (the demo app's answer), as strings."""
    if not body.lstrip().startswith(b"{"):
        return {}
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {key: str(document[key]) for key in ("host", "version") if key in document}


def _reason(exc: BaseException) -> str:
    """A short, stable name for why a request failed, to count failures by."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "remote disconnected"
    if isinstance(exc, http.client.IncompleteRead):
        return "incomplete response"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    return type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second (default 200)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run (default 5)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per request, seconds (default 2)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--log-level", default="warning", help="stderr log level (default warning)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)  # logs to stderr: stdout is the `name: value unit` lines, for scripts
    generator = LoadGenerator(args.url, rate=args.rate, timeout=args.timeout, concurrency=args.concurrency)
    result = generator.run_for(args.seconds)
    lines = [
        ("requests_sent", result.sent, "requests"),
        ("requests_ok", result.ok, "requests"),
        ("requests_failed", result.failed, "requests"),
        ("rate_achieved", f"{result.achieved_rate:.1f}", "req/s"),
        ("elapsed", f"{result.elapsed:.2f}", "s"),
    ]
    lines += [(f"failed_{reason.replace(' ', '_')}", count, "requests") for reason, count in result.by_reason.items()]
    lines += [(f"served_version_{version}", count, "requests") for version, count in result.by_version.items()]
    for name, value, unit in lines:
        print(f"{name}: {value} {unit}")
    for sample in result.samples[:5]:
        print(f"# failure at {sample.at:.3f}s: {sample.detail}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
