"""`deploy-agent`: the thin command-line layer over the agent's library code.

Each sub-command lives with the code it drives (`agent.cli.local` for `local`/`validate`, `agent.daemon.cli`
for `run`); this module only builds the parser, sets up logging and maps outcomes to exit codes.
"""

from __future__ import annotations

import argparse
import sys

from contract.exitcodes import ExitCode
from contract.logs import LEVELS, configure_logging


def _global_options(parser: argparse.ArgumentParser, *, default_level: str | None, default_format: str | None,
                    suppress: bool) -> None:
    """--log-level and --log-format, on the top-level parser and on every sub-command, so
    `deploy-agent run --log-level debug` works as well as `deploy-agent --log-level debug run` (a unit file or
    a script appends flags after `run`; nobody should have to know argparse's rule about where they go).
    On sub-commands the defaults are SUPPRESS, so a flag given before the sub-command is not reset."""
    parser.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS if suppress else default_level,
                        help="log verbosity (default: info)")
    parser.add_argument(
        "--log-format", choices=("auto", "console", "json"),
        default=argparse.SUPPRESS if suppress else default_format,
        help="console on a terminal, JSON lines otherwise (auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    from agent.cli import local
    from agent.daemon import cli as daemon_cli

    parser = argparse.ArgumentParser(
        prog="deploy-agent",
        description="Host agent: deploys CodeDeploy-style bundles (appspec.yml) and reports to the store.",
    )
    _global_options(parser, default_level=None, default_format="auto", suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local.register(sub)
    daemon_cli.register(sub)
    for command in sub.choices.values():
        _global_options(command, default_level=None, default_format=None, suppress=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_lines = {"auto": None, "console": False, "json": True}[args.log_format]
    configure_logging(args.log_level or "info", json_lines=json_lines)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("deploy-agent: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
