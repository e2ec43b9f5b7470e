"""Amazon SNS: `Publish` the event's JSON to a topic, with the default AWS credential chain of the reconciler's
machine (environment, profile, instance role; no secret in the manifest at all).

`Subject` is the headline (`[fleetshift] Deployment failed: shop/web`, ASCII, under 100 characters, for email
subscribers), `Message` the event exactly as a webhook receives it, and message attributes `eventType`,
`severity`, `group` and `deliveryId` let subscriptions filter (SNS filter policies) without parsing the body. On
a FIFO topic (`….fifo`) the event id is the `MessageDeduplicationId`, so SNS itself drops the re-send of an event
published just before a crash (within its five-minute window), and the group is the `MessageGroupId`, so one
group's events stay in order.

The client: region from the topic's ARN; endpoint from boto3's own `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL`
(how the tests reach moto); the notification's timeout for connect and read; botocore's retries off, because the
worker's are the retries (one policy, visible in the logs). An AWS error is classified once
(`contract.aws.classify`): throttling, 5xx and transport failures are tried again, the rest fails with AWS's
code and message.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from contract.aws import classify, failure_words
from contract.events import Event
from reconciler.desired.notification_spec import SnsSpec
from reconciler.notify.attempt import Attempt, scrub
from reconciler.notify.messages import sns_subject
from reconciler.notify.webhook import event_body

#: What SNS accepts in a FIFO message group id and deduplication id (up to 128 characters).
_FIFO_ID = re.compile(r"[^A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]")


class SnsProvider:
    kind = "sns"

    def __init__(self, spec: SnsSpec, timeout: timedelta, *, client: Any | None = None) -> None:
        self.spec = spec
        self.timeout = timeout
        self._client = client

    def describe(self) -> str:
        return f"SNS topic {self.spec.topic_arn}"

    def publish_arguments(self, event: Event) -> dict[str, Any]:
        attributes = {
            "eventType": event.type.value,
            "severity": event.severity.value,
            "deliveryId": event.id,
            **({"group": event.group} if event.group else {}),
        }
        arguments: dict[str, Any] = {
            "TopicArn": self.spec.topic_arn,
            "Subject": sns_subject(event),
            "Message": event_body(event).decode(),
            "MessageAttributes": {
                name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
            },
        }
        if self.spec.fifo:
            arguments["MessageGroupId"] = _FIFO_ID.sub("_", event.group or event.source)[:128]
            arguments["MessageDeduplicationId"] = _FIFO_ID.sub("_", event.id)[:128]
        return arguments

    def send(self, event: Event) -> Attempt:
        try:
            answer = self._api().publish(**self.publish_arguments(event))
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            words = scrub(f"SNS Publish: {failure_words(exc)}", [])
            return Attempt.retry(words) if failure.retryable else Attempt.failed(words)
        return Attempt.delivered(f"SNS message {answer.get('MessageId', '?')}")

    def _api(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            seconds = self.timeout.total_seconds()
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=seconds,
                            read_timeout=seconds)
            self._client = boto3.session.Session().client("sns", region_name=self.spec.region or
                                                          self.spec.topic_region, config=config)
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()


__all__ = ["SnsProvider"]
