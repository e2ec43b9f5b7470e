"""appspec parsing: the reference agent's own cases (reference 7.1, 7.7) and YAML 1.1 typing (1.6)."""

from __future__ import annotations

import re
import textwrap

import pytest

from agent.errors import RevisionInvalid
from agent.lifecycle.appspec import (
    DEFAULT_TIMEOUT_SECONDS,
    AppSpec,
    find_appspec,
    parse_appspec,
)
from agent.lifecycle.revision_check import unknown_hook_problems
from contract.vocabulary import DEFAULT_EVENTS, FileExistsBehavior


def parse(text: str) -> AppSpec:
    return parse_appspec(textwrap.dedent(text).lstrip())


def problems(text: str) -> list[str]:
    with pytest.raises(RevisionInvalid) as caught:
        parse(text)
    return [str(p) for p in caught.value.problems]


BASE = "version: 0.0\nos: linux\n"


# 7.1 case 1-6 and 7.7 case 57: the document, version and os


@pytest.mark.parametrize("text", ["", " \n", "# only a comment\n"])
def test_empty_file_is_rejected(text: str) -> None:
    assert problems(text) == [
        "appspec.yml: the file is empty; an appspec needs at least `version: 0.0` and `os: linux`"
    ]


def test_missing_version_is_rejected_with_its_line() -> None:
    assert problems("os: linux\n") == ["appspec.yml:1: version: missing; write `version: 0.0`"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("invalid", "must be 0.0, found the text 'invalid'"),
        ("0.1", "must be 0.0, found the number 0.1"),
        ('"0.0"', "must be the number 0.0, not the quoted text '0.0': remove the quotes"),
        ("true", "must be 0.0, found the boolean true"),
    ],
)
def test_bad_versions(value: str, expected: str) -> None:
    assert problems(f"version: {value}\nos: linux\n") == [f"appspec.yml:1: version: {expected}"]


@pytest.mark.parametrize("value", ["0.0", "0", "0.00"])
def test_numeric_zero_versions_are_accepted(value: str) -> None:
    assert parse(f"version: {value}\nos: linux\n").version == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 0.0\n", "appspec.yml:1: os: missing; write `os: linux`"),
        (
            "version: 0.0\nos: unsupported\n",
            "appspec.yml:2: os: must be linux, found the text 'unsupported'",
        ),
        (
            "version: 0.0\nos: Linux\n",
            "appspec.yml:2: os: 'Linux' is not accepted: the value is case-sensitive, write `os: linux`",
        ),
        (
            "version: 0.0\nos: windows\n",
            "appspec.yml:2: os: the bundle is for Windows (`os: windows`); this agent deploys Linux bundles",
        ),
    ],
)
def test_os_must_be_linux(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_minimal_appspec_has_no_hooks_and_no_files() -> None:
    spec = parse(BASE)
    assert spec.hooks == {}
    assert spec.files == ()
    assert spec.permissions == ()
    assert spec.file_exists_behavior is None


def test_every_problem_is_reported_at_once_not_only_the_first() -> None:
    found = problems(
        """
        version: 1
        os: Linux
        hooks:
          BeforeInstall:
            - timeout: 30
        files:
          - source: app
        file_exists_behavior: overwrite
        """
    )
    assert len(found) == 5
    assert found[-1] == (
        "appspec.yml:8: file_exists_behavior: must be DISALLOW, OVERWRITE or RETAIN, found the text 'overwrite' "
        "(the value is case-sensitive: write OVERWRITE)"
    )


def test_yaml_syntax_error_names_line_and_column() -> None:
    (problem,) = problems("version: 0.0\nos: linux\nhooks: [a, b\n")
    # libyaml (Psych's parser too) says "did not find expected ',' or ']'"; pure-Python PyYAML words it apart.
    assert problem.startswith("appspec.yml:4:1: not valid YAML: ")
    assert "expected ',' or ']'" in problem


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == [
        "appspec.yml:1: expected a mapping of keys (version, os, files, hooks ...), found a list"
    ]


# 7.1 case 4: file_exists_behavior


@pytest.mark.parametrize("value", ["DISALLOW", "OVERWRITE", "RETAIN"])
def test_file_exists_behavior_values(value: str) -> None:
    assert parse(BASE + f"file_exists_behavior: {value}\n").file_exists_behavior == FileExistsBehavior(value)


# 7.1 cases 7-12: hooks


def test_hook_script_fields() -> None:
    spec = parse(
        BASE
        + """
hooks:
  test_hook:
    - location: test_location_1
      runas: foo
      timeout: 30
      sudo: true
"""
    )
    (script,) = spec.scripts_for("test_hook")
    assert (script.location, script.runas, script.timeout, script.sudo) == ("test_location_1", "foo", 30, True)


def test_scripts_keep_their_order_and_default_timeout() -> None:
    spec = parse(
        BASE
        + """
hooks:
  test_hook:
    - location: a
    - location: b
      runas: foo3
      timeout: 30
"""
    )
    scripts = spec.scripts_for("test_hook")
    assert [s.location for s in scripts] == ["a", "b"]
    assert [s.runas for s in scripts] == [None, "foo3"]
    assert [s.timeout for s in scripts] == [DEFAULT_TIMEOUT_SECONDS, 30]


def test_empty_hooks_are_ignored() -> None:
    spec = parse(BASE + "hooks:\n  empty_test_hook:\n  AfterInstall: []\n  test_hook:\n    - location: a\n")
    assert list(spec.hooks) == ["test_hook"]


def test_script_without_location_is_rejected() -> None:
    assert problems(BASE + "hooks:\n  BeforeInstall:\n    - timeout: 30\n") == [
        "appspec.yml:5: hooks.BeforeInstall[0].location: missing; every script needs `location: <path in the bundle>`"
    ]


@pytest.mark.parametrize("value", ["foo", "0", "-5", "true"])
def test_invalid_timeouts_are_rejected(value: str) -> None:
    (problem,) = problems(BASE + f"hooks:\n  BeforeInstall:\n    - location: a\n      timeout: {value}\n")
    assert problem.startswith("appspec.yml:6: hooks.BeforeInstall[0].timeout: must be a whole number of seconds")


@pytest.mark.parametrize(("value", "seconds"), [('"90s"', 90), ("30.5", 30), ('"30"', 30), ("99999", 99999)])
def test_timeouts_are_coerced_like_ruby_to_i(value: str, seconds: int) -> None:
    spec = parse(BASE + f"hooks:\n  BeforeInstall:\n    - location: a\n      timeout: {value}\n")
    assert spec.scripts_for("BeforeInstall")[0].timeout == seconds


def test_a_bare_string_script_gets_a_fix_not_a_crash() -> None:
    assert problems(BASE + "hooks:\n  BeforeInstall:\n    - scripts/ok.sh\n") == [
        "appspec.yml:5: hooks.BeforeInstall[0]: a script is a mapping; write `- location: scripts/ok.sh` instead of "
        "`- scripts/ok.sh`"
    ]


def test_hooks_as_a_list_is_rejected() -> None:
    assert problems(BASE + "hooks: [Foo]\n") == [
        "appspec.yml:3: hooks: must map event names to lists of scripts, found a list"
    ]


def test_scripts_under_agent_events_are_rejected() -> None:
    (problem,) = problems(BASE + "hooks:\n  Install:\n    - location: a\n")
    assert "Install is performed by the agent itself" in problem


def test_script_location_may_not_climb_out_of_the_bundle() -> None:
    (problem,) = problems(BASE + "hooks:\n  BeforeInstall:\n    - location: ../../etc/x\n")
    assert "points outside the bundle" in problem


def test_unknown_hook_names_are_found_with_a_suggestion() -> None:
    spec = parse(BASE + "hooks:\n  AfterInstal:\n    - location: a\n  MyCustom:\n    - location: b\n")
    found = [str(p) for p in unknown_hook_problems(spec, list(DEFAULT_EVENTS))]
    assert found == [
        "appspec.yml:4: hooks.AfterInstal: AfterInstal is not a lifecycle event, so it would never run; "
        "did you mean AfterInstall?",
        "appspec.yml:6: hooks.MyCustom: MyCustom is not a lifecycle event, so it would never run",
    ]
    # A custom event is fine when the command lists it (codedeploy-local --events MyCustom).
    assert len(unknown_hook_problems(spec, [*DEFAULT_EVENTS, "MyCustom"])) == 1


# 7.1 case 13: files


def test_files_pairs_in_order_with_normalized_paths() -> None:
    spec = parse(
        BASE + "files:\n  - source: /\n    destination: /srv/app/\n  - source: /config/a.conf\n    destination: /etc\n"
    )
    assert [(f.source, f.destination) for f in spec.files] == [("", "/srv/app"), ("config/a.conf", "/etc")]


def test_files_entries_need_source_and_destination() -> None:
    found = problems(BASE + "files:\n  - source: test_source\n  - destination: /x\n")
    assert found == [
        "appspec.yml:4: files[0].destination: missing for source 'test_source'; name the folder to copy into",
        "appspec.yml:5: files[1].source: missing; name a file or folder in the bundle (`/` for all of it)",
    ]


def test_relative_destination_is_rejected() -> None:
    (problem,) = problems(BASE + "files:\n  - source: a\n    destination: relative/dir\n")
    assert "'relative/dir' must be an absolute path" in problem


def test_files_as_a_mapping_is_rejected() -> None:
    (problem,) = problems(BASE + "files:\n  source: a\n  destination: /x\n")
    assert "files: must be a list" in problem


# 7.1 cases 14-20: permissions


def test_permission_defaults_and_order() -> None:
    spec = parse(
        BASE
        + """
permissions:
  - object: /a
  - object: /b
    pattern: "*.sh"
    except: ["x.sh"]
    type: [file]
  - object: /c
"""
    )
    first, second, _ = spec.permissions
    assert first.pattern == "**" and first.types == frozenset({"file", "directory"})
    assert (second.pattern, second.excepts, second.types) == ("*.sh", ("x.sh",), frozenset({"file"}))


def test_permission_without_object_is_rejected() -> None:
    (problem,) = problems(BASE + "permissions:\n  - mode: 644\n")
    assert "permissions[0].object: missing" in problem


def test_full_permission_entry() -> None:
    spec = parse(
        BASE
        + """
permissions:
  - object: /test
    pattern: 'prefix*'
    except: ['*ReadMe', '*.tmp']
    type: [file]
    owner: bob
    group: dev
    mode: 6763
    acls: ['u:henry:7', 'd:g:manager:rw']
    context:
      name: user_u
      type: unconfined_t
      range: 's3-s5:c0.c7,c13'
"""
    )
    (permission,) = spec.permissions
    assert permission.mode == 0o6763
    assert [str(ace) for ace in permission.acls] == ["user:henry:rwx", "default:group:manager:rw-"]
    assert permission.context is not None
    assert (permission.context.user, permission.context.type, permission.context.range) == (
        "user_u",
        "unconfined_t",
        "s3-s5:c0.c7,c13",
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("12", 0o12), ("0", 0o0), ("7777", 0o7777), ('"0644"', 0o644), ("644", 0o644), ("0644", 0o420)],
)
def test_modes(mode: str, expected: int) -> None:
    spec = parse(BASE + f"permissions:\n  - object: /a\n    mode: {mode}\n")
    assert spec.permissions[0].mode == expected


def test_unquoted_octal_mode_behaves_like_codedeploy_but_warns() -> None:
    spec = parse(BASE + "permissions:\n  - object: /a\n    mode: 0644\n")
    assert spec.permissions[0].mode == 0o420
    (warning,) = spec.warnings
    assert "`mode: 0644` is an octal number in YAML 1.1, read as 420, so the mode set is 420" in str(warning)


@pytest.mark.parametrize(
    ("mode", "fragment"), [("12345", "too long"), ("12a", "contains 'a'"), ("6.44", "contains '.'")]
)
def test_bad_modes(mode: str, fragment: str) -> None:
    (problem,) = problems(BASE + f"permissions:\n  - object: /a\n    mode: {mode}\n")
    assert fragment in problem


@pytest.mark.parametrize(
    ("ace", "fragment"),
    [
        ("7", "is not an ACL entry"),
        ("d:u:bob:7:rwx", "is not an ACL entry"),
        ("invalid:u:bob:7", "is not an ACL entry"),
        ("d:invalid:bob:7", "'invalid' is not u, g, m or o"),
        ("mask:name:rwx", "a mask entry takes no name"),
        ("d:other:name:rwx", "sets the `other` entry"),
        ("user:bob:rwxd", "contains 'd'"),
        ("u::7", "sets a base entry"),
        ("g::7", "sets a base entry"),
        ("o:7", "sets the `other` entry"),
    ],
)
def test_bad_acl_entries(ace: str, fragment: str) -> None:
    (problem,) = problems(BASE + f"permissions:\n  - object: /a\n    acls: ['{ace}']\n")
    assert fragment in problem


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("s3-s2:c0", "high sensitivity is below"),
        ("s3-", "is not a sensitivity"),
        (":c0", "is not a sensitivity"),
        ("sd3", "is not a sensitivity"),
        ("s0:c2.c1", "invalid category range c2.c1"),
        ("s0:c2.", "invalid category ''"),
        ("s0:", "nothing after ':'"),
        ("s0:c1024", "invalid category 'c1024'"),
        ("s0:c1,c1", "duplicate categories"),
    ],
)
def test_bad_selinux_ranges(value: str, fragment: str) -> None:
    (problem,) = problems(BASE + f"permissions:\n  - object: /a\n    context:\n      type: t\n      range: '{value}'\n")
    assert fragment in problem


def test_selinux_context_needs_a_type() -> None:
    (problem,) = problems(BASE + "permissions:\n  - object: /a\n    context:\n      name: user_u\n")
    assert "needs at least `type`" in problem


def test_permission_type_must_be_file_or_directory() -> None:
    (problem,) = problems(BASE + "permissions:\n  - object: /a\n    type: [socket]\n")
    assert "only file and directory are allowed, found socket" in problem


# What CodeDeploy silently ignores becomes a warning, never an error


def test_unknown_keys_warn_and_suggest() -> None:
    hooks = "Hooks:\n  BeforeInstall:\n    - location: a\n"
    spec = parse(BASE + hooks + "files:\n  - source: a\n    destination: /x\n    owner: me\n")
    assert spec.hooks == {}
    assert [str(w) for w in spec.warnings] == [
        "appspec.yml:9: files[0].owner: unknown key, ignored",
        "appspec.yml:3: Hooks: unknown key, ignored (CodeDeploy ignores it too); did you mean `hooks`? "
        "(keys are case-sensitive)",
    ]


# 7.5 case 44: which file is the appspec


def test_appspec_yml_then_yaml_then_explicit_name(tmp_path) -> None:
    (tmp_path / "appspec.yaml").write_text(BASE)
    assert find_appspec(tmp_path).name == "appspec.yaml"
    (tmp_path / "appspec.yml").write_text(BASE)
    assert find_appspec(tmp_path).name == "appspec.yml"
    (tmp_path / "custom.yml").write_text(BASE)
    assert find_appspec(tmp_path, "custom.yml").name == "custom.yml"
    with pytest.raises(RevisionInvalid, match=r"no missing\.yml at the top of the revision"):
        find_appspec(tmp_path, "missing.yml")


# Hostile input found by fuzzing (tests/fuzz/test_appspec_fuzz.py): a located problem, never a crash.


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+300", "604801", '"9999999999999999999999s"'])
def test_non_finite_and_huge_timeouts_are_located_errors(value: str) -> None:
    (problem,) = problems(BASE + f"hooks:\n  BeforeInstall:\n    - location: a\n      timeout: {value}\n")
    assert problem.startswith("appspec.yml:6: hooks.BeforeInstall[0].timeout: must be ")


def test_names_longer_than_the_os_allows_are_located_errors() -> None:
    found = problems(BASE + f"files:\n  - source: {'s' * 300}\n    destination: /srv/{'d/' * 2100}\n"
                     f"hooks:\n  BeforeInstall:\n    - location: scripts/{'a' * 256}\n")
    assert found[0].startswith("appspec.yml:8: hooks.BeforeInstall[0].location: ")
    assert "a file or folder name can be at most 255" in found[0]
    assert found[1].startswith("appspec.yml:4: files[0].source: ") and "at most 255" in found[1]
    assert found[2].startswith("appspec.yml:5: files[0].destination: ") and "at most 4095" in found[2]
    assert all(len(p) < 400 for p in found), "long names are cut short in messages"


def test_nul_characters_and_collections_in_names_are_located_errors() -> None:
    found = problems(BASE + 'hooks:\n  BeforeInstall:\n    - location: "a\\0b"\n      runas: [root]\n'
                     'permissions:\n  - object: /srv\n    owner: "r\\0"\n')
    assert found == [
        "appspec.yml:5: hooks.BeforeInstall[0].location: 'a\\x00b' contains a NUL character, which no name on a "
        "host can hold",
        "appspec.yml:6: hooks.BeforeInstall[0].runas: must be a user name, found a list",
        "appspec.yml:9: permissions[0].owner: 'r\\x00' contains a NUL character, which no name on a host can hold",
    ]


@pytest.mark.parametrize("tagged", ["!!timestamp tomorrow", "!!int many", "!!bool maybe", "9" * 5000])
def test_values_yaml_cannot_build_are_located_errors(tagged: str) -> None:
    (problem,) = problems(BASE + f"hooks:\n  BeforeInstall:\n    - location: a\n      timeout: {tagged}\n")
    assert problem.startswith("appspec.yml:6:16: not valid YAML: cannot read ")


def test_numbers_too_wide_to_print_are_described_by_size() -> None:
    found = problems(BASE + f"permissions:\n  - object: /srv\n    mode: 0x{'f' * 5000}\n")
    assert found == ["appspec.yml:5: permissions[0].mode: must be one to four octal digits, like 644 or 2755, "
                     "found a number of about 6020 digits"]


def test_an_alias_bomb_is_refused_at_its_line() -> None:
    rows = "".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    (problem,) = problems(BASE + 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + rows)
    assert re.match(r"appspec\.yml:\d+:\d+: not valid YAML: .*alias", problem)


def test_an_appspec_name_the_os_refuses_is_a_problem(tmp_path) -> None:
    with pytest.raises(RevisionInvalid) as caught:
        find_appspec(tmp_path, "x" * 300)
    assert "File name too long" in str(caught.value)
