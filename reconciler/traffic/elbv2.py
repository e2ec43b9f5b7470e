"""ELBv2 (ALB, NLB) target groups: CodeDeploy's `targetGroupInfoList`, through the ELBv2 API.

BlockTraffic is `deregister_targets`: ELB stops sending new requests at once and drains the open ones for the
target group's deregistration delay, by itself; the reconciler only watches `describe_target_health` report
`draining` and then the target's absence, pass after pass, so `finish_block` has nothing to do. AllowTraffic is
`register_targets`; the host counts as back once ELB's own health checks call it `healthy`.

A host's target is its agent.yaml `instanceId` (target type `instance`) or its `address` (type `ip`), on the
manifest's `port` or else the target group's own port. The target group is looked up once, on first use, so
building a balancer costs no API call and a typo in its name shows up as an observation error, not a crash.

The client is boto3's, built like the project's other AWS clients (contract/aws.py classifies its errors):
region from the spec, else from the target group's ARN, else the environment; boto3's own endpoint override
(`AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`, else `AWS_ENDPOINT_URL`) points it elsewhere, which is how the
tests reach moto. Timeouts are short and retries few: a pass must not hang for minutes on an unreachable API,
it reports the targets `Unknown` and tries again next pass.

Against moto (5.2, server mode), which the tests use, some answers differ from AWS's:
- a registered target is `healthy` at once: there are no health checks, so no `initial` and no `unhealthy`;
  disabling health checks changes nothing (AWS says `unavailable`);
- `deregister_targets` removes the target at once (`unused`, `Target.NotRegistered`): no `draining` and no
  deregistration delay. Only an instance terminated through EC2 while registered shows `draining`
  (`Target.DeregistrationInProgress`), and stays so;
- deregistering a target that is not registered fails with `InvalidTarget` (so `block` checks the target's
  health before calling that an error);
- instance ids are not checked against EC2 unless the instance exists: an unknown `i-...` registers fine, a
  stopped instance is refused (`InvalidTarget`, "not in a running state") and, once registered and stopped,
  reads `unused` / `Target.InvalidState`; IP targets accept any string, DNS names included;
- an unregistered target of an `ip` group reads `unavailable` / `Target.NotRegistered` (AWS: `unused`),
  which is why the reason is looked at before the state;
- targets are keyed by id alone: the port is echoed back, not compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from contract.aws import classify, failure_words
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.desired.traffic_spec import TargetGroupSpec
from reconciler.traffic.base import HostEndpoint, TrafficError

log = structlog.get_logger(__name__)

#: Targets per describe_target_health call. AWS documents no limit; a very long query string is what breaks.
HEALTH_CHUNK = 100
#: Short enough that an unreachable endpoint costs a pass seconds, not minutes (boto3's default is 60 s).
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
#: Throttling is ELBv2's usual error under a large fleet: retry it a little, with botocore's backoff.
TOTAL_ATTEMPTS = 3

#: describe_target_health `State` -> our state. `Reason` Target.NotRegistered overrides it (see below).
_STATES = {
    "healthy": TargetState.IN_SERVICE,
    # Health checks disabled: ELB sends traffic without judging it, which is all "in service" promises.
    "unavailable": TargetState.IN_SERVICE,
    "initial": TargetState.STARTING,
    "unhealthy": TargetState.STARTING,
    "draining": TargetState.DRAINING,
    # Unhealthy and deregistering: no new requests, open ones finishing.
    "unhealthy.draining": TargetState.DRAINING,
    "unused": TargetState.OUT_OF_SERVICE,
}


@dataclass(frozen=True)
class _Group:
    """What the reconciler needs of the target group, read once."""

    arn: str
    port: int | None
    target_type: str
    drain_seconds: float | None


class TargetGroupBalancer:
    """One ELBv2 target group (the `LoadBalancer` protocol, reconciler/traffic/base.py). Owns its client:
    `close()` closes it, whether it was built here or given."""

    def __init__(self, spec: TargetGroupSpec, *, client: Any | None = None) -> None:
        self._spec = spec
        self._client = client
        self._group: _Group | None = None
        group_name = spec.name or _name_from_arn(spec.arn or "")
        where = [part for part in (_region(spec), _account_from_arn(spec.arn)) if part]
        self._name = f"target group {group_name}" + (f" ({', '.join(where)})" if where else "")

    @property
    def name(self) -> str:
        return self._name

    # -- the protocol ------------------------------------------------------------------------------------------

    def target_name(self, host: HostEndpoint) -> str:
        target = self._target(host, self._resolve())
        return f"{target['Id']}:{target['Port']}"

    def observe(self, hosts: Sequence[HostEndpoint]) -> dict[str, TargetObservation]:
        if not hosts:
            return {}
        try:
            group = self._resolve()
        except TrafficError as exc:
            return {host.host_id: _unknown(str(exc)) for host in hosts}
        result: dict[str, TargetObservation] = {}
        wanted: dict[tuple[str, int], list[str]] = {}
        for host in hosts:
            try:
                target = self._target(host, group)
            except TrafficError as exc:
                result[host.host_id] = _unknown(str(exc))
                continue
            wanted.setdefault((target["Id"], target["Port"]), []).append(host.host_id)
        for chunk in _chunks(list(wanted), HEALTH_CHUNK):
            try:
                answer = self._api().describe_target_health(
                    TargetGroupArn=group.arn, Targets=[{"Id": tid, "Port": port} for tid, port in chunk]
                )
            except Exception as exc:
                self._forget_if_gone(exc)
                error = f"elbv2 describe_target_health on {self.name}: {_aws_words(exc)}"
                log.warning("traffic.elbv2.observe_failed", target_group=self.name, error=error)
                for key in chunk:
                    for host_id in wanted[key]:
                        result[host_id] = _unknown(error)
                continue
            found = _by_target(answer.get("TargetHealthDescriptions", []))
            for tid, port in chunk:
                health = found.get((tid, port)) or found.get((tid, None))
                observation = (
                    self._observation(f"{tid}:{port}", health)
                    if health is not None
                    else TargetObservation(
                        TargetState.OUT_OF_SERVICE, f"{self.name} {tid}:{port}: not in describe_target_health's answer"
                    )
                )
                for host_id in wanted[(tid, port)]:
                    result[host_id] = observation
        return result

    def block(self, host: HostEndpoint) -> str:
        group = self._resolve()
        target = self._target(host, group)
        shown = f"{target['Id']}:{target['Port']}"
        try:
            self._api().deregister_targets(TargetGroupArn=group.arn, Targets=[target])
        except Exception as exc:
            failure = classify(exc)
            if failure is not None and failure.code == "InvalidTarget" and self._not_registered(group, target):
                # Already out (an earlier pass deregistered it and crashed before recording it): idempotent.
                return f"elbv2 deregister_targets {self.name} {shown}: not registered, nothing to do"
            self._forget_if_gone(exc)
            raise TrafficError(f"elbv2 deregister_targets on {self.name}, target {shown}: {_aws_words(exc)}") from exc
        log.info("traffic.elbv2.deregistered", target_group=self.name, target=shown)
        delay = f"drains for up to {group.drain_seconds:g}s" if group.drain_seconds is not None else "drains"
        return f"elbv2 deregister_targets {self.name} {shown}: deregistering, ELB {delay}"

    def finish_block(self, host: HostEndpoint) -> str:
        return f"{self.name}: nothing to do, ELB ends a deregistration by itself"

    def allow(self, host: HostEndpoint) -> str:
        group = self._resolve()
        target = self._target(host, group)
        shown = f"{target['Id']}:{target['Port']}"
        try:
            self._api().register_targets(TargetGroupArn=group.arn, Targets=[target])
        except Exception as exc:
            self._forget_if_gone(exc)
            raise TrafficError(f"elbv2 register_targets on {self.name}, target {shown}: {_aws_words(exc)}") from exc
        log.info("traffic.elbv2.registered", target_group=self.name, target=shown)
        return f"elbv2 register_targets {self.name} {shown}: registered, in service once ELB's health checks pass"

    def drain_hint_seconds(self) -> float | None:
        try:
            return self._resolve().drain_seconds
        except TrafficError:
            return None

    def close(self) -> None:
        closer = getattr(self._client, "close", None)
        if callable(closer):
            closer()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _api(self) -> Any:
        """The client, built on first use so that a bad region or endpoint is an observation error, not a
        crash while the manifest's load balancers are set up."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            )
            region = _region(self._spec)
            session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
            try:
                self._client = session.client("elbv2", config=config)
            except ValueError as exc:  # botocore refuses a malformed endpoint URL with ValueError
                raise TrafficError(f"elbv2 client for {self.name}: invalid endpoint: {exc}") from exc
            except Exception as exc:  # no region, unknown profile, ...
                raise TrafficError(f"elbv2 client for {self.name}: {_aws_words(exc)}") from exc
        return self._client

    def _resolve(self) -> _Group:
        """The target group's arn, port and target type, read once: none of them can change under a group
        (AWS refuses to modify them), so later passes need not pay for the calls."""
        if self._group is not None:
            return self._group
        spec = self._spec
        query = {"TargetGroupArns": [spec.arn]} if spec.arn else {"Names": [spec.name]}
        client = self._api()
        try:
            groups = client.describe_target_groups(**query).get("TargetGroups", [])
        except Exception as exc:
            raise TrafficError(
                f"elbv2 describe_target_groups {spec.arn or spec.name} for {self.name}: {_aws_words(exc)}"
            ) from exc
        if not groups:
            raise TrafficError(f"elbv2 describe_target_groups {spec.arn or spec.name}: no such target group")
        found = groups[0]
        target_type = str(found.get("TargetType", "instance"))
        if target_type not in ("instance", "ip"):
            raise TrafficError(
                f"{self.name}: target type {target_type} cannot hold fleet hosts (only instance or ip targets can)"
            )
        arn = str(found["TargetGroupArn"])
        port = found.get("Port")
        self._group = _Group(
            arn=arn,
            port=int(port) if port is not None else None,
            target_type=target_type,
            drain_seconds=self._deregistration_delay(arn),
        )
        return self._group

    def _forget_if_gone(self, exc: BaseException) -> None:
        """A group found by name may have been deleted and made again (a new arn): look it up anew next time
        rather than ask for the old arn forever."""
        failure = classify(exc)
        if failure is not None and failure.code == "TargetGroupNotFound":
            self._group = None

    def _deregistration_delay(self, arn: str) -> float | None:
        """Only a plan estimate: a role allowed to (de)register but not to read attributes loses nothing else."""
        try:
            attributes = self._api().describe_target_group_attributes(TargetGroupArn=arn).get("Attributes", [])
        except Exception as exc:
            log.warning("traffic.elbv2.attributes_unreadable", target_group=self.name, error=_aws_words(exc))
            return None
        for attribute in attributes:
            if attribute.get("Key") == "deregistration_delay.timeout_seconds":
                try:
                    return float(attribute.get("Value", ""))
                except ValueError:
                    return None
        return None

    def _target(self, host: HostEndpoint, group: _Group) -> dict[str, Any]:
        port = self._spec.port or group.port
        if port is None:
            raise TrafficError(f"{self.name} has no port: set `port` in the manifest's targetGroup")
        if group.target_type == "instance":
            if not host.instance_id:
                raise TrafficError(
                    f"{self.name} has instance targets, and host {host.host_id} registered no instance id: "
                    "set `instanceId` in its agent.yaml"
                )
            return {"Id": host.instance_id, "Port": port}
        if not host.address:
            raise TrafficError(
                f"{self.name} has ip targets, and host {host.host_id} registered no address: "
                "set `address` in its agent.yaml"
            )
        return {"Id": host.address, "Port": port}

    def _observation(self, shown: str, health: dict[str, Any]) -> TargetObservation:
        state_word = str(health.get("State", ""))
        reason = health.get("Reason")
        why = ": ".join(str(part) for part in (reason, health.get("Description")) if part)
        detail = f"{self.name} {shown}: {state_word}" + (f" ({why})" if why else "")
        if reason == "Target.NotRegistered":
            return TargetObservation(TargetState.OUT_OF_SERVICE, detail)
        state = _STATES.get(state_word)
        if state is None:
            return _unknown(f"{detail}: a target health state fleetshift does not know", detail=detail)
        return TargetObservation(state, detail)

    def _not_registered(self, group: _Group, target: dict[str, Any]) -> bool:
        """After deregister_targets said InvalidTarget: is that because the target is already out?"""
        try:
            answer = self._api().describe_target_health(TargetGroupArn=group.arn, Targets=[target])
        except Exception:
            return False
        for health in answer.get("TargetHealthDescriptions", []):
            if health.get("Target", {}).get("Id") == target["Id"]:
                state = health.get("TargetHealth", {})
                return state.get("Reason") == "Target.NotRegistered" or state.get("State") in ("unused", "draining")
        return False


def _unknown(error: str, *, detail: str | None = None) -> TargetObservation:
    return TargetObservation(TargetState.UNKNOWN, detail or error, error=error)


def _by_target(descriptions: Sequence[dict[str, Any]]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """Health by (id, port) and by (id, None), so an answer that leaves the port out still matches."""
    found: dict[tuple[str, int | None], dict[str, Any]] = {}
    for description in descriptions:
        target = description.get("Target", {})
        tid = str(target.get("Id", ""))
        health = dict(description.get("TargetHealth", {}))
        port = target.get("Port")
        if port is not None:
            found[(tid, int(port))] = health
        found.setdefault((tid, None), health)
    return found


def _aws_words(exc: BaseException) -> str:
    """AWS's code and message when it answered, else what went wrong on the way (contract/aws.py's kinds).
    Re-raises what is not an AWS failure at all: a bug here must not read like a load balancer's answer."""
    if isinstance(exc, TrafficError):
        return str(exc)
    return failure_words(exc)


def _region(spec: TargetGroupSpec) -> str | None:
    if spec.region:
        return spec.region
    parts = (spec.arn or "").split(":")
    return parts[3] or None if len(parts) > 5 else None


def _account_from_arn(arn: str | None) -> str | None:
    parts = (arn or "").split(":")
    return parts[4] or None if len(parts) > 5 else None


def _name_from_arn(arn: str) -> str:
    """`arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg/6d0ecf831eec9f09` -> `web-tg`."""
    resource = arn.split(":", 5)[-1]
    parts = resource.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "targetgroup" else arn


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
