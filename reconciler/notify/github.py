"""Commit statuses on GitHub: `POST {apiUrl}/repos/{owner}/{repo}/statuses/{sha}` (docs.github.com, "REST API
endpoints for commit statuses"), on the config commit being rolled out.

The status follows the rollout: `pending` when it starts and at each batch (`batch 2 of 4: …`) and while it
bakes, then `success`, `failure`, or `error` when it was stopped or superseded by a newer commit. Only `creator:
user` deployments post (a rollback is not the commit's rollout: it would flip a failed commit back to pending).
A status is idempotent by nature: posting the same one twice leaves the commit as it was, so a re-send after a
crash is harmless.

Answers beyond the common ones (`reconciler.notify.http`): a 403 or 429 with `Retry-After`, or with
`x-ratelimit-remaining: 0`, is GitHub's rate limit and is tried again after the wait it names; any other 403 (a
token without `repo:status`), 404 (a repository the token cannot see) and 422 (a commit GitHub does not have)
will not get better and fail with GitHub's message.
"""

from __future__ import annotations

import json
from datetime import timedelta

from contract.events import Event
from contract.models import EventType
from reconciler.desired.notification_spec import GitHubStatusSpec, fill
from reconciler.notify.attempt import Attempt, scrub
from reconciler.notify.credentials import SecretMissing, read_secret
from reconciler.notify.http import Answer, HttpPoster
from reconciler.notify.messages import status_description

STATES: dict[EventType, str] = {
    EventType.DEPLOYMENT_STARTED: "pending",
    EventType.BATCH_STARTED: "pending",
    EventType.DEPLOYMENT_BAKING: "pending",
    EventType.DEPLOYMENT_SUCCEEDED: "success",
    EventType.DEPLOYMENT_FAILED: "failure",
    EventType.DEPLOYMENT_STOPPED: "error",
    EventType.DEPLOYMENT_SUPERSEDED: "error",
}
API_VERSION = "2022-11-28"


class GitHubStatusProvider:
    kind = "githubStatus"

    def __init__(self, spec: GitHubStatusSpec, poster: HttpPoster) -> None:
        self.spec = spec
        self.poster = poster

    def describe(self) -> str:
        return f"GitHub commit status on {self.spec.repository} ({self.spec.api_url})"

    def request(self, event: Event) -> tuple[str, dict[str, object]]:
        """The URL and body for `event` (the status filter guarantees a commit and a mapped type)."""
        assert event.commit is not None
        body: dict[str, object] = {
            "state": STATES[event.type],
            "description": status_description(event),
            "context": fill(self.spec.context, event),
        }
        if self.spec.target_url is not None:
            body["target_url"] = fill(self.spec.target_url, event)
        return f"{self.spec.api_url}/repos/{self.spec.repository}/statuses/{event.commit}", body

    def send(self, event: Event) -> Attempt:
        try:
            token = read_secret(self.spec.token_from)
        except SecretMissing as exc:
            return Attempt.secret_missing(exc)
        url, body = self.request(event)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "Content-Type": "application/json",
        }
        answer = self.poster.post(url, json.dumps(body).encode(), headers, secrets=[token])
        if not isinstance(answer, Answer):
            return answer
        if answer.status in (403, 429):
            wait = self.poster.retry_after(answer) or _rate_limit_reset(answer, self.poster)
            if wait is not None:
                return Attempt.retry(scrub(f"HTTP {answer.status}: rate limited: {answer.message()}", [token]), wait)
        return self.poster.judge(answer, secrets=[token])

    def close(self) -> None:
        self.poster.close()


def _rate_limit_reset(answer: Answer, poster: HttpPoster) -> timedelta | None:
    """Until GitHub's primary rate limit resets, when the answer says it is exhausted."""
    if answer.headers.get("x-ratelimit-remaining") != "0":
        return None
    reset = answer.headers.get("x-ratelimit-reset", "")
    if not reset.isdigit():
        return timedelta(minutes=1)
    wait = timedelta(seconds=int(reset) - poster.clock().timestamp())
    return min(max(wait, timedelta(seconds=1)), timedelta(hours=1))


__all__ = ["STATES", "GitHubStatusProvider"]
