"""One JSON POST with urllib3, and what its answer means for a notification.

Shared by the webhook, Slack and commit-status providers, so "is this worth trying again?" has one answer:

- 2xx: delivered;
- 408, 429 and 5xx, and every transport failure (refused, reset, TLS, timeout): try again, after the server's
  `Retry-After` when it gives one (seconds or an HTTP date);
- 3xx: failed (a notification URL that redirects is a wrong URL: a POST must not be silently turned into a GET,
  nor a token sent on to another host);
- any other 4xx: failed, with the server's words.

urllib3 and not `urllib.request`: bounded connect and read timeouts in one `Timeout`, no redirects followed, no
retries of its own (the worker's policy is the only one, and visible in the logs), a connection pool per
notification, and a response read in a bounded amount. Proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` are
honoured, as an operator expects of a tool that talks to the Internet from inside a network; loopback never goes
through one.
"""

from __future__ import annotations

import email.utils
import json
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import urllib3

from contract.clock import Now, utc_now
from reconciler import __version__
from reconciler.notify.attempt import Attempt, scrub

USER_AGENT = f"fleetshift/{__version__}"
#: The most of an answer's body read (its start is what explains an error).
MAX_ANSWER_BYTES = 16 * 1024
#: A Retry-After longer than this is taken as this: a misconfigured server must not park a notification for days.
MAX_RETRY_AFTER = timedelta(hours=1)
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as a provider may need to look at it (GitHub's rate limit headers, GitLab's words)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def message(self) -> str:
        """The server's explanation: a JSON body's `message`/`error` (GitHub, GitLab, Slack's API), else the text."""
        try:
            data: Any = json.loads(self.body)
        except ValueError:
            return self.text().strip()
        if isinstance(data, dict):
            for key in ("message", "error", "error_description"):
                value = data.get(key)
                if isinstance(value, str | list | dict) and value:
                    return value if isinstance(value, str) else json.dumps(value)
        return self.text().strip()


class HttpPoster:
    """POSTs for one notification: its pools, its timeout, the secrets to keep out of what it reports."""

    def __init__(self, timeout: timedelta, *, clock: Now = utc_now) -> None:
        seconds = timeout.total_seconds()
        self.timeout = urllib3.Timeout(connect=seconds, read=seconds)
        self.clock = clock
        self._direct = urllib3.PoolManager(num_pools=4, maxsize=1, retries=False, timeout=self.timeout)
        self._proxied: dict[str, urllib3.ProxyManager] = {}

    def post(self, url: str, body: bytes, headers: Mapping[str, str], *, secrets: list[str]) -> Answer | Attempt:
        """The server's answer, or the `Attempt` a transport failure comes to (retried, with the cause)."""
        pool = self._pool_for(url)
        try:
            response = pool.request(
                "POST", url, body=body, headers={"User-Agent": USER_AGENT, **headers},
                redirect=False, retries=False, preload_content=False, timeout=self.timeout,
            )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return Attempt.retry(scrub(f"{_host(url)}: {_transport_words(exc)}", secrets))
        try:
            data = response.read(MAX_ANSWER_BYTES, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Attempt.retry(scrub(f"{_host(url)}: HTTP {response.status}, answer cut off: "
                                       f"{_transport_words(exc)}", secrets))
        finally:
            response.release_conn()
        return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, data)

    def judge(self, answer: Answer, *, secrets: list[str]) -> Attempt:
        """The common meaning of an HTTP answer (providers look at special cases first)."""
        status = answer.status
        words = f"HTTP {status}" + (f": {answer.message()}" if answer.body.strip() else "")
        detail = scrub(words, secrets)
        if 200 <= status < 300:
            return Attempt.delivered(detail)
        if status in (408, 429) or status >= 500:
            return Attempt.retry(detail, self.retry_after(answer))
        if 300 <= status < 400:
            return Attempt.failed(scrub(f"HTTP {status}: the server redirects; configure the final URL instead "
                                        "(a notification never follows a redirect)", secrets))
        return Attempt.failed(detail)

    def retry_after(self, answer: Answer) -> timedelta | None:
        """`Retry-After` as a wait: seconds, or an HTTP date (RFC 9110); None when absent or unreadable."""
        value = answer.headers.get("retry-after", "").strip()
        if not value:
            return None
        if value.isdigit():
            wait = timedelta(seconds=int(value))
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            wait = when - self.clock()
        return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)

    def _pool_for(self, url: str) -> urllib3.PoolManager:
        proxy = _proxy_for(url)
        if proxy is None:
            return self._direct
        if proxy not in self._proxied:
            self._proxied[proxy] = urllib3.ProxyManager(proxy, num_pools=4, maxsize=1, retries=False,
                                                        timeout=self.timeout)
        return self._proxied[proxy]

    def close(self) -> None:
        self._direct.clear()
        for pool in self._proxied.values():
            pool.clear()


def url_secrets(url: str) -> list[str]:
    """The parts of a secret URL that must never be shown: the URL, and its path and query (an error message may
    quote the request line alone)."""
    parsed = urllib.parse.urlsplit(url)
    tail = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    return [url, tail] if len(tail) > 1 else [url]


def _proxy_for(url: str) -> str | None:
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if host in _LOOPBACK or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies_environment().get(parsed.scheme)


def _host(url: str) -> str:
    """Where a request went, without its path or query (either may be the secret)."""
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.scheme}://{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")


def _transport_words(exc: BaseException) -> str:
    """A transport failure in a few words: urllib3's wrappers name the pool and the path, the cause says it."""
    reason = getattr(exc, "reason", None)
    cause = reason if isinstance(reason, BaseException) else exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        text = str(cause).split(": ", 1)[-1]
    elif isinstance(cause, urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ConnectTimeoutError):
        text = "timed out"
    else:
        text = str(cause) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"


__all__ = ["MAX_ANSWER_BYTES", "USER_AGENT", "Answer", "HttpPoster", "url_secrets"]
