"""One `LoadBalancer` per entry of a group's `trafficControl.loadBalancers`.

Providers are imported when first needed, so a fleet without load balancers never loads boto3's ELBv2 model or
opens a socket.
"""

from __future__ import annotations

from reconciler.desired.traffic_spec import LoadBalancerSpec
from reconciler.traffic.base import LoadBalancer


def build_balancer(spec: LoadBalancerSpec) -> LoadBalancer:
    if spec.haproxy is not None:
        from reconciler.traffic.haproxy import HAProxyBalancer

        return HAProxyBalancer(spec.haproxy)
    if spec.target_group is not None:
        from reconciler.traffic.elbv2 import TargetGroupBalancer

        return TargetGroupBalancer(spec.target_group)
    assert spec.command is not None, "LoadBalancerSpec validates that exactly one provider is set"
    from reconciler.traffic.command import CommandBalancer

    return CommandBalancer(spec.command)
