"""The `Notification` kind: who hears about which events of the stream, and how (docs/notifications.md).

```yaml
apiVersion: deploy/v1
kind: Notification
metadata: {name: oncall-slack}
spec:
  events: ["deployment.failed", "rollback.*"]   # globs over the event types; a default per provider
  minSeverity: warning
  groups: ["shop/*"]                            # globs over <application>/<deploymentGroup>
  slack: {urlFrom: {env: SLACK_WEBHOOK_URL}}    # exactly one provider
```

Why a kind of its own and not fields on groups: one notification usually covers many groups (Argo CD's
subscriptions, Flux's Alert), and a group should not change (and so not show in a plan as changed) when the
on-call channel does.

Secrets (webhook and Slack URLs, HMAC secrets, forge tokens) are never in the config repo: they come from an
environment variable or a file on the reconciler's machine (`SecretSource`), read at each delivery so a rotated
token is used without a restart. Anything that looks like a literal secret is refused here with a message saying
where it must go instead: a Slack `url:`, a webhook URL with credentials or a query string, a `token:`, a
credential-looking header written as text. What cannot be checked (a token that is the URL's path) is the user's
to move to `urlFrom`, and docs/notifications.md says so. Because no field of this kind can hold a secret's value,
none is marked `SECRET` (`reconciler.desired.secrets`): a plan shows the variable names and paths, which a
reviewer needs to see, and never a value.

The trigger rules live here too (`triggers`, `wants`), pure functions of the spec and an event, so `validate`
refuses a glob that matches no event type with the same code that later filters events.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import string
import urllib.parse
from datetime import timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from contract.durations import format_duration
from contract.events import Event
from contract.models import EventSeverity, EventType, Model
from contract.redact import secret_name
from reconciler.desired.durations import Duration

NonEmpty = Annotated[str, StringConstraints(min_length=1)]

#: The provider fields of a spec, in the order messages list them.
ProviderName = Literal["webhook", "slack", "sns", "githubStatus", "gitlabStatus"]
PROVIDERS: tuple[ProviderName, ...] = ("webhook", "slack", "sns", "githubStatus", "gitlabStatus")
#: Providers that post a commit status: they only take events that change a commit's status.
STATUS_PROVIDERS: frozenset[str] = frozenset({"githubStatus", "gitlabStatus"})

#: Events a commit status follows: the rollout of the commit (`creator: user` deployments only; rollbacks and
#: catch-ups of late hosts are not that commit's rollout).
STATUS_EVENTS: tuple[EventType, ...] = (
    EventType.DEPLOYMENT_STARTED,
    EventType.BATCH_STARTED,
    EventType.DEPLOYMENT_BAKING,
    EventType.DEPLOYMENT_SUCCEEDED,
    EventType.DEPLOYMENT_FAILED,
    EventType.DEPLOYMENT_STOPPED,
    EventType.DEPLOYMENT_SUPERSEDED,
)
#: What a person in a chat channel wants by default: rollouts starting and ending, anything going wrong.
SLACK_DEFAULT_EVENTS: tuple[str, ...] = (
    "deployment.started",
    "deployment.succeeded",
    "deployment.failed",
    "deployment.stopped",
    "rollback.*",
    "gate.failed",
    "revision.quarantined",
    "command.refused",
)
#: Machines (a webhook receiver, an SNS topic's subscribers) get the whole stream by default and filter there.
ALL_EVENTS: tuple[str, ...] = ("*",)

DEFAULT_RETRY_ATTEMPTS = 6
DEFAULT_BACKOFF = timedelta(seconds=2)
DEFAULT_MAX_BACKOFF = timedelta(minutes=5)
DEFAULT_TIMEOUT = timedelta(seconds=10)
MAX_TIMEOUT = timedelta(minutes=2)

#: Placeholders of a commit status's `context` and `targetUrl`, filled per event.
STATUS_PLACEHOLDERS = ("application", "deploymentGroup", "group", "deploymentId", "commit")
DEFAULT_STATUS_CONTEXT = "fleetshift/{group}"

#: Headers fleetshift sets itself; a user header of the same name would make a request ambiguous.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "user-agent", "transfer-encoding"})
RESERVED_HEADER_PREFIX = "x-fleetshift-"
#: Header names whose values are credentials whatever they are called in a given API.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "private-token"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_GROUP_GLOB = re.compile(r"^[A-Za-z0-9._*?\[\]!-]{1,100}/[A-Za-z0-9._*?\[\]!-]{1,100}$")
_TOPIC_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:sns:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+):\d{12}:[A-Za-z0-9_-]{1,256}(?:\.fifo)?$"
)
_GITHUB_REPOSITORY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
_GITLAB_PROJECT = re.compile(r"^(?:\d{1,20}|[A-Za-z0-9_.][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.][A-Za-z0-9_.-]*)+)$")


# --------------------------------------------------------------------------------------------------
# Secrets: from the reconciler's machine only


class SecretSource(Model):
    """Where a secret is read from on the reconciler's machine: `{env: NAME}` or `{file: /path}` (a mounted
    Kubernetes or systemd credential, a Vault agent's file). Read at each delivery: a rotated value is picked up
    without a restart, and one that is missing is that delivery's failure, reported, never a crash."""

    env: str | None = Field(default=None, description="An environment variable of the reconciler's process.")
    file: str | None = Field(default=None, description="An absolute path; the file's content, without the final "
                                                       "line break, is the secret.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (a variable name) or file (an absolute path)")
        if self.env is not None and not _ENV_NAME.match(self.env):
            raise ValueError(f"env must be an environment variable name such as SLACK_WEBHOOK_URL (got {self.env!r})")
        if self.file is not None and not self.file.startswith("/"):
            raise ValueError(f"file must be an absolute path on the reconciler's machine (got {self.file!r})")
        return self

    def describe(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"


def _refuse_literal(data: Any, field: str, instead: str, what: str) -> None:
    """A before-validator's check that `field`, a literal secret, is not written in the manifest."""
    if isinstance(data, dict) and field in data:
        raise ValueError(
            f"`{field}` would put {what} in the config repo, where everyone who can read it can use it: write "
            f"`{instead}: {{env: NAME}}` (or `{{file: /path}}`) and set that variable or file on the reconciler's "
            "machine"
        )


def check_url(url: str, *, field: str, allow_query: bool = False) -> str:
    """An http(s) URL without credentials (and, unless `allow_query`, without a query string or fragment, where
    APIs take tokens). The message never repeats the URL: it may be the secret."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{field} must be an http:// or https:// URL with a host")
    if parsed.username is not None or parsed.password is not None:
        raise ValueError(f"{field} has credentials in it (user:password@): write {field}From: {{env: NAME}} "
                         "instead, and keep the URL in that variable on the reconciler's machine")
    if not allow_query and (parsed.query or parsed.fragment):
        raise ValueError(f"{field} has a query string or fragment, where services put tokens: write "
                         f"{field}From: {{env: NAME}} (or {{file: /path}}) instead")
    return url


def _placeholders(template: str) -> str:
    """A `context`/`targetUrl` template whose `{placeholders}` are all known."""
    try:
        names = [name for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (write literal braces as {{{{ and }}}})") from None
    unknown = sorted({name for name in names if name not in STATUS_PLACEHOLDERS})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known: "
                         + ", ".join(f"{{{name}}}" for name in STATUS_PLACEHOLDERS))
    return template


def fill(template: str, event: Event) -> str:
    """A checked template with the event's values (empty where the event has none)."""
    values = {
        "application": event.application or "",
        "deploymentGroup": event.deployment_group or "",
        "group": event.group or "fleet",
        "deploymentId": event.deployment_id or "",
        "commit": event.commit or "",
    }
    return template.format(**values)


# --------------------------------------------------------------------------------------------------
# Providers


class WebhookSpec(Model):
    """POST the event's JSON (`schemas/event.json`) to a URL, optionally signed with HMAC-SHA256 like GitHub's
    webhooks (`X-Fleetshift-Signature-256: sha256=<hex>`)."""

    url: str | None = Field(default=None, description="A URL without credentials or query string; otherwise use "
                                                      "urlFrom.")
    url_from: SecretSource | None = Field(default=None, description="Where to read the URL (when it is a secret).")
    secret_from: SecretSource | None = Field(
        default=None, description="The HMAC-SHA256 key: each request is signed in X-Fleetshift-Signature-256."
    )
    headers: dict[str, str | SecretSource] = Field(
        default_factory=dict,
        description="Extra headers. A value that is a credential (Authorization, *token*, *key*, ...) must be "
        "{env: NAME} or {file: /path}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secret(cls, data: Any) -> Any:
        _refuse_literal(data, "secret", "secretFrom", "the signing secret")
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url, field="url")

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str | SecretSource]) -> dict[str, str | SecretSource]:
        for name, value in headers.items():
            lower = name.lower()
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header {name!r} is not a valid HTTP header name")
            if lower in RESERVED_HEADERS or lower.startswith(RESERVED_HEADER_PREFIX):
                raise ValueError(f"header {name!r} is set by fleetshift itself; remove it")
            if isinstance(value, str) and ("\n" in value or "\r" in value):
                raise ValueError(f"header {name!r}: a header value cannot contain a line break")
            if isinstance(value, str) and (lower in CREDENTIAL_HEADERS or secret_name(name.replace("-", "_"))
                                           or "auth" in lower):
                raise ValueError(
                    f"header {name!r} looks like a credential: write `{name}: {{env: NAME}}` (or {{file: /path}}) "
                    "so its value stays on the reconciler's machine"
                )
        return headers

    @model_validator(mode="after")
    def _one_url(self) -> Self:
        if (self.url is None) == (self.url_from is None):
            raise ValueError("a webhook needs exactly one of url or urlFrom")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_headers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No `headers: {}` in plans and fingerprints of webhooks that set none."""
        data: dict[str, Any] = handler(self)
        if not data.get("headers", True):
            del data["headers"]
        return data


class SlackSpec(Model):
    """A Slack incoming webhook (or one that speaks its format: Mattermost, Rocket.Chat). The URL is the
    credential, so it only ever comes from `urlFrom`."""

    url_from: SecretSource = Field(description="Where to read the incoming webhook URL.")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_url(cls, data: Any) -> Any:
        _refuse_literal(data, "url", "urlFrom", "the Slack webhook URL (which is its own credential)")
        return data


class SnsSpec(Model):
    """Publish the event's JSON to an Amazon SNS topic, with credentials from the default AWS chain (environment,
    profile, instance role) of the reconciler's machine."""

    topic_arn: str = Field(description="arn:aws:sns:<region>:<account>:<topic> (a .fifo topic de-duplicates).")
    region: str | None = Field(default=None, description="Default: the topic's region, from its ARN.")

    @field_validator("topic_arn")
    @classmethod
    def _arn(cls, arn: str) -> str:
        if not _TOPIC_ARN.match(arn):
            raise ValueError(f"expected an SNS topic ARN such as arn:aws:sns:eu-west-1:123456789012:deploys "
                             f"(got {arn!r})")
        return arn

    @model_validator(mode="after")
    def _region_agrees(self) -> Self:
        if self.region is not None and self.region != self.topic_region:
            raise ValueError(f"region {self.region} differs from the topic's ({self.topic_region}, from its ARN); "
                             "remove region or fix the ARN")
        return self

    @property
    def topic_region(self) -> str:
        match = _TOPIC_ARN.match(self.topic_arn)
        assert match is not None, "checked when validated"
        return match["region"]

    @property
    def fifo(self) -> bool:
        return self.topic_arn.endswith(".fifo")


class _StatusSpec(Model):
    """What GitHub's and GitLab's commit statuses share: a token from the reconciler's machine, the status name
    (`context`) and an optional link, both templates."""

    token_from: SecretSource = Field(description="Where to read the API token.")
    context: str = Field(default=DEFAULT_STATUS_CONTEXT, min_length=1, max_length=255,
                         description="The status's name; placeholders " + ", ".join(
                             f"{{{name}}}" for name in STATUS_PLACEHOLDERS) + ".")
    target_url: str | None = Field(default=None, description="A link shown with the status (same placeholders).")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_token(cls, data: Any) -> Any:
        _refuse_literal(data, "token", "tokenFrom", "an API token")
        return data

    @field_validator("context")
    @classmethod
    def _context(cls, context: str) -> str:
        return _placeholders(context)

    @field_validator("target_url")
    @classmethod
    def _target_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        _placeholders(url)
        return check_url(url, field="targetUrl", allow_query=True)


class GitHubStatusSpec(_StatusSpec):
    """A commit status on GitHub (`POST /repos/{owner}/{repo}/statuses/{sha}`) for the config commit rolled out."""

    repository: str = Field(description="owner/repo of the config repository on GitHub.")
    api_url: str = Field(default="https://api.github.com",
                         description="GitHub Enterprise Server: https://HOST/api/v3.")

    @field_validator("repository")
    @classmethod
    def _repository(cls, repository: str) -> str:
        if not _GITHUB_REPOSITORY.match(repository):
            raise ValueError(f"expected owner/repo (got {repository!r})")
        return repository

    @field_validator("api_url")
    @classmethod
    def _api(cls, url: str) -> str:
        return check_url(url.rstrip("/"), field="apiUrl")


class GitLabStatusSpec(_StatusSpec):
    """A commit status on GitLab (`POST /projects/:id/statuses/:sha`) for the config commit rolled out."""

    project: str = Field(description="The config repository's project: its path (group/sub/repo) or numeric id.")
    api_url: str = Field(default="https://gitlab.com/api/v4", description="Self-managed: https://HOST/api/v4.")

    @field_validator("project")
    @classmethod
    def _project(cls, project: str) -> str:
        if not _GITLAB_PROJECT.match(project):
            raise ValueError(f"expected a project path such as group/config-repo or a numeric id (got {project!r})")
        return project

    @field_validator("api_url")
    @classmethod
    def _api(cls, url: str) -> str:
        return check_url(url.rstrip("/"), field="apiUrl")


# --------------------------------------------------------------------------------------------------
# The spec


class RetrySpec(Model):
    """Transport errors, 5xx, 408 and 429 are tried again, `backoff` doubling up to `maxBackoff` (with jitter),
    until `attempts` in all; then the event is given up (logged, counted, shown) and later ones go on."""

    attempts: int = Field(default=DEFAULT_RETRY_ATTEMPTS, ge=1, le=50)
    backoff: Duration = DEFAULT_BACKOFF
    max_backoff: Duration = DEFAULT_MAX_BACKOFF

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_backoff < self.backoff:
            raise ValueError(f"maxBackoff ({format_duration(self.max_backoff)}) is shorter than backoff "
                             f"({format_duration(self.backoff)})")
        return self


def _event_glob(pattern: str) -> str:
    if not _matching_types(pattern):
        # Not contract.yamlmarks' did_you_mean: the core imports these models, and must not import YAML.
        meant = difflib.get_close_matches(pattern, [event.value for event in EventType], n=1, cutoff=0.75)
        if meant:
            raise ValueError(f"{pattern!r} matches no event type; did you mean {meant[0]!r}?")
        raise ValueError(f"{pattern!r} matches no event type; known: " + ", ".join(event.value for event in EventType))
    return pattern


def _group_glob(pattern: str) -> str:
    if not _GROUP_GLOB.match(pattern):
        raise ValueError(f"{pattern!r}: expected <application>/<deploymentGroup>, globs allowed (shop/*, */production)")
    return pattern


EventGlob = Annotated[str, StringConstraints(min_length=1), AfterValidator(_event_glob)]
GroupGlob = Annotated[str, StringConstraints(min_length=1), AfterValidator(_group_glob)]


class NotificationSpec(Model):
    events: list[EventGlob] | None = Field(
        default=None,
        description="Globs over event types (deployment.failed, rollback.*). Default: every event for webhook and "
        "sns; starts, ends and failures for slack; the rollout's status changes for commit statuses.",
    )
    min_severity: EventSeverity | None = Field(default=None, description="Only events at least this severe.")
    groups: list[GroupGlob] | None = Field(
        default=None,
        description="Globs over <application>/<deploymentGroup>. With groups, fleet events (command.refused) are "
        "not sent; without, every group's and the fleet's are.",
    )
    webhook: WebhookSpec | None = None
    slack: SlackSpec | None = None
    sns: SnsSpec | None = None
    github_status: GitHubStatusSpec | None = None
    gitlab_status: GitLabStatusSpec | None = None
    retry: RetrySpec = Field(default_factory=RetrySpec)
    timeout: Duration = Field(default=DEFAULT_TIMEOUT, description="Per request (connect plus answer).")

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str] | None) -> list[str] | None:
        if events is None:
            return None
        if not events:
            raise ValueError("events is empty: nothing would be sent; remove the notification or list event types")
        return events

    @field_validator("groups")
    @classmethod
    def _group_globs(cls, groups: list[str] | None) -> list[str] | None:
        if groups is None:
            return None
        if not groups:
            raise ValueError("groups is empty: nothing would be sent; remove it to send every group's events")
        return groups

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: timedelta) -> timedelta:
        if not timedelta(milliseconds=100) <= timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout must be between 100ms and {format_duration(MAX_TIMEOUT)} "
                             f"(got {format_duration(timeout)})")
        return timeout

    @model_validator(mode="after")
    def _one_provider(self) -> Self:
        given = [name for name in PROVIDERS if getattr(self, _attribute(name)) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a notification needs exactly one of {', '.join(PROVIDERS)} (found: {found})")
        if given[0] in STATUS_PROVIDERS and self.events is not None:
            allowed = set(STATUS_EVENTS)
            for pattern in self.events:
                if not allowed.intersection(_matching_types(pattern)):
                    raise ValueError(
                        f"{given[0]} posts a commit status for the rollout's own events; {pattern!r} matches none "
                        f"of them ({', '.join(event.value for event in STATUS_EVENTS)})"
                    )
        return self

    @property
    def provider(self) -> ProviderName:
        return next(name for name in PROVIDERS if getattr(self, _attribute(name)) is not None)

    def triggers(self) -> frozenset[EventType]:
        """The event types this notification sends (its `events` globs, or its provider's default)."""
        patterns = self.events if self.events is not None else _default_events(self.provider)
        types = {event for pattern in patterns for event in _matching_types(pattern)}
        if self.provider in STATUS_PROVIDERS:
            types &= set(STATUS_EVENTS)
        return frozenset(types)

    def wants(self, event: Event, types: frozenset[EventType] | None = None) -> bool:
        """Whether `event` is sent. `types`: `triggers()` computed once by a caller that checks many events."""
        if event.type not in (types if types is not None else self.triggers()):
            return False
        if self.min_severity is not None and event.severity.rank < self.min_severity.rank:
            return False
        if self.groups is not None and (event.group is None
                                        or not any(fnmatch.fnmatchcase(event.group, g) for g in self.groups)):
            return False
        # A commit status is about one commit's rollout: there must be a commit, and it must be the user's
        # deployment of it (a rollback or a catch-up would flip the status of a commit they did not roll out).
        return self.provider not in STATUS_PROVIDERS or (event.commit is not None and event.creator == "user")


def _attribute(provider: str) -> str:
    return {"githubStatus": "github_status", "gitlabStatus": "gitlab_status"}.get(provider, provider)


def _default_events(provider: str) -> tuple[str, ...]:
    if provider == "slack":
        return SLACK_DEFAULT_EVENTS
    if provider in STATUS_PROVIDERS:
        return tuple(event.value for event in STATUS_EVENTS)
    return ALL_EVENTS


def _matching_types(pattern: str) -> list[EventType]:
    return [event for event in EventType if fnmatch.fnmatchcase(event.value, pattern)]


__all__ = [
    "PROVIDERS",
    "STATUS_EVENTS",
    "STATUS_PLACEHOLDERS",
    "STATUS_PROVIDERS",
    "GitHubStatusSpec",
    "GitLabStatusSpec",
    "NotificationSpec",
    "RetrySpec",
    "SecretSource",
    "SlackSpec",
    "SnsSpec",
    "WebhookSpec",
    "check_url",
    "fill",
]
