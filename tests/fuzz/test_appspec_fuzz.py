"""Fuzzing the appspec reader (agent/lifecycle/appspec.py) with mutated seeds and generated appspecs.

The corpus (`corpus/appspecs/`) holds real-world-like appspecs (hooks, files, permissions, anchors and merge
keys) and the hostile inputs fuzzing once crashed `deploy-agent validate` with: `timeout: .inf` and `.nan`,
numbers too wide to print, names longer than the OS allows, NUL and terminal control characters, tags whose
constructor raised (`!!timestamp tomorrow`: None.groupdict), alias and merge bombs, wrong types everywhere,
deep and recursive nesting. The promise checked: `parse_appspec` returns an `AppSpec` or raises
`RevisionInvalid` whose every problem is located in `appspec.yml` (with a line inside the file when it has
one); nothing else; a bounded time per input. And `deploy-agent validate FILE`, as a real process, exits 0
or 1 with no traceback for every corpus file. CI runs the properties derandomized (tests/conftest.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import RevisionInvalid
from agent.lifecycle.appspec import AppSpec, parse_appspec
from contract.models import LIFECYCLE_EVENTS
from tests.agent.conftest import run_cli
from tests.fuzz.mutation import mutated

CORPUS = Path(__file__).parent / "corpus" / "appspecs"
SEED_FILES = sorted(CORPUS.glob("*.yml"))
SEEDS = [path.read_bytes() for path in SEED_FILES]
#: Far above what any input takes (the alias bomb, refused by contract/yamlmarks.py's budget, under a second);
#: a hang or an exponential blow-up breaks it.
SECONDS_PER_INPUT = 5.0
_WHERE = re.compile(r"appspec\.yml(?::(\d+)(?::(\d+))?)?")

YAML_PIECES = [b"&a ", b"*a", b"<<: *a", b"[", b"]", b"{", b"}", b"- ", b": ", b"? ", b"!!int ", b"!!float ",
               b"!!bool ", b"!!timestamp ", b"!!binary ", b"!!set ", b"!!omap ", b"!!pairs ", b"\t", b"\r",
               b"\xc2\x85", b"\xe2\x80\xa8", b"\x00", b"\x1b", b'"\\0"', b'"\\e[2J"', b"'", b'"', b"#", b"---\n",
               b"\n", b"  ", b"9" * 60, b"0x" + b"f" * 80, b".inf", b"-.inf", b".nan", b"1.0e+400", b"\xff",
               b"a" * 300, b"/x" * 200, b"timeout: ", b"location: ", b"runas: ", b"mode: ", b"object: ",
               b"source: ", b"destination: ", b"acls: ", b"context: ", b"range: s0:c", b"hooks:\n"]


def check_parse(content: bytes | str) -> AppSpec | None:
    """Parse one input; fail on anything but an AppSpec or located problems, or on a slow parse."""
    started = time.monotonic()
    try:
        spec = parse_appspec(content)
    except RevisionInvalid as exc:
        assert exc.problems, "RevisionInvalid without a problem"
        lines = (content.count(b"\n") if isinstance(content, bytes) else content.count("\n")) + 1
        for problem in exc.problems:
            match = _WHERE.fullmatch(problem.where)
            assert match, f"not located in appspec.yml: {problem}"
            if match.group(1):
                assert 1 <= int(match.group(1)) <= lines + 1, f"line outside the file ({lines} lines): {problem}"
            assert problem.message.strip(), problem
            str(problem)  # renders (no number too wide to print, no collection stringified)
        spec = None
    else:
        assert isinstance(spec, AppSpec)
        for warning in spec.warnings:
            assert _WHERE.fullmatch(warning.where), warning
        for scripts in spec.hooks.values():
            for script in scripts:
                assert 0 < script.timeout <= 7 * 24 * 3600, script
                assert "\0" not in script.location and "\0" not in (script.runas or "")
    elapsed = time.monotonic() - started
    assert elapsed < SECONDS_PER_INPUT, f"{elapsed:.1f} s for one input"
    return spec


# --------------------------------------------------------------------------------------------------
# The seeds themselves


def test_the_corpus_holds_valid_and_hostile_appspecs() -> None:
    names = {path.stem for path in SEED_FILES}
    assert {"timeout-inf", "timeout-nan", "long-names", "alias-bomb", "timestamp-groupdict", "wrong-types",
            "deep-nesting", "control-characters"} <= names
    results = {path.stem: check_parse(path.read_bytes()) for path in SEED_FILES}
    valid = {name for name, spec in results.items() if spec is not None}
    assert valid == {name for name in names if name.startswith("valid-")}


def test_the_alias_bomb_is_refused_quickly_at_its_line() -> None:
    started = time.monotonic()
    try:
        parse_appspec((CORPUS / "alias-bomb.yml").read_bytes())
    except RevisionInvalid as exc:
        (problem,) = exc.problems
        assert re.fullmatch(r"appspec\.yml:\d+:\d+", problem.where), problem
        assert "alias" in problem.message
    else:
        raise AssertionError("the alias bomb was accepted")
    assert time.monotonic() - started < 3.0


# --------------------------------------------------------------------------------------------------
# Mutated seeds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SEEDS, YAML_PIECES, min_steps=1) | st.binary(max_size=200) | st.text(max_size=200))
def test_mutated_appspecs_parse_or_give_located_problems(content: bytes | str) -> None:
    check_parse(content)


# --------------------------------------------------------------------------------------------------
# Generated appspecs: the right shape, hostile values in every field


def _names(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=12) | st.builds(lambda n, c: c * n, st.integers(250, 300),
                                                                   st.sampled_from("ab/"))


_TEXT = _names(st.characters(codec="utf-8")) | st.sampled_from(["scripts/a.sh", "/srv/app", "root", "../etc",
                                                                 "a\0b", "\x1b[2J", "\u202e", "u:deploy:rwx"])
_NUMBERS = (st.integers(-(10**30), 10**30) | st.sampled_from([0, -1, 10**300, 2**4000, 604800, 604801])
            | st.floats(allow_nan=True, allow_infinity=True))
_SCALARS: st.SearchStrategy[Any] = st.none() | st.booleans() | _NUMBERS | _TEXT
_ANY: st.SearchStrategy[Any] = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8
)


def _field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return good | _ANY


_SCRIPT = st.fixed_dictionaries({"location": _field(st.just("scripts/a.sh"))}, optional={
    "timeout": _field(st.integers(1, 3600) | st.sampled_from([".inf", "90s"])),
    "runas": _field(st.just("deploy")), "sudo": _ANY, "extra": _ANY,
})
_FILE = st.fixed_dictionaries({"source": _field(st.just("/")), "destination": _field(st.just("/srv/app"))})
_PERMISSION = st.fixed_dictionaries({"object": _field(st.just("/srv/app"))}, optional={
    "pattern": _ANY, "except": _ANY, "type": _field(st.just(["file"])), "owner": _ANY, "group": _ANY,
    "mode": _field(st.sampled_from([644, "0755", 4755])), "acls": _field(st.just(["u:deploy:rwx", "m::r"])),
    "context": _field(st.fixed_dictionaries({"type": _ANY}, optional={"name": _ANY, "range": _ANY})),
})
_APPSPEC = st.fixed_dictionaries(
    {"version": _field(st.just(0.0)), "os": _field(st.just("linux"))},
    optional={
        "hooks": _field(st.dictionaries(st.sampled_from([*LIFECYCLE_EVENTS, "AfterInstal"]),
                                        st.lists(_field(_SCRIPT), max_size=3), max_size=4)),
        "files": _field(st.lists(_field(_FILE), max_size=3)),
        "permissions": _field(st.lists(_field(_PERMISSION), max_size=3)),
        "file_exists_behavior": _field(st.sampled_from(["OVERWRITE", "retain", "DISALLOW"])),
    },
)


def _dump(document: Any) -> str:
    # PyYAML writes 2**4000 as its digits (more than Python prints by default: allow it here only).
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    finally:
        sys.set_int_max_str_digits(limit)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_APPSPEC)
def test_generated_appspecs_parse_or_give_located_problems(document: dict[str, Any]) -> None:
    check_parse(_dump(document))


def test_non_finite_and_huge_timeouts_name_their_line() -> None:
    for value in (".inf", "-.inf", ".nan", "1.0e+300", "604801", '"99999999999999999999999999s"', "0x" + "f" * 99):
        text = f"version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: a\n      timeout: {value}\n"
        try:
            parse_appspec(text)
        except RevisionInvalid as exc:
            assert [p.where for p in exc.problems] == ["appspec.yml:6"], (value, exc.problems)
            assert exc.problems[0].field == "hooks.BeforeInstall[0].timeout"
        else:
            raise AssertionError(f"timeout {value} accepted")


# --------------------------------------------------------------------------------------------------
# `deploy-agent validate` as a process


#: One seed per crash class fuzzing found, plus a valid one, run as real processes (each costs an interpreter
#: start, so not all of them: every seed goes through the same command in-process below).
PROCESS_SEEDS = ["valid-web-app", "timeout-inf", "long-names", "timestamp-groupdict", "alias-bomb",
                 "control-characters"]


def expected_exit(path: Path) -> int:
    return 0 if path.stem.startswith("valid-") else 1


def test_deploy_agent_validate_exits_0_or_1_without_a_traceback_as_a_process() -> None:
    command = [sys.executable, "-m", "agent", "validate"]
    running = [(path, subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
               for path in (CORPUS / f"{name}.yml" for name in PROCESS_SEEDS)]
    for path, process in running:
        out, err = process.communicate(timeout=60)
        assert process.returncode == expected_exit(path), (path.name, out, err)
        assert b"Traceback" not in err and b"Traceback" not in out, (path.name, err)
        if process.returncode:
            located = rb"^error: " + re.escape(path.name.encode()) + rb":\d+"
            assert re.search(located, out, re.M), (path.name, out)
        assert b"\x1b" not in out, "a control character from the appspec reached the terminal"


def test_deploy_agent_validate_gives_every_seed_a_located_verdict() -> None:
    for path in SEED_FILES:
        result = run_cli("validate", str(path))
        assert result.code == expected_exit(path), (path.name, result)
        if result.code:
            assert re.search(rf"^error: {re.escape(path.name)}:\d+", result.out, re.M), (path.name, result.out)
        json_result = run_cli("validate", str(path), "--format", "json")
        assert json_result.code == result.code
