"""What a person reads: Slack messages, SNS subjects, commit status descriptions. Pure functions of an event.

Written for someone paged at night: the first line says what happened and where (`:x: Deployment failed:
shop/web`), then the facts to act on (revision, config commit, hosts, batch), then the reason in the reconciler's
own words (the event's message, the same words `reconcile status` and `history` use). Every text is cut to the
limit of the place it goes (Slack's block limits, SNS's 100-character subject, a commit status's 140-character
description), never rejected for its length.
"""

from __future__ import annotations

from typing import Any

from contract.events import Event
from contract.models import EventSeverity, EventType

TITLES: dict[EventType, str] = {
    EventType.DEPLOYMENT_STARTED: "Deployment started",
    EventType.ROLLBACK_STARTED: "Rollback started",
    EventType.BATCH_STARTED: "Batch started",
    EventType.HOST_SUCCEEDED: "Host succeeded",
    EventType.HOST_FAILED: "Host failed",
    EventType.HOST_LEFT: "Host left the group",
    EventType.HOST_MISSING: "Host missing",
    EventType.GATE_PASSED: "Gate passed",
    EventType.GATE_FAILED: "Gate failed",
    EventType.GATE_INCONCLUSIVE: "Gate inconclusive",
    EventType.DEPLOYMENT_BAKING: "Deployment baking",
    EventType.DEPLOYMENT_SUCCEEDED: "Deployment succeeded",
    EventType.DEPLOYMENT_FAILED: "Deployment failed",
    EventType.DEPLOYMENT_STOPPED: "Deployment stopped",
    EventType.DEPLOYMENT_SUPERSEDED: "Deployment superseded",
    EventType.ROLLBACK_SUCCEEDED: "Rolled back",
    EventType.ROLLBACK_FAILED: "Rollback failed",
    EventType.REVISION_QUARANTINED: "Revision quarantined",
    EventType.COMMAND_REFUSED: "Command refused",
}
SEVERITY_EMOJI: dict[EventSeverity, str] = {
    EventSeverity.INFO: ":information_source:",
    EventSeverity.WARNING: ":warning:",
    EventSeverity.ERROR: ":x:",
    EventSeverity.CRITICAL: ":rotating_light:",
}
#: Good news reads as good news whatever its severity says about attention.
GOOD_NEWS: frozenset[EventType] = frozenset({EventType.DEPLOYMENT_SUCCEEDED, EventType.GATE_PASSED})

#: Slack's limits (api.slack.com/reference/block-kit/blocks): a section's text 3000 characters, a field 2000, ten
#: fields; messages are kept well under them.
SLACK_TEXT_LIMIT = 3000
SLACK_FIELD_LIMIT = 2000
SLACK_FIELDS = 10
#: Hosts listed by name before "and N more".
HOSTS_SHOWN = 20
#: SNS: a subject is under 100 ASCII characters, no line breaks or control characters.
SNS_SUBJECT_LIMIT = 99
#: GitHub's commit status description limit (GitLab's is larger; one limit for both).
STATUS_DESCRIPTION_LIMIT = 140


def cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def headline(event: Event) -> str:
    """`Deployment failed: shop/web` (or the fleet / a host for fleet events)."""
    where = event.group or event.host or "fleet"
    return f"{TITLES[event.type]}: {where}"


def emoji(event: Event) -> str:
    return ":white_check_mark:" if event.type in GOOD_NEWS else SEVERITY_EMOJI[event.severity]


def short_commit(commit: str | None) -> str | None:
    return commit[:12] if commit else None


def host_list(hosts: list[str]) -> str:
    shown = ", ".join(hosts[:HOSTS_SHOWN])
    return shown + (f" and {len(hosts) - HOSTS_SHOWN} more" if len(hosts) > HOSTS_SHOWN else "")


def facts(event: Event) -> list[tuple[str, str]]:
    """(label, value) pairs worth a field of their own, in reading order."""
    pairs: list[tuple[str, str]] = []
    if event.group:
        pairs.append(("Group", event.group))
    if event.revision_label:
        pairs.append(("Revision", event.revision_label))
    commit = short_commit(event.commit)
    if commit:
        pairs.append(("Config commit", commit))
    if event.host:
        pairs.append(("Host", event.host))
    if event.hosts:
        pairs.append(("Hosts", host_list(event.hosts)))
    if event.batch is not None:
        pairs.append(("Batch", str(event.batch + 1)))
    if event.gate:
        pairs.append(("Gate", f"{event.gate} at {event.checkpoint}" if event.checkpoint else event.gate))
    if event.rollback_of:
        pairs.append(("Rollback of", event.rollback_of))
    return pairs


def _escape(text: str) -> str:
    """Slack mrkdwn: &, < and > are control characters (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: Event) -> dict[str, Any]:
    """An incoming-webhook message: `text` (notifications, and clients that show no blocks) and blocks."""
    title = headline(event)
    fields = [
        {"type": "mrkdwn", "text": cut(f"*{label}*\n{_escape(value)}", SLACK_FIELD_LIMIT)}
        for label, value in facts(event)[:SLACK_FIELDS]
    ]
    context = " · ".join(
        part for part in (event.severity.value, event.type.value, event.deployment_id,
                          event.at.strftime("%Y-%m-%d %H:%M:%S UTC"), event.id) if part
    )
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": cut(
            f"{emoji(event)} *{_escape(title)}*\n{_escape(event.message)}", SLACK_TEXT_LIMIT)}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(_escape(context),
                                                                                   SLACK_TEXT_LIMIT)}]})
    return {"text": cut(f"{emoji(event)} {title}: {event.message}", SLACK_TEXT_LIMIT), "blocks": blocks}


def sns_subject(event: Event) -> str:
    """`[fleetshift] Deployment failed: shop/web`: printable ASCII (SNS refuses anything else), under 100."""
    text = f"[fleetshift] {headline(event)}"
    ascii_only = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    if len(ascii_only) > SNS_SUBJECT_LIMIT:
        ascii_only = ascii_only[: SNS_SUBJECT_LIMIT - 3] + "..."
    return ascii_only


def status_description(event: Event) -> str:
    """A commit status's description: what the rollout is doing, in the reconciler's words."""
    return cut(event.message.replace("\n", " "), STATUS_DESCRIPTION_LIMIT)


__all__ = ["TITLES", "cut", "facts", "headline", "slack_payload", "sns_subject", "status_description"]
