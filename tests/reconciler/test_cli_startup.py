"""`reconcile` starts fast: `--help` imports nothing but the standard library and the exit codes, and a sub-command
imports its own module only. The lazy parser must say exactly what the full one says."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli.main import SUBCOMMANDS, build_parser

#: Heavy packages `reconcile --help` must not load (pydantic, structlog and rich alone took ~0.3 s).
HEAVY = ("pydantic", "structlog", "rich", "yaml", "git", "boto3", "cryptography", "prometheus_client",
         "reconciler.settings", "reconciler.core", "contract.models")


def loaded_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from reconciler.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(done.stdout.split())


def test_help_loads_nothing_heavy() -> None:
    loaded = loaded_after(["--help"])
    assert not [name for name in loaded if name.split(".")[0] in HEAVY or name in HEAVY]
    assert not [name for name in loaded if name.startswith("reconciler.cli.") and name != "reconciler.cli.main"]


def test_a_subcommand_loads_its_own_module_only() -> None:
    loaded = loaded_after(["history", "--help"])
    assert "reconciler.cli.history" in loaded
    assert "reconciler.cli.plan" not in loaded and "reconciler.cli.keys" not in loaded


def test_a_pass_without_metric_gates_loads_no_http_client() -> None:
    """Every `reconcile` pass imports the gate shell; the Prometheus client it calls (urllib, http.client, ssl: ~8 ms
    of each start) is imported at the first gate due, so a fleet without metric gates never pays for it."""
    code = (
        "import sys\n"
        "from contract.startup import import_structlog_without_rich\n"
        "import_structlog_without_rich()  # as `reconcile` starts (asyncio, which loads ssl, deferred)\n"
        "import reconciler.cli.run, reconciler.shell.passes, reconciler.shell.gates\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = set(done.stdout.split())
    assert "reconciler.shell.passes" in loaded
    assert not loaded & {"http.client", "ssl", "urllib.request", "reconciler.gates.prometheus"}


def test_the_lazy_help_is_the_full_help() -> None:
    """The one-line summaries in SUBCOMMANDS are the modules' own `help=`: `reconcile --help` built from stand-ins
    reads exactly as the parser with every module registered."""
    assert build_parser(None).format_help() == build_parser("*").format_help()


@pytest.mark.parametrize("name", sorted({name for name, _, _ in SUBCOMMANDS}))
def test_each_subcommand_parses_with_its_own_module(name: str) -> None:
    def command_help(parser: argparse.ArgumentParser) -> str:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return str(action.choices[name].format_help())

    assert command_help(build_parser(name)) == command_help(build_parser("*"))


def test_structlog_is_loaded_with_asyncio_deferred_until_something_uses_it() -> None:
    """Both programs load structlog first (`contract/startup.py`): without rich, and with `asyncio` (and the `ssl`
    and sockets it brings) left unloaded until something uses it. Whoever then imports `asyncio`, a submodule of it,
    or calls structlog's `async` logging methods gets the real module."""
    code = (
        "import sys\n"
        "from contract.startup import import_structlog_without_rich\n"
        "import_structlog_without_rich()\n"
        "assert 'structlog' in sys.modules\n"
        "assert 'rich' not in sys.modules and 'asyncio' not in sys.modules and 'asyncio.events' not in sys.modules\n"
        "import asyncio.subprocess  # a submodule first: one copy of each module, the package's own\n"
        "from asyncio.events import AbstractEventLoop\n"
        "assert sys.modules['asyncio.subprocess'] is asyncio.subprocess\n"
        "import structlog\n"
        "structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stdout))\n"
        "async def main():\n"
        "    await structlog.get_logger().ainfo('from.async')\n"
        "    assert isinstance(asyncio.get_running_loop(), AbstractEventLoop)\n"
        "    process = await asyncio.create_subprocess_exec(sys.executable, '-c', 'pass')\n"
        "    assert isinstance(process, asyncio.subprocess.Process) and await process.wait() == 0\n"
        "    return await asyncio.sleep(0, result='slept')\n"
        "print(asyncio.run(main()))\n"
        "held = sys.modules['structlog._native'].asyncio  # what structlog imported: the stand-in, now filled\n"
        "assert held.get_running_loop is asyncio.get_running_loop\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "from.async" in done.stdout and done.stdout.strip().endswith("slept")


def collector_after(argv: list[str] | None, tmp: str) -> dict[str, object]:
    """`reconcile validate` on an empty folder (it finds no manifests) in a fresh interpreter: as the program (argv
    None, through sys.argv) or as a caller in its own process; what the garbage collector looked like while the
    command ran and after main returned."""
    call = "main()" if argv is None else f"main({argv!r})"
    code = (
        "import gc, json, sys\n"
        "import reconciler.cli.main as validate\n"
        "seen = {}\n"
        "real = validate.run_validate\n"
        "def spy(*args, **kwargs):\n"
        "    seen.update(during_enabled=gc.isenabled(), during_frozen=gc.get_freeze_count())\n"
        "    try:\n"
        "        return real(*args, **kwargs)\n"
        "    finally:\n"
        "        gc.unfreeze()  # as `plan` and `status` hand back what they froze\n"
        "validate.run_validate = spy\n"
        f"sys.argv = ['reconcile', 'validate', '--repo', {tmp!r}, '--ref', 'HEAD']\n"
        "from reconciler.cli.main import main\n"
        f"seen['code'] = {call}\n"
        "seen.update(after_enabled=gc.isenabled(), after_frozen=gc.get_freeze_count())\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_start_up_runs_with_the_collector_paused_and_hands_the_command_a_frozen_heap(tmp_path: Path) -> None:
    """As the program, what start-up built is frozen when the command runs and the collector is on again (issue 18:
    ~30 ms of every `--once`), and everything is frozen once the command has returned (the collection at exit cost a
    10,000-host plan ~0.1 s); a caller in its own process keeps its collector untouched (nothing frozen)."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "empty"], check=True)
    program = collector_after(None, str(tmp_path))
    assert program["during_enabled"] is True and program["after_enabled"] is True
    assert isinstance(program["during_frozen"], int) and program["during_frozen"] > 10_000
    embedded = collector_after(["validate", "--repo", str(tmp_path), "--ref", "HEAD"], str(tmp_path))
    assert embedded["during_enabled"] is True and embedded["during_frozen"] == 0
    assert program["code"] == embedded["code"]
    # The command returned: what is left is frozen again, so the collection at exit does not walk it.
    assert isinstance(program["after_frozen"], int) and program["after_frozen"] > 10_000
    assert embedded["after_frozen"] == 0


def test_a_json_plan_of_a_local_checkout_with_a_base_loads_neither_gitpython_nor_rich(tmp_path: Path) -> None:
    """Issue 18: the two refs of a CI job's plan (`--base` given, a local checkout) are resolved by the git program,
    and rich is only for the text format, ~40 ms of every plan. A default base (the merge base with the default
    branch) still goes through GitPython, which finds it."""
    repo = tmp_path / "config"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "app.yaml").write_text("apiVersion: deploy/v1\nkind: Application\nmetadata:\n  name: shop\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "app"], check=True)
    subprocess.run([*git, "checkout", "-q", "-b", "change"], check=True)
    (repo / "app.yaml").write_text("apiVersion: deploy/v1\nkind: Application\nmetadata:\n  name: shop2\n")
    subprocess.run([*git, "commit", "-q", "-am", "rename"], check=True)

    def plan(*refs: str) -> tuple[set[str], dict[str, object]]:
        code = (
            "import io, json, sys\n"
            "from contextlib import redirect_stdout\n"
            "from reconciler.cli.main import main\n"
            "out = io.StringIO()\n"
            "with redirect_stdout(out):\n"
            f"    code = main(['plan', '--repo', {str(repo)!r}, '--offline', '--format', 'json', *{list(refs)!r}])\n"
            "print(json.dumps({'code': code, 'plan': json.loads(out.getvalue()), 'modules': sorted(sys.modules)}))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                              cwd=tmp_path)
        found = json.loads(done.stdout.splitlines()[-1])
        assert found["code"] == 2, done.stderr  # changes
        return set(found["modules"]), found["plan"]

    loaded, with_base = plan("--base", "main", "--head", "change")
    assert not {name.split(".")[0] for name in loaded} & {"git", "rich"}
    loaded, merge_base = plan("--head", "change")
    assert "git" in loaded  # no --base: the merge base, through GitPython
    assert with_base["head"] == merge_base["head"]
    assert isinstance(with_base["base"], dict) and isinstance(merge_base["base"], dict)
    assert with_base["base"]["commit"] == merge_base["base"]["commit"]  # the same commit, however it was found
    assert merge_base["base"]["note"] == "merge base of change and main" and with_base["base"]["note"] is None
