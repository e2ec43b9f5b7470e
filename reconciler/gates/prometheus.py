"""Analysis gate measurements over Prometheus' HTTP API (`GET /api/v1/query`, instant queries).

One measurement: fill the query's variables, ask Prometheus, judge every returned series with the gate's
`successCondition`. What comes back is always a `GateMeasurement`, never an exception: a query that cannot be
run (connection refused, timeout, HTTP error, PromQL error, a non-numeric value) or that returns no series is
Inconclusive with Prometheus' (or the OS's) own words, so a message can never call a service unhealthy when
only its metrics were unreachable.

urllib, not a client library: one GET with a timeout and a JSON answer is all a gate needs, and the standard
library keeps the reconciler's dependencies to those made for a job we do not want to hand-write.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

from contract.models import GateMeasurement, GateResult
from reconciler.core.gates import DueMeasurement
from reconciler.desired.gates_spec import judge, render_query

#: A query shown in status and kept in the analysis record is cut here.
QUERY_SHOWN = 2000
#: Prometheus' answers to a gate query are small; a runaway `{__name__=~".+"}` must not fill memory.
ANSWER_LIMIT = 8 * 1024 * 1024


class QueryFailed(Exception):
    """The query could not be run: the message says where it failed and keeps the cause's words."""


def query(address: str, promql: str, *, timeout: float) -> list[tuple[str, float]]:
    """Run an instant query; returns (series labels as text, value) per series. A scalar is one series
    named `scalar`. Raises `QueryFailed`."""
    url = f"{address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    # http(s) only: the address is checked when the manifest loads.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(ANSWER_LIMIT + 1)
    except urllib.error.HTTPError as exc:
        raise QueryFailed(f"Prometheus at {address} answered HTTP {exc.code}: {_error_text(exc)}") from exc
    except urllib.error.URLError as exc:
        raise QueryFailed(f"Prometheus at {address} could not be reached: {exc.reason}") from exc
    except TimeoutError as exc:
        raise QueryFailed(f"Prometheus at {address} did not answer within {timeout:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        # HTTPException: something that is not HTTP answered (a wrong port, a proxy speaking another protocol).
        raise QueryFailed(f"Prometheus at {address}: {type(exc).__name__}: {exc}") from exc
    if len(body) > ANSWER_LIMIT:
        raise QueryFailed(f"Prometheus at {address} answered more than {ANSWER_LIMIT} bytes; narrow the query")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise QueryFailed(f"Prometheus at {address} answered something that is not JSON: {exc}") from exc
    if not isinstance(answer, dict) or answer.get("status") != "success":
        detail = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise QueryFailed(f"Prometheus at {address} refused the query: {detail}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise QueryFailed(f"Prometheus at {address} answered without a data object: {str(answer)[:200]}")
    return _series(data)


def _error_text(exc: urllib.error.HTTPError) -> str:
    """Prometheus puts PromQL errors in a JSON body with the HTTP error (400, 422): keep its words."""
    try:
        body = exc.read(64 * 1024)
        data = json.loads(body)
        if isinstance(data, dict) and data.get("error"):
            return f"{data.get('errorType', 'error')}: {data['error']}"
        return body.decode(errors="replace").strip() or str(exc.reason)
    except (OSError, ValueError):
        return str(exc.reason)


def _series(data: dict[str, Any]) -> list[tuple[str, float]]:
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return [("scalar", _number(result[1]))]
    if kind == "vector" and isinstance(result, list):
        return [_sample(item) for item in result]
    raise QueryFailed(f"the query returned a {kind}; a gate needs an instant vector or a scalar")


def _sample(item: object) -> tuple[str, float]:
    """One series of an instant vector: `{"metric": {...}, "value": [time, "0.2"]}`."""
    if not isinstance(item, dict):
        raise QueryFailed(f"the query returned a series that is not an object: {str(item)[:200]}")
    metric, value = item.get("metric"), item.get("value")
    if not isinstance(value, list) or len(value) != 2:
        raise QueryFailed(f"the query returned a series without a [time, value] pair: {str(item)[:200]}")
    labels = metric if isinstance(metric, dict) else {}
    return _labels({str(k): str(v) for k, v in labels.items()}), _number(value[1])


def _number(text: object) -> float:
    try:
        return float(str(text))  # Prometheus sends values as strings: "0.2", "NaN", "+Inf"
    except ValueError as exc:
        raise QueryFailed(f"the query returned {text!r}, not a number") from exc


def _labels(metric: dict[str, str]) -> str:
    if not metric:
        return "{}"
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def measure(due: DueMeasurement, *, now: datetime) -> GateMeasurement:
    """Take one measurement and judge it (never raises for what Prometheus or the network did)."""
    gate = due.gate
    promql = render_query(gate.prometheus.query, due.variables)
    try:
        values = query(gate.prometheus.address, promql, timeout=gate.prometheus.timeout.total_seconds())
    except QueryFailed as exc:
        return _measurement(due, now, promql, GateResult.INCONCLUSIVE, None,
                            message=f"the query could not be run: {exc}")
    passed, value, series = judge(gate.condition, values)
    where = f" on {series}" if series and series not in ("{}", "scalar") else ""
    if passed is None:
        if not values:
            message = "no data: the query returned no series (no traffic yet, or a label that matches nothing?)"
        else:
            message = f"the query returned {value}{where}, which no condition can judge"
        return _measurement(due, now, promql, GateResult.INCONCLUSIVE, None, message=message)
    assert value is not None
    shown = f"{value:.6g}"
    if passed:
        count = f" ({len(values)} series)" if len(values) > 1 else ""
        message = f"{gate.name} = {shown}{where}, {gate.success_condition}{count}"
        return _measurement(due, now, promql, GateResult.SUCCESSFUL, value, message=message)
    message = f"{gate.name} = {shown}{where}, not {gate.success_condition}"
    return _measurement(due, now, promql, GateResult.FAILED, value, message=message)


def _measurement(
    due: DueMeasurement, now: datetime, promql: str, result: GateResult, value: float | None, *, message: str
) -> GateMeasurement:
    return GateMeasurement(
        gate=due.gate.name,
        checkpoint=due.checkpoint,
        index=due.index,
        due_at=due.due_at,
        measured_at=now,
        result=result,
        value=value if value is None or math.isfinite(value) else None,
        message=message,
        query=promql[:QUERY_SHOWN],
    )
