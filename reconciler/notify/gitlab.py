"""Commit statuses on GitLab: `POST {apiUrl}/projects/{id}/statuses/{sha}` (docs.gitlab.com, "Commits API: Set
the pipeline status of a commit"), with `PRIVATE-TOKEN`, on the config commit being rolled out.

The status follows the rollout like GitHub's (`reconciler.notify.github`), in GitLab's states: `pending` when it
starts, `running` from the first batch, then `success`, `failed`, or `canceled` when it was stopped or superseded.
`name` is the manifest's `context`. The project is its path, URL-encoded (`group%2Fconfig-repo`), or its id.

GitLab refuses to set the state a commit status already has (`400 Cannot transition status via :run from
:running`): for us that means "already so", which is what a re-send after a crash or a second batch wants, so it
counts as delivered. A later batch therefore does not change the description GitLab shows; the state is right.
"""

from __future__ import annotations

import json
import urllib.parse

from contract.events import Event
from contract.models import EventType
from reconciler.desired.notification_spec import GitLabStatusSpec, fill
from reconciler.notify.attempt import Attempt, scrub
from reconciler.notify.credentials import SecretMissing, read_secret
from reconciler.notify.http import Answer, HttpPoster
from reconciler.notify.messages import status_description

STATES: dict[EventType, str] = {
    EventType.DEPLOYMENT_STARTED: "pending",
    EventType.BATCH_STARTED: "running",
    EventType.DEPLOYMENT_BAKING: "running",
    EventType.DEPLOYMENT_SUCCEEDED: "success",
    EventType.DEPLOYMENT_FAILED: "failed",
    EventType.DEPLOYMENT_STOPPED: "canceled",
    EventType.DEPLOYMENT_SUPERSEDED: "canceled",
}
#: GitLab's words when the status is already in the state asked for.
ALREADY_THERE = "Cannot transition status"


class GitLabStatusProvider:
    kind = "gitlabStatus"

    def __init__(self, spec: GitLabStatusSpec, poster: HttpPoster) -> None:
        self.spec = spec
        self.poster = poster

    def describe(self) -> str:
        return f"GitLab commit status on {self.spec.project} ({self.spec.api_url})"

    def request(self, event: Event) -> tuple[str, dict[str, object]]:
        assert event.commit is not None
        project = urllib.parse.quote(self.spec.project, safe="")
        body: dict[str, object] = {
            "state": STATES[event.type],
            "name": fill(self.spec.context, event),
            "description": status_description(event),
        }
        if self.spec.target_url is not None:
            body["target_url"] = fill(self.spec.target_url, event)
        return f"{self.spec.api_url}/projects/{project}/statuses/{event.commit}", body

    def send(self, event: Event) -> Attempt:
        try:
            token = read_secret(self.spec.token_from)
        except SecretMissing as exc:
            return Attempt.secret_missing(exc)
        url, body = self.request(event)
        headers = {"PRIVATE-TOKEN": token, "Content-Type": "application/json"}
        answer = self.poster.post(url, json.dumps(body).encode(), headers, secrets=[token])
        if not isinstance(answer, Answer):
            return answer
        if answer.status == 400 and ALREADY_THERE in answer.message():
            return Attempt.delivered(scrub(f"HTTP 400: already {body['state']} ({answer.message()})", [token]))
        return self.poster.judge(answer, secrets=[token])

    def close(self) -> None:
        self.poster.close()


__all__ = ["STATES", "GitLabStatusProvider"]
