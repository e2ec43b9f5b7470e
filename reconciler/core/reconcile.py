"""The reconciler's decision: one pure pass from (desired, observed, state, now) to a list of actions.

Where it sits: the shell loads `Desired` (manifests at a commit), `Observed` (agents' registrations and
statuses) and `State` (groups, deployments, commands) from the store, calls `reconcile()`, and applies the
returned actions in order. Nothing here does I/O, logs, reads a clock or draws random numbers; the same
inputs always give the same actions (deployment ids included), which is what makes `plan` trustworthy and
the golden tests possible.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.core.actions import Action
from reconciler.core.observed import Observed
from reconciler.core.state import CoreSettings, State
from reconciler.manifests import Desired

DEFAULT_SETTINGS = CoreSettings()


def reconcile(
    desired: Desired,
    observed: Observed,
    state: State,
    *,
    now: datetime,
    settings: CoreSettings = DEFAULT_SETTINGS,
) -> list[Action]:
    """Decide what to write now so the fleet moves one safe step toward `desired`.

    Contract:
    - Pure and deterministic. `now` must be timezone-aware; deployment ids are derived from the group key,
      the revision identity, the commit, the creator and `now`.
    - Re-run safe: applying the returned actions and calling again with nothing new observed returns only
      `Blocked` actions (which write nothing). A crash part-way through applying is completed by the next
      pass (see `reconciler.core.actions`).
    - Per group, at most one deployment is in flight; per host, one command slot: a host whose last
      command has not been reported Succeeded/Failed gets nothing new, whichever group it came from.
    - Groups are handled in key order, so when two groups want the same free host in one pass the first
      key wins and the other waits for the next pass.
    """
    raise NotImplementedError("the decision core lands in the next commit; the types above are final")
