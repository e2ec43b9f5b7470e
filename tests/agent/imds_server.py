"""A small IMDSv2 for the tests of the agent on EC2: the token rules and the meta-data paths the agent reads,
as the EC2 documentation describes them (docs/aws-fleet.md, "The agent on EC2").

- `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21600), else 400; it returns a
  token valid for that many seconds.
- Every GET needs a valid token in `X-aws-ec2-metadata-token`: none, unknown or expired -> 401.
- `/latest/meta-data/instance-id`, `placement/availability-zone`, `placement/region`, `local-ipv4`,
  `tags/instance` (the keys, one a line; 404 when instance-metadata tags are not enabled) and
  `tags/instance/<key>`.

Switches: `v1_only` answers the token PUT with that status and serves tokenless GETs (an IMDSv1-only
service: the agent must refuse it), `tags_enabled=False`, `reject_first_token` (the first token issued is
reported expired at its first use, as after a long pause or a service restart).
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass
class Imds:
    """What the server says, and what it saw."""

    instance_id: str = "i-0123456789abcdef0"
    zone: str = "eu-west-1b"
    region: str | None = "eu-west-1"
    local_ipv4: str | None = "10.0.1.17"
    tags: dict[str, str] = field(default_factory=lambda: {"app": "hello", "Name": "web a/b", "env": "from-ec2"})
    tags_enabled: bool = True
    v1_only: int | None = None
    reject_first_token: bool = False
    #: (method, path, token header present) per request, in order.
    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)
    url: str = ""

    def token_requests(self) -> int:
        return sum(1 for method, _, _ in self.requests if method == "PUT")

    def tokenless_gets(self) -> list[str]:
        return [path for method, path, token in self.requests if method == "GET" and not token]

    def meta_data(self, path: str) -> str | None:
        values: dict[str, str | None] = {
            "instance-id": self.instance_id,
            "placement/availability-zone": self.zone,
            "placement/region": self.region,
            "local-ipv4": self.local_ipv4,
        }
        if path in values:
            return values[path]
        if not self.tags_enabled:
            return None
        if path == "tags/instance":
            return "\n".join(self.tags)
        if path.startswith("tags/instance/"):
            return self.tags.get(urllib.parse.unquote(path.removeprefix("tags/instance/")))
        return None


def _handler(imds: Imds) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: str = "") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            with lock:
                imds.requests.append(("PUT", self.path, False))
            if self.path != "/latest/api/token":
                return self._answer(404)
            if imds.v1_only is not None:
                return self._answer(imds.v1_only)
            ttl = self.headers.get(TTL_HEADER, "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self._answer(400)
            token = secrets.token_urlsafe(32)
            with lock:
                expired = imds.reject_first_token and not imds.tokens
                imds.tokens[token] = time.monotonic() + (-1 if expired else int(ttl))
            return self._answer(200, token)

        def do_GET(self) -> None:
            token = self.headers.get(TOKEN_HEADER)
            with lock:
                imds.requests.append(("GET", self.path, token is not None))
                valid = token is not None and imds.tokens.get(token, 0) > time.monotonic()
            if imds.v1_only is None and not valid:
                return self._answer(401)
            if not self.path.startswith("/latest/meta-data/"):
                return self._answer(404)
            value = imds.meta_data(self.path.removeprefix("/latest/meta-data/"))
            return self._answer(404) if value is None else self._answer(200, value)

    return Handler


@contextmanager
def imds_server(imds: Imds | None = None) -> Iterator[Imds]:
    """Serves `imds` on a loopback port; `url` is its endpoint."""
    imds = imds or Imds()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(imds))
    imds.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield imds
    finally:
        server.shutdown()
        server.server_close()
