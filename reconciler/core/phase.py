"""The one word that says where a group stands: what `reconcile status` prints and what the metrics export.

Where it sits: a pure rule over the group's record and its manifest, beside the decisions it describes. It is here,
not in the CLI, because two readers must agree on it word for word: `reconcile status` (`reconciler.cli.status`)
and the reconciler's `fleetshift_group_state` gauge (`reconciler.shell.metrics`). An alert on
`fleetshift_group_state{state="quarantined"}` must fire exactly when `status` says "quarantined".
"""

from __future__ import annotations

from contract.models import GroupState
from reconciler.desired.manifests import DesiredGroup

#: Every word `group_phase` can return, in the order a dashboard lists them.
GROUP_PHASES = (
    "converged",
    "pending",
    "deploying",
    "rolling back",
    "stopping",
    "quarantined",
    "suspended",
    "new",
    "removed",
    "unknown",
)


def group_phase(state: GroupState | None, manifest: DesiredGroup | None, *, in_flight_creator: str | None,
                desired_known: bool) -> str:
    """The group's state in one word (`GROUP_PHASES`).

    `state` is the group's record (None: no pass has recorded it yet), `manifest` the group as the manifests
    define it (None: not in them), `in_flight_creator` the creator of the deployment in flight (user, rollback,
    outdated; None: nothing in flight), `desired_known` whether the manifests could be read at all. When they
    could not, a group missing from them is not "removed": nobody knows. Only the store's own word (a pass marked
    it removed) or what is in flight can be said."""
    desired_revision = manifest.revision if manifest else (state.desired_revision if state else None)
    effective = state.effective_revision if state else None
    desired_id = desired_revision.identity() if desired_revision else None
    held = state is not None and any(q.revision.identity() == desired_id for q in state.quarantined)
    converged = effective is not None and desired_id == effective.identity()
    if manifest is None and not desired_known:
        if state is not None and state.removed:
            return "removed"
        if in_flight_creator is None:
            return "unknown"
    elif manifest is None:
        return "removed"
    elif state is None:
        return "new"
    if in_flight_creator is not None:
        if state is not None and state.stop_request is not None:
            return "stopping"
        return "rolling back" if in_flight_creator == "rollback" else "deploying"
    assert manifest is not None
    if held:
        return "quarantined"
    if manifest.suspend:
        return "suspended"
    return "converged" if converged else "pending"


__all__ = ["GROUP_PHASES", "group_phase"]
