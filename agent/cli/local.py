"""`deploy-agent local` and `deploy-agent validate`: the agent's engine driven from a terminal.

`local` is `codedeploy-local` (same options, same meaning): it builds a command for a bundle on this machine
and runs it through the same `LifecycleRunner` the daemon uses, with no reconciler and no store. `validate`
runs only the checks: appspec, scripts, users, and the install plan with its conflicts, changing nothing.

This module only parses options and renders; the engine never prints. Exit codes: 0 success / valid,
1 the deployment failed / the bundle is invalid, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from agent.errors import AgentError, Problem, RevisionInvalid, UsageError
from agent.fetch.bundle import BUNDLE_TYPES, ExtractLimits, FetchedBundle, detect_bundle_type, unpack_bundle
from agent.lifecycle.appspec import parse_appspec
from agent.lifecycle.install import iter_plan_lines
from agent.lifecycle.layout import DeploymentRoot, check_path_id
from agent.lifecycle.runner import (
    DOWNLOAD_BUNDLE,
    INSTALL,
    LifecycleRunner,
    RevisionCheck,
    RunnerSettings,
    check_revision,
    new_local_deployment_id,
    previous_appspec,
    scripts_run_before,
    uses_new_revision,
)
from contract.logs import configure_logging
from contract.models import (
    LIFECYCLE_EVENTS,
    PREVIOUS_REVISION_EVENTS,
    CommandStatus,
    EventReport,
    EventStatus,
    FileExistsBehavior,
    HostCommand,
    LocalLocation,
    Revision,
    S3Location,
)
from contract.paths import state_dir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_GROUP_ID = "default-local-deployment-group"
DEFAULT_GROUP_NAME = "LocalFleet"
_BEFORE_DOWNLOAD = ("BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop")
_BEFORE_INSTALL = (*_BEFORE_DOWNLOAD, "DownloadBundle", "BeforeInstall")


def default_root_dir() -> Path:
    """Root: /var/lib/fleetshift/deployment-root. Anyone else: under $XDG_STATE_HOME (or ~/.local/state)."""
    return state_dir() / "deployment-root"


def register(subparsers: Any) -> None:
    local = subparsers.add_parser(
        "local",
        help="deploy a bundle on this machine, like codedeploy-local",
        description="Run a CodeDeploy-style bundle's lifecycle on this machine with no reconciler: the same "
        "engine as the agent daemon. Exit 0 on success, 1 if the deployment failed, 2 for bad options.",
    )
    local.add_argument("--bundle-location", "-l", default=".", metavar="PATH",
                       help="bundle folder or zip/tar/tgz file, or s3://bucket/key (default: current folder)")
    local.add_argument("--type", "-t", dest="bundle_type", metavar="TYPE",
                       help="zip, tar, tgz or directory (default: detected from the bundle)")
    _common_deploy_options(local)
    local.add_argument("--deployment-group-name", "-d", default=DEFAULT_GROUP_NAME, metavar="NAME",
                       help=f"DEPLOYMENT_GROUP_NAME for the hooks (default: {DEFAULT_GROUP_NAME})")
    local.add_argument("--application-name", "-a", metavar="NAME",
                       help="APPLICATION_NAME for the hooks (default: the bundle's absolute location)")
    local.set_defaults(func=run_local)

    validate = subparsers.add_parser(
        "validate",
        help="check a bundle or an appspec without running anything",
        description="Check an appspec, or a whole bundle: appspec, scripts, users, and the install plan "
        "(files to copy, and what each file_exists_behavior does with files already there). Changes nothing. "
        "Exit 0 if it would deploy, 1 if not, 2 for bad options.",
    )
    validate.add_argument("path", metavar="PATH", help="a bundle (folder, zip, tar, tgz) or an appspec file")
    validate.add_argument("--type", "-t", dest="bundle_type", metavar="TYPE",
                          help="zip, tar, tgz or directory (default: detected)")
    _common_deploy_options(validate)
    validate.add_argument("--format", choices=("text", "json"), default="text", help="output format (text)")
    validate.set_defaults(func=run_validate)


def _common_deploy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deployment-group", "-g", default=DEFAULT_GROUP_ID, metavar="ID",
                        help=f"deployment group id: the folder under the root, and whose files are cleaned up "
                        f"(default: {DEFAULT_GROUP_ID})")
    parser.add_argument("--file-exists-behavior", metavar="BEHAVIOR",
                        help="DISALLOW, OVERWRITE or RETAIN for files already at a destination (default DISALLOW; "
                        "the appspec's own file_exists_behavior wins)")
    parser.add_argument("--events", "-e", metavar="A,B,...",
                        help="lifecycle events to run instead of all of them; DownloadBundle and Install are added "
                        "when missing")
    parser.add_argument("--appspec-filename", metavar="NAME",
                        help="appspec file name in the bundle (default: appspec.yml, then appspec.yaml)")
    parser.add_argument("--root-dir", type=Path, metavar="DIR",
                        help=f"deployment root (default: {default_root_dir()})")
    parser.add_argument("--host-root", type=Path, metavar="DIR",
                        help="prefix for absolute destinations: /srv/app lands in DIR/srv/app (default: /)")


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
        return Revision(s3=S3Location(bucket=parts.netloc, key=key, bundle_type=kind,
                                      version=query.get("versionId"), e_tag=query.get("etag")))
    if location.startswith(("http://", "https://")):
        raise UsageError(f"{location}: only local paths and s3:// locations are supported")
    path = Path(location).expanduser().absolute()
    if not path.exists():
        raise UsageError(f"the bundle {path} does not exist")
    kind = _bundle_type(path, bundle_type)
    if kind == "directory" and not path.is_dir():
        raise UsageError(f"{path} is a file, but --type is directory")
    if kind != "directory" and path.is_dir():
        raise UsageError(f"{path} is a folder, but --type is {kind}")
    return Revision(local=LocalLocation(path=str(path), bundle_type=kind))


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
        if not path.exists():
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
            return _report(out, args.format, _Findings(path, events, errors=[Problem(str(path), None, str(exc))]))
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
        findings = _Findings(path, events, check, fatal, maybe, check.warnings, host_root)
        return _report(out, args.format, findings)


def _validate_appspec_file(path: Path, output_format: str, out: TextIO) -> int:
    try:
        spec = parse_appspec(path.read_bytes(), filename=path.name)
    except RevisionInvalid as exc:
        return _report(out, output_format, _Findings(path, list(LIFECYCLE_EVENTS), errors=list(exc.problems)))
    except OSError as exc:
        return _report(out, output_format, _Findings(path, [], errors=[Problem(str(path), None, str(exc))]))
    check = RevisionCheck(spec, None, spec.file_exists_behavior or FileExistsBehavior.DISALLOW, [], [], [])
    findings = _Findings(path, list(LIFECYCLE_EVENTS), check, warnings=list(spec.warnings), appspec_only=True)
    return _report(out, output_format, findings)


@dataclass
class _Findings:
    path: Path
    events: list[str]
    check: RevisionCheck | None = None
    errors: list[Problem] = field(default_factory=list)
    #: Deferred problems that a script running earlier may fix.
    maybe: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    host_root: Path | None = None
    appspec_only: bool = False


def _report(out: TextIO, output_format: str, findings: _Findings) -> int:
    path, check, events, host_root = findings.path, findings.check, findings.events, findings.host_root
    errors, maybe, warnings, appspec_only = findings.errors, findings.maybe, findings.warnings, findings.appspec_only
    code = EXIT_FAILED if errors else EXIT_OK
    spec = check.spec if check else None
    plan = check.plan if check else None

    def show(target: Path) -> str:
        if host_root is not None and (target == host_root or host_root in target.parents):
            return "/" + target.relative_to(host_root).as_posix()
        return str(target)

    if output_format == "json":
        document: dict[str, Any] = {
            "path": str(path),
            "valid": not errors,
            "errors": [_problem_json(p) for p in errors],
            "mayFail": [_problem_json(p) for p in maybe],
            "warnings": [_problem_json(p) for p in warnings],
        }
        if spec is not None:
            document["hooks"] = [
                {"event": event, "scripts": [s.location for s in spec.scripts_for(event)],
                 "revision": "new" if uses_new_revision(events, index) else "previous"}
                for index, event in enumerate(events) if spec.scripts_for(event)
            ]
        if plan is not None and check is not None:
            document["fileExistsBehavior"] = check.behavior.value
            document["install"] = list(iter_plan_lines(plan, show))
            document["conflicts"] = [show(p) for p in plan.conflicts]
        json.dump(document, out, indent=2)
        out.write("\n")
        return code

    if spec is not None:
        print(f"{path}: {spec.filename} version 0.0, os linux", file=out)
        print("Hooks, in the order they run:", file=out)
        any_hook = False
        for index, event in enumerate(events):
            scripts = spec.scripts_for(event)
            if not scripts:
                continue
            any_hook = True
            origin = "" if appspec_only or uses_new_revision(events, index) else (
                "  (runs the last installed revision's copy of these)"
            )
            if event in PREVIOUS_REVISION_EVENTS and appspec_only:
                origin = "  (the next deployment after this one runs these)"
            listed = ", ".join(
                f"{s.location} ({s.timeout} s{', as ' + s.runas if s.runas else ''})" for s in scripts
            )
            print(f"  {event:<19} {listed}{origin}", file=out)
        if not any_hook:
            print("  (none)", file=out)
    if plan is not None and check is not None:
        print(f"Install plan (file_exists_behavior {check.behavior.value}):", file=out)
        lines = list(iter_plan_lines(plan, show))
        for line in lines or ["(nothing to install)"]:
            print(f"  {line}", file=out)
        if plan.conflicts:
            print(f"Files already on this host at {len(plan.conflicts)} destination(s), not installed by this "
                  "deployment group:", file=out)
            for target in plan.conflicts:
                print(f"  {show(target)}", file=out)
            print("  DISALLOW: the deployment fails   OVERWRITE: they are replaced (and removed by the next "
                  "deployment)   RETAIN: they are kept as they are", file=out)
    if appspec_only:
        print("Checked the appspec only; validate the whole bundle to check scripts, sources and the install "
              "plan.", file=out)
    for problem in warnings:
        print(f"warning: {problem}", file=out)
    for problem in maybe:
        print(f"may fail: {problem} (a script that runs earlier may fix this)", file=out)
    for problem in errors:
        print(f"error: {problem}", file=out)
    print("valid" if not errors else f"invalid: {len(errors)} problem(s)", file=out)
    return code


def _problem_json(problem: Problem) -> dict[str, str | None]:
    return {"where": problem.where, "field": problem.field, "message": problem.message}
