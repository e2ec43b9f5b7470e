"""How the core names things: deployment group ids, deployment ids, and when two revisions are the same.

Ids are derived from their inputs (never random), so a pass is deterministic and a pass that crashed half-way
re-creates exactly the documents it would have written.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from contract.models import Revision


def deployment_group_id(group_key: str) -> str:
    """A stable id for a group (CodeDeploy's deployment group id), used by agents to name directories."""
    return "dg-" + hashlib.sha256(group_key.encode()).hexdigest()[:20]


def new_deployment_id(group_key: str, revision: Revision, commit: str | None, creator: str, now: datetime) -> str:
    text = "\n".join([group_key, revision.identity(), commit or "", creator, now.isoformat()])
    return "d-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def rollback_deployment_id(failed_deployment_id: str) -> str:
    """Derived from the failed deployment only, so a pass that crashed after pointing the group at the
    rollback but before writing it re-creates the very same deployment."""
    return "d-" + hashlib.sha256(f"rollback\n{failed_deployment_id}".encode()).hexdigest()[:16]


def same_revision(a: Revision | None, b: Revision | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or a.identity() == b.identity()
