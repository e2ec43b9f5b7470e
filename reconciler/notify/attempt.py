"""What one try to deliver one event came to, and the interface every provider implements.

Each provider translates its transport's answers (an HTTP status, a botocore error) into an `Attempt` here, once,
at its edge: `delivered`, `retry` (worth trying again: the transport failed, the service is down or asks us to
slow down) or `failed` (it will not work by trying again: a 4xx, a missing credential). The worker
(`reconciler.notify.deliver`) decides from that alone; it never sees an HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol

from contract.events import Event
from contract.redact import REDACTED, public_host_text
from reconciler.notify.credentials import SecretMissing

#: How much of a provider's answer is kept in logs, the cursor and `reconcile status`.
DETAIL_LIMIT = 300

Outcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    #: The provider's answer in a few words (`HTTP 201`, `HTTP 500: upstream timeout`, `connection refused`), with
    #: no secret in it.
    detail: str
    #: How long the provider asked us to wait (Retry-After, a rate limit's reset), when it did.
    retry_after: timedelta | None = None

    @classmethod
    def delivered(cls, detail: str) -> Attempt:
        return cls("delivered", detail)

    @classmethod
    def retry(cls, detail: str, retry_after: timedelta | None = None) -> Attempt:
        return cls("retry", detail, retry_after)

    @classmethod
    def failed(cls, detail: str) -> Attempt:
        return cls("failed", detail)

    @classmethod
    def secret_missing(cls, exc: SecretMissing) -> Attempt:
        """A secret that could not be read: retried when it may appear (a file), given up when it cannot (an
        environment variable of this running process)."""
        return cls.retry(str(exc)) if exc.retryable else cls.failed(str(exc))


class Provider(Protocol):
    """One notification's way out. `send` never raises for anything the outside world does: every failure is an
    `Attempt`; `close` frees connections."""

    #: The manifest's provider field (`webhook`, `slack`, `sns`, `githubStatus`, `gitlabStatus`).
    kind: str

    def send(self, event: Event) -> Attempt: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def scrub(text: str, secrets: list[str]) -> str:
    """`text` fit for a log line or the store: every secret value in it replaced (a URL that is its own credential
    can come back in an error message), URLs' credentials redacted, one line, bounded."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return public_host_text(text, limit=DETAIL_LIMIT)


__all__ = ["DETAIL_LIMIT", "Attempt", "Outcome", "Provider", "scrub"]
