"""Fixtures for the agent's deployment engine: bundles built on disk, a runner sandboxed in tmp_path.

Every deployment in these tests uses a host root under tmp_path, so absolute appspec destinations such as
/srv/app land in `<tmp>/host/srv/app` and nothing is written outside the test's folders.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import tarfile
import textwrap
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.cli import local as local_cli
from agent.lifecycle.reports import CommandOutcome
from agent.lifecycle.runner import LifecycleRunner, RunnerSettings
from contract.vocabulary import DEFAULT_EVENTS
from contract.wire import EventReport, HostCommand, LocalLocation, Revision
from tests.conftest import in_ci


def require(condition: bool, reason: str) -> None:
    """Skip (outside CI) or fail (in CI) unless `condition` holds, like `require_tool`/`require_root` from
    tests/conftest.py (shared by every test area) for prerequisites that are neither a tool nor root."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason}: CI must run this test")
    pytest.skip(reason)


class Bundle:
    """A bundle folder being written: an appspec plus files and executable scripts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def appspec(self, text: str, name: str = "appspec.yml") -> Bundle:
        (self.path / name).write_text(textwrap.dedent(text).lstrip())
        return self

    def file(self, relative: str, content: str | bytes = "x", mode: int | None = None) -> Path:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if mode is not None:
            target.chmod(mode)
        return target

    def script(self, relative: str, body: str, mode: int = 0o755) -> Path:
        return self.file(relative, "#!/bin/sh\n" + textwrap.dedent(body).lstrip(), mode)

    def tar(self, destination: Path, *, gz: bool = False, prefix: str = "") -> Path:
        with tarfile.open(destination, "w:gz" if gz else "w") as archive:
            for path in sorted(self.path.rglob("*")):
                archive.add(path, arcname=prefix + path.relative_to(self.path).as_posix(), recursive=False)
        return destination

    def zip(self, destination: Path, *, prefix: str = "") -> Path:
        with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(self.path.rglob("*")):
                info = path.lstat()
                name = prefix + path.relative_to(self.path).as_posix()
                if stat.S_ISDIR(info.st_mode):
                    zinfo = zipfile.ZipInfo(name + "/")
                    zinfo.external_attr = (stat.S_IFDIR | 0o755) << 16
                    archive.writestr(zinfo, b"")
                elif stat.S_ISLNK(info.st_mode):
                    zinfo = zipfile.ZipInfo(name)
                    zinfo.create_system = 3
                    zinfo.external_attr = (stat.S_IFLNK | 0o777) << 16
                    archive.writestr(zinfo, os.readlink(path))
                else:
                    archive.write(path, name)
        return destination


@dataclass
class Sandbox:
    """A deployment root and a host root, and a runner over them."""

    tmp: Path
    root: Path
    host: Path
    runner: LifecycleRunner
    reports: list[EventReport] = field(default_factory=list)
    counter: int = 0

    def on_host(self, absolute: str) -> Path:
        return self.host / absolute.lstrip("/")

    def command(self, bundle: Bundle | Path, **overrides: object) -> HostCommand:
        self.counter += 1
        path = bundle.path if isinstance(bundle, Bundle) else bundle
        given_type = overrides.pop("bundle_type", "zip")
        bundle_type = "directory" if path.is_dir() else given_type
        fields: dict[str, object] = {
            "host_id": "test-host",
            "generation": self.counter,
            "deployment_id": f"d-TEST{self.counter:05d}",
            "application": "app",
            "deployment_group": "group",
            "deployment_group_id": "dg-1",
            "revision": Revision(local=LocalLocation(path=str(path), bundle_type=bundle_type)),
            "events": list(DEFAULT_EVENTS),
            "created_at": datetime.now(UTC),
        }
        fields.update(overrides)
        return HostCommand(**fields)  # type: ignore[arg-type]

    def deploy(self, bundle: Bundle | Path, **overrides: object) -> CommandOutcome:
        self.reports = []
        appspec_filename = overrides.pop("appspec_filename", None)
        return self.runner.run(
            self.command(bundle, **overrides),
            on_event=self.reports.append,
            appspec_filename=appspec_filename,
        )


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[[str], Bundle]:
    def make(name: str = "bundle") -> Bundle:
        return Bundle(tmp_path / "bundles" / name)

    return make


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


class SteppingClock:
    """A clock for the runner that moves one second on at every reading, so event times, install records
    and deployment folders' modification times (retention order) differ without sleeping."""

    def __init__(self, start: datetime = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)) -> None:
        self.current = start

    def __call__(self) -> datetime:
        self.current += timedelta(seconds=1)
        return self.current


def make_sandbox(
    tmp_path: Path, *, now: Callable[[], datetime] | None = None, **settings: object
) -> Sandbox:
    root = tmp_path / "root"
    host = tmp_path / "host"
    host.mkdir(exist_ok=True)
    runner = LifecycleRunner(RunnerSettings(root_dir=root, host_root=host, **settings), now=now)
    return Sandbox(tmp_path, root, host, runner)


def statuses(outcome: CommandOutcome) -> dict[str, str]:
    return {report.name: report.status.value for report in outcome.events}


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> CliResult:
    """`deploy-agent local|validate ...` through the real parser registration, in this process."""
    parser = argparse.ArgumentParser(prog="deploy-agent")
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--log-format", default="auto")
    local_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out, err)
    return CliResult(code, out.getvalue(), err.getvalue())
