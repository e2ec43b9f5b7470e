"""`deploy-agent`'s parser loads none of what its sub-commands run (issue 18: `--help` took 16 times a bare
interpreter's start), and every sub-command still reaches its code."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from agent.cli.parser import LOG_LEVELS, EntryPoint, build_parser
from contract.logs import LEVELS
from tests.daemon.test_import_boundary import loaded_after

#: What printing help or refusing a flag must not load: the engine, the daemon, the store, the models and
#: the logging stack.
HEAVY = ("structlog", "pydantic", "rich", "yaml", "boto3", "botocore", "cryptography", "agent", "contract")
ALLOWED = {"agent", "agent.cli", "agent.cli.main", "agent.cli.parser", "agent.daemon", "agent.daemon.flags",
           "contract", "contract.paths", "contract.exitcodes", "contract.startup"}


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["local", "--help"], ["validate", "--help"],
                                  ["run", "--no-such-flag"]])
def test_help_and_usage_errors_load_nothing_heavy(argv: list[str]) -> None:
    probe = (
        "import contextlib, io\n"
        "from agent.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass\n"
    )
    loaded = set(loaded_after(probe, HEAVY))
    assert loaded - ALLOWED == set()


@pytest.mark.slow
def test_help_is_printed_by_the_installed_program() -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "run", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0
    assert "--poll-interval" in done.stdout and "--take-over" in done.stdout


def test_every_sub_command_names_a_function_that_exists() -> None:
    """The entry points are strings until a sub-command runs: a renamed function must fail here, not on a host."""
    parser = build_parser()
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    commands: dict[str, argparse.ArgumentParser] = actions[0].choices
    assert set(commands) == {"local", "validate", "run"}
    for name, sub in commands.items():
        entry = sub.get_default("func")
        assert isinstance(entry, EntryPoint), name
        assert callable(getattr(importlib.import_module(entry.module), entry.name)), name


def test_log_levels_are_the_logging_modules() -> None:
    assert LOG_LEVELS == LEVELS


def test_an_entry_point_runs_its_function_with_the_arguments() -> None:
    entry = EntryPoint("operator", "add")
    assert entry(2, 3) == 5
    assert "operator:add" in repr(entry)
