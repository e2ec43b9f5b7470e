"""`reconcile plan`: what a change to the config repo will do, computed before it is merged.

Where it sits: the CLI (`reconciler.cli.plan`) loads the manifests at two refs and, when the store is reachable,
the fleet (`Observed`) and the reconciler's records (`State`); `compute_plan` turns them into a `Plan`, a typed,
serialisable model; `reconciler.plan.render` turns a plan into text, Markdown or JSON. Nothing in `compute_plan`
does I/O or reads a clock, so the same inputs always give the same plan (and the golden tests can hold it still).

Two halves, kept apart on purpose:
- The semantic diff compares the validated manifests (pydantic models dumped by alias), never the YAML text, so
  reordered keys or list items, comments and formatting are not changes, and an explicit default equals an
  omitted one. Every list in the manifest format is a set (tag filters are OR-ed, tag sets AND-ed, hosts and
  rollback events unordered), which is why list order is ignored.
- What will happen is asked of the rollout engine itself (`reconciler.core`): its membership, its first pass
  and its batch simulator. This module never restates a batching rule; if the engine changes, plans follow.

Stale-plan protection: `SavedPlan` is the plan plus fingerprints of what it was computed from (the manifests at
the head commit, every group's recorded state, every group's host membership). `verify_saved_plan` recomputes
them from what `reconcile --once --plan plan.json` is about to apply to and refuses, saying what changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from pydantic.alias_generators import to_camel

from contract.durations import format_duration
from contract.models import (
    CommandStatus,
    Deployment,
    DeploymentStatus,
    GroupState,
    HostRegistration,
    HostStatus,
    Revision,
    group_key,
)
from reconciler.core import CoreSettings, Observed, StartDeployment, State, is_online
from reconciler.core.membership import group_members
from reconciler.core.simulate import PreviewDeployment, RolloutPreview, preview_rollout
from reconciler.desired.manifests import (
    BUILTIN_PREFIX,
    ApplicationManifest,
    DeploymentConfigManifest,
    DeploymentGroupManifest,
    Desired,
    DesiredGroup,
    TargetsSpec,
)
from reconciler.errors import ManifestError, ReconcilerError

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
SAVED_PLAN_KIND = "fleetshift-plan"
#: Rollback disabled on a group with more hosts than this is worth a reviewer's attention (issue 6).
DEFAULT_ROLLBACK_WARNING_HOSTS = 5
#: Recent deployments of a group whose batch durations feed the estimate.
ESTIMATE_HISTORY = 5

Kind = Literal["Application", "DeploymentGroup", "DeploymentConfig"]
KIND_ORDER: dict[str, int] = {"Application": 0, "DeploymentConfig": 1, "DeploymentGroup": 2}


class StalePlanError(ReconcilerError):
    """What a saved plan was computed from has changed; applying it would not do what was reviewed."""


class SavedPlanError(ReconcilerError):
    """The file given to `--plan` is not a plan this version can read."""


class PlanModel(BaseModel):
    """camelCase JSON like every other fleetshift document, frozen, strict about unknown fields.

    Not `contract.models.Model`: plans keep explicit nulls (an object added has `before: null`), which
    `Model.to_json` drops."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


# --------------------------------------------------------------------------------------------------
# The plan model


class RefInfo(PlanModel):
    ref: str
    commit: str | None = None
    #: Why this ref was chosen when it was not given ("merge base of HEAD and origin/main").
    note: str | None = None
    valid: bool = True
    errors: list[str] = []


class FieldChange(PlanModel):
    """One changed field; `path` is dotted from the object's spec (`revision.git.commit`), or starts with
    `metadata.` for labels and annotations. `before`/`after` are null when the field is absent on that side."""

    path: str
    before: JsonValue = None
    after: JsonValue = None


class ObjectChange(PlanModel):
    kind: Kind
    name: str
    change: Literal["added", "removed", "changed"]
    #: `file:line` of the document (at head; at base for a removed object).
    source: str | None = None
    fields: list[FieldChange] = []


class Batch(PlanModel):
    number: int
    hosts: list[str]
    zone: str | None = None
    canary: bool = False
    #: Quiet time the engine waits after this batch (canary bake, zone bake), when it waits.
    bake_after_seconds: float | None = None


class Quarantine(PlanModel):
    revision: str
    deployment_id: str
    reason: str


class InFlight(PlanModel):
    deployment_id: str
    status: str
    revision: str


class Estimate(PlanModel):
    seconds: float
    basis: str
    #: True when only the bake times are known (no history to time batches from): "at least".
    lower_bound: bool = False


class GroupRollout(PlanModel):
    """What happens to one deployment group once the head commit is applied."""

    group: str
    #: deploy: a deployment starts; remove: the group leaves the manifests; settings: it changed but no
    #: deployment starts (rollback policy, config, options); blocked: a deployment is due but cannot start.
    action: Literal["deploy", "remove", "settings", "blocked"]
    #: True when the manifest change in this plan causes it (false: already pending in the store).
    from_change: bool = True
    reason: str
    revision_from: Revision | None = None
    revision_to: Revision | None = None
    deployment_config: str | None = None
    config_description: str | None = None
    minimum_healthy_hosts: int | None = None
    rollback_enabled: bool = False
    rollback_events: list[str] = []
    suspended: bool = False
    selector: str | None = None
    #: "store": hosts and batches from the registered fleet; "selectors": offline, from the manifests alone.
    basis: Literal["store", "selectors"] = "selectors"
    #: Every host the group targets (None offline when tag sets make the set unknowable).
    target_hosts: list[str] | None = None
    #: Hosts that will receive the revision, in scheduling order (a subset with updateOutdatedInstancesOnly).
    deploy_hosts: list[str] | None = None
    batches: list[Batch] | None = None
    offline_hosts: list[str] = []
    unhealthy_hosts: list[str] = []
    quarantined: list[Quarantine] = []
    in_flight: InFlight | None = None
    blocked: str | None = None
    #: How the engine's dry run ends when every online host succeeds: a failure here is a warning too.
    simulated_status: str | None = None
    simulated_error: str | None = None
    estimate: Estimate | None = None


WarningCode = Literal[
    "INVALID_BASE",
    "STORE_UNREACHABLE",
    "NO_HOSTS",
    "MINIMUM_HEALTHY_UNMET",
    "UNPINNED_REVISION",
    "IN_FLIGHT",
    "ROLLBACK_DISABLED",
    "QUARANTINED",
    "SUSPENDED",
]


class PlanWarning(PlanModel):
    code: WarningCode
    group: str | None = None
    message: str


class Plan(PlanModel):
    format_version: int = FORMAT_VERSION
    repository: str
    path: str
    base: RefInfo
    head: RefInfo
    #: "store": concrete hosts and batches; "offline": from selectors alone.
    fleet: Literal["store", "offline"]
    store: str | None = None
    fleet_note: str | None = None
    registered_hosts: int | None = None
    computed_at: datetime
    has_changes: bool
    changes: list[ObjectChange] = []
    rollouts: list[GroupRollout] = []
    warnings: list[PlanWarning] = []

    def counts(self) -> dict[str, int]:
        tally = Counter(change.change for change in self.changes)
        return {
            "added": tally["added"],
            "changed": tally["changed"],
            "removed": tally["removed"],
            "deployments": sum(1 for r in self.rollouts if r.action == "deploy"),
        }


# --------------------------------------------------------------------------------------------------
# Semantic diff


def canonical(value: Any) -> Any:
    """Key-sorted dicts and order-free lists: two manifests mean the same thing iff canonical forms are equal."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return sorted((canonical(item) for item in value), key=_sort_key)
    return value


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _object_fields(
    manifest: ApplicationManifest | DeploymentGroupManifest | DeploymentConfigManifest,
) -> dict[str, Any]:
    """The part of a document that means something: its spec, plus labels and annotations when set. The name
    is the identity, so it is not a field; apiVersion and kind are fixed by the identity too."""
    fields: dict[str, Any] = manifest.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    metadata = {
        key: value
        for key, value in (("labels", manifest.metadata.labels), ("annotations", manifest.metadata.annotations))
        if value
    }
    if metadata:
        fields["metadata"] = metadata
    return fields


def _objects(desired: Desired | None) -> dict[tuple[str, str], dict[str, Any]]:
    if desired is None:
        return {}
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for app_name, app in desired.applications.items():
        objects[("Application", app_name)] = _object_fields(app)
    for config_name, config in desired.configs.items():
        objects[("DeploymentConfig", config_name)] = _object_fields(config)
    for group_name, group in desired.groups.items():
        objects[("DeploymentGroup", group_name)] = _object_fields(group)
    return objects


def diff_values(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """Field changes between two JSON values, descending into dicts, and into lists only when items changed in
    place (so `targets.tagSets.1.0.value: production -> prod` rather than two whole lists)."""
    if canonical(before) == canonical(after):
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[FieldChange] = []
        for key in sorted(set(before) | set(after)):
            child = f"{path}.{key}" if path else key
            if key not in before or key not in after:
                changes.append(FieldChange(path=child, before=before.get(key), after=after.get(key)))
            else:
                changes.extend(diff_values(before[key], after[key], child))
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        moved = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if canonical(old) != canonical(new)]
        gone = Counter(_sort_key(canonical(v)) for v in before) - Counter(_sort_key(canonical(v)) for v in after)
        if len(moved) == sum(gone.values()):
            return [change for i in moved for change in diff_values(before[i], after[i], f"{path}.{i}")]
    return [FieldChange(path=path, before=before, after=after)]


def _source(desired: Desired | None, kind: str, name: str, folder: str) -> str | None:
    if desired is None:
        return None
    ref = desired.sources.get((kind, name))
    if ref is None:
        return None
    prefix = folder.strip("/")
    return f"{prefix}/{ref.file}:{ref.line}" if prefix and prefix != "." else f"{ref.file}:{ref.line}"


def diff_manifests(base: Desired | None, head: Desired | None, *, folder: str = ".") -> list[ObjectChange]:
    """Objects added, removed or changed from base to head, by (kind, name), in kind then name order.
    `folder` is the manifests folder in the repo, so sources read as repo paths."""
    before, after = _objects(base), _objects(head)
    changes: list[ObjectChange] = []
    for kind, name in sorted(set(before) | set(after), key=lambda k: (KIND_ORDER[k[0]], k[1])):
        old, new = before.get((kind, name)), after.get((kind, name))
        typed_kind: Kind = kind  # type: ignore[assignment]
        if old is None:
            assert new is not None
            changes.append(ObjectChange(kind=typed_kind, name=name, change="added",
                                        source=_source(head, kind, name, folder), fields=diff_values({}, new)))
        elif new is None:
            changes.append(ObjectChange(kind=typed_kind, name=name, change="removed",
                                        source=_source(base, kind, name, folder), fields=diff_values(old, {})))
        else:
            fields = diff_values(old, new)
            if fields:
                changes.append(ObjectChange(kind=typed_kind, name=name, change="changed",
                                            source=_source(head, kind, name, folder), fields=fields))
    return changes


def canonical_objects(desired: Desired) -> dict[str, Any]:
    """Every object in canonical form, keyed `Kind/name`, sorted."""
    return {f"{kind}/{name}": canonical(fields) for (kind, name), fields in sorted(_objects(desired).items())}


def manifests_digest(desired: Desired) -> str:
    """One hash of what the manifests mean (not how they are written): equal digests, equal desired state."""
    return _digest_objects(canonical_objects(desired))


def _digest_objects(objects: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Inputs of compute_plan


@dataclass(frozen=True)
class LoadedRef:
    """One side of the comparison: the ref as given, the commit it resolved to, and its manifests or errors."""

    ref: str
    commit: str | None
    desired: Desired | None
    errors: list[ManifestError] = field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True)
class Fleet:
    """The store's view, when reachable: what agents report and what the reconciler recorded."""

    store: str
    observed: Observed
    state: State


@dataclass(frozen=True)
class PlanOptions:
    rollback_warning_hosts: int = DEFAULT_ROLLBACK_WARNING_HOSTS
    heartbeat_timeout: timedelta = timedelta(minutes=3)


def selector_text(targets: TargetsSpec) -> str:
    """CodeDeploy's tag-group semantics in words a reviewer can check against the inventory."""
    parts = []
    for tag_set in targets.tag_sets:
        alternatives = []
        for tag_filter in tag_set:
            if tag_filter.type == "KEY_ONLY":
                alternatives.append(f"{tag_filter.key}=*")
            elif tag_filter.type == "VALUE_ONLY":
                alternatives.append(f"*={tag_filter.value}")
            else:
                alternatives.append(f"{tag_filter.key}={tag_filter.value}")
        joined = " or ".join(alternatives)
        parts.append(f"({joined})" if len(alternatives) > 1 and len(targets.tag_sets) > 1 else joined)
    text = " and ".join(parts)
    if targets.hosts:
        listed = "hosts " + ", ".join(sorted(targets.hosts))
        text = f"{text}; plus {listed}" if text else listed
    return text


def is_pinned(revision: Revision) -> bool:
    """A revision names fixed bytes: a Git commit SHA, an S3 version or ETag, or a sha256 of the bundle."""
    if revision.sha256 or revision.git is not None:
        return True
    return revision.s3 is not None and bool(revision.s3.version or revision.s3.e_tag)


def _repo_relative(error: ManifestError, folder: str) -> str:
    """Errors name files inside the manifests folder; a reviewer clicks paths from the repo root."""
    prefix = folder.strip("/")
    if prefix and prefix != ".":
        error = replace(error, file=f"{prefix}/{error.file}")
    return str(error)


def compute_plan(
    base: LoadedRef,
    head: LoadedRef,
    *,
    fleet: Fleet | None,
    now: datetime,
    repository: str,
    path: str = ".",
    fleet_note: str | None = None,
    store_error: bool = False,
    options: PlanOptions | None = None,
) -> Plan:
    """The plan for applying `head`, reviewed against `base`, with the fleet when `fleet` is given.

    Pure: the caller loads refs and the store and passes the clock. An invalid head yields a plan that carries
    its errors and nothing else (nothing can be planned from it); an invalid base is planned as empty, with a
    warning, so a PR that repairs a broken main still gets a useful plan. `fleet_note` says why there is no
    fleet; `store_error` makes that a warning (the store was configured but could not be read)."""
    options = options or PlanOptions()
    warnings: list[PlanWarning] = []
    base_info = RefInfo(ref=base.ref, commit=base.commit, note=base.note, valid=not base.errors,
                        errors=[_repo_relative(e, path) for e in base.errors])
    head_info = RefInfo(ref=head.ref, commit=head.commit, note=head.note, valid=not head.errors,
                        errors=[_repo_relative(e, path) for e in head.errors])
    common: dict[str, Any] = {
        "repository": repository,
        "path": path,
        "base": base_info,
        "head": head_info,
        "fleet": "store" if fleet else "offline",
        "store": fleet.store if fleet else None,
        "fleet_note": fleet_note,
        "registered_hosts": len(fleet.observed.host_ids()) if fleet else None,
        "computed_at": now,
    }
    if head.errors or head.desired is None:
        return Plan(**common, has_changes=False)
    if base.errors:
        warnings.append(PlanWarning(
            code="INVALID_BASE",
            message=f"the base ({base.ref}) has {_count(len(base.errors), 'manifest error')}, so it is compared as "
                    f"empty and every object at head shows as added; first: {_repo_relative(base.errors[0], path)}",
        ))
    if fleet is None and store_error:
        warnings.append(PlanWarning(code="STORE_UNREACHABLE",
                                    message=f"{fleet_note}; this plan is offline: no hosts, batches or fleet warnings"))
    base_desired = None if base.errors else base.desired
    changes = diff_manifests(base_desired, head.desired, folder=path)
    rollouts, rollout_warnings = plan_rollouts(base_desired, head.desired, fleet=fleet, now=now, options=options)
    warnings.extend(rollout_warnings)
    has_changes = bool(changes) or any(r.action in ("deploy", "remove") for r in rollouts)
    plan = Plan(**common, has_changes=has_changes, changes=changes, rollouts=rollouts, warnings=warnings)
    log.info("plan.computed", head=head.commit, base=base.commit, fleet=plan.fleet, **plan.counts(),
             warnings=len(warnings))
    return plan


# --------------------------------------------------------------------------------------------------
# What will happen: asked of the rollout engine


#: Simulated time between passes; small, so that any gap longer than it between two batches is a bake.
PREVIEW_TICK = timedelta(milliseconds=1)


def _group_signature(group: DesiredGroup) -> dict[str, Any]:
    """Everything the engine reads from a resolved group, canonical (the source location is only where it
    was written, and list order means nothing)."""
    config = group.config
    signature: dict[str, Any] = canonical({
        "revision": group.revision.identity(),
        "targets": group.targets.model_dump(mode="json", by_alias=True, exclude_none=True),
        "config": {
            "name": config.name,
            "minimumHealthyHosts": config.minimum_healthy_hosts.model_dump(mode="json", by_alias=True)
            if config.minimum_healthy_hosts else None,
            "canary": config.canary.model_dump(mode="json", by_alias=True) if config.canary else None,
            "hostTimeout": config.host_timeout.total_seconds() if config.host_timeout else None,
            "zonal": config.zonal.model_dump(mode="json", by_alias=True, exclude_none=True) if config.zonal else None,
        },
        "rollback": group.auto_rollback.model_dump(mode="json", by_alias=True),
        "options": group.options.model_dump(mode="json", by_alias=True, exclude_none=True),
        "suspend": group.suspend,
    })
    return signature


def _same_group(a: DesiredGroup, b: DesiredGroup) -> bool:
    return bool(_group_signature(a) == _group_signature(b))


def _group_changes(before: DesiredGroup, after: DesiredGroup) -> list[str]:
    old, new = _group_signature(before), _group_signature(after)
    config = after.config.name.removeprefix(BUILTIN_PREFIX)
    words = {"revision": "revision", "targets": "targets", "config": f"deployment config ({config})",
             "rollback": "rollback policy", "options": "options", "suspend": "suspend"}
    return [label for key, label in words.items() if old[key] != new[key]]


def _offline_observed(groups: Iterable[DesiredGroup], now: datetime) -> Observed:
    """Offline, the only hosts known are the ones listed by id; the engine is shown them as new, online
    hosts so it can lay out the batches. Groups with tag sets get no batches: their hosts are unknowable."""
    registrations: dict[str, HostRegistration] = {}
    statuses: dict[str, HostStatus] = {}
    for group in groups:
        if group.targets.tag_sets:
            continue
        for host in group.targets.hosts:
            registrations[host] = HostRegistration(host_id=host, platform="unknown", hostname=host,
                                                   agent_version="unknown", registered_at=now)
            statuses[host] = HostStatus(host_id=host, heartbeat_at=now, agent_version="unknown")
    return Observed(registrations=registrations, statuses=statuses)


def _batches(entry: PreviewDeployment) -> list[Batch]:
    """The engine's batches; a gap in simulated time between two batches is a bake (canary or zone)."""
    batches = []
    for position, batch in enumerate(entry.batches):
        bake: float | None = None
        if position + 1 < len(entry.batches):
            gap = (entry.batches[position + 1].after - batch.after).total_seconds()
            if gap >= 0.05:
                bake = round(gap, 1)
        batches.append(Batch(number=batch.index + 1, hosts=batch.hosts, zone=batch.zone, canary=batch.canary,
                             bake_after_seconds=bake))
    return batches


def _pick_deployment(preview: RolloutPreview, revision: Revision | None) -> PreviewDeployment | None:
    """The deployment that brings the head's revision if there is one, else the first the engine starts."""
    if not preview.deployments:
        return None
    if revision is not None:
        for entry in preview.deployments:
            if entry.revision_to.identity() == revision.identity():
                return entry
    return preview.deployments[0]


def plan_rollouts(
    base: Desired | None,
    head: Desired,
    *,
    fleet: Fleet | None,
    now: datetime,
    options: PlanOptions,
) -> tuple[list[GroupRollout], list[PlanWarning]]:
    """One `GroupRollout` per group the change touches or the store has work for, and review warnings."""
    before = base.desired_groups() if base is not None else {}
    after = head.desired_groups()
    settings = CoreSettings(heartbeat_timeout=options.heartbeat_timeout)
    if fleet is not None:
        observed, state = fleet.observed, fleet.state
    else:
        observed, state = _offline_observed(after.values(), now), State()
    # Hosts running a command right now finish it (successfully) at the first simulated tick.
    previews = preview_rollout(head, observed, state, now=now, settings=settings, tick=PREVIEW_TICK)
    touched = {key for key in set(before) | set(after)
               if key not in before or key not in after or not _same_group(before[key], after[key])}
    rollouts: list[GroupRollout] = []
    warnings: list[PlanWarning] = []
    for key in sorted(touched | set(previews)):
        preview = previews.get(key, RolloutPreview(group=key))
        group = after.get(key)
        from_change = key in touched
        if group is None:
            recorded = state.groups.get(key)
            if from_change or (recorded is not None and not recorded.removed):
                rollouts.append(_removed(key, before.get(key), recorded, from_change, fleet))
            continue
        if not from_change and (fleet is None or not preview.deployments):
            continue
        rollout, group_warnings = _rollout(key, before.get(key), group, preview, observed=observed, state=state,
                                           fleet=fleet, from_change=from_change, now=now, options=options)
        rollouts.append(rollout)
        warnings.extend(group_warnings)
    return rollouts, warnings


def _removed(key: str, previous: DesiredGroup | None, recorded: GroupState | None, from_change: bool,
             fleet: Fleet | None) -> GroupRollout:
    in_flight = recorded.deployment_in_flight if recorded else None
    reason = "the group left the manifests: no new deployments start; what is installed stays on the hosts"
    if in_flight:
        reason += f"; {in_flight} in flight stops after its hosts in flight finish"
    revision = recorded.effective_revision if recorded and recorded.effective_revision else (
        previous.revision if previous else None)
    return GroupRollout(group=key, action="remove", from_change=from_change, reason=reason,
                        revision_from=revision, basis="store" if fleet else "selectors")


def _rollout(
    key: str,
    previous: DesiredGroup | None,
    group: DesiredGroup,
    preview: RolloutPreview,
    *,
    observed: Observed,
    state: State,
    fleet: Fleet | None,
    from_change: bool,
    now: datetime,
    options: PlanOptions,
) -> tuple[GroupRollout, list[PlanWarning]]:
    warnings: list[PlanWarning] = []

    def warn(code: WarningCode, message: str) -> None:
        warnings.append(PlanWarning(code=code, group=key, message=message))

    recorded = state.groups.get(key)
    explicit_only = not group.targets.tag_sets
    known_hosts = fleet is not None or explicit_only
    targets = group_members(group, observed) if known_hosts else None
    revision_changed = previous is None or previous.revision.identity() != group.revision.identity()
    action: Literal["deploy", "remove", "settings", "blocked"]
    revision_from: Revision | None = None
    revision_to: Revision | None = None
    blocked_reason: str | None = None
    if fleet is None:
        # Offline there is no state: a deployment starts exactly when the revision changes. The engine saw
        # only the hosts listed by id, as new hosts; for tag sets it has nothing to lay out.
        entry = _pick_deployment(preview, group.revision) if explicit_only and revision_changed else None
        if revision_changed:
            action = "deploy"
            reason = "new group" if previous is None else "the desired revision changed"
            revision_from, revision_to = (previous.revision if previous else None), group.revision
        else:
            action = "settings"
    else:
        entry = _pick_deployment(preview, group.revision)
        blocked_reason = preview.blocked[0].reason if preview.blocked else None
        if entry is not None:
            action = "deploy"
            started = next((a for a in preview.first_pass if isinstance(a, StartDeployment)
                            and a.deployment_id == entry.deployment_id), None)
            if started is not None:
                reason, revision_from = started.reason, started.revision_from
            else:  # started after the deployment in flight ends
                reason = "the desired revision changed; it starts once the deployment in flight has ended"
                revision_from = recorded.effective_revision if recorded else None
            revision_to = entry.revision_to
        elif blocked_reason is not None and (revision_changed or recorded is None):
            action, reason = "blocked", blocked_reason
            revision_from = recorded.effective_revision if recorded else None
            revision_to = group.revision
        elif (revision_changed and recorded is not None and recorded.effective_revision is not None
              and recorded.effective_revision.identity() == group.revision.identity()):
            # Back to the last good revision (a revert after a failure): the hosts already run it.
            action = "settings"
        elif revision_changed:
            action = "deploy"
            reason = "the desired revision changed; the engine starts it on a later pass"
            revision_from = recorded.effective_revision if recorded else None
            revision_to = group.revision
        else:
            action = "settings"
    if action == "settings" and revision_changed:
        reason = (f"the desired revision is the group's effective (last good) revision {group.revision.short()}, "
                  f"which its hosts already run")
    elif action == "settings":
        changed = _group_changes(previous, group) if previous else []
        reason = (f"{', '.join(changed) or 'settings'} changed; the revision is unchanged, so no deployment "
                  f"starts and the next deployment uses the new settings")
    batches = _batches(entry) if entry is not None else None

    in_flight: InFlight | None = None
    if recorded is not None and recorded.deployment_in_flight:
        flying = state.deployments.get(recorded.deployment_in_flight)
        in_flight = InFlight(deployment_id=recorded.deployment_in_flight,
                             status=str(flying.status) if flying else "unknown",
                             revision=flying.revision.short() if flying else "unknown")
    online_targets: list[str] = []
    offline: list[str] = []
    unhealthy: list[str] = []
    if fleet is not None and targets is not None:
        for host in targets:
            if is_online(observed, host, now=now, heartbeat_timeout=options.heartbeat_timeout):
                online_targets.append(host)
                last = observed.last_command(host)
                if last is not None and last.status is CommandStatus.FAILED and \
                        group_key(last.application, last.deployment_group) == key:
                    unhealthy.append(host)
            else:
                offline.append(host)
    estimate = estimate_duration(recorded, state.deployments, batches or []) if batches else None
    rollout = GroupRollout(
        group=key,
        action=action,
        from_change=from_change,
        reason=reason,
        revision_from=revision_from,
        revision_to=revision_to,
        deployment_config=group.config.name,
        config_description=group.config.describe(),
        minimum_healthy_hosts=group.config.minimum_for(len(targets)) if targets is not None else None,
        rollback_enabled=group.auto_rollback.enabled,
        rollback_events=list(group.auto_rollback.events) if group.auto_rollback.enabled else [],
        suspended=group.suspend,
        selector=selector_text(group.targets),
        basis="store" if fleet is not None else "selectors",
        target_hosts=targets,
        deploy_hosts=entry.hosts if entry is not None else None,
        batches=batches,
        offline_hosts=offline,
        unhealthy_hosts=unhealthy,
        quarantined=[Quarantine(revision=q.revision.short(), deployment_id=q.deployment_id, reason=q.reason)
                     for q in (recorded.quarantined if recorded else [])],
        in_flight=in_flight,
        blocked=blocked_reason if action != "deploy" else None,
        simulated_status=str(entry.status) if entry is not None else None,
        simulated_error=entry.error_code if entry is not None else None,
        estimate=estimate,
    )

    # Review warnings, most serious first.
    if fleet is not None and targets == []:
        warn("NO_HOSTS", f"the target selector ({selector_text(group.targets)}) matches no registered host")
    if entry is not None and entry.status is DeploymentStatus.FAILED:
        warn("MINIMUM_HEALTHY_UNMET",
             f"even if every online host succeeds, this deployment fails: {entry.error_code}: {entry.reason}")
    if revision_changed and action in ("deploy", "blocked") and not is_pinned(group.revision):
        warn("UNPINNED_REVISION",
             f"{group.revision.short()} is not pinned (no sha256, S3 version or eTag): the bytes deployed can "
             f"change without a manifest change, and a rollback may not restore what ran before")
    if in_flight is not None:
        supersede = (action == "deploy" and entry is not None and
                     in_flight.revision != entry.revision_to.short())
        then = ("applying this supersedes it: its remaining batches stop once its hosts in flight finish"
                if supersede else "this change lands while it runs")
        warn("IN_FLIGHT", f"deployment {in_flight.deployment_id} ({in_flight.revision}, {in_flight.status}) "
                          f"is in flight right now; {then}")
    host_count = len(targets) if targets is not None else len(group.targets.hosts)
    if not group.auto_rollback.enabled and host_count > options.rollback_warning_hosts:
        counted = "" if targets is not None else "at least "
        warn("ROLLBACK_DISABLED", f"automatic rollback is disabled on a group of {counted}{host_count} hosts "
                                  f"(more than {options.rollback_warning_hosts}): a failed deployment leaves "
                                  f"hosts on the failed revision")
    for blocked in preview.blocked if fleet is not None else []:
        if blocked.code == "QUARANTINED":
            warn("QUARANTINED", blocked.reason)
        elif blocked.code == "SUSPENDED" and (revision_changed or entry is None):
            warn("SUSPENDED", blocked.reason + "; set `suspend: false` to let it start")
    return rollout, warnings


# --------------------------------------------------------------------------------------------------
# Estimates from history


def batch_durations(deployments: Iterable[Deployment]) -> list[float]:
    """Seconds each past batch took, first dispatch to last finish, from deployments that finished."""
    durations = []
    for deployment in deployments:
        if not deployment.status.finished:
            continue
        for batch in deployment.batches:
            states = [deployment.hosts[h] for h in batch if h in deployment.hosts]
            starts = [s.dispatched_at for s in states if s.dispatched_at]
            ends = [s.finished_at for s in states if s.finished_at]
            if starts and ends and len(ends) == len(states):
                durations.append(max(0.0, (max(ends) - min(starts)).total_seconds()))
    return durations


def estimate_duration(
    group_state: GroupState | None, deployments: Mapping[str, Deployment], batches: list[Batch]
) -> Estimate | None:
    """batches x the median batch time of the group's recent deployments, plus the bakes the engine waits."""
    if not batches:
        return None
    history = [deployments[i] for i in (group_state.history if group_state else []) if i in deployments]
    recent = sorted(history, key=lambda d: d.created_at)[-ESTIMATE_HISTORY:]
    durations = batch_durations(recent)
    bakes = sum(b.bake_after_seconds or 0.0 for b in batches)
    if not durations:
        if bakes:
            return Estimate(seconds=bakes, lower_bound=True,
                            basis="the bake times alone; no finished deployment of this group to time batches from")
        return None
    median = statistics.median(durations)
    seconds = median * len(batches) + bakes
    used = len({d.deployment_id for d in recent if d.status.finished})
    basis = (f"{_count(len(batches), 'batch', 'batches')} x {_fmt(median)}, the median of "
             f"{_count(len(durations), 'batch', 'batches')} in the last {_count(used, 'deployment')}")
    if bakes:
        basis += f", plus {_fmt(bakes)} of bake time"
    return Estimate(seconds=round(seconds, 3), basis=basis)


def _count(number: int, word: str, plural: str | None = None) -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"


def _fmt(seconds: float) -> str:
    return format_duration(timedelta(seconds=round(seconds)))


# --------------------------------------------------------------------------------------------------
# Saved plans and stale-plan protection


class GroupFingerprint(PlanModel):
    """The parts of `groups/<app>/<group>.json` (and its deployment in flight) that decide what a pass does."""

    desired_revision: str | None = None
    desired_commit: str | None = None
    effective_revision: str | None = None
    deployment_in_flight: str | None = None
    in_flight_status: str | None = None
    quarantined: list[str] = []
    removed: bool = False
    stop_requested: bool = False


class Fingerprints(PlanModel):
    head_commit: str
    #: `manifests_digest` of the head: equal digests mean the same desired state, however it is written.
    manifests_digest: str
    #: The head's objects in canonical form, keyed `Kind/name`, so a refusal can say which fields differ.
    manifests: dict[str, JsonValue]
    groups: dict[str, GroupFingerprint]
    #: Group key -> the ids of the hosts it targets, sorted.
    membership: dict[str, list[str]]


class SavedPlan(PlanModel):
    kind: Literal["fleetshift-plan"] = "fleetshift-plan"
    format_version: int = FORMAT_VERSION
    fingerprints: Fingerprints
    plan: Plan

    @property
    def head_commit(self) -> str:
        return self.fingerprints.head_commit


def group_fingerprints(state: State) -> dict[str, GroupFingerprint]:
    prints = {}
    for key, group in sorted(state.groups.items()):
        in_flight = state.deployments.get(group.deployment_in_flight) if group.deployment_in_flight else None
        prints[key] = GroupFingerprint(
            desired_revision=group.desired_revision.identity() if group.desired_revision else None,
            desired_commit=group.desired_commit,
            effective_revision=group.effective_revision.identity() if group.effective_revision else None,
            deployment_in_flight=group.deployment_in_flight,
            in_flight_status=str(in_flight.status) if in_flight else None,
            quarantined=sorted(f"{q.revision.identity()}@{q.source_commit or '-'}" for q in group.quarantined),
            removed=group.removed,
            stop_requested=group.stop_request is not None,
        )
    return prints


def membership(desired: Desired, observed: Observed) -> dict[str, list[str]]:
    return {key: sorted(group_members(group, observed)) for key, group in sorted(desired.desired_groups().items())}


def fingerprints(desired: Desired, observed: Observed, state: State) -> Fingerprints:
    if not desired.commit:
        raise ReconcilerError("cannot fingerprint manifests that were not loaded from a commit")
    return Fingerprints(
        head_commit=desired.commit,
        manifests_digest=manifests_digest(desired),
        manifests=canonical_objects(desired),
        groups=group_fingerprints(state),
        membership=membership(desired, observed),
    )


def saved_plan(plan: Plan, desired: Desired, fleet: Fleet) -> SavedPlan:
    """What `--out` writes. Needs the fleet: a plan whose hosts and group states are unknown cannot be
    checked for staleness, so it must not be applied as if it could."""
    return SavedPlan(fingerprints=fingerprints(desired, fleet.observed, fleet.state), plan=plan)


def write_saved_plan(path: Path, saved: SavedPlan) -> None:
    try:
        path.write_text(saved.model_dump_json(by_alias=True, indent=2) + "\n")
    except OSError as exc:
        raise ReconcilerError(f"{path}: cannot write the plan: {exc.strerror or exc}") from exc
    log.info("plan.saved", path=str(path), head=saved.head_commit)


def load_saved_plan(path: Path) -> SavedPlan:
    """Read a plan written by `reconcile plan --out`; any other file is refused with what is wrong with it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SavedPlanError(f"{path}: no such plan file (write one with `reconcile plan --out {path}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SavedPlanError(f"{path}: cannot read the plan: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SavedPlanError(f"{path}:{exc.lineno}:{exc.colno}: not a plan file: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != SAVED_PLAN_KIND:
        raise SavedPlanError(f"{path}: not a plan file written by `reconcile plan --out` "
                             f"(expected \"kind\": \"{SAVED_PLAN_KIND}\")")
    if data.get("formatVersion") != FORMAT_VERSION:
        raise SavedPlanError(f"{path}: plan format version {data.get('formatVersion')!r} is not supported "
                             f"(this reconcile reads {FORMAT_VERSION}); compute the plan again with this version")
    try:
        return SavedPlan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SavedPlanError(f"{path}: damaged plan file: {where}: {first['msg']} "
                             f"({len(exc.errors())} problem(s)); compute the plan again") from None


def _short(text: str | None) -> str:
    if text is None:
        return "none"
    return text[:7] if len(text) == 40 else text


def _show_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return _short(value)
    return json.dumps(value, sort_keys=True)


def _manifest_reasons(saved: SavedPlan, desired: Desired) -> list[str]:
    then = saved.fingerprints.manifests
    now = canonical_objects(desired)
    found = []
    for key in sorted(set(then) | set(now)):
        if key not in then:
            found.append(f"{key} added")
        elif key not in now:
            found.append(f"{key} removed")
        else:
            fields = diff_values(then[key], now[key])
            if fields:
                shown = ", ".join(f"{f.path}: {_show_value(f.before)} -> {_show_value(f.after)}" for f in fields)
                found.append(f"{key} changed ({shown})")
    return found


def stale_reasons(saved: SavedPlan, desired: Desired, observed: Observed, state: State) -> list[str]:
    """Every difference between what the plan was computed from and what would be applied now, in words."""
    then = saved.fingerprints
    reasons: list[str] = []
    if manifests_digest(desired) != then.manifests_digest:
        # Compared by meaning, not by commit: a merge or squash commit is a new commit carrying exactly the
        # reviewed manifests, and refusing it would make every merge stale. Any other difference was never
        # reviewed.
        detail = "; ".join(_manifest_reasons(saved, desired)) or "the manifests differ"
        reasons.append(f"head commit: the plan was computed at {_short(then.head_commit)}; the manifests at "
                       f"{_short(desired.commit)} differ: {detail}")
    now_groups = group_fingerprints(state)
    for key in sorted(set(then.groups) | set(now_groups)):
        old, new = then.groups.get(key), now_groups.get(key)
        if old == new:
            continue
        if old is None:
            reasons.append(f"group state {key}: recorded since the plan (a reconciler pass ran for it)")
        elif new is None:
            reasons.append(f"group state {key}: deleted since the plan")
        else:
            fields = [
                f"{to_camel(name)}: {_show_fingerprint(getattr(old, name))} -> {_show_fingerprint(getattr(new, name))}"
                for name in GroupFingerprint.model_fields
                if getattr(old, name) != getattr(new, name)
            ]
            reasons.append(f"group state {key}: " + "; ".join(fields))
    now_members = membership(desired, observed)
    for key in sorted(set(then.membership) & set(now_members)):
        # Groups added or removed are manifest changes, reported above; here only hosts moving.
        old_hosts, new_hosts = set(then.membership[key]), set(now_members[key])
        moves = [f"{h} joined" for h in sorted(new_hosts - old_hosts)]
        moves += [f"{h} left" for h in sorted(old_hosts - new_hosts)]
        if moves:
            reasons.append(f"host membership of {key}: " + ", ".join(moves))
    return reasons


_FULL_SHA = re.compile(r"\b([0-9a-f]{7})[0-9a-f]{33}\b")


def _show_fingerprint(value: Any) -> str:
    """Identities are exact in the fingerprint; a person reads commit SHAs by their first 7 characters."""
    if value is None:
        return "none"
    text = "[" + ", ".join(value) + "]" if isinstance(value, list) else str(value)
    return _FULL_SHA.sub(r"\1", text)


def verify_saved_plan(path: Path, desired: Desired, observed: Observed, state: State) -> None:
    """Refuse (StalePlanError) unless `desired`, `observed` and `state` are what the plan at `path` was computed
    from: the same manifests (by meaning; a merge commit of the reviewed head passes), the same recorded group
    states, the same hosts in every group. Called by `reconcile --once --plan` before it writes anything."""
    saved = load_saved_plan(path)
    reasons = stale_reasons(saved, desired, observed, state)
    if reasons:
        log.warning("plan.stale", path=str(path), reasons=reasons)
        listed = "\n".join(f"  - {reason}" for reason in reasons)
        raise StalePlanError(
            f"{path}: the plan is stale; {_count(len(reasons), 'thing')} changed since it was computed at "
            f"{_short(saved.head_commit)} ({saved.plan.computed_at.isoformat()}):\n{listed}\n"
            f"Nothing was applied. Run `reconcile plan` again, review it, and apply the new plan."
        )
    log.info("plan.verified", path=str(path), head=saved.head_commit, applying=desired.commit)
