"""The EC2 instance metadata service (IMDS), version 2 only: who this EC2 instance is.

Where it sits: asked once by `deploy-agent run` at start-up (agent/daemon/ec2identity.py decides whether to
ask and what the answers fill in), before the agent registers. Nothing else in the agent talks to it.

IMDSv2 (docs/aws-fleet.md, "The agent on EC2"): `PUT /latest/api/token` with the header
`X-aws-ec2-metadata-token-ttl-seconds` returns a session token; every GET carries it in
`X-aws-ec2-metadata-token`, and a GET without a valid token is answered 401. There is deliberately no
IMDSv1 fallback (a tokenless GET): IMDSv1 is what SSRF attacks against EC2 use, operators turn it off
(`HttpTokens=required`), and a service that does not hand out tokens is not EC2's, so its answers are not
trusted as this host's identity.

Off EC2 nothing must take long: every request has a one-second connect and read timeout, the whole read a
deadline, and only the failures that happen on EC2 itself (a token answer that does not arrive, a 5xx) are
tried again. http.client rather than urllib: urllib honours HTTP_PROXY, and the metadata service must
never be asked through a proxy (a proxy would answer for its own machine, or leak the token). Every answer
is bounded in size and checked for shape before it can become a host id or a tag.
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

DEFAULT_ENDPOINT = "http://169.254.169.254"
#: Where IMDS answers on IPv6-only (Nitro) instances; chosen by AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6.
IPV6_ENDPOINT = "http://[fd00:ec2::254]"
TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
METADATA_PATH = "/latest/meta-data/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name, not a secret
#: The agent uses its token within a second of getting it; a short life keeps a leaked token worthless.
TOKEN_TTL_SECONDS = 60
#: Connect and read timeout of each request: IMDS answers in milliseconds on EC2, and off EC2 the agent
#: must learn quickly that nothing is there (the AWS SDKs use one second as well).
REQUEST_TIMEOUT = 1.0
#: Attempts per request for failures that happen on EC2 (no answer after connecting, 5xx, 429).
ATTEMPTS = 3
BACKOFF_SECONDS = (0.1, 0.3)
#: The whole read, token and every GET, however the retries add up.
DEADLINE_SECONDS = 10.0
#: Largest answer read: the largest real one is a tag value (256 characters).
MAX_ANSWER_BYTES = 64 * 1024
#: EC2 allows 50 tags on an instance; a longer list is not an answer from EC2.
MAX_TAGS = 50

_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,32}$")
_ZONE_OR_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TAG_KEY = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_TAG_VALUE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")

HOP_LIMIT_HINT = (
    "In a container on EC2, the token's answer is dropped when the instance's HttpPutResponseHopLimit is 1: "
    "set it to 2 (aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2) "
    "or run the agent in the host's network"
)


@dataclass(frozen=True)
class InstanceMetadata:
    """What IMDS says about this instance. `tags` is None when instance-metadata tags are not enabled for
    it (an opt-in of the instance: `InstanceMetadataTags=enabled`), which is not an error."""

    instance_id: str
    availability_zone: str
    region: str | None = None
    local_ipv4: str | None = None
    tags: dict[str, str] | None = field(default=None)


class MetadataError(Exception):
    """The instance metadata could not be read; the message names the endpoint, what happened and what to
    do."""


class MetadataUnreachable(MetadataError):
    """Nothing answered at the endpoint: what off EC2 looks like (or IMDS turned off, or a hop limit)."""


class NotImdsV2(MetadataError):
    """Something answered, but it is not an IMDSv2 service (IMDSv1-only, another cloud's metadata service)."""


class MetadataInvalid(MetadataError):
    """An IMDSv2 service answered, but not as EC2's does (missing instance id, malformed values)."""


class _ConnectFailed(Exception):
    pass


class _NoAnswer(Exception):
    pass


class _TokenRejected(Exception):
    pass


def endpoint_from_environment(environ: Mapping[str, str]) -> str | None:
    """The endpoint the AWS SDKs would use from the environment: AWS_EC2_METADATA_SERVICE_ENDPOINT, or the IPv6
    address when AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE is IPv6; None when neither says."""
    if environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip():
        return environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].strip()
    if environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "").strip().lower() == "ipv6":
        return IPV6_ENDPOINT
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` cannot be an IMDS endpoint (for settings errors), or None."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme != "http":
        return f"{endpoint!r} is not an http:// URL (the metadata service speaks plain HTTP, e.g. {DEFAULT_ENDPOINT})"
    if not parts.hostname:
        return f"{endpoint!r} names no host (e.g. {DEFAULT_ENDPOINT})"
    if parts.query or parts.fragment or parts.username:
        return f"{endpoint!r}: write only http://HOST[:PORT]"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"{endpoint!r} has an invalid port"
    return None


class ImdsClient:
    """Reads this instance's identity from IMDSv2 at `endpoint` (http://HOST[:PORT])."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT) -> None:
        problem = endpoint_problem(endpoint)
        if problem is not None:
            raise MetadataError(f"instance metadata endpoint {problem}")
        parts = urllib.parse.urlsplit(endpoint)
        assert parts.hostname is not None
        self.endpoint = endpoint.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")

    def read(self) -> InstanceMetadata:
        """Token, then instance id, zone, region, private IPv4 and tags. A token the service rejects (401: it
        expired, or the service restarted) is replaced once."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        for _ in range(2):
            token = self._token(deadline)
            try:
                return self._read_with(token, deadline)
            except _TokenRejected:
                continue
        raise MetadataInvalid(
            f"the instance metadata service at {self.endpoint} rejected a token it had just issued (HTTP 401)"
        )

    # ----------------------------------------------------------------------------------------------

    def _token(self, deadline: float) -> str:
        try:
            status, body = self._call("PUT", TOKEN_PATH, {TTL_HEADER: str(TOKEN_TTL_SECONDS)}, deadline)
        except _NoAnswer as exc:
            raise MetadataUnreachable(
                f"the instance metadata service at {self.endpoint} accepted the connection but sent no session "
                f"token ({exc}). {HOP_LIMIT_HINT}"
            ) from None
        if status == 200:
            token = body.decode("ascii", "replace").strip()
            if token and len(token) <= 1024 and token.isprintable():
                return token
            raise NotImdsV2(self._not_v2("a 200 without a session token"))
        if status in (403, 404, 405):
            raise NotImdsV2(self._not_v2(f"HTTP {status}"))
        raise MetadataInvalid(
            f"the instance metadata service at {self.endpoint} answered the token request "
            f"(PUT {TOKEN_PATH}) with HTTP {status}"
        )

    def _not_v2(self, answer: str) -> str:
        return (
            f"{self.endpoint} answered the IMDSv2 token request (PUT {TOKEN_PATH}) with {answer}: it is not an "
            "IMDSv2 service (an IMDSv1-only metadata service, another cloud's, or the instance metadata service "
            "turned off for this instance). fleetshift reads instance metadata with IMDSv2 session tokens only "
            "and never falls back to IMDSv1"
        )

    def _read_with(self, token: str, deadline: float) -> InstanceMetadata:
        def get(path: str) -> str | None:
            return self._get(token, path, deadline)

        instance_id = self._required(get("instance-id"), "instance-id", _INSTANCE_ID)
        zone = self._required(get("placement/availability-zone"), "placement/availability-zone", _ZONE_OR_REGION)
        region = get("placement/region")
        if region is not None and not _ZONE_OR_REGION.fullmatch(region):
            raise self._malformed("placement/region", region)
        local_ipv4 = get("local-ipv4")  # absent on IPv6-only instances
        if local_ipv4 is not None:
            try:
                ipaddress.IPv4Address(local_ipv4)
            except ValueError:
                raise self._malformed("local-ipv4", local_ipv4) from None
        return InstanceMetadata(instance_id=instance_id, availability_zone=zone, region=region,
                                local_ipv4=local_ipv4, tags=self._tags(get))

    def _tags(self, get: Callable[[str], str | None]) -> dict[str, str] | None:
        listing = get("tags/instance")
        if listing is None:  # 404: instance-metadata tags are not enabled for this instance
            return None
        keys = [line.strip() for line in listing.splitlines() if line.strip()]
        if len(keys) > MAX_TAGS:
            raise MetadataInvalid(f"the instance metadata service at {self.endpoint} lists {len(keys)} tags; "
                                  f"EC2 allows {MAX_TAGS}")
        tags: dict[str, str] = {}
        for key in keys:
            if not _TAG_KEY.fullmatch(key):
                raise self._malformed("tags/instance", key)
            value = get(f"tags/instance/{urllib.parse.quote(key, safe='')}")
            if value is None:
                continue  # removed between the listing and this read
            if not _TAG_VALUE.fullmatch(value):
                raise self._malformed(f"tags/instance/{key}", value)
            tags[key] = value
        return tags

    def _required(self, value: str | None, path: str, pattern: re.Pattern[str]) -> str:
        if value is None:
            raise MetadataInvalid(f"the instance metadata service at {self.endpoint} has no {path} (HTTP 404)")
        if not pattern.fullmatch(value):
            raise self._malformed(path, value)
        return value

    def _malformed(self, path: str, value: str) -> MetadataInvalid:
        return MetadataInvalid(
            f"the instance metadata service at {self.endpoint} answered {path} with {value[:80]!r}, which is not "
            "what EC2 answers there"
        )

    def _get(self, token: str, path: str, deadline: float) -> str | None:
        """The answer at meta-data/`path`; None when it does not exist (404)."""
        try:
            status, body = self._call("GET", METADATA_PATH + path, {TOKEN_HEADER: token}, deadline)
        except _NoAnswer as exc:
            raise MetadataUnreachable(
                f"the instance metadata service at {self.endpoint} gave a token but no answer for {path} ({exc})"
            ) from None
        if status == 401:
            raise _TokenRejected
        if status == 404:
            return None
        if status != 200:
            raise MetadataInvalid(
                f"the instance metadata service at {self.endpoint} answered {path} with HTTP {status}")
        try:
            return body.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise self._malformed(path, body.decode("utf-8", "replace")) from None

    def _call(self, method: str, path: str, headers: dict[str, str], deadline: float) -> tuple[int, bytes]:
        """One request, tried again after failures that happen on EC2 (no answer after connecting, 5xx,
        429); a connection that cannot be made at all is not retried: that is what off EC2 looks like."""
        outcome: tuple[int, bytes] | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                pause = BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)]
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            try:
                outcome = self._request(method, path, headers, deadline)
            except _ConnectFailed as exc:
                raise MetadataUnreachable(self._unreachable(exc)) from None
            except _NoAnswer as exc:
                if attempt == ATTEMPTS - 1:
                    raise _NoAnswer(f"{exc}, {ATTEMPTS} attempts") from None
                continue
            if outcome[0] < 500 and outcome[0] != 429:
                return outcome
        if outcome is None:
            raise _NoAnswer(f"no answer within {DEADLINE_SECONDS:g}s")
        return outcome

    def _unreachable(self, cause: Exception) -> str:
        message = (f"no instance metadata service at {self.endpoint} ({cause}): this is not an EC2 instance, or "
                   "its instance metadata service is turned off")
        if isinstance(cause.__cause__, TimeoutError):
            message += f". {HOP_LIMIT_HINT}"
        return message

    def _request(self, method: str, path: str, headers: dict[str, str], deadline: float) -> tuple[int, bytes]:
        import http.client  # here, not at the top: it loads ssl and email, ~1.4 MiB an idle agent off EC2 never uses

        timeout = min(REQUEST_TIMEOUT, max(deadline - time.monotonic(), 0.01))
        connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            try:
                connection.connect()
            except TimeoutError as exc:
                raise _ConnectFailed(f"connecting timed out after {timeout:g}s") from exc
            except OSError as exc:
                raise _ConnectFailed(exc.strerror or str(exc)) from exc
            try:
                connection.request(method, self._prefix + path, headers=headers)
                response = connection.getresponse()
                body = response.read(MAX_ANSWER_BYTES + 1)
            except TimeoutError:
                raise _NoAnswer(f"no answer within {timeout:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise _NoAnswer(f"the connection failed: {exc or type(exc).__name__}") from None
            if len(body) > MAX_ANSWER_BYTES:
                raise MetadataInvalid(f"the instance metadata service at {self.endpoint} sent more than "
                                      f"{MAX_ANSWER_BYTES} bytes for {path}")
            return response.status, body
        finally:
            connection.close()
