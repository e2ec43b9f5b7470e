"""`reconcile`: the command-line layer. Parses flags, loads settings, sets up logging, renders results.

The desired state, the core and the shell never print; this module and the modules beside it in
`reconciler/cli/` do. Every `ReconcilerError` becomes a message on stderr and an exit code from
`reconciler.exitcodes`, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.exitcodes import ExitCode
from contract.startup import import_structlog_without_rich

if TYPE_CHECKING:
    from reconciler.settings import DeploySettings

# Start-up: only the standard library and the exit codes are imported at the top, so `reconcile --help` (and a
# mistyped command) answer at once; a command imports what it needs when it runs, and the parser imports only the
# module of the sub-command given (tests/reconciler/test_cli_startup.py checks both).

#: Every sub-command, in the order `reconcile --help` lists them: (name, the module whose `register(sub, parent)`
#: adds it, the one line `reconcile --help` shows, which must be the module's own `help=`; a test checks that).
SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("validate", "reconciler.cli.main", "check manifests (a folder, or a repo at --ref) without touching the store"),
    ("watch", "reconciler.cli.run", "run continuously: react to commits and agent reports until SIGTERM"),
    ("status", "reconciler.cli.status",
     "desired vs effective revision, deployment in flight, quarantine and hosts, per group"),
    ("history", "reconciler.cli.history", "a group's deployments, newest first"),
    ("events", "reconciler.cli.events",
     "what happened: deployments, batches, host results, gates, rollbacks, refused commands"),
    ("retry", "reconciler.cli.operators", "clear a group's quarantined revisions so the next pass deploys again"),
    ("stop", "reconciler.cli.operators", "stop a group's deployment in flight (optionally rolling back)"),
    ("forget", "reconciler.cli.operators", "delete the records of a group removed from the manifests"),
    ("plan", "reconciler.cli.plan", "show what merging a change would do: semantic diff, hosts, batches, warnings"),
    ("keys", "reconciler.cli.keys", "the signing key: generate, show, reseal"),
)


def common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the sub-command; SUPPRESS keeps a sub-parser from resetting them."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (override deploy.yaml and FLEETSHIFT_* variables)")
    group.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="settings file (default ./deploy.yaml)")
    group.add_argument("--repo", default=argparse.SUPPRESS, help="config repo URL or path")
    group.add_argument("--ref", default=argparse.SUPPRESS, help="branch, tag or commit to read manifests from")
    group.add_argument("--path", dest="manifest_path", default=argparse.SUPPRESS,
                       help="manifests folder in the repo (default: . = all of it)")
    group.add_argument("--store", default=argparse.SUPPRESS, help="file://DIR or s3://bucket/prefix")
    group.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=argparse.SUPPRESS)
    group.add_argument("--log-format", choices=("auto", "console", "json"), default=argparse.SUPPRESS)
    return parent


def settings_from_args(args: argparse.Namespace) -> DeploySettings:
    from reconciler.settings import load_settings

    flags: dict[str, Any] = {
        "store": getattr(args, "store", None),
        "repository": {
            "url": getattr(args, "repo", None),
            "ref": getattr(args, "ref", None),
            "path": getattr(args, "manifest_path", None),
        },
        "logging": {"level": getattr(args, "log_level", None), "format": getattr(args, "log_format", None)},
    }
    if getattr(args, "timeout", None):
        flags["reconcile"] = {"timeout": args.timeout}
    flags["metrics"] = {"address": getattr(args, "metrics_address", None),
                        "textfile": getattr(args, "metrics_textfile", None),
                        "pushUrl": getattr(args, "metrics_push_url", None)}
    return load_settings(getattr(args, "config", None), flags=flags)


# --------------------------------------------------------------------------------------------------
# validate


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "validate",
        parents=[parent],
        help="check manifests (a folder, or a repo at --ref) without touching the store",
        description="Validate every manifest and report every problem as file:line:column. Exit 0 valid, 1 not.",
    )
    parser.add_argument("target", nargs="?", default=None, help="folder or file (default: the configured repo)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace, settings: DeploySettings) -> int:
    from reconciler.desired.loader import load_folder, load_git
    from reconciler.desired.policy import check_revision_policy
    from reconciler.desired.sources import GitSource
    from reconciler.errors import ManifestErrors

    ref_given = hasattr(args, "ref")
    target = args.target
    try:
        if target is not None and not ref_given:
            desired = load_folder(Path(target))
            origin = target
        else:
            repo = target or settings.repository.url
            source = GitSource(repo, settings.repository.ref, settings.repository.path)
            desired = load_git(source)
            origin = f"{repo}@{(desired.commit or '')[:12]}"
        check_revision_policy(desired, require_immutable_revisions=settings.policy.require_immutable_revisions)
    except ManifestErrors as exc:
        if args.format == "json":
            print(json.dumps({"valid": False, "errors": [e.to_dict() for e in exc.errors]}, indent=2))
        else:
            for error in exc.errors:
                print(error, file=sys.stderr)
            print(f"{len(exc.errors)} error(s); nothing was applied.", file=sys.stderr)
        return ExitCode.INVALID
    summary = desired.summary()
    if args.format == "json":
        print(json.dumps({"valid": True, "source": origin, "commit": desired.commit, "counts": summary}, indent=2))
    else:
        print(
            f"{origin}: valid: {summary['applications']} application(s), "
            f"{summary['deploymentGroups']} deployment group(s), {summary['deploymentConfigs']} deployment config(s)"
        )
    return ExitCode.OK


# --------------------------------------------------------------------------------------------------


#: What `reconcile` reads when nothing is configured; `reconciler.desired.sources.not_a_manifest` is the rule in code.
DEFAULTS_HELP = """\
Defaults: settings from ./deploy.yaml when it exists; the config repo is the current folder at HEAD,
manifests from the whole repository (--repo . --ref HEAD --path .). Every *.yaml / *.yml under --path
is a manifest except what plainly is not one: hidden files and folders (.github/, .gitlab-ci.yml), the
CI files bitbucket-pipelines.yml, azure-pipelines.yml and appveyor.yml at the top, and deploy.yaml at
the top (the settings file) unless it has an apiVersion: or kind: line. Any other YAML file must be a
valid manifest; keep manifests in their own folder (--path manifests) when the repository holds more."""


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser. `command="*"` (the default): every sub-command's full parser, importing every CLI module.
    Another name: that sub-command's full parser and one-line stand-ins for the others; None: stand-ins only,
    which is all `reconcile --help` needs."""
    parent = common_options()
    parser = argparse.ArgumentParser(
        prog="reconcile",
        parents=[parent],
        description="GitOps deployments for server fleets: converge hosts to the revisions in a config repo.",
        epilog=DEFAULTS_HELP + "\n\nExit codes: 0 ok/converged, 1 invalid input, 2 plan has changes, 3 failed and "
        "rolled back, 4 failed,\n5 timed out, 6 stale plan, 7 lease held elsewhere, 8 store unavailable,\n9 config "
        "commit refused by repository.verify.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--once", action="store_true", help="run passes until nothing is in flight, then exit")
    parser.add_argument("--timeout", default=None, help="with --once: give up after this long (e.g. 30m)")
    parser.add_argument("--no-wait", action="store_true", help="with --once: one pass, do not wait for rollouts")
    parser.add_argument("--plan", type=Path, default=None, help="with --once: apply exactly this saved plan")
    parser.add_argument("--metrics-textfile", default=None, metavar="PATH",
                        help="with --once: write metrics for node-exporter's textfile collector (docs/metrics.md)")
    parser.add_argument("--metrics-push-url", default=None, metavar="URL",
                        help="with --once: push metrics to a Pushgateway at the end (job fleetshift_reconcile)")
    parser.add_argument("--notify-timeout", default=None, metavar="DURATION",
                        help="with --once: wait this long after the last pass for notifications to go out "
                        "(default 30s; what is left goes out on the next run)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for name, module, summary in SUBCOMMANDS:
        if module in registered:
            continue  # the module added this one with the one before it
        if command in ("*", name) or (command is not None and _module_of(command) == module):
            registered.add(module)
            importlib.import_module(module).register(sub, parent)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _module_of(command: str) -> str | None:
    return next((module for name, module, _ in SUBCOMMANDS if name == command), None)


def _command_in(argv: list[str]) -> str | None:
    """The sub-command `argv` names, found with the stand-in parser (which knows every option before it); None for
    `--once` or none. `--help` at the top prints the help here, having imported nothing else."""
    known, _ = build_parser(None).parse_known_args(argv)
    command = getattr(known, "command", None)
    return command if isinstance(command, str) else None


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """One stderr line per FLEETSHIFT_* variable that looks like a setting but sets nothing.

    A warning, not an error: the variable may belong to something else that shares the prefix, and the
    rule for "looks like a setting" (see `unknown_environment_variables`) leaves CI and test variables out.
    Printed once per command, before the settings are read, so it shows even when they turn out invalid.
    """
    from reconciler.settings import unknown_environment_variables

    for name, meant in unknown_environment_variables(environ):
        hint = f"did you mean {meant}?" if meant else "deploy.yaml.example lists every setting's variable"
        print(f"reconcile: warning: {name} is not a setting and is ignored; {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`reconcile`. As the program (`argv` None), start-up runs with the garbage collector paused: it builds ~100,000
    objects that live as long as the process (modules, classes, pydantic's validators) and no garbage worth
    collecting, and the collector walked them again and again while they were made (a full collection among them:
    ~30 ms of every `--once`, and with the fleet read, ~0.15 s of a 10,000-host `plan`; issue 18). What start-up made
    is frozen out of its sight when the command is about to run (`_started`), and what is left when the command has
    returned is frozen too: the interpreter's last collection at exit would walk all of it for nothing (~0.1 s after a
    10,000-host `plan`, more than half of its exit). Exit handlers (logging's flush, temporary folders) still run,
    but an object left in a reference cycle is not finalized at exit: clean up with `with` and `finally`, never
    `__del__`. A caller in its own process (tests, tools) passes `argv` and keeps its collector as it is: freezing
    would keep its garbage alive."""
    if argv is not None:
        return _main(list(argv), started=lambda: None)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _main(sys.argv[1:], started=lambda: _started(enabled))
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _started(enabled: bool) -> None:
    """Start-up is over: freeze what it made (it lives until exit anyway) and let the collector run again."""
    gc.freeze()
    if enabled:
        gc.enable()


def _main(argv: list[str], *, started: Callable[[], None]) -> int:
    command = _command_in(argv)
    if command is not None:  # its module is imported to build its parser, and imports structlog: without rich
        import_structlog_without_rich()
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None and not args.once:
        parser.print_help(sys.stderr)
        return ExitCode.INVALID
    import_structlog_without_rich()
    from contract.logs import configure_logging
    from contract.store import InvalidStoreURL, StoreError
    from reconciler.desired.verify import UnverifiedCommit
    from reconciler.errors import ManifestErrors, ReconcilerError

    warn_unknown_variables(os.environ)
    try:
        settings = settings_from_args(args)
    except ManifestErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return ExitCode.INVALID
    except ReconcilerError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    json_lines = {"auto": None, "console": False, "json": True}[settings.logging.format]
    configure_logging(settings.logging.level, json_lines=json_lines)
    try:
        if args.command is None:
            from reconciler.cli.run import run_once

            started()
            return int(run_once(args, settings))
        started()
        return int(args.func(args, settings))
    except ManifestErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{len(exc.errors)} error(s); nothing was applied.", file=sys.stderr)
        return ExitCode.INVALID
    except InvalidStoreURL as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    except StoreError as exc:
        print(f"reconcile: store {settings.store}: {exc}", file=sys.stderr)
        return ExitCode.STORE_UNAVAILABLE
    except UnverifiedCommit as exc:
        print(f"reconcile: {exc}\n  nothing was applied (exit {int(ExitCode.UNVERIFIED_COMMIT)}).", file=sys.stderr)
        return ExitCode.UNVERIFIED_COMMIT
    except ReconcilerError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    except KeyboardInterrupt:
        print("reconcile: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
