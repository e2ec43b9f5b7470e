"""The generic webhook: POST the event's JSON, as `reconcile events --format json` prints one event.

Headers: `Content-Type: application/json`, `User-Agent: fleetshift/<version>`, `X-Fleetshift-Event: <type>`,
`X-Fleetshift-Delivery: <event id>` (also the body's `id`: the de-duplication key, the same on every re-send), and
with `secretFrom` `X-Fleetshift-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the exact body bytes under the
secret: GitHub's webhook convention, so receivers that verify GitHub's (and Flux's `generic-hmac`) need only the
header name changed. Then the user's headers, literal or from the reconciler's machine.
"""

from __future__ import annotations

import hashlib
import hmac

from contract.events import Event
from reconciler.desired.notification_spec import SecretSource, WebhookSpec
from reconciler.notify.attempt import Attempt
from reconciler.notify.credentials import SecretMissing, read_secret
from reconciler.notify.http import Answer, HttpPoster, url_secrets

DELIVERY_HEADER = "X-Fleetshift-Delivery"
EVENT_HEADER = "X-Fleetshift-Event"
SIGNATURE_HEADER = "X-Fleetshift-Signature-256"


def event_body(event: Event) -> bytes:
    """The exact bytes sent (and signed): the public event, camelCase, without empty fields."""
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookProvider:
    kind = "webhook"

    def __init__(self, spec: WebhookSpec, poster: HttpPoster) -> None:
        self.spec = spec
        self.poster = poster

    def describe(self) -> str:
        if self.spec.url is not None:
            return f"webhook {self.spec.url}"
        assert self.spec.url_from is not None
        return f"webhook (URL from {self.spec.url_from.describe()})"

    def send(self, event: Event) -> Attempt:
        secrets: list[str] = []
        try:
            url = self.spec.url or _secret(self.spec.url_from, secrets)
            secrets.extend(url_secrets(url) if self.spec.url is None else [])
            body = event_body(event)
            headers = {"Content-Type": "application/json", EVENT_HEADER: event.type.value, DELIVERY_HEADER: event.id}
            for name, value in self.spec.headers.items():
                headers[name] = value if isinstance(value, str) else _secret(value, secrets)
            if self.spec.secret_from is not None:
                headers[SIGNATURE_HEADER] = signature(_secret(self.spec.secret_from, secrets), body)
        except SecretMissing as exc:
            return Attempt.secret_missing(exc)
        if not url.startswith(("http://", "https://")):
            return Attempt.failed("the URL read from " + _where(self.spec.url_from) + " is not an http(s) URL")
        answer = self.poster.post(url, body, headers, secrets=secrets)
        if isinstance(answer, Answer):
            return self.poster.judge(answer, secrets=secrets)
        return answer

    def close(self) -> None:
        self.poster.close()


def _secret(source: SecretSource | None, collected: list[str]) -> str:
    """A secret's value, remembered so that no answer or error can carry it into a log."""
    assert source is not None
    value = read_secret(source)
    collected.append(value)
    return value


def _where(source: SecretSource | None) -> str:
    return source.describe() if source is not None else "the manifest"


__all__ = ["DELIVERY_HEADER", "EVENT_HEADER", "SIGNATURE_HEADER", "WebhookProvider", "event_body", "signature"]
