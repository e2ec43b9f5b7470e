"""`deploy-agent`: the thin command-line layer over the agent's library code.

The flags of every sub-command are in agent/cli/parser.py, which imports only argparse; each sub-command's
code (`agent.cli.local` for `local`/`validate`, `agent.daemon.cli` for `run`) is imported once the arguments
are parsed, and logging (structlog) is set up only then, so `deploy-agent --help` and a mistyped flag cost
little more than the interpreter's own start (issue 18). This module maps outcomes to exit codes.
"""

from __future__ import annotations

import sys

from agent.cli.parser import build_parser
from contract.exitcodes import ExitCode
from contract.startup import import_structlog_without_rich

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_lines = {"auto": None, "console": False, "json": True}[args.log_format]
    import_structlog_without_rich()
    from contract.logs import configure_logging

    configure_logging(args.log_level or "info", json_lines=json_lines)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("deploy-agent: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
