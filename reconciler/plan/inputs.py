"""What `compute_plan` is given: the two loaded refs, the store's fleet when reachable, and review options."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from reconciler.core import Observed, State
from reconciler.core.state import DEFAULT_HEARTBEAT_TIMEOUT
from reconciler.desired.manifests import Desired
from reconciler.errors import ManifestError

#: Rollback disabled on a group with more hosts than this is worth a reviewer's attention (issue 6).
DEFAULT_ROLLBACK_WARNING_HOSTS = 5


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
    heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT
    #: deploy.yaml `policy.requireImmutableRevisions`: a head naming a mutable revision is planned as invalid, so
    #: the check of a pull request fails where `--once` would refuse the merge (reconciler/desired/policy.py).
    require_immutable_revisions: bool = False
