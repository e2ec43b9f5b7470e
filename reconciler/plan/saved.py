"""Saved plans and stale-plan protection.

`SavedPlan` is the plan plus fingerprints of what it was computed from (the manifests at the head commit,
every group's recorded state, every group's host membership). `verify_saved_plan` recomputes them from what
`reconcile --once --plan plan.json` is about to apply to and refuses, saying what changed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import JsonValue, ValidationError
from pydantic.alias_generators import to_camel

from contract.redact import redact_urls
from reconciler.core import Observed, State
from reconciler.core.membership import MembershipIndex, group_members
from reconciler.desired.manifests import Desired
from reconciler.errors import ReconcilerError
from reconciler.plan.diff import canonical_objects, diff_values, manifests_digest
from reconciler.plan.inputs import Fleet
from reconciler.plan.model import FORMAT_VERSION, Plan, PlanModel
from reconciler.plan.public import public_objects
from reconciler.plan.words import count

log = structlog.get_logger(__name__)

SAVED_PLAN_KIND = "fleetshift-plan"


class StalePlanError(ReconcilerError):
    """What a saved plan was computed from has changed; applying it would not do what was reviewed."""


class SavedPlanError(ReconcilerError):
    """The file given to `--plan` is not a plan this version can read."""


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
    #: The head's objects in canonical form, keyed `Kind/name`, so a refusal can say which fields differ. Without
    #: secret fields' values and URL credentials (`reconciler.plan.public`): a saved plan is a CI artifact.
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
    """Revisions by identity, with a Git repository URL's credentials redacted: a saved plan is a CI artifact,
    and a refusal prints what changed (the manifests' own digest still covers a changed token)."""
    prints = {}
    for key, group in sorted(state.groups.items()):
        in_flight = state.deployments.get(group.deployment_in_flight) if group.deployment_in_flight else None
        prints[key] = GroupFingerprint(
            desired_revision=redact_urls(group.desired_revision.identity()) if group.desired_revision else None,
            desired_commit=group.desired_commit,
            effective_revision=redact_urls(group.effective_revision.identity()) if group.effective_revision else None,
            deployment_in_flight=group.deployment_in_flight,
            in_flight_status=str(in_flight.status) if in_flight else None,
            quarantined=sorted(f"{redact_urls(q.revision.identity())}@{q.source_commit or '-'}"
                               for q in group.quarantined),
            removed=group.removed,
            stop_requested=group.stop_request is not None,
        )
    return prints


def membership(desired: Desired, observed: Observed) -> dict[str, list[str]]:
    # Registered membership only: EC2 membership is read from AWS by whoever applies (a plan made without AWS
    # credentials must not be stale for that alone), and missing hosts fail when their turn comes either way.
    observed = dataclasses.replace(observed, ec2={})
    index = MembershipIndex(observed)  # one for every group, not one per group
    return {
        key: sorted(group_members(group, observed, index)) for key, group in sorted(desired.desired_groups().items())
    }


def fingerprints(desired: Desired, observed: Observed, state: State) -> Fingerprints:
    if not desired.commit:
        raise ReconcilerError("cannot fingerprint manifests that were not loaded from a commit")
    return Fingerprints(
        head_commit=desired.commit,
        manifests_digest=manifests_digest(desired),
        manifests=public_objects(canonical_objects(desired)),
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
    # Both sides as plans show them: a plan saved by an older version may still hold the values themselves.
    then = public_objects(saved.fingerprints.manifests)
    now = public_objects(canonical_objects(desired))
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
        detail = "; ".join(_manifest_reasons(saved, desired)) or (
            "a value plans do not show changed (a field marked secret, or a URL's credentials)")
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
    return _FULL_SHA.sub(r"\1", redact_urls(text))  # a plan saved by an older version kept credentials


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
            f"{path}: the plan is stale; {count(len(reasons), 'thing')} changed since it was computed at "
            f"{_short(saved.head_commit)} ({saved.plan.computed_at.isoformat()}):\n{listed}\n"
            f"Nothing was applied. Run `reconcile plan` again, review it, and apply the new plan."
        )
    log.info("plan.verified", path=str(path), head=saved.head_commit, applying=desired.commit)
