"""A real Prometheus on loopback scraping a local fleet's `/metrics`, for the analysis gates' tests and the demo
(issue 14).

It is the Prometheus a user runs (the system's binary, its HTTP API), configured for a test's time scale: scrapes
and rule evaluations every second (so a `rate(...[10s])` has data after a few seconds, not minutes), storage in
the work dir, and one job whose targets each carry a `host` label with the host id, so a gate's query can select
a batch with `host=~"web-1|web-2"`. The gates themselves query it over HTTP like any other Prometheus; the
helpers here (`query`, `values`, `wait_for_targets_up`, `wait_for_samples`) are for tests and the demo to know
when there is something to measure.

Timing: it is ready to answer queries ~0.1 s after start, but lists and scrapes its targets only ~5 s later
(its discovery manager passes target updates on at most every 5 s, and 2.x has no flag for that): expect
`wait_for_targets_up` to take 5-6 s, and a `rate(...[10s])` to be meaningful a few seconds after that.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import structlog

from fleetlab.service import LocalService, find_binary, free_port

log = structlog.get_logger(__name__)

#: How long `start()` waits for `/-/ready`.
START_TIMEOUT = 15.0
#: The most of an HTTP API answer read: a test's queries answer a few kB; more is a runaway query.
MAX_ANSWER = 8 * 1024 * 1024
#: Between two polls of the API while waiting.
POLL = 0.1


class PrometheusError(RuntimeError):
    """The local Prometheus is missing, would not start, or its API failed or did not reach a state in time."""


def prometheus_path() -> str:
    """The prometheus binary: on PATH, or in /usr/bin or /usr/local/bin (where packages and tarballs put it)."""
    return find_binary("prometheus", "/usr/bin:/usr/local/bin:/usr/sbin", PrometheusError)


class LocalPrometheus(LocalService):
    """`prometheus --config.file=<workdir>/prometheus.yml` as a child process, one scrape job.

    `targets` are (host_id, address, port); each is scraped at `http://address:port<metrics_path>` every
    `scrape_interval` and its series carry `host="<host_id>"` (and Prometheus' own `job` and `instance`).
    """

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[tuple[str, str, int]],
        *,
        job: str = "hello",
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
        start_timeout: float = START_TIMEOUT,
        extra_jobs: Sequence[tuple[str, Sequence[tuple[str, str, int]]]] = (),
    ) -> None:
        if not targets:
            raise ValueError("LocalPrometheus needs at least one target")
        hosts = [host_id for host_id, _, _ in targets]
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"LocalPrometheus: host ids must be unique, got {hosts}")
        super().__init__(Path(workdir), Path(workdir) / "prometheus.log")
        self.targets = list(targets)
        self.job = job
        self.metrics_path = metrics_path
        self.scrape_interval = scrape_interval
        self.start_timeout = start_timeout
        #: More jobs on `/metrics`, each (job name, targets like `targets`): the demo's agents and reconciler.
        self.extra_jobs = [(name, list(job_targets)) for name, job_targets in extra_jobs]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / "prometheus.yml"
        self.data_path = self.workdir / "data"

    name = "prometheus"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return [host_id for host_id, _, _ in self.targets]

    def start(self) -> None:
        """Write the config, start prometheus and wait until `/-/ready` answers. Can start again after `stop()`
        (on the same port and storage: the series scraped before are still there)."""
        if self._process is not None:
            raise PrometheusError("this LocalPrometheus is already running")
        binary = prometheus_path()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={self.data_path}",
            # A test's data: an hour is plenty, and nothing piles up in a long-lived work dir.
            "--storage.tsdb.retention.time=1h",
            # Errors and warnings only (a bad config, a target it cannot scrape is in /api/v1/targets).
            "--log.level=warn",
        ]
        self.spawn(argv, url=self.url, targets=len(self.targets))

    # -- reading it --------------------------------------------------------------------------------------------

    def query(self, promql: str, *, at: float | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """`GET /api/v1/query`: the answer's `data` (`{"resultType": ..., "result": [...]}`), evaluated now or at
        the Unix time `at`. Raises PrometheusError when the server is unreachable or rejects the query."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = self._api("query", params, timeout=timeout)
        data = answer.get("data")
        if not isinstance(data, dict):
            raise PrometheusError(f"{self.url}/api/v1/query answered without data for {promql!r}: {answer}")
        return data

    def values(self, promql: str, *, by: str = "host", timeout: float = 5.0) -> dict[str, float]:
        """An instant vector as {value of label `by`: sample value}: `values('sum by (host) (...)')`. Series
        without that label are under "". NaN stays NaN (a 0/0 ratio). Raises PrometheusError for other types."""
        data = self.query(promql, timeout=timeout)
        if data.get("resultType") != "vector":
            raise PrometheusError(f"{promql!r} gave a {data.get('resultType')}, not an instant vector")
        return {series["metric"].get(by, ""): float(series["value"][1]) for series in data["result"]}

    def active_targets(self, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        """`GET /api/v1/targets?state=active`: each target's labels, `health` ("up", "down", "unknown") and
        `lastError`."""
        answer = self._api("targets", {"state": "active"}, timeout=timeout)
        targets = answer.get("data", {}).get("activeTargets")
        if not isinstance(targets, list):
            raise PrometheusError(f"{self.url}/api/v1/targets answered without activeTargets: {answer}")
        return targets

    def wait_for_targets_up(self, timeout: float = 15.0) -> None:
        """Wait until every target has been scraped successfully (health "up")."""
        deadline = time.monotonic() + timeout
        seen = "no answer from /api/v1/targets"
        while True:
            self._check_running()
            try:
                targets = self.active_targets()
            except PrometheusError as exc:
                seen = str(exc)
            else:
                health = {t.get("labels", {}).get("host", "?"): t for t in targets}
                if set(health) >= set(self.hosts) and all(health[h].get("health") == "up" for h in self.hosts):
                    return
                seen = ", ".join(
                    f"{host} {health[host].get('health')}"
                    + (f" ({health[host]['lastError']})" if health[host].get("lastError") else "")
                    if host in health
                    else f"{host} not listed"
                    for host in self.hosts
                )
            if time.monotonic() >= deadline:
                raise PrometheusError(f"Prometheus' targets were not all up within {timeout:g}s: {seen}")
            time.sleep(POLL)

    def wait_for_samples(
        self, metric: str, timeout: float = 15.0, *, count: int = 1, hosts: Collection[str] | None = None
    ) -> dict[str, int]:
        """Wait until every series of `metric` (a metric name or selector, `hello_http_requests_total{code="500"}`)
        of each of `hosts` (default: every target) has at least `count` samples stored; returns host -> the
        fewest samples any of its series has. `count=2` is the least a `rate()` needs."""
        wanted = set(self.hosts if hosts is None else hosts)
        promql = f"min by (host) (count_over_time({metric}[1h]))"
        deadline = time.monotonic() + timeout
        seen: dict[str, int] = {}
        problem = ""
        while True:
            self._check_running()
            try:
                seen = {host: int(n) for host, n in self.values(promql).items()}
            except PrometheusError as exc:
                problem = f" (last query failed: {exc})"
            else:
                problem = ""
                if all(seen.get(host, 0) >= count for host in wanted):
                    return {host: seen[host] for host in sorted(wanted)}
            if time.monotonic() >= deadline:
                have = ", ".join(f"{host} {seen.get(host, 0)}" for host in sorted(wanted))
                raise PrometheusError(
                    f"{metric} did not reach {count} sample(s) per host within {timeout:g}s: {have}{problem}"
                )
            time.sleep(POLL)

    def config(self) -> str:
        # Strings go in as JSON, which YAML reads as double-quoted scalars: a host id needs no YAML quoting rules.
        def static(targets: Sequence[tuple[str, str, int]]) -> str:
            return "\n".join(
                f"      - targets: [{json.dumps(f'{address}:{port}')}]\n        labels: {{host: {json.dumps(host_id)}}}"
                for host_id, address, port in targets
            )

        extra = "".join(
            f"""  - job_name: {json.dumps(name)}
    metrics_path: "/metrics"
    static_configs:
{static(targets)}
"""
            for name, targets in self.extra_jobs
            if targets
        )
        interval = json.dumps(self.scrape_interval)
        return f"""\
# Written by fleetlab.prometheus.LocalPrometheus: a test and demo Prometheus, rewritten on every start.
global:
  scrape_interval: {interval}
  # No more than the interval (Prometheus' default, 10s, is refused when it exceeds the interval).
  scrape_timeout: {interval}
  evaluation_interval: {interval}

scrape_configs:
  - job_name: {json.dumps(self.job)}
    metrics_path: {json.dumps(self.metrics_path)}
    static_configs:
{static(self.targets)}
{extra}"""

    # -- internals ---------------------------------------------------------------------------------------------

    def _api(self, endpoint: str, params: dict[str, str], *, timeout: float) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own http:// URL)
                body = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            # Prometheus answers a bad query with 400 and a JSON body saying why.
            body = exc.read(MAX_ANSWER + 1)
        except OSError as exc:  # refused, reset, timed out
            raise PrometheusError(f"{url}: {exc}") from exc
        if len(body) > MAX_ANSWER:
            raise PrometheusError(f"{url}: answer larger than {MAX_ANSWER} bytes")
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise PrometheusError(f"{url}: not JSON: {body[:200]!r}") from exc
        if not isinstance(answer, dict) or answer.get("status") != "success":
            detail = answer.get("error", answer) if isinstance(answer, dict) else answer
            kind = answer.get("errorType", "error") if isinstance(answer, dict) else "error"
            raise PrometheusError(f"{url}: {kind}: {detail}")
        return answer

    def _check_running(self) -> None:
        if self._process is None:
            raise PrometheusError("this LocalPrometheus is not running (start() it first)")
        if self._process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with code {self._process.returncode} (config {self.config_path}); "
                f"its log:\n{self.log_tail()}"
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        seen = "no answer"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:  # noqa: S310
                    if response.status == 200:
                        return
                    seen = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:  # 503 while the TSDB opens
                seen = f"HTTP {exc.code}"
            except OSError as exc:
                seen = str(exc)
            time.sleep(0.05)
        raise PrometheusError(
            f"prometheus was not ready within {self.start_timeout:g}s at {self.url}/-/ready (last: {seen}); "
            f"its log:\n{self.log_tail()}"
        )
