"""Providers over real HTTP against an in-test server that checks each request's exact shape and auth headers,
and the worker's retry policy driven with a fake clock (no sleeping): 500 twice then 200, 429 with Retry-After,
a 400 not retried, attempts running out, a transport failure, a missing secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contract.events import from_deployment
from contract.models import EventType
from contract.store import MemoryStore
from contract.store.docs import read_document
from fleetlab.receiver import Receiver, Reply, receiver
from reconciler.core.state import State
from reconciler.desired.manifests import NotificationManifest
from reconciler.notify.cursor import NotificationCursor, cursor_key
from reconciler.notify.deliver import NotificationWorker, Result
from tests.notify.records import COMMIT, T0, deployment, state

S = EventType


class FakeClock:
    def __init__(self, start: datetime = T0 + timedelta(minutes=5)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def server() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


def worker(spec: dict[str, Any], clock: FakeClock, *, store: MemoryStore | None = None,
           results: list[tuple[str, str, Result]] | None = None) -> NotificationWorker:
    manifest = NotificationManifest.model_validate(
        {"apiVersion": "deploy/v1", "kind": "Notification", "metadata": {"name": "n"}, "spec": spec})
    return NotificationWorker("n", manifest.spec, store or MemoryStore(), baseline=State(), clock=clock,
                              on_result=(lambda *args: results.append(args)) if results is not None else None)


def cursor_of(notifier: NotificationWorker) -> NotificationCursor:
    stored = read_document(notifier.store, cursor_key("n"), NotificationCursor)
    assert stored is not None
    return stored.document


ROLLOUT = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.BATCH_STARTED, S.DEPLOYMENT_SUCCEEDED]))


def test_webhook_posts_the_event_json_signed_with_hmac(server: Receiver, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text("s3cr3t-signing-key\n")
    monkeypatch.setenv("HOOK_KEY", "key-from-env")
    clock = FakeClock()
    results: list[tuple[str, str, Result]] = []
    sender = worker({"webhook": {"url": f"{server.url}/hooks/deploys", "secretFrom": {"file": str(secret_file)},
                                 "headers": {"X-Tenant": "acme", "X-Api-Key": {"env": "HOOK_KEY"}}}},
                    clock, results=results)
    assert sender.step(ROLLOUT) is None
    expected = from_deployment(ROLLOUT.deployments["d-1"])
    assert [r.path for r in server.requests] == ["/hooks/deploys"] * 3
    for request, event in zip(server.requests, expected, strict=True):
        assert request.method == "POST"
        assert request.header("Content-Type") == "application/json"
        assert request.header("User-Agent") == "fleetshift/0.1.0"
        assert request.header("X-Fleetshift-Event") == event.type.value
        assert request.header("X-Fleetshift-Delivery") == event.id
        assert request.header("X-Tenant") == "acme" and request.header("X-Api-Key") == "key-from-env"
        digest = hmac.new(b"s3cr3t-signing-key", request.body, hashlib.sha256).hexdigest()
        assert request.header("X-Fleetshift-Signature-256") == f"sha256={digest}"
        body = request.json()
        assert body == json.loads(event.model_dump_json(by_alias=True, exclude_none=True))
        assert body["id"] == event.id and body["commit"] == COMMIT and body["group"] == "shop/web"
    cursor = cursor_of(sender)
    assert cursor.handled == {"d-1": 3} and cursor.delivered_total == 3 and cursor.head is None
    assert results == [("n", "webhook", "delivered")] * 3
    # A second step with nothing new sends nothing.
    assert sender.step(ROLLOUT) is None and len(server.requests) == 3


def test_github_status_shape_and_bearer_token(server: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_testtoken123")
    server.default = Reply(201, b'{"state": "pending"}')
    sender = worker({"githubStatus": {"repository": "acme/config", "tokenFrom": {"env": "GITHUB_TOKEN"},
                                      "apiUrl": server.url, "targetUrl": "https://ci.example/{deploymentId}"}},
                    FakeClock())
    sender.step(ROLLOUT)
    assert server.paths() == [f"/repos/acme/config/statuses/{COMMIT}"] * 3
    for request in server.requests:
        assert request.header("Authorization") == "Bearer ghp_testtoken123"
        assert request.header("Accept") == "application/vnd.github+json"
        assert request.header("X-GitHub-Api-Version") == "2022-11-28"
        assert request.header("User-Agent") == "fleetshift/0.1.0"
    bodies = [request.json() for request in server.requests]
    assert [body["state"] for body in bodies] == ["pending", "pending", "success"]
    assert bodies[1] == {"state": "pending", "description": "batch 1 of 2: app@ababab to web-1",
                         "context": "fleetshift/shop/web", "target_url": "https://ci.example/d-1"}
    assert all(len(body["description"]) <= 140 for body in bodies)


def test_gitlab_status_shape_private_token_and_same_state_twice(server: Receiver,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-testtoken")
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.BATCH_STARTED, S.BATCH_STARTED, S.DEPLOYMENT_FAILED]))
    server.script = [Reply(201), Reply(201),
                     Reply(400, b'{"message":"Cannot transition status via :run from :running"}'), Reply(201)]
    sender = worker({"gitlabStatus": {"project": "group/config-repo", "tokenFrom": {"env": "GITLAB_TOKEN"},
                                      "apiUrl": f"{server.url}/api/v4", "context": "deploy/{group}"}}, FakeClock())
    sender.step(records)
    assert server.paths() == [f"/api/v4/projects/group%2Fconfig-repo/statuses/{COMMIT}"] * 4
    assert all(request.header("PRIVATE-TOKEN") == "glpat-testtoken" for request in server.requests)
    assert all(request.header("Authorization") is None for request in server.requests)
    bodies = [request.json() for request in server.requests]
    assert [body["state"] for body in bodies] == ["pending", "running", "running", "failed"]
    assert bodies[0]["name"] == "deploy/shop/web" and "description" in bodies[0]
    cursor = cursor_of(sender)
    assert cursor.delivered_total == 4 and cursor.failed_total == 0, "GitLab's 'already running' is delivered"


def test_slack_message_and_its_url_never_shown(server: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_path = "/services/T000/B000/SLACKSECRETTOKEN"
    monkeypatch.setenv("SLACK_WEBHOOK_URL", server.url + secret_path)
    server.script = [Reply(200, b"ok"), Reply(404, f"no_service at {secret_path}".encode())]
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_FAILED]))
    sender = worker({"slack": {"urlFrom": {"env": "SLACK_WEBHOOK_URL"}}}, FakeClock())
    sender.step(records)
    first = server.requests[0]
    assert first.path == secret_path
    assert first.header("Content-Type") == "application/json; charset=utf-8"
    assert first.json()["text"].startswith(":information_source: Deployment started: shop/web")
    assert first.json()["blocks"][0]["type"] == "section"
    cursor = cursor_of(sender)
    assert cursor.delivered_total == 1 and cursor.failed_total == 1
    assert cursor.last_error is not None and cursor.last_error.startswith("HTTP 404: no_service")
    assert "SLACKSECRETTOKEN" not in cursor.model_dump_json()


def test_500_twice_then_200_is_retried_with_backoff_and_the_same_id(server: Receiver) -> None:
    server.script = [Reply(500, b"upstream down"), Reply(503, b"")]
    clock = FakeClock()
    results: list[tuple[str, str, Result]] = []
    sender = worker({"webhook": {"url": server.url}, "retry": {"backoff": "2s", "maxBackoff": "1m"}}, clock,
                    results=results)
    due = sender.step(ROLLOUT)
    assert due is not None and clock.now + timedelta(seconds=1) <= due <= clock.now + timedelta(seconds=2)
    head = cursor_of(sender).head
    assert head is not None and head.attempts == 1 and head.last_error == "HTTP 500: upstream down"
    assert sender.step(ROLLOUT) == due and len(server.requests) == 1, "not again before it is due"
    clock.now = due
    second = sender.step(ROLLOUT)
    assert second is not None and due + timedelta(seconds=2) <= second <= due + timedelta(seconds=4), "doubled"
    clock.now = second
    assert sender.step(ROLLOUT) is None
    ids = [request.header("X-Fleetshift-Delivery") for request in server.requests]
    assert ids == ["d-1.1", "d-1.1", "d-1.1", "d-1.2", "d-1.3"]
    cursor = cursor_of(sender)
    assert cursor.delivered_total == 3 and cursor.retried_total == 2 and cursor.failed_total == 0
    assert [result for _, _, result in results] == ["retried", "retried", "delivered", "delivered", "delivered"]


def test_429_waits_as_long_as_retry_after_says(server: Receiver) -> None:
    server.script = [Reply(429, b"slow down", {"Retry-After": "7"})]
    clock = FakeClock()
    sender = worker({"webhook": {"url": server.url}}, clock)
    assert sender.step(ROLLOUT) == clock.now + timedelta(seconds=7)
    clock.advance(6.9)
    sender.step(ROLLOUT)
    assert len(server.requests) == 1
    clock.advance(0.1)
    sender.step(ROLLOUT)
    assert len(server.requests) == 4


def test_a_400_is_not_retried_and_later_events_go_on(server: Receiver) -> None:
    server.script = [Reply(400, b'{"message": "schema mismatch"}')]
    results: list[tuple[str, str, Result]] = []
    sender = worker({"webhook": {"url": server.url}}, FakeClock(), results=results)
    assert sender.step(ROLLOUT) is None
    assert [r.header("X-Fleetshift-Delivery") for r in server.requests] == ["d-1.1", "d-1.2", "d-1.3"]
    cursor = cursor_of(sender)
    assert cursor.failed_total == 1 and cursor.last_failed_event == "d-1.1"
    assert cursor.last_error == "HTTP 400: schema mismatch"
    assert results[0] == ("n", "webhook", "failed")


def test_an_event_is_given_up_after_its_last_attempt(server: Receiver) -> None:
    server.default = Reply(502, b"bad gateway")
    clock = FakeClock()
    sender = worker({"webhook": {"url": server.url}, "retry": {"attempts": 3, "backoff": "1s"}}, clock)
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED]))
    for _ in range(3):
        due = sender.step(records)
        if due is not None:
            clock.now = due
    ids = [r.header("X-Fleetshift-Delivery") for r in server.requests]
    assert ids[:3] == ["d-1.1"] * 3 and ids[3] == "d-1.2", ids
    cursor = cursor_of(sender)
    assert cursor.failed_total == 1 and cursor.last_failed_event == "d-1.1" and cursor.retried_total >= 2


def test_a_redirect_is_not_followed(server: Receiver) -> None:
    server.script = [Reply(302, b"", {"Location": "https://elsewhere.example/hook"})]
    sender = worker({"webhook": {"url": server.url}}, FakeClock())
    sender.step(state(deployment("d-1", [S.DEPLOYMENT_STARTED])))
    assert len(server.requests) == 1
    assert "redirects" in (cursor_of(sender).last_error or "")


def test_a_refused_connection_is_retried_with_its_cause() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clock = FakeClock()
    sender = worker({"webhook": {"url": f"http://127.0.0.1:{port}/hook"}}, clock)
    assert sender.step(ROLLOUT) is not None
    head = cursor_of(sender).head
    assert head is not None
    assert "refused" in head.last_error.lower(), head.last_error


def test_a_missing_secret_is_a_delivery_failure_not_a_crash(server: Receiver, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    sender = worker({"githubStatus": {"repository": "o/r", "tokenFrom": {"env": "NO_SUCH_TOKEN"},
                                      "apiUrl": server.url}}, FakeClock())
    assert sender.step(state(deployment("d-1", [S.DEPLOYMENT_STARTED]))) is None
    assert server.requests == []
    cursor = cursor_of(sender)
    assert cursor.failed_total == 1
    assert cursor.last_error == "environment variable NO_SUCH_TOKEN is not set (or empty) in the reconciler's " \
                                "environment"
    # An unreadable file may appear later (a mounted secret): retried.
    clock = FakeClock()
    from_file = worker({"webhook": {"urlFrom": {"file": str(tmp_path / "absent")}}}, clock)
    assert from_file.step(state(deployment("d-1", [S.DEPLOYMENT_STARTED]))) is not None
    assert "cannot read secret file" in (cursor_of(from_file).last_error or "")


def test_github_rate_limit_is_waited_out(server: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_x")
    clock = FakeClock()
    reset = int(clock.now.timestamp()) + 30
    server.script = [Reply(403, b'{"message": "API rate limit exceeded"}',
                           {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})]
    sender = worker({"githubStatus": {"repository": "o/r", "tokenFrom": {"env": "GITHUB_TOKEN"},
                                      "apiUrl": server.url}}, clock)
    due = sender.step(state(deployment("d-1", [S.DEPLOYMENT_STARTED])))
    assert due == clock.now + timedelta(seconds=30)
    assert "rate limited" in (cursor_of(sender).last_error or "")


def test_events_of_one_notification_are_never_sent_out_of_order(server: Receiver) -> None:
    """While the head waits for its retry, nothing after it is sent (a status must not go success -> pending)."""
    server.script = [Reply(500)]
    clock = FakeClock()
    sender = worker({"webhook": {"url": server.url}}, clock)
    sender.step(ROLLOUT)
    sender.step(ROLLOUT)
    assert [r.header("X-Fleetshift-Delivery") for r in server.requests] == ["d-1.1"]
    assert sender.pending == 3
