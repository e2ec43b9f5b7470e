"""The event stream's public shape: one `Event` per recorded change, as `reconcile events --format json` prints it,
as webhooks receive it, and as `schemas/event.json` describes it (docs/events.md).

Where it comes from: the reconciler records each event once, inside the document whose change it reports (a
deployment's own record, or the fleet event log; `reconciler/core/events.py`). Those records keep only what the
document does not already say; `from_deployment` and `from_fleet_log` put the context back (group, revision,
commit, deployment), so a consumer needs nothing but the event. Pure functions of the stored documents: the same
document always gives the same events with the same ids, which is what lets a notification cursor, a webhook
receiver or a log shipper de-duplicate on `id`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import Field

from contract.models import (
    Deployment,
    EventSeverity,
    EventType,
    FleetEventLog,
    Model,
    RecordedEvent,
    Revision,
    group_key,
)
from contract.redact import redact_url, redact_urls

#: Bumped only for a change a consumer could break on; new optional fields do not bump it.
EVENT_SCHEMA_VERSION: Literal[1] = 1

#: The `source` of events that belong to no deployment.
FLEET_SOURCE = "fleet"


class Event(Model):
    """One thing that happened to a deployment or the fleet, with everything needed to act on it."""

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    #: `<source>.<seq>`: `d-3f2a….7` is the 7th event of deployment d-3f2a…; `fleet.12` the 12th of the fleet log.
    #: Stable forever: the de-duplication key.
    id: str
    #: The deployment id, or "fleet".
    source: str
    seq: int = Field(ge=1)
    type: EventType
    severity: EventSeverity
    #: When the reconciler recorded it.
    at: datetime
    #: Its place among the events recorded by the same pass (they share `at`).
    order: int = Field(default=0, ge=0)
    #: When it happened where that differs (a host's end as its agent reported it, a gate's measurement).
    occurred_at: datetime | None = None
    application: str | None = None
    deployment_group: str | None = None
    #: `<application>/<deploymentGroup>`, as `reconcile status` names groups.
    group: str | None = None
    deployment_id: str | None = None
    #: user (a manifest change), rollback, or outdated (catch-up of hosts that joined later).
    creator: Literal["user", "rollback", "outdated"] | None = None
    rollback_of: str | None = None
    revision: Revision | None = None
    #: The revision in one short line (`app-repo@bc893b7`, `s3://bucket/key#version`).
    revision_label: str | None = None
    #: The config-repo commit the deployment's revision came from (the one a commit status is posted on).
    commit: str | None = None
    host: str | None = None
    hosts: list[str] | None = None
    batch: int | None = None
    gate: str | None = None
    checkpoint: str | None = None
    message: str


def from_deployment(deployment: Deployment) -> list[Event]:
    """Every event recorded in one deployment's document, with the deployment's context."""
    context: dict[str, object] = {
        "source": deployment.deployment_id,
        "application": deployment.application,
        "deployment_group": deployment.deployment_group,
        "group": group_key(deployment.application, deployment.deployment_group),
        "deployment_id": deployment.deployment_id,
        "creator": deployment.creator,
        "rollback_of": deployment.rollback_of,
        # A token in a Git repository URL (`https://TOKEN@host/repo.git`) must not reach a webhook or a log.
        "revision": _public(deployment.revision),
        "revision_label": redact_urls(deployment.revision.short()),
        "commit": deployment.source_commit,
    }
    return [_event(recorded, context) for recorded in deployment.events]


def _public(revision: Revision) -> Revision:
    if revision.git is None:
        return revision
    git = revision.git.model_copy(update={"repository": redact_url(revision.git.repository)})
    return revision.model_copy(update={"git": git})


def from_fleet_log(log: FleetEventLog) -> list[Event]:
    return [_event(recorded, {"source": FLEET_SOURCE}) for recorded in log.events]


def _event(recorded: RecordedEvent, context: dict[str, object]) -> Event:
    fields = recorded.model_dump(exclude_none=True)
    return Event.model_validate({**context, **fields, "id": f"{context['source']}.{recorded.seq}"})


def in_order(events: Iterable[Event]) -> list[Event]:
    """Oldest first: by recording time, then in the order their pass decided them."""
    return sorted(events, key=lambda event: (event.at, event.order, event.source, event.seq))
