"""The examples in examples/ work as written.

- every YAML file parses;
- every `reconcile ...` / `deploy-agent ...` command line in the CI files, their scripts, the systemd units and
  the examples' READMEs is accepted by the real argument parsers (sub-command and flags);
- the CI examples install fleetshift with one documented line that really works: run here, with this
  checkout's HEAD as the source, into a fresh venv, it gives working `reconcile` and `deploy-agent` commands;
- the systemd units keep the agent's children alive across restarts and run `reconcile watch` as a service;
- the IAM policies are valid JSON and grant an agent exactly its own keys of the store (the key shapes come
  from contract/keys.py), with `s3:ListBucket` on them so that a fresh agent's missing keys are 404s, not 403s.

tests/plan/test_ci_examples.py checks the plan workflows' behaviour (comment marker, the GitLab note script).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.main import build_parser as agent_parser
from contract import keys
from reconciler.cli.main import build_parser as reconcile_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CI = EXAMPLES / "ci"
CI_FILES = sorted([*CI.glob("github/*.yml"), CI / "gitlab" / ".gitlab-ci.yml"])
UNITS = sorted((EXAMPLES / "systemd").glob("*.service"))
IAM = EXAMPLES / "iam"
INSTALL_LINE = re.compile(r'pip install (?:--quiet )?"git\+\$\{FLEETSHIFT_SOURCE\}@\$\{FLEETSHIFT_COMMIT\}"')


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------------------
# YAML


@pytest.mark.parametrize(
    "path", sorted([*EXAMPLES.rglob("*.yml"), *EXAMPLES.rglob("*.yaml")]), ids=_rel
)
def test_every_yaml_file_in_the_examples_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert any(document is not None for document in documents), f"{_rel(path)} is empty"


# ---------------------------------------------------------------------------------------------------------
# Command lines

SHELL_KEYS = {"run", "script", "before_script"}


def shell_texts(node: Any, shell: bool = False) -> Iterator[str]:
    """The shell code of a CI file: GitHub `run:` steps, GitLab `script:` / `before_script:` lines."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from shell_texts(value, shell=key in SHELL_KEYS)
    elif isinstance(node, list):
        for item in node:
            yield from shell_texts(item, shell)
    elif isinstance(node, str) and shell:
        yield node


def _code_spans(text: str) -> Iterator[str]:
    """Fenced code blocks and `inline code` of Markdown or of comments."""
    yield from re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    without_blocks = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    yield from re.findall(r"`([^`\n]+)`", without_blocks)


def _command_sources() -> Iterator[tuple[str, str]]:
    """(where, text) for every place in the examples that shows a command to run."""
    for path in CI_FILES:
        text = path.read_text()
        for shell in shell_texts(yaml.safe_load(text)):
            yield _rel(path), shell
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        for span in _code_spans(comments):
            yield f"{_rel(path)} (comment)", span
    for path in sorted(CI.glob("gitlab/*.sh")):
        yield _rel(path), path.read_text()
    for path in UNITS:
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                yield _rel(path), line.removeprefix("ExecStart=")
            elif line.startswith("#   "):  # an indented command to type, in the install notes
                yield f"{_rel(path)} (comment)", line.lstrip("# ")
            elif line.startswith("#"):
                yield from ((f"{_rel(path)} (comment)", span) for span in _code_spans(line))
    for path in sorted(EXAMPLES.rglob("README.md")):
        for span in _code_spans(path.read_text()):
            yield _rel(path), span


COMMAND = re.compile(r"(?:^|[\s;(`|&])(?:/\S*/)?(reconcile|deploy-agent)(\s+[^|>;&\n`#]*)")


def _expand(command: str) -> str:
    """Shell and CI expansions become a placeholder word; optional words kept in lower-case shell variables
    (`$out`, `$plan`, `"${args[@]}"`) expand to nothing (their flags are checked by the next test)."""
    command = re.sub(r'"\$\{[a-z_]+\[@\]\}"', "", command)
    command = re.sub(r'(?<![\w"])\$[a-z_]+\b(?!")', "", command)
    command = re.sub(r"\$\{\{[^}]*\}\}", "X", command)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "X", command)


def _commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for where, text in _command_sources():
        for line in text.replace("\\\n", " ").splitlines():
            for match in COMMAND.finditer(line):
                program, rest = match.group(1), match.group(2).strip()
                if not rest.startswith("-") and not re.match(r"[a-z]+(\s|$)", rest):
                    continue
                argv = shlex.split(_expand(rest))
                found.append((where, program, argv))
    return found


COMMANDS = _commands()


def _parse(program: str, argv: list[str]) -> argparse.Namespace:
    parser = reconcile_parser() if program == "reconcile" else agent_parser()
    return parser.parse_args(argv)


def test_the_examples_show_commands_of_both_programs() -> None:
    programs = {program for _, program, _ in COMMANDS}
    assert programs == {"reconcile", "deploy-agent"}
    wheres = {where.removesuffix(" (comment)") for where, _, _ in COMMANDS}
    for path in [*CI_FILES, *UNITS]:
        assert _rel(path) in wheres, f"no command found in {_rel(path)}"


@pytest.mark.parametrize(("where", "program", "argv"), COMMANDS, ids=lambda v: v if isinstance(v, str) else None)
def test_every_command_line_uses_a_real_subcommand_and_real_flags(where: str, program: str, argv: list[str]) -> None:
    try:
        args = _parse(program, argv)
    except SystemExit:
        pytest.fail(f"{where}: `{program} {shlex.join(argv)}` is not accepted by {program}'s parser")
    if program == "reconcile":
        assert args.command is not None or args.once, f"{where}: `reconcile {shlex.join(argv)}` does nothing"


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _all_options(sub)
    return options


def test_flags_kept_in_shell_variables_are_real_reconcile_flags() -> None:
    options = _all_options(reconcile_parser())
    found = set()
    for path in CI_FILES:
        for shell in shell_texts(yaml.safe_load(path.read_text())):
            for flag in re.findall(r"\b[a-z_]+\+?=\(?\"?(--[a-z][a-z-]*)", shell):
                found.add(flag)
                assert flag in options, f"{_rel(path)}: {flag} is not a reconcile option"
    assert {"--out", "--plan", "--timeout"} <= found


# ---------------------------------------------------------------------------------------------------------
# Installing fleetshift in CI


def test_every_ci_example_installs_fleetshift_with_the_documented_line() -> None:
    readme = (CI / "README.md").read_text()
    assert INSTALL_LINE.search(readme), "examples/ci/README.md does not document the install line"
    for path in [*CI_FILES, CI / "README.md", *UNITS]:
        text = path.read_text()
        assert "fleetshift==" not in text, f"{_rel(path)} installs a fleetshift release, which is not published"
        assert not re.search(r"pip install fleetshift\b", text), f"{_rel(path)}: fleetshift is not on PyPI"
    for path in CI_FILES:
        text = path.read_text()
        shells = "\n".join(shell_texts(yaml.safe_load(text)))
        installs = [line for line in shells.splitlines() if "pip install" in line]
        assert installs, f"{_rel(path)} installs nothing"
        for line in installs:
            assert INSTALL_LINE.search(line), f"{_rel(path)}: undocumented install line {line.strip()!r}"
        assert re.search(r"^\s*FLEETSHIFT_SOURCE: ", text, flags=re.M), f"{_rel(path)} does not set FLEETSHIFT_SOURCE"
        assert re.search(r"^\s*FLEETSHIFT_COMMIT: ", text, flags=re.M), f"{_rel(path)} does not set FLEETSHIFT_COMMIT"
        assert "grep -Eqx '[0-9a-f]{40}'" in shells, f"{_rel(path)} does not refuse a commit that is not a full SHA"


def test_the_install_line_installs_working_commands_into_a_fresh_venv(tmp_path: Path) -> None:
    """The examples' exact line, with this checkout as the Git source at its HEAD commit. Dependencies are
    not downloaded (`--no-deps`): the fresh venv borrows them from the test venv, after its own packages."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    line = INSTALL_LINE.search((CI / "github" / "fleetshift-plan.yml").read_text())
    assert line is not None
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    pip = f"{shlex.quote(sys.executable)} -m pip --python {shlex.quote(str(python))}"
    command = line.group(0).replace("pip install", f"{pip} install --no-deps --quiet", 1)
    env = {**os.environ, "FLEETSHIFT_SOURCE": f"file://{ROOT}", "FLEETSHIFT_COMMIT": head.stdout.strip()}
    installed = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=240,
                               check=False)
    assert installed.returncode == 0, installed.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "zz_test_dependencies.pth").write_text(ours + "\n")
    for program in ("reconcile", "deploy-agent"):
        result = subprocess.run([str(venv / "bin" / program), "--help"], capture_output=True, text=True,
                                timeout=60, check=False, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"usage: {program}" in result.stdout
    where = subprocess.run([str(python), "-c", "import reconciler, agent; print(reconciler.__file__, agent.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.count(str(venv)) == 2, f"imported from outside the fresh venv: {where}"


# ---------------------------------------------------------------------------------------------------------
# systemd units


def _unit(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (EXAMPLES / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_restarting_the_agent_does_not_kill_what_its_hooks_started() -> None:
    unit = _unit("deploy-agent.service")
    assert unit["KillMode"] == ["process"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert 30 <= int(unit["TimeoutStopSec"][0]) <= 3600
    assert unit["EnvironmentFile"] == ["-/etc/fleetshift/agent.env"]
    assert "Environment" not in unit, "per-host values belong in agent.env, not in the shared unit"
    assert "Documentation" not in unit
    text = (EXAMPLES / "systemd" / "deploy-agent.service").read_text()
    assert "systemctl start" in text and "systemd-run --unit=" in text, "the unit no longer says how to start apps"


def test_the_reconciler_service_runs_reconcile_watch_as_its_own_user() -> None:
    unit = _unit("fleetshift-reconciler.service")
    argv = shlex.split(unit["ExecStart"][0])
    assert Path(argv[0]).name == "reconcile"
    args = reconcile_parser().parse_args(argv[1:])
    assert args.command == "watch"
    assert str(args.config) == "/etc/fleetshift/deploy.yaml"
    assert unit["Restart"] == ["always"]
    assert unit["User"] != ["root"] and unit["User"]
    assert unit["StateDirectory"] and unit["WorkingDirectory"] == [f"/var/lib/{unit['StateDirectory'][0]}"]


# ---------------------------------------------------------------------------------------------------------
# IAM

BUCKET, PREFIX = "my-fleet-store", "prod"
HOST_TAG = "${aws:PrincipalTag/fleetshift-host-id}"


def _policy(name: str, host_id: str = "web-1") -> list[dict[str, Any]]:
    text = (IAM / name).read_text()
    document = json.loads(text)  # valid JSON, with the placeholders in it
    assert document["Version"] == "2012-10-17"
    text = text.replace("DEPLOY_BUCKET", BUCKET).replace("STORE_PREFIX", PREFIX).replace(HOST_TAG, host_id)
    assert "${" not in text, f"{name}: a policy variable this test does not know"
    statements = json.loads(text)["Statement"]
    for statement in statements:
        assert statement["Effect"] == "Allow"
    return statements


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _allowed(statements: list[dict[str, Any]], action: str, key: str) -> bool:
    """Would `action` on the store key `key` be allowed (IAM wildcards: * and ? match across slashes)?"""
    full = f"{PREFIX}/{key}"
    for statement in statements:
        if action not in _as_list(statement["Action"]):
            continue
        for resource in _as_list(statement["Resource"]):
            if action == "s3:ListBucket":
                if resource != f"arn:aws:s3:::{BUCKET}":
                    continue
                condition = statement.get("Condition", {})
                like = _as_list(condition.get("StringLike", {}).get("s3:prefix", []))
                equals = _as_list(condition.get("StringEquals", {}).get("s3:prefix", []))
                if not condition or any(fnmatchcase(full, p) for p in like) or full in equals:
                    return True
            elif fnmatchcase(f"arn:aws:s3:::{BUCKET}/{full}", resource):
                return True
    return False


def _host_keys(host_id: str) -> list[str]:
    """Every key shape in contract/keys.py that is named after a host: the keys that host's agent uses."""
    found = []
    for name, function in inspect.getmembers(keys, inspect.isfunction):
        parameters = list(inspect.signature(function).parameters)
        if name.endswith("_key") and parameters and parameters[0] == "host_id":
            found.append(function(host_id, *(f"{p}-1" for p in parameters[1:])))
    assert {keys.registration_key(host_id), keys.status_key(host_id), keys.command_key(host_id)} <= set(found)
    return found


OTHER_KEYS = [
    keys.deployment_key("d-1"), keys.group_state_key("hello", "hello-prod"), keys.analysis_key("d-1"), keys.LEASE_KEY,
    keys.APPLIED_CONFIG_KEY, keys.FLEET_EVENTS_KEY, "events/notifications/slack.json", keys.WARM_START_KEY,
]
AGENT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket")


def _expected_agent_access(key: str) -> dict[str, bool]:
    writes = key.startswith(keys.HOSTS_PREFIX)  # an agent writes only about itself, under hosts/<id>/
    return {"s3:GetObject": True, "s3:PutObject": writes, "s3:DeleteObject": False, "s3:ListBucket": True}


def _access(statements: list[dict[str, Any]], key: str) -> dict[str, bool]:
    return {action: _allowed(statements, action, key) for action in AGENT_ACTIONS}


@pytest.mark.parametrize("name", sorted(p.name for p in IAM.glob("*.json")))
def test_every_policy_is_valid_json_with_placeholders_explained(name: str) -> None:
    _policy(name)
    readme = (IAM / "README.md").read_text()
    assert f"`{name}`" in readme, f"examples/iam/README.md does not describe {name}"
    for placeholder in ("DEPLOY_BUCKET", "STORE_PREFIX"):
        assert placeholder in (IAM / name).read_text() and f"`{placeholder}`" in readme


def test_the_agent_policy_grants_exactly_the_agents_own_keys() -> None:
    statements = _policy("agent-policy.json", host_id="web-1")
    for key in _host_keys("web-1"):
        # Reading a key that does not exist yet (a fresh host) needs ListBucket on it, or S3 answers 403.
        assert _access(statements, key) == _expected_agent_access(key), key
    for key in [*_host_keys("web-10"), *_host_keys("web"), *OTHER_KEYS]:
        assert not any(_access(statements, key).values()), f"web-1 may touch {key}"
    # Every pattern on the store is used by some key of the agent's (nothing granted for nothing).
    own = _host_keys("web-1")
    for statement in statements:
        for resource in _as_list(statement["Resource"]):
            if resource.startswith(f"arn:aws:s3:::{BUCKET}/"):
                assert any(fnmatchcase(f"arn:aws:s3:::{BUCKET}/{PREFIX}/{k}", resource) for k in own), resource
        for pattern in _as_list(statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix", [])):
            assert any(fnmatchcase(f"{PREFIX}/{k}", pattern) for k in own), pattern


def test_the_shared_role_policy_grants_every_hosts_agent_keys_and_nothing_else() -> None:
    statements = _policy("agent-policy-shared-role.json")
    for host in ("web-1", "i-0123456789abcdef0"):
        for key in _host_keys(host):
            assert _access(statements, key) == _expected_agent_access(key), key
    for key in OTHER_KEYS:
        assert not any(_access(statements, key).values()), key


def test_the_reconciler_writes_its_keys_and_only_reads_the_agents() -> None:
    statements = _policy("reconciler-policy.json")
    for key in [keys.command_key("web-1"), keys.traffic_key("web-1"), *OTHER_KEYS]:
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"):
            assert _allowed(statements, action, key), (action, key)
    for key in (keys.registration_key("web-1"), keys.status_key("web-1")):
        assert _allowed(statements, "s3:GetObject", key) and _allowed(statements, "s3:ListBucket", key)
        assert not _allowed(statements, "s3:PutObject", key) and not _allowed(statements, "s3:DeleteObject", key)


def test_the_plan_policy_only_reads() -> None:
    statements = _policy("plan-policy.json")
    for key in [*_host_keys("web-1"), *OTHER_KEYS]:
        assert _allowed(statements, "s3:GetObject", key) and _allowed(statements, "s3:ListBucket", key)
        assert not _allowed(statements, "s3:PutObject", key) and not _allowed(statements, "s3:DeleteObject", key)
