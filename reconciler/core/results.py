"""What happened to the hosts in flight since the last pass: agents' reports, per-host timeouts, hosts gone
offline. Recorded for every deployment in flight before any group decides anything, so whether a host's
command slot is free reads the same in this pass as in the next one.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime

from contract.durations import format_duration
from contract.models import (
    ALLOW_TRAFFIC,
    BLOCK_TRAFFIC,
    CommandProgress,
    CommandStatus,
    Deployment,
    EventStatus,
    HostDeploymentState,
    group_key,
)
from contract.redact import public_host_text
from reconciler.core.membership import gone_reason
from reconciler.core.rollout import FAILED, IN_PROGRESS, PENDING, SKIPPED, SUCCEEDED
from reconciler.core.sharing import SharedCopies
from reconciler.core.view import PassView
from reconciler.desired.manifests import EffectiveConfig

#: A deployment with its hosts' new results, and the hosts that succeeded, failed and left it this pass.
Recorded = tuple[Deployment, list[str], list[str], list[str]]


def record_in_flight(view: PassView) -> None:
    """Before the pass decides: the generation each host was given, every unfinished deployment's results,
    and the hosts whose command write a crash lost."""
    for key, group_state in view.state.groups.items():
        in_flight = view.state.deployments.get(group_state.deployment_in_flight or "")
        if in_flight is None:
            continue
        for host, host_state in in_flight.hosts.items():
            if host_state.generation is not None and host_state.generation > view.generation.get(host, 0):
                view.generation[host] = host_state.generation
        if in_flight.status.finished:
            continue
        config = view.config_for(in_flight, view.desired_groups.get(key))
        recorded = record_results(view, in_flight, config)
        view.results[in_flight.deployment_id] = recorded
        view.deployments[in_flight.deployment_id] = recorded[0]
        for host, host_state in recorded[0].hosts.items():
            written = view.state.commands.get(host)
            if (
                host_state.status is IN_PROGRESS
                and host_state.generation is not None
                and (written is None or written.generation < host_state.generation)
            ):
                view.unwritten.add(host)


def take_results(view: PassView, deployment: Deployment, config: EffectiveConfig) -> Recorded:
    """This deployment's results: the ones recorded before the pass, or (for one started this pass) now."""
    recorded = view.results.pop(deployment.deployment_id, None)
    return recorded or record_results(view, deployment, config)


def record_results(view: PassView, deployment: Deployment, config: EffectiveConfig) -> Recorded:
    """Agents' reports for this deployment's generation, per-host timeouts, hosts gone offline, and hosts whose
    EC2 instance went away (scale-in): those leave the deployment, Skipped, whether pending or in flight."""
    succeeded: list[str] = []
    failed: list[str] = []
    left: list[str] = []
    updates: dict[str, HostDeploymentState] = {}
    shared = SharedCopies()  # hosts that answered alike in this pass end as one record
    for host, host_state in deployment.hosts.items():
        if host_state.status is PENDING:
            update = _left(view, deployment, host)
        elif host_state.status is IN_PROGRESS:
            update = _host_result(view, deployment, host, host_state, config)
        elif host_state.status is SUCCEEDED and host_state.left_group is None:
            # Done, then scaled in: it keeps its success but no longer counts in N, or its silence would make it
            # an unhealthy host that fails the rest of the deployment's health check.
            update = _left(view, deployment, host)
            if update is not None:
                update = {"left_group": update["left_group"]}
        else:
            continue
        if update is not None:
            updates[host] = shared.copy(host_state, update)
            status = update.get("status")
            if "left_group" in update:
                left.append(host)
            else:
                (succeeded if status is SUCCEEDED else failed).append(host)
    if not updates:
        return deployment, succeeded, failed, left
    hosts = {**deployment.hosts, **updates}
    return deployment.model_copy(update={"hosts": hosts, "updated_at": view.now}), succeeded, failed, left


def _left(view: PassView, deployment: Deployment, host: str) -> dict[str, Hashable] | None:
    """A host whose EC2 instance is terminating or terminated (scale-in) leaves the deployment: Skipped, not
    counted in its size, never a failure. Only on a complete EC2 read (`membership.gone_reason`)."""
    reason = gone_reason(host, group_key(deployment.application, deployment.deployment_group), view.observed)
    if reason is None:
        return None
    return {"status": SKIPPED, "finished_at": view.now, "message": reason, "left_group": reason}


def _host_result(
    view: PassView, deployment: Deployment, host: str, host_state: HostDeploymentState, config: EffectiveConfig
) -> dict[str, Hashable] | None:
    """How one host in flight ended, if it did: reported, moved on, timed out, or offline."""
    now = view.now
    last = view.observed.last_command(host)
    generation = host_state.generation or 0
    if (
        last is not None
        and last.generation == generation
        and last.deployment_id == deployment.deployment_id
        and last.status is not CommandStatus.IN_PROGRESS
    ):
        ok = last.status is CommandStatus.SUCCEEDED
        return {
            "status": SUCCEEDED if ok else FAILED,
            "finished_at": _on_our_clock(last.ended_at, host_state.dispatched_at, now),
            "message": None if ok else (command_message(last) or "the command failed"),
            "out_of_service_seconds": out_of_service(last),
        }
    if last is not None and last.generation > generation:
        message = f"the host moved on to command {last.generation} without reporting {generation}"
        return {"status": FAILED, "finished_at": now, "message": message}
    # Before the timeout and offline rules: an instance terminated under its command (scale-in) goes silent and
    # would otherwise count failed; it left the group instead (issue 16; CodeDeploy's Auto Scaling integration).
    left = _left(view, deployment, host)
    if left is not None:
        return left
    timeout = config.host_timeout
    if timeout is not None and host_state.dispatched_at is not None and now - host_state.dispatched_at > timeout:
        message = f"timed out: no result {format_duration(timeout)} after dispatch"
        return {"status": FAILED, "finished_at": now, "message": message}
    if not view.online(host):
        return {"status": FAILED, "finished_at": now, "message": f"{view.offline_reason(host)} while deploying"}
    return None


def _on_our_clock(ended_at: datetime | None, dispatched_at: datetime | None, now: datetime) -> datetime:
    """The agent's end time, kept between the dispatch and this pass. Bakes and gate checkpoints count from
    it: an agent whose clock runs ahead must not hold a canary bake (or its first gate measurement) until the
    reconciler's clock catches up, nor one that runs behind end a bake before it began."""
    if ended_at is None:
        return now
    if dispatched_at is not None and ended_at < dispatched_at:
        return dispatched_at
    return min(ended_at, now)


def out_of_service(progress: CommandProgress) -> float | None:
    """Seconds the host was out of its load balancers in this command: from BlockTraffic's start to
    AllowTraffic's end, or to the command's end when it never got back (None: no traffic step started)."""
    events = {event.name: event for event in progress.events}
    block = events.get(BLOCK_TRAFFIC)
    if block is None or block.started_at is None:
        return None
    allow = events.get(ALLOW_TRAFFIC)
    back = allow.ended_at if allow is not None and allow.status is EventStatus.SUCCEEDED else None
    end = back or progress.ended_at
    if end is None:
        return None
    return round(max(0.0, (end - block.started_at).total_seconds()), 3)


def command_message(progress: CommandProgress) -> str | None:
    """Why the host's command failed, in its agent's words, as the deployment record keeps them (and `status`,
    `history` and the `--once` summary show them): redacted and bounded here whatever the agent did, since an
    agent may publish output unredacted (`reportOutput.redact: false`), be older, or be forged
    (`contract.redact.public_host_text`; docs/trust.md, "Secrets in output")."""
    if progress.message:
        return public_host_text(progress.message)
    for event in progress.events:
        if event.status is EventStatus.FAILED:
            detail = event.message or (event.error_code.value if event.error_code else "failed")
            return public_host_text(f"{event.name}: {detail}")
    return None
