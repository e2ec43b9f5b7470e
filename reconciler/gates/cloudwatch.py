"""CodeDeploy's `alarmConfiguration`: read the group's CloudWatch alarms (`DescribeAlarms`) once a pass while a
user deployment is in flight.

The answer is an `AlarmCheck`: ALARM naming the alarms in that state with CloudWatch's reason; OK; or ERROR when
the alarms could not be read (the API failed, or a configured alarm does not exist: CodeDeploy refuses such a
group, here it holds the rollout with the name in the message). Metric and composite alarms both count. An
alarm in INSUFFICIENT_DATA is not in ALARM, as in CodeDeploy.

The client is built like the project's other AWS clients: region from the manifest, else the environment;
boto3's endpoint override (`AWS_ENDPOINT_URL_CLOUDWATCH`, else `AWS_ENDPOINT_URL`) is how the tests reach moto.
Short timeouts and few retries, so a pass is never stuck on an unreachable API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from contract.aws import failure_words
from contract.models import AlarmCheck
from reconciler.desired.gates_spec import AlarmConfigurationSpec

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
TOTAL_ATTEMPTS = 3


class AlarmReader:
    """One group's alarms. Owns its client (built on first use, so a bad region is a read error, not a crash)."""

    def __init__(self, spec: AlarmConfigurationSpec, *, client: Any | None = None) -> None:
        self.spec = spec
        self._client = client

    def read(self, now: datetime) -> AlarmCheck:
        names = list(self.spec.alarms)
        try:
            answer = self._api().describe_alarms(
                AlarmNames=names, AlarmTypes=["MetricAlarm", "CompositeAlarm"], MaxRecords=100
            )
        except Exception as exc:
            words = _words(exc)
            log.warning("gates.alarms.read_failed", alarms=names, error=words)
            message = f"cloudwatch DescribeAlarms: {words}"
            return AlarmCheck(checked_at=now, state="ERROR", alarms=names, message=message)
        alarms = [*answer.get("MetricAlarms", []), *answer.get("CompositeAlarms", [])]
        found = {alarm["AlarmName"]: alarm for alarm in alarms}
        missing = [name for name in names if name not in found]
        firing = [name for name in names if name in found and found[name].get("StateValue") == "ALARM"]
        if firing:
            reasons = "; ".join(f"{name}: {found[name].get('StateReason', 'in ALARM')}" for name in firing)
            return AlarmCheck(checked_at=now, state="ALARM", alarms=firing, message=f"alarm in ALARM: {reasons}")
        if missing:
            return AlarmCheck(
                checked_at=now,
                state="ERROR",
                alarms=missing,
                message=f"no CloudWatch alarm named {', '.join(missing)} (checked {len(names)})",
            )
        states = ", ".join(f"{name} {found[name].get('StateValue', '?')}" for name in names)
        return AlarmCheck(checked_at=now, state="OK", message=f"no alarm in ALARM ({states})")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()

    def _api(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            )
            region = self.spec.region
            session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
            self._client = session.client("cloudwatch", config=config)
        return self._client


def _words(exc: BaseException) -> str:
    if isinstance(exc, ValueError):  # botocore refuses a malformed endpoint URL with ValueError
        return f"invalid endpoint: {exc}"
    try:
        return failure_words(exc)
    except Exception:
        # No region, an unknown profile: botocore's own words, whatever its exception class.
        return f"{type(exc).__name__}: {exc}"
