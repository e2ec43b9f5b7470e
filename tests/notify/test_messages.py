"""What a person reads: Slack messages, SNS subjects and commit status descriptions, cut to their limits."""

from __future__ import annotations

from contract.events import from_deployment
from contract.models import EventType
from reconciler.notify.messages import (
    SLACK_FIELD_LIMIT,
    SLACK_TEXT_LIMIT,
    headline,
    slack_payload,
    sns_subject,
    status_description,
)
from tests.notify.records import deployment


def test_a_failed_deployment_reads_as_such_in_slack() -> None:
    failed = deployment("d-1", [EventType.DEPLOYMENT_FAILED], group="shop/web")
    failed = failed.model_copy(update={"events": [failed.events[0].model_copy(update={
        "message": "app@ababab failed [HEALTH_CONSTRAINTS] <too many failed hosts> & more (hosts: 1 failed)"})]})
    event = from_deployment(failed)[0]
    payload = slack_payload(event)
    assert payload["text"].startswith(":x: Deployment failed: shop/web: app@ababab failed")
    section = payload["blocks"][0]["text"]["text"]
    assert section.startswith(":x: *Deployment failed: shop/web*\n")
    assert "&lt;too many failed hosts&gt; &amp; more" in section, "mrkdwn control characters are escaped"
    fields = {field["text"].split("\n")[0]: field["text"].split("\n")[1] for field in payload["blocks"][1]["fields"]}
    assert fields["*Group*"] == "shop/web"
    assert fields["*Revision*"] == event.revision_label
    assert fields["*Config commit*"] == "c0ffee000000"
    context = payload["blocks"][2]["elements"][0]["text"]
    assert "error" in context and "deployment.failed" in context and "d-1.1" in context


def test_batches_list_their_hosts_and_good_news_is_green() -> None:
    started = from_deployment(deployment("d-1", [EventType.BATCH_STARTED, EventType.DEPLOYMENT_SUCCEEDED]))
    batch = slack_payload(started[0])
    fields = [field["text"] for field in batch["blocks"][1]["fields"]]
    assert "*Hosts*\nweb-1" in fields and "*Batch*\n1" in fields
    assert slack_payload(started[1])["text"].startswith(":white_check_mark: Deployment succeeded")


def test_slack_texts_are_cut_to_slacks_limits() -> None:
    huge = deployment("d-1", [EventType.BATCH_STARTED])
    hosts = [f"host-{n:05d}" for n in range(5000)]
    huge = huge.model_copy(update={"events": [huge.events[0].model_copy(update={
        "message": "x" * 10_000, "hosts": hosts})]})
    payload = slack_payload(from_deployment(huge)[0])
    assert len(payload["text"]) <= SLACK_TEXT_LIMIT
    assert len(payload["blocks"][0]["text"]["text"]) <= SLACK_TEXT_LIMIT
    assert payload["blocks"][0]["text"]["text"].endswith("…")
    for field in payload["blocks"][1]["fields"]:
        assert len(field["text"]) <= SLACK_FIELD_LIMIT
    assert "and 4980 more" in next(f["text"] for f in payload["blocks"][1]["fields"] if f["text"].startswith("*Hosts"))


def test_sns_subject_is_short_printable_ascii() -> None:
    event = from_deployment(deployment("d-1", [EventType.ROLLBACK_FAILED], group="shop/" + "w" * 90))[0]
    subject = sns_subject(event)
    assert len(subject) < 100 and subject.startswith("[fleetshift] Rollback failed: shop/")
    assert subject.endswith("...")
    assert all(32 <= ord(ch) < 127 for ch in subject)


def test_status_description_fits_githubs_140_characters() -> None:
    event = from_deployment(deployment("d-1", [EventType.BATCH_STARTED]))[0]
    assert status_description(event) == "batch 1 of 2: app@ababab to web-1"
    long = event.model_copy(update={"message": "y" * 500})
    assert len(status_description(long)) == 140


def test_headline_names_the_host_for_fleet_events() -> None:
    event = from_deployment(deployment("d-1", [EventType.DEPLOYMENT_STARTED]))[0]
    assert headline(event) == "Deployment started: shop/web"
    assert headline(event.model_copy(update={"group": None, "host": "web-9"})) == "Deployment started: web-9"
