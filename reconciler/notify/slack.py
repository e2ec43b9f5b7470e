"""Slack incoming webhooks (and what speaks their format: Mattermost, Rocket.Chat, Discord's `/slack` endpoint).

The message is `reconciler.notify.messages.slack_payload`: the headline with a severity emoji, the event's words,
then group, revision, config commit, hosts and batch as fields. The URL is the credential, so it comes only from
the reconciler's machine and never shows in a log or an error (`scrub`).

Slack cannot de-duplicate: an incoming webhook takes no idempotency key, so the one event a reconciler killed
between Slack's `200 ok` and the cursor write re-sends appears twice in the channel (docs/notifications.md,
"Exactly once"). Its event id is in the message's last line, so a reader can tell.
"""

from __future__ import annotations

import json

from contract.events import Event
from reconciler.desired.notification_spec import SlackSpec
from reconciler.notify.attempt import Attempt
from reconciler.notify.credentials import SecretMissing, read_secret
from reconciler.notify.http import Answer, HttpPoster, url_secrets
from reconciler.notify.messages import slack_payload


class SlackProvider:
    kind = "slack"

    def __init__(self, spec: SlackSpec, poster: HttpPoster) -> None:
        self.spec = spec
        self.poster = poster

    def describe(self) -> str:
        return f"slack (URL from {self.spec.url_from.describe()})"

    def send(self, event: Event) -> Attempt:
        try:
            url = read_secret(self.spec.url_from)
        except SecretMissing as exc:
            return Attempt.secret_missing(exc)
        if not url.startswith(("http://", "https://")):
            return Attempt.failed(f"the Slack URL read from {self.spec.url_from.describe()} is not an http(s) URL")
        secrets = url_secrets(url)
        body = json.dumps(slack_payload(event), ensure_ascii=False).encode()
        answer = self.poster.post(url, body, {"Content-Type": "application/json; charset=utf-8"}, secrets=secrets)
        if isinstance(answer, Answer):
            return self.poster.judge(answer, secrets=secrets)
        return answer

    def close(self) -> None:
        self.poster.close()


__all__ = ["SlackProvider"]
