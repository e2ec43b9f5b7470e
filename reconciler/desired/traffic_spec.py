"""`spec.trafficControl` of a DeploymentGroup: which load balancers a host leaves while it deploys.

CodeDeploy calls this `deploymentStyle.deploymentOption: WITH_TRAFFIC_CONTROL` plus `loadBalancerInfo`
(classic ELB names, ELBv2 target groups). Fleets that are not behind an AWS load balancer get HAProxy (its
runtime API) and a command provider (any program) in the same list. With `trafficControl` set, every host of the
group runs CodeDeploy's in-place order with a load balancer: BeforeBlockTraffic, BlockTraffic,
AfterBlockTraffic, ApplicationStop ... ValidateService, BeforeAllowTraffic, AllowTraffic, AfterAllowTraffic;
the reconciler performs BlockTraffic and AllowTraffic (docs/traffic.md says why it, and not the agent).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from contract.models import Model
from reconciler.desired.durations import Duration
from reconciler.desired.secrets import SECRET

#: CodeDeploy waits up to an hour for an instance to turn healthy behind its load balancer (reference §5.4).
DEFAULT_HEALTHY_TIMEOUT = timedelta(hours=1)
#: ELBv2's default deregistration delay; a drain that has not finished by then goes on without it.
DEFAULT_DRAIN_TIMEOUT = timedelta(seconds=300)

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class HAProxySpec(Model):
    """One HAProxy backend, driven through HAProxy's runtime API (`stats socket`)."""

    runtime_api: NonEmpty = Field(
        description="Where HAProxy's runtime API listens: `unix:/run/haproxy/admin.sock` or `tcp:lb1:9999`."
    )
    backend: NonEmpty
    servers: dict[str, NonEmpty] = Field(
        default_factory=dict,
        description="Host id -> server name in the backend, where they differ (default: the host id).",
    )

    @model_validator(mode="after")
    def _address_form(self) -> Self:
        if not (self.runtime_api.startswith("unix:") or self.runtime_api.startswith("tcp:")):
            raise ValueError("runtimeApi must start with unix: (a socket path) or tcp: (host:port)")
        return self


class TargetGroupSpec(Model):
    """One ELBv2 (ALB or NLB) target group, like CodeDeploy's `targetGroupInfoList`."""

    name: NonEmpty | None = None
    arn: NonEmpty | None = None
    region: NonEmpty | None = None
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port the targets are registered with (default: the target group's port).",
    )

    @model_validator(mode="after")
    def _one_name(self) -> Self:
        if (self.name is None) == (self.arn is None):
            raise ValueError("a target group needs exactly one of name or arn")
        return self


class CommandProviderSpec(Model):
    """Any other load balancer (nginx, Consul, an F5): a program run as `<run...> ACTION HOST ADDRESS`, ACTION
    being block, finish (optional: exit 64 or print `unsupported` when there is nothing to do), allow or
    status (docs/traffic.md, "The command provider")."""

    run: Annotated[list[NonEmpty], Field(min_length=1)] = Field(
        description="The program and its arguments; secret: plans never show them (they may carry a token).",
        json_schema_extra=SECRET,
    )
    timeout: Duration = timedelta(seconds=30)
    name: NonEmpty | None = Field(default=None, description="Shown in status and plans (default: the program).")


class LoadBalancerSpec(Model):
    """Exactly one of haproxy, targetGroup, command."""

    haproxy: HAProxySpec | None = None
    target_group: TargetGroupSpec | None = None
    command: CommandProviderSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("haproxy", "target_group", "command") if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a load balancer needs exactly one of haproxy, targetGroup or command (found: {found})")
        return self


class TrafficControlSpec(Model):
    load_balancers: Annotated[list[LoadBalancerSpec], Field(min_length=1)]
    drain_timeout: Duration = Field(
        default=DEFAULT_DRAIN_TIMEOUT,
        description="Longest wait for a host's open connections to finish before it deploys anyway.",
    )
    healthy_timeout: Duration = Field(
        default=DEFAULT_HEALTHY_TIMEOUT,
        description="A host put back that its load balancers do not call healthy by then fails AllowTraffic.",
    )
