"""Fixtures shared by every test area.

`s3_server` starts moto in server mode on a loopback port, so the S3 backend and S3 revisions are
exercised over real HTTP (signing, conditional headers, pagination), never by patching boto3 in-process.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import settings as hypothesis_settings

# CI runs the property tests on a fixed set of examples so a red build always means a change broke
# something, never that a new random draw found an old bug; locally every run explores new examples.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

# No test (nor any agent or boto3 client a test starts) may read the instance metadata of the machine running
# the suite: on EC2 it would give every agent that machine's zone, address and tags. The tests of the agent on
# EC2 point it at their own IMDSv2 server (tests/agent/test_imds*.py) and clear this for that agent.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def in_ci() -> bool:
    """CI sets CI (GitHub, GitLab and `.ci/run` all do); empty, "0" and "false" mean not CI."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}: CI must run this test (./scripts/test installs system packages as root)")
    pytest.skip(reason)


def require_tool(tool: str, package: str) -> None:
    """Skip the calling test when `tool` is not installed, except in CI, where a missing tool is a failure."""
    if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
        _skip_or_fail(f"needs {tool} (apt-get install {package})")


def require_root(why: str) -> None:
    """Skip the calling test unless it runs as root, except in CI (which runs as root), where it fails."""
    if os.geteuid() != 0:
        _skip_or_fail(f"needs root: {why}")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self) -> dict[str, str]:
        """Environment for a child process (an agent) that must reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_with_atomic_writes(port: int) -> Any:
    """moto's threaded server, with requests that can write handled one at a time.

    Why: moto checks a PUT's If-Match / If-None-Match and then writes, without a lock, so two conditional PUTs racing
    in two threads can both win. S3 makes each conditional write atomic, and the store's compare-and-swap rests on
    that (tests/store/test_concurrency.py races processes for it; on a loaded machine moto let two of them win).
    Reads stay concurrent."""
    import threading

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class AtomicWritesMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            writes = threading.Lock()

            def serve(environ: dict[str, Any], start_response: Any) -> Any:
                if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                    return app(environ, start_response)
                with writes:
                    return list(app(environ, start_response))  # the whole answer made inside the lock

            self._server = make_server(self._ip_address, self._port, serve, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return AtomicWritesMotoServer(ip_address="127.0.0.1", port=port, verbose=False)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = _free_port()
    server = _moto_with_atomic_writes(port)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Every test starts from structlog's defaults. `reconcile`/`deploy-agent` run in-process configure structlog
    for the stderr of the moment (which pytest closes after the test) and with a filtering level (`--log-level
    error` drops every warning); left behind, later tests would write to a closed file, or their `capture_logs`
    would see nothing. Which tests share a process depends on pytest-xdist's scheduling, so each test resets."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()

