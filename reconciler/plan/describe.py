"""A plan's values and sentences as reviewers read them, shared by the text and Markdown renderers: a commit
as 7 characters, `CodeDeployDefault.` dropped, host lists cut short, a rollout in one line."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from reconciler.plan.gates import batch_gates, gate_detail_lines
from reconciler.plan.model import Batch, GroupRollout, ObjectChange, Plan
from reconciler.plan.words import count, duration

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: How a change to an object is marked in a list of changes.
CHANGE_SYMBOL = {"added": "+", "changed": "~", "removed": "-"}



def show(value: Any) -> str:
    """A JSON value as a reviewer wants to read it in one line."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if _SHA1.match(value):
            return value[:7]
        if _SHA256.match(value):
            return value[:12] + "…"
        return value.removeprefix("CodeDeployDefault.")
    if isinstance(value, list):
        return "[" + ", ".join(show(item) for item in value) + "]"
    if isinstance(value, dict):
        if set(value) <= {"key", "value", "type"} and value.get("type") in ("KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE"):
            return _tag_filter(value)
        return "{" + ", ".join(f"{key}: {show(item)}" for key, item in value.items()) + "}"
    return str(value)


def _tag_filter(value: dict[str, Any]) -> str:
    kind = value.get("type")
    if kind == "KEY_ONLY":
        return f"{value.get('key')}=*"
    if kind == "VALUE_ONLY":
        return f"*={value.get('value')}"
    return f"{value.get('key')}={value.get('value')}"


def short_commit(commit: str | None) -> str:
    return commit[:7] if commit else "(none)"


def estimate_text(rollout: GroupRollout) -> str:
    assert rollout.estimate is not None
    return ("at least " if rollout.estimate.lower_bound else "~") + duration(rollout.estimate.seconds)


def host_list(hosts: Iterable[str], limit: int = 12) -> str:
    listed = list(hosts)
    shown = ", ".join(listed[:limit])
    return shown + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


def ref_note(ref: str, commit: str | None, note: str | None) -> str | None:
    if note:
        return note
    if commit and commit.startswith(ref):
        return None
    return ref


def ref_text(label: str, ref: str, commit: str | None, note: str | None) -> str:
    shown = ref_note(ref, commit, note)
    return f"{label} {short_commit(commit)}" + (f" ({shown})" if shown else "")


def revision_move(rollout: GroupRollout) -> str:
    before = rollout.revision_from.short() if rollout.revision_from else "nothing"
    after = rollout.revision_to.short() if rollout.revision_to else "nothing"
    return f"{before} -> {after}"


def fleet_line(plan: Plan) -> str:
    if plan.fleet == "store":
        return f"fleet: store {plan.store} ({count(plan.registered_hosts or 0, 'host')} registered)"
    note = f" ({plan.fleet_note})" if plan.fleet_note else ""
    return f"fleet: offline{note}: hosts and batches from the selectors alone"


def rollout_summary(rollout: GroupRollout) -> str:
    """One line: what happens to the group."""
    if rollout.action == "remove":
        return f"removed: {rollout.reason}"
    if rollout.action == "settings":
        return f"no deployment: {rollout.reason}"
    if rollout.action == "blocked":
        return f"blocked: {rollout.reason}"
    if rollout.revision_from is None:
        target = rollout.revision_to.short() if rollout.revision_to else "nothing"
        text = f"deploy {target} (first deployment)"
    else:
        text = f"deploy {revision_move(rollout)}"
    if rollout.deploy_hosts is not None:
        text += f" to {count(len(rollout.deploy_hosts), 'host')}"
        if rollout.batches:
            text += f" in {count(len(rollout.batches), 'batch', 'batches')}"
    else:
        text += " to the hosts the selector matches"
    if rollout.simulated_status == "Failed":
        when = "" if rollout.batches else " before its first batch"
        code = f" ({rollout.simulated_error})" if rollout.simulated_error else ""
        text += f"; it would fail{when}{code}"
    elif rollout.estimate:
        text += f", {estimate_text(rollout)}"
    if not rollout.from_change:
        text += " (already pending in the store, not from this change)"
    return text


def change_summary(change: ObjectChange) -> str:
    if change.change != "changed":
        return change.change
    return ", ".join(field.path for field in change.fields)


def config_line(rollout: GroupRollout) -> str | None:
    if rollout.deployment_config is None:
        return None
    text = show(rollout.deployment_config)
    if rollout.config_description:
        text += f" ({rollout.config_description})"
    if rollout.minimum_healthy_hosts is not None and rollout.target_hosts:
        hosts = len(rollout.target_hosts) if rollout.target_hosts is not None else None
        of = f" of {hosts}" if hosts is not None else ""
        text += f"; minimum healthy hosts: {rollout.minimum_healthy_hosts}{of}"
    return text


def rollback_line(rollout: GroupRollout) -> str:
    if not rollout.rollback_enabled:
        return "disabled"
    return "on " + ", ".join(rollout.rollback_events)


def detail_lines(rollout: GroupRollout) -> list[tuple[str, str]]:
    """(label, value) pairs describing a rollout, shared by text and Markdown."""
    lines: list[tuple[str, str]] = []
    if rollout.action == "deploy":  # the other summaries already say why
        lines.append(("why", rollout.reason))
    if rollout.revision_to is not None or rollout.revision_from is not None:
        lines.append(("revision", revision_move(rollout)))
    config = config_line(rollout)
    if config:
        lines.append(("config", config))
    if rollout.action != "remove":
        lines.append(("rollback", rollback_line(rollout)))
    if rollout.selector:
        lines.append(("selector", rollout.selector))
    if rollout.action == "remove":
        pass  # a removed group targets nothing any more
    elif rollout.target_hosts is not None:
        basis = "" if rollout.basis == "store" else " (listed by id in the manifest)"
        lines.append(("hosts", f"{len(rollout.target_hosts)}: {host_list(rollout.target_hosts)}{basis}"
                      if rollout.target_hosts else "none"))
    elif rollout.basis == "selectors":
        lines.append(("hosts", "unknown offline: whatever registered hosts the selector matches"))
    if rollout.deploy_hosts is not None and rollout.target_hosts is not None and \
            len(rollout.deploy_hosts) != len(rollout.target_hosts):
        lines.append(("deploys to", f"{len(rollout.deploy_hosts)}: {host_list(rollout.deploy_hosts)}"))
    if rollout.offline_hosts:
        lines.append(("offline", f"{host_list(rollout.offline_hosts)} (a deployment counts an offline host as "
                                 f"failed when its turn comes)"))
    if rollout.unhealthy_hosts:
        lines.append(("unhealthy", host_list(rollout.unhealthy_hosts)))
    lines.extend(_ec2_lines(rollout))
    for quarantine in rollout.quarantined:
        lines.append(("quarantined", f"{quarantine.revision} ({quarantine.deployment_id}: {quarantine.reason})"))
    if rollout.in_flight:
        flight = rollout.in_flight
        lines.append(("in flight", f"{flight.deployment_id} {flight.status} {flight.revision}"))
    if rollout.suspended:
        lines.append(("suspended", "yes: no deployment starts until `suspend: false`"))
    if rollout.blocked and rollout.action != "blocked":
        lines.append(("blocked", rollout.blocked))
    for balancer in rollout.traffic or []:
        lines.append(("traffic", balancer))
    lines.extend(gate_detail_lines(rollout))
    if rollout.estimate:
        lines.append(("estimate", f"{estimate_text(rollout)} ({rollout.estimate.basis})"))
    return lines


def _ec2_lines(rollout: GroupRollout) -> list[tuple[str, str]]:
    """EC2 membership (issue 16): what EC2 lists, each missing host, or why it was not read."""
    ec2 = rollout.ec2
    if ec2 is None:
        return []
    region = f" in {ec2.region}" if ec2.region else ""
    if not ec2.read:
        return [("ec2", f"EC2 membership not read{region}: {ec2.error}")]
    lines = [("ec2", f"{count(ec2.expected or 0, 'instance')} expected{region}, "
                     f"{len(ec2.missing) or 'none'} missing")]
    for missing in ec2.missing[:12]:
        lines.append(("missing", f"{missing.instance_id}: no agent registered (EC2: {missing.description})"))
    if len(ec2.missing) > 12:
        lines.append(("missing", f"and {len(ec2.missing) - 12} more"))
    return lines


def batch_then(rollout: GroupRollout, batch: Batch) -> str:
    """What the engine waits for after a batch: `bake 5m`, `gates error-rate 20s more`, both, or nothing."""
    baking = bool(batch.bake_after_seconds)
    parts = [f"bake {duration(batch.bake_after_seconds or 0)}"] if baking else []
    gates = batch_gates(rollout, batch.number, baking=baking)
    return ", ".join([*parts, gates] if gates else parts)


def batch_label(number: int, canary: bool, zone: str | None) -> str:
    label = f"batch {number}"
    if canary:
        label += " (canary)"
    if zone:
        label += f" zone {zone}"
    return label


def summary_sentence(plan: Plan) -> str:
    if not plan.head.valid:
        return f"The head has {count(len(plan.head.errors), 'manifest error')}."
    if not plan.has_changes:
        if plan.fleet == "store":
            return "No changes: the manifests mean the same at both refs and the fleet already matches them."
        return "No changes: the manifests mean the same at both refs."
    counts = plan.counts()
    starts = count(counts["deployments"], "deployment")
    return (f"{counts['added']} to add, {counts['changed']} to change, {counts['removed']} to remove; "
            f"{starts} would start.")
