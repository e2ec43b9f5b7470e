"""`reconcile plan`: what a change to the config repo will do, computed before it is merged.

Where it sits: the CLI (`reconciler.cli.plan`) loads the manifests at two refs and, when the store is reachable,
the fleet (`Observed`) and the reconciler's records (`State`); `compute_plan` turns them into a `Plan`, a typed,
serialisable model; `reconciler.plan.render` turns a plan into text, Markdown or JSON. Nothing in `compute_plan`
does I/O or reads a clock, so the same inputs always give the same plan (and the golden tests can hold it still).

The package, by job:
- `model.py`: the `Plan` model; `inputs.py`: what `compute_plan` is given (`LoadedRef`, `Fleet`, `PlanOptions`);
- `diff.py`: the semantic diff of the two commits' manifests (objects and fields, not lines);
- `preview.py`: what will happen, asked of the rollout engine itself (`reconciler.core`): its membership, its
  first pass and its batch simulator; `review.py`: the selector in words and the review warnings;
  `estimate.py`: durations from past batches;
- `saved.py`: saved plans with fingerprints, and the stale-plan check `reconcile --once --plan` runs.
This module is the entry point, and keeps the names the CLI imports from it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog

from reconciler.desired.policy import revision_policy_violations
from reconciler.errors import ManifestError
from reconciler.plan.diff import diff_manifests
from reconciler.plan.inputs import DEFAULT_ROLLBACK_WARNING_HOSTS, Fleet, LoadedRef, PlanOptions
from reconciler.plan.model import Plan, PlanWarning, RefInfo
from reconciler.plan.preview import plan_rollouts
from reconciler.plan.public import public_plan
from reconciler.plan.saved import (
    SavedPlan,
    SavedPlanError,
    StalePlanError,
    load_saved_plan,
    saved_plan,
    verify_saved_plan,
    write_saved_plan,
)
from reconciler.plan.words import count

__all__ = [
    "DEFAULT_ROLLBACK_WARNING_HOSTS",
    "Fleet",
    "LoadedRef",
    "Plan",
    "PlanOptions",
    "SavedPlan",
    "SavedPlanError",
    "StalePlanError",
    "compute_plan",
    "load_saved_plan",
    "saved_plan",
    "verify_saved_plan",
    "write_saved_plan",
]

log = structlog.get_logger(__name__)


def _repo_relative(error: ManifestError, folder: str) -> str:
    """Errors name files inside the manifests folder; a reviewer clicks paths from the repo root."""
    prefix = folder.strip("/")
    if prefix and prefix != ".":
        error = replace(error, file=f"{prefix}/{error.file}")
    return str(error)


def _with_policy(head: LoadedRef, options: PlanOptions) -> LoadedRef:
    """The head with deploy.yaml's policy applied: its violations are the head's errors, so the plan shows them
    located, as it shows invalid manifests, and plans nothing that `--once` would refuse to apply."""
    if head.desired is None:
        return head
    violations = revision_policy_violations(head.desired,
                                            require_immutable_revisions=options.require_immutable_revisions)
    return replace(head, desired=None, errors=violations) if violations else head


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
    fleet; `store_error` makes that a warning (the store was configured but could not be read). No URL in the
    plan keeps its credentials, and no field marked secret its value (`reconciler.plan.public`)."""
    options = options or PlanOptions()
    head = _with_policy(head, options)
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
        return public_plan(Plan(**common, has_changes=False))
    if base.errors:
        warnings.append(PlanWarning(
            code="INVALID_BASE",
            message=f"the base ({base.ref}) has {count(len(base.errors), 'manifest error')}, so it is compared as "
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
    plan = public_plan(Plan(**common, has_changes=has_changes, changes=changes, rollouts=rollouts,
                            warnings=warnings))
    log.info("plan.computed", head=head.commit, base=base.commit, fleet=plan.fleet, **plan.counts(),
             warnings=len(warnings))
    return plan
