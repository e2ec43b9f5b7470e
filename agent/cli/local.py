"""`deploy-agent local` and `deploy-agent validate`: the agent's engine driven from a terminal.

`local` is `codedeploy-local` (same options, same meaning): it builds a command for a bundle on this machine
and runs it through the same `LifecycleRunner` the daemon uses, with no reconciler and no store. `validate`
runs only the checks: appspec, scripts, users, and the install plan with its conflicts, changing nothing.

This module turns the options into a command and renders what the engine reports (the engine never prints);
the flags themselves are declared in agent/cli/parser.py. Exit codes: 0 success / valid,
1 the deployment failed / the bundle is invalid, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec

from agent.cli.parser import default_root_dir, register_local_commands
from agent.cli.validate_report import Findings, report
from agent.errors import AgentError, Problem, RevisionInvalid, UsageError
from agent.fetch import BUNDLE_TYPES, ExtractLimits, FetchedBundle, detect_bundle_type, unpack_bundle
from agent.lifecycle.appspec import parse_appspec
from agent.lifecycle.health_check import settings_problem
from agent.lifecycle.layout import DeploymentRoot, check_path_id
from agent.lifecycle.revision_check import (
    DOWNLOAD_BUNDLE,
    INSTALL,
    VALIDATE_SERVICE,
    RevisionCheck,
    check_event_order,
    check_revision,
    previous_appspec,
    scripts_run_before,
)
from agent.lifecycle.runner import LifecycleRunner, RunnerSettings, new_local_deployment_id
from contract.logs import configure_logging
from contract.vocabulary import HEALTH_CHECK, LIFECYCLE_EVENTS, CommandStatus, EventStatus, FileExistsBehavior
from contract.wire import EventReport, HostCommand, HostHealthCheck, Revision

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_BEFORE_DOWNLOAD = ("BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop")
_BEFORE_INSTALL = (*_BEFORE_DOWNLOAD, "DownloadBundle", "BeforeInstall")

#: The parser lives in agent/cli/parser.py, so `deploy-agent --help` loads none of this module.
register = register_local_commands


# --------------------------------------------------------------------------------------------------
# Option handling shared by both commands


def parse_events(text: str | None) -> list[str]:
    """codedeploy-local's rules: validate the order the user gave, then add DownloadBundle (first) and
    Install (right after DownloadBundle) when missing."""
    if text is None:
        return list(LIFECYCLE_EVENTS)
    events = [name.strip() for name in text.split(",") if name.strip()]
    if not events:
        raise UsageError("--events needs at least one event name")
    for anchor, allowed in ((DOWNLOAD_BUNDLE, _BEFORE_DOWNLOAD), (INSTALL, _BEFORE_INSTALL)):
        if anchor in events:
            early = [event for event in events[: events.index(anchor)] if event not in allowed]
            if early:
                raise UsageError(
                    f"only {', '.join(allowed)} may come before {anchor}; fix the order of --events "
                    f"({', '.join(events)})"
                )
    if DOWNLOAD_BUNDLE not in events:
        events.insert(0, DOWNLOAD_BUNDLE)
    if INSTALL not in events:
        events.insert(events.index(DOWNLOAD_BUNDLE) + 1, INSTALL)
    return events


def health_check_for(events: list[str], url: str | None, min_healthy_seconds: float) -> HostHealthCheck | None:
    """`--health-check URL`: the HealthCheck step (default timings but `--min-healthy-time`) right after
    ValidateService, added to `events` when missing. Without a reconciler nothing else would give the step its
    settings, so HealthCheck in `--events` needs it."""
    if url is None:
        if HEALTH_CHECK in events:
            raise UsageError("HealthCheck in --events needs --health-check URL (what to check)")
        return None
    if not min_healthy_seconds >= 0:
        raise UsageError(f"--min-healthy-time must be 0 or more seconds, not {min_healthy_seconds:g}")
    check = HostHealthCheck(url=url, min_healthy_seconds=min_healthy_seconds)
    problem = settings_problem(check)
    if problem is not None:
        raise UsageError(f"--health-check: {problem}")
    if VALIDATE_SERVICE not in events:
        raise UsageError("--health-check runs right after ValidateService; add ValidateService to --events")
    if HEALTH_CHECK not in events:
        events.insert(events.index(VALIDATE_SERVICE) + 1, HEALTH_CHECK)
    check_event_order(events)
    return check


def parse_behavior(text: str | None) -> FileExistsBehavior | None:
    if text is None:
        return None
    try:
        return FileExistsBehavior(text.strip().upper())
    except ValueError:
        raise UsageError(f"--file-exists-behavior {text!r} is not DISALLOW, OVERWRITE or RETAIN") from None


def _bundle_type(location: Path, given: str | None) -> str:
    if given is None:
        return detect_bundle_type(location)
    if given not in BUNDLE_TYPES:
        raise UsageError(f"--type {given!r} is not one of {', '.join(BUNDLE_TYPES)}")
    return given


def revision_for(location: str, bundle_type: str | None) -> Revision:
    """A local path, or `s3://bucket/key[?versionId=V][&etag=E]`, as a Revision."""
    if location.startswith("s3://"):
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(location)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        key = parts.path.lstrip("/")
        kind = bundle_type or next(
            (t for t, suffixes in (("zip", (".zip",)), ("tgz", (".tgz", ".tar.gz")), ("tar", (".tar",)))
             if key.lower().endswith(suffixes)),
            None,
        )
        if kind not in {"zip", "tar", "tgz"}:
            raise UsageError(f"pass --type zip, tar or tgz for {location}")
        return _checked(location, {"s3": {"bucket": parts.netloc, "key": key, "bundleType": kind,
                                          "version": query.get("versionId"), "eTag": query.get("etag")}})
    if location.startswith(("http://", "https://")):
        raise UsageError(f"{location}: only local paths and s3:// locations are supported")
    path = Path(location).expanduser().absolute()
    if not _exists(path):
        raise UsageError(f"the bundle {path} does not exist")
    kind = _bundle_type(path, bundle_type)
    if kind == "directory" and not path.is_dir():
        raise UsageError(f"{path} is a file, but --type is directory")
    if kind != "directory" and path.is_dir():
        raise UsageError(f"{path} is a folder, but --type is {kind}")
    return _checked(location, {"local": {"path": str(path), "bundleType": kind}})


def _checked(location: str, revision: dict[str, Any]) -> Revision:
    """The revision, validated as a command's would be (a bucket name too short, an empty key): records built
    by hand are not checked by their constructor."""
    try:
        return Revision.model_validate(revision)
    except msgspec.ValidationError as exc:
        raise UsageError(f"{location}: {exc}") from None


def _exists(path: Path) -> bool:
    """`path.exists()`, with a path the OS refuses to look at (a name over 255 bytes: ENAMETOOLONG, a symlink
    loop) a command-line error rather than a traceback."""
    try:
        return path.exists()
    except OSError as exc:
        raise UsageError(f"cannot use {str(path)[:200]}: {exc.strerror or exc}") from None


def _quiet_logging(args: argparse.Namespace) -> None:
    """This command renders the engine's results itself (warnings and failures are in the event reports);
    the engine's log events would only repeat them, unless --log-level asks for them."""
    if getattr(args, "log_level", None) is None:
        json_lines = {"auto": None, "console": False, "json": True}.get(getattr(args, "log_format", "auto"))
        configure_logging("critical", json_lines=json_lines)


# --------------------------------------------------------------------------------------------------
# local


def run_local(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    _quiet_logging(args)
    try:
        events = parse_events(args.events)
        health_check = health_check_for(events, args.health_check, args.min_healthy_time)
        behavior = parse_behavior(args.file_exists_behavior)
        revision = revision_for(args.bundle_location, args.bundle_type)
        group_id = check_path_id(args.deployment_group, "--deployment-group")
        if args.appspec_filename and ("/" in args.appspec_filename or args.appspec_filename in {".", ".."}):
            raise UsageError("--appspec-filename is a file name at the top of the bundle, not a path")
    except AgentError as exc:
        print(f"deploy-agent local: {exc}", file=err)
        return EXIT_USAGE
    root_dir = (args.root_dir or default_root_dir()).absolute()
    application = args.application_name or (revision.local.path if revision.local else revision.short())
    command = HostCommand(
        host_id="local",
        generation=1,
        deployment_id=new_local_deployment_id(),
        application=application,
        deployment_group=args.deployment_group_name,
        deployment_group_id=group_id,
        revision=revision,
        events=events,
        file_exists_behavior=behavior,
        health_check=health_check,
        created_at=datetime.now(UTC),
    )
    host_root = args.host_root.absolute() if args.host_root else None
    runner = LifecycleRunner(RunnerSettings(root_dir=root_dir, host_root=host_root))
    deployment_dir = root_dir / group_id / command.deployment_id
    print(f"Deploying {revision.short()} as {command.deployment_id} (folder {deployment_dir})", file=out)
    width = max(len(name) for name in events)

    def show(report: EventReport) -> None:
        if report.status in {EventStatus.PENDING, EventStatus.IN_PROGRESS}:
            return
        seconds = ""
        if report.started_at and report.ended_at:
            seconds = f"{(report.ended_at - report.started_at).total_seconds():6.2f} s"
        note = report.message or ""
        if report.status == EventStatus.FAILED and report.error_code:
            note = f"{report.error_code.value}: {note}"
        print(f"  {report.name:<{width}}  {report.status.value:<9} {seconds:>8}  {note}".rstrip(), file=out)
        out.flush()

    outcome = runner.run(command, on_event=show, appspec_filename=args.appspec_filename)
    if outcome.status == CommandStatus.SUCCEEDED:
        where = f" Log: {outcome.log_path}" if outcome.log_path else ""
        print(f"Local deployment succeeded.{where}", file=out)
        return EXIT_OK
    print(f"Local deployment failed. {outcome.message}", file=err)
    return EXIT_FAILED


# --------------------------------------------------------------------------------------------------
# validate


def run_validate(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    _quiet_logging(args)
    path = Path(args.path).expanduser().absolute()
    try:
        events = parse_events(args.events)
        behavior = parse_behavior(args.file_exists_behavior)
        group_id = check_path_id(args.deployment_group, "--deployment-group")
        if not _exists(path):
            raise UsageError(f"{path} does not exist")
        if path.is_file() and path.suffix.lower() in {".yml", ".yaml"}:
            return _validate_appspec_file(path, args.format, out)
        bundle_type = _bundle_type(path, args.bundle_type)
    except AgentError as exc:
        print(f"deploy-agent validate: {exc}", file=err)
        return EXIT_USAGE
    root = DeploymentRoot((args.root_dir or default_root_dir()).absolute())
    with tempfile.TemporaryDirectory(prefix="fleetshift-validate-") as scratch:
        archive = Path(scratch) / "deployment-archive"
        try:
            unpack_bundle(FetchedBundle(path, bundle_type), archive, ExtractLimits())  # type: ignore[arg-type]
            previous_cleanup = root.read_cleanup(group_id) if root.instructions.is_dir() else []
        except AgentError as exc:
            return _report(out, args.format, Findings(path, events, errors=[Problem(str(path), None, str(exc))]))
        host_root = args.host_root.absolute() if args.host_root else None
        check = check_revision(
            archive,
            events=events,
            appspec_filename=args.appspec_filename,
            file_exists_behavior=behavior,
            previous_cleanup=previous_cleanup,
            host_root=host_root,
        )
        previous = previous_appspec(root, group_id, args.appspec_filename) if root.instructions.is_dir() else None
        fatal = check.fatal(lambda event: scripts_run_before(event, events, check.spec, previous))
        maybe = [problem for problem, _ in check.deferred if problem not in fatal]
        findings = Findings(path, events, check, fatal, maybe, check.warnings, host_root)
        return _report(out, args.format, findings)


def _validate_appspec_file(path: Path, output_format: str, out: TextIO) -> int:
    try:
        spec = parse_appspec(path.read_bytes(), filename=path.name)
    except RevisionInvalid as exc:
        return _report(out, output_format, Findings(path, list(LIFECYCLE_EVENTS), errors=list(exc.problems)))
    except OSError as exc:
        return _report(out, output_format, Findings(path, [], errors=[Problem(str(path), None, str(exc))]))
    check = RevisionCheck(spec, None, spec.file_exists_behavior or FileExistsBehavior.DISALLOW, [], [], [])
    findings = Findings(path, list(LIFECYCLE_EVENTS), check, warnings=list(spec.warnings), appspec_only=True)
    return _report(out, output_format, findings)


def _report(out: TextIO, output_format: str, findings: Findings) -> int:
    report(out, output_format, findings)
    return EXIT_FAILED if findings.errors else EXIT_OK
