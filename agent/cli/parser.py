"""`deploy-agent`'s command line: every sub-command's flags, and nothing else.

Why a module of its own: building the parser must not load what the sub-commands run. `deploy-agent --help`
used to import the daemon, the lifecycle engine, pydantic's models and structlog (with rich) just to print
its flags, 16 times a bare interpreter's start (issue 18). Here only argparse and the standard library are
imported (the flags of `run` come from agent/daemon/flags.py, as light). Each sub-command's function is an
`EntryPoint`, imported when that sub-command runs (`agent.cli.local` for `local` and `validate`,
`agent.daemon.cli` for `run`); tests/agent/test_cli_parser.py checks that building the parser and printing
help load none of it.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from agent.daemon.flags import add_run_parser
from contract.paths import state_dir

#: `--log-level` choices; the same as contract.logs.LEVELS, repeated so the parser does not load structlog
#: (a test keeps the two equal).
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_GROUP_ID = "default-local-deployment-group"
DEFAULT_GROUP_NAME = "LocalFleet"


def default_root_dir() -> Path:
    """Root: /var/lib/fleetshift/deployment-root. Anyone else: under $XDG_STATE_HOME (or ~/.local/state)."""
    return state_dir() / "deployment-root"


class EntryPoint:
    """A sub-command's function, named by module and attribute and imported on the first call."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any) -> int:
        function = getattr(importlib.import_module(self.module), self.name)
        return int(function(*args))

    def __repr__(self) -> str:
        return f"EntryPoint({self.module}:{self.name})"


def global_options(parser: argparse.ArgumentParser, *, default_level: str | None, default_format: str | None,
                   suppress: bool) -> None:
    """--log-level and --log-format, on the top-level parser and on every sub-command, so
    `deploy-agent run --log-level debug` works as well as `deploy-agent --log-level debug run` (a unit file or
    a script appends flags after `run`; nobody should have to know argparse's rule about where they go).
    On sub-commands the defaults are SUPPRESS, so a flag given before the sub-command is not reset."""
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default=argparse.SUPPRESS if suppress else default_level, help="log verbosity (default: info)")
    parser.add_argument(
        "--log-format", choices=("auto", "console", "json"),
        default=argparse.SUPPRESS if suppress else default_format,
        help="console on a terminal, JSON lines otherwise (auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy-agent",
        description="Host agent: deploys CodeDeploy-style bundles (appspec.yml) and reports to the store.",
    )
    global_options(parser, default_level=None, default_format="auto", suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_local_commands(sub)
    add_run_parser(sub).set_defaults(func=EntryPoint("agent.daemon.cli", "run_command"))
    for command in sub.choices.values():
        global_options(command, default_level=None, default_format=None, suppress=True)
    return parser


# --------------------------------------------------------------------------------------------------
# local and validate (run by agent/cli/local.py)


def register_local_commands(subparsers: Any) -> None:
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
    local.add_argument("--health-check", metavar="URL",
                       help="after ValidateService, GET URL every 2 s until it has answered 200 for "
                       "--min-healthy-time (HealthCheck; gives up after 300 s)")
    local.add_argument("--min-healthy-time", type=float, default=10.0, metavar="SECONDS",
                       help="with --health-check: how long every check must pass (default 10; 0: one pass is enough)")
    local.set_defaults(func=EntryPoint("agent.cli.local", "run_local"))

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
    validate.set_defaults(func=EntryPoint("agent.cli.local", "run_validate"))


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
