"""The real components the Prometheus analysis gates are tested against (issue 14): the demo app's `/metrics`
and fault knob, and fleetlab's LocalPrometheus scraping two hello processes, measured with the gate's own
error-ratio PromQL.

The apps are the real examples/apps/hello server, run with the host's python3 from folders laid out as the
appspec installs them (`app/` -> srv/hello, `config/*.conf` -> srv/hello/etc). web-1 is healthy; web-2 runs
with `error_rate=0.2`, the demo's bad revision v5.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetlab.fleet import V5_FAULTS
from fleetlab.haproxy import free_port
from fleetlab.prometheus import LocalPrometheus, PrometheusError
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "apps" / "hello"

#: The gate's query: per host, the fraction of requests answered with a 5xx over the last 10 s.
ERROR_RATIO = (
    'sum by (host) (rate(hello_http_requests_total{code=~"5.."}[10s]))'
    " / sum by (host) (rate(hello_http_requests_total[10s]))"
)


@dataclass
class HelloProcess:
    host_id: str
    port: int
    home: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str = "/") -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def log(self) -> str:
        return (self.home.parent / "hello.log").read_text(errors="replace")


def install_hello(root: Path, *, faults: str | None = None) -> Path:
    """examples/apps/hello as its appspec installs it under `root` (srv/hello and srv/hello/etc)."""
    home = root / "srv" / "hello"
    shutil.copytree(HELLO / "app", home)
    (home / "etc").mkdir()
    for conf in ("hello.conf", "faults.conf"):
        shutil.copy(HELLO / "config" / conf, home / "etc" / conf)
    if faults is not None:
        (home / "etc" / "faults.conf").write_text(faults)
    return home


def host_python() -> str:
    """The app runs with the host's python3 (start.sh), not the venv's: no third-party packages."""
    return shutil.which("python3") or sys.executable


def start_hello(root: Path, host_id: str, *, faults: str | None = None) -> HelloProcess:
    """The app installed under `root` and started, once /healthz answers."""
    return start_installed(install_hello(root, faults=faults), host_id)


def start_installed(home: Path, host_id: str) -> HelloProcess:
    port = free_port()
    env = {**os.environ, "HELLO_PORT": str(port), "HELLO_HOST": host_id}
    with (home.parent / "hello.log").open("ab") as log:
        process = subprocess.Popen([host_python(), str(home / "server.py")], env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    app = HelloProcess(host_id, port, home, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hello {host_id} exited with {process.returncode}: {app.log()}")
        with contextlib.suppress(OSError):
            if app.get("/healthz")[0] == 200:
                return app
        time.sleep(0.05)
    stop_hello(app)
    raise RuntimeError(f"hello {host_id} did not answer /healthz within 10 s: {app.log()}")


def stop_hello(app: HelloProcess) -> None:
    app.process.terminate()
    try:
        app.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait()


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[tuple[HelloProcess, HelloProcess]]:
    started: list[HelloProcess] = []
    try:
        started.append(start_hello(tmp_path / "web-1", "web-1"))
        started.append(start_hello(tmp_path / "web-2", "web-2", faults=V5_FAULTS))
        yield started[0], started[1]
    finally:
        for app in started:
            stop_hello(app)


# -- the exposition format ---------------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABELS = r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\}'
_SAMPLE = re.compile(rf"^({_NAME})({_LABELS})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$")
_COMMENT = re.compile(rf"^# (HELP|TYPE) ({_NAME}) (.*)$")


def parse_exposition(text: str) -> dict[str, dict[str, float]]:
    """A strict reading of Prometheus' text format 0.0.4 for what the app writes: {metric: {labels: value}}.
    Every sample's metric has a TYPE line before it; fails the test on any line that does not conform."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    samples: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if comment := _COMMENT.match(line):
            kind, name, rest = comment.groups()
            if kind == "TYPE":
                assert rest in {"counter", "gauge", "untyped", "histogram", "summary"}, line
                assert name not in samples, f"TYPE after samples of {name}"
                types[name] = rest
            continue
        sample = _SAMPLE.match(line)
        assert sample is not None, f"not a sample line: {line!r}"
        name, labels, value = sample.groups()
        assert name in types, f"{name} has no TYPE line"
        if types[name] == "counter":
            assert name.endswith("_total"), name
        samples.setdefault(name, {})[labels or ""] = float(value)
    return samples


def check_with_prometheus_tools(text: str) -> None:
    """The reference parsers, where installed: prometheus_client's, and promtool's linter (same package as the
    server)."""
    with contextlib.suppress(ImportError):
        from prometheus_client.parser import text_string_to_metric_families  # type: ignore[import-not-found]

        families = {family.name for family in text_string_to_metric_families(text)}
        assert {"hello_http_requests", "hello_http_errors", "hello_info"} <= families, families
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=10, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_count_answers_by_code_and_the_fault_knob_fails_every_fifth_request(
    apps: tuple[HelloProcess, HelloProcess],
) -> None:
    good, bad = apps
    codes = {app.host_id: [app.get("/")[0] for _ in range(20)] for app in apps}
    assert codes["web-1"] == [200] * 20
    assert codes["web-2"] == [500 if n % 5 == 0 else 200 for n in range(1, 21)]  # deterministic: 5, 10, 15, 20
    status, body = bad.get("/")
    assert status == 200 and json.loads(body)["host"] == "web-2"
    # Health checks and scrapes are never failed and never counted: they would dilute the error rate.
    for app in apps:
        for _ in range(7):
            assert app.get("/healthz") == (200, b"ok\n")
            assert app.get("/metrics")[0] == 200

    with urllib.request.urlopen(bad.url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = response.read().decode()
    check_with_prometheus_tools(text)
    metrics = parse_exposition(text)
    assert metrics["hello_http_requests_total"] == {'{code="200"}': 17, '{code="500"}': 4}
    assert metrics["hello_http_errors_total"] == {'{code="500"}': 4}
    assert metrics["hello_info"] == {'{version="1"}': 1}

    good_metrics = parse_exposition(good.get("/metrics")[1].decode())
    # 500 is there at 0 from the start: a healthy host's error ratio is 0, not "no data".
    assert good_metrics["hello_http_requests_total"] == {'{code="200"}': 20, '{code="500"}': 0}
    assert good_metrics["hello_http_errors_total"] == {'{code="500"}': 0}
    assert "/healthz" not in good.log() and "/metrics" not in good.log()  # quiet, as before


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("error_rate=1.5\n", "faults.conf:1: error_rate must be a number between 0 and 1, got '1.5'"),
        ("# fine\nerror_rate=lots\n", "faults.conf:2: error_rate must be a number between 0 and 1, got 'lots'"),
        ("latency=2s\n", "faults.conf:1: expected error_rate=<fraction between 0 and 1>, got 'latency=2s'"),
    ],
)
def test_a_bad_fault_knob_stops_the_app_at_start_with_the_file_and_line(
    tmp_path: Path, faults: str, message: str
) -> None:
    home = install_hello(tmp_path, faults=faults)
    done = subprocess.run([host_python(), str(home / "server.py")], env={**os.environ, "HELLO_PORT": "1"},
                          capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 1
    assert message in done.stderr


def test_an_app_installed_before_the_knob_existed_has_no_faults(tmp_path: Path) -> None:
    home = install_hello(tmp_path)
    (home / "etc" / "faults.conf").unlink()
    app = start_installed(home, "web-1")
    try:
        assert [app.get("/")[0] for _ in range(10)] == [200] * 10
    finally:
        stop_hello(app)


# -- a real Prometheus -------------------------------------------------------------------------------------------


class SteadyTraffic:
    """GET / on every app, one round every `period` seconds, on a thread, until stopped: rate() needs counters
    that move while Prometheus scrapes."""

    def __init__(self, apps: tuple[HelloProcess, ...], period: float = 0.02) -> None:
        self.apps = apps
        self.period = period
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for app in self.apps:
                app.get("/")
                self.sent += 1

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_prometheus_measures_the_faulty_hosts_error_ratio(
    apps: tuple[HelloProcess, HelloProcess], tmp_path: Path
) -> None:
    require_tool("prometheus", "prometheus")
    good, bad = apps
    targets = [(app.host_id, "127.0.0.1", app.port) for app in apps]
    with SteadyTraffic(apps), LocalPrometheus(tmp_path / "prometheus", targets) as prometheus:
        assert "scrape_interval: \"1s\"" in prometheus.config_path.read_text()
        prometheus.wait_for_targets_up(timeout=15)
        # rate() over [10s] needs at least two samples per series; a few more make the ratio steady.
        prometheus.wait_for_samples("hello_http_requests_total", timeout=15, count=4)

        deadline = time.monotonic() + 15
        ratios: dict[str, float] = {}
        while time.monotonic() < deadline:
            ratios = prometheus.values(ERROR_RATIO)
            if set(ratios) == {"web-1", "web-2"} and not any(math.isnan(v) for v in ratios.values()):
                break
            time.sleep(0.2)
        assert ratios.get("web-1") == 0.0, ratios
        assert ratios.get("web-2") == pytest.approx(0.2, abs=0.04), ratios

        # A gate's batch filter: the same ratio for the canary's hosts only.
        batch = prometheus.values(
            'sum by (host) (rate(hello_http_errors_total{host=~"web-2"}[10s]))'
            ' / sum by (host) (rate(hello_http_requests_total{host=~"web-2"}[10s]))'
        )
        assert set(batch) == {"web-2"} and batch["web-2"] == pytest.approx(0.2, abs=0.04), batch
        info = prometheus.query('hello_info{host="web-1"}')
        assert info["resultType"] == "vector"
        assert [s["metric"]["version"] for s in info["result"]] == ["1"]
        assert info["result"][0]["metric"]["job"] == "hello"

        with pytest.raises(PrometheusError, match="bad_data"):
            prometheus.query("sum by (host) (")
    # Stopped: what a gate sees as Inconclusive (the query could not be run), not as an unhealthy service.
    with pytest.raises(PrometheusError, match="not running"):
        prometheus.wait_for_targets_up(timeout=1)
    with pytest.raises(PrometheusError, match="Connection refused"):
        prometheus.query("up")
    assert good.process.poll() is None and bad.process.poll() is None


def test_a_target_that_does_not_answer_is_named_with_its_error(tmp_path: Path) -> None:
    require_tool("prometheus", "prometheus")
    dead_port = free_port()
    with LocalPrometheus(tmp_path / "prometheus", [("web-9", "127.0.0.1", dead_port)]) as prometheus:
        deadline = time.monotonic() + 15  # Prometheus lists its targets ~5 s after start, then scrapes them
        while time.monotonic() < deadline and not any(t["health"] != "unknown" for t in prometheus.active_targets()):
            time.sleep(0.1)
        with pytest.raises(PrometheusError, match=r"web-9 down \(.*connection refused"):
            prometheus.wait_for_targets_up(timeout=0.5)
        with pytest.raises(PrometheusError, match=r"hello_info did not reach 1 sample\(s\) per host.*web-9 0"):
            prometheus.wait_for_samples("hello_info", timeout=1)


def test_a_missing_prometheus_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(PrometheusError, match=r"apt-get install prometheus"):
        LocalPrometheus(tmp_path, [("web-1", "127.0.0.1", 1)]).start()


def test_a_config_prometheus_refuses_fails_start_with_its_log(tmp_path: Path) -> None:
    require_tool("prometheus", "prometheus")
    prometheus = LocalPrometheus(tmp_path / "prometheus", [("web-1", "127.0.0.1", 1)], scrape_interval="soon")
    with pytest.raises(PrometheusError, match=r"exited with code \d+ .*its log:\n.*soon"):
        prometheus.start()
    assert prometheus.pid is None
