"""SNS against moto's server mode over HTTP: an SQS queue subscribed to the topic reads back exactly what was
published (subject, the event JSON, message attributes); a FIFO topic gets the event id as deduplication id; an
AWS refusal keeps AWS's words."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from contract.events import from_deployment
from contract.models import EventType
from contract.store import MemoryStore
from contract.store.docs import read_document
from reconciler.core.state import State
from reconciler.desired.manifests import NotificationManifest
from reconciler.notify.cursor import NotificationCursor, cursor_key
from reconciler.notify.deliver import NotificationWorker
from reconciler.notify.sns import SnsProvider
from tests.conftest import S3Server
from tests.notify.records import deployment, state
from tests.notify.test_providers import FakeClock

REGION = "us-east-1"


def client(s3_server: S3Server, service: str) -> Any:
    return boto3.client(service, endpoint_url=s3_server.endpoint_url, region_name=REGION,  # type: ignore[call-overload]
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def subscribed_queue(s3_server: S3Server, topic_arn: str, name: str) -> str:
    sqs = client(s3_server, "sqs")
    queue_url = sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"} if name.endswith(".fifo") else {}
                                 )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    client(s3_server, "sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return str(queue_url)


def received(s3_server: S3Server, queue_url: str) -> list[dict[str, Any]]:
    sqs = client(s3_server, "sqs")
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(message["Body"]) for message in messages.get("Messages", [])]


def sns_worker(topic_arn: str) -> NotificationWorker:
    spec = NotificationManifest.model_validate({"apiVersion": "deploy/v1", "kind": "Notification",
                                                "metadata": {"name": "n"},
                                                "spec": {"sns": {"topicArn": topic_arn}}}).spec
    return NotificationWorker("n", spec, MemoryStore(), baseline=State(), clock=FakeClock())


@pytest.fixture
def endpoint(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    return s3_server


def test_events_are_published_and_read_back_from_a_subscribed_queue(endpoint: S3Server) -> None:
    topic_arn = client(endpoint, "sns").create_topic(Name="deploys")["TopicArn"]
    queue_url = subscribed_queue(endpoint, topic_arn, "deploys-inbox")
    records = state(deployment("d-sns", [EventType.DEPLOYMENT_STARTED, EventType.DEPLOYMENT_FAILED]))
    sender = sns_worker(topic_arn)
    assert sender.step(records) is None
    messages = received(endpoint, queue_url)
    events = from_deployment(records.deployments["d-sns"])
    assert len(messages) == 2
    by_id = {json.loads(message["Message"])["id"]: message for message in messages}
    assert set(by_id) == {"d-sns.1", "d-sns.2"}
    failed = by_id["d-sns.2"]
    assert failed["Subject"] == "[fleetshift] Deployment failed: shop/web"
    assert json.loads(failed["Message"]) == json.loads(events[1].model_dump_json(by_alias=True, exclude_none=True))
    attributes = {name: value["Value"] for name, value in failed["MessageAttributes"].items()}
    assert attributes == {"eventType": "deployment.failed", "severity": "error", "group": "shop/web",
                          "deliveryId": "d-sns.2"}
    stored = read_document(sender.store, cursor_key("n"), NotificationCursor)
    assert stored is not None and stored.document.delivered_total == 2


def test_a_fifo_topic_gets_the_event_id_for_deduplication(endpoint: S3Server) -> None:
    topic_arn = client(endpoint, "sns").create_topic(
        Name="deploys.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    event = from_deployment(deployment("d-fifo", [EventType.DEPLOYMENT_STARTED]))[0]
    provider = SnsProvider(sns_worker(topic_arn).spec.sns, sns_worker(topic_arn).spec.timeout)  # type: ignore[arg-type]
    arguments = provider.publish_arguments(event)
    assert arguments["MessageDeduplicationId"] == "d-fifo.1" and arguments["MessageGroupId"] == "shop/web"
    queue_url = subscribed_queue(endpoint, topic_arn, "deploys-inbox.fifo")
    first, again = provider.send(event), provider.send(event)  # a re-send after a crash
    assert first.outcome == "delivered" and again.outcome == "delivered"
    assert [json.loads(message["Message"])["id"] for message in received(endpoint, queue_url)] == ["d-fifo.1"]


def test_an_aws_refusal_keeps_awss_words(endpoint: S3Server) -> None:
    missing = f"arn:aws:sns:{REGION}:123456789012:no-such-topic"
    sender = sns_worker(missing)
    sender.step(state(deployment("d-x", [EventType.DEPLOYMENT_STARTED])))
    stored = read_document(sender.store, cursor_key("n"), NotificationCursor)
    assert stored is not None
    assert stored.document.failed_total == 1
    assert "NotFound" in (stored.document.last_error or ""), stored.document.last_error
