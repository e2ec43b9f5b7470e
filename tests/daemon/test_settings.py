"""agent.yaml < FLEETSHIFT_AGENT_* < flags, and errors that point at the file line, the variable or the flag."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from agent.daemon.cli import register, settings_from_args
from agent.settings import (
    ENV_VARIABLES,
    AgentSettings,
    SettingsError,
    load_settings,
    meant_variable,
    parse_listen_address,
    state_dir,
    unknown_environment_variables,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "agent.yaml.example"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


def test_example_file_is_valid_and_documents_every_key() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.host_id == "web-1" and settings.tags == {"app": "hello", "env": "production"}
    text = EXAMPLE.read_text()
    for info in msgspec.structs.fields(AgentSettings):
        if info.name != "given_fields":  # filled by load_settings, not a key
            assert f"\n{info.encode_name}:" in text, f"{info.encode_name} is not in agent.yaml.example"
    for info in msgspec.structs.fields(type(settings.logging)):
        assert f"\n  {info.encode_name}:" in text
    for variable in ENV_VARIABLES:
        assert variable.startswith("FLEETSHIFT_AGENT_")


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, environ={})
    assert settings.store == f"file://{state_dir()}/store" and settings.root_dir == state_dir() / "deployment-root"
    assert settings.poll_interval == timedelta(seconds=10) and settings.heartbeat_interval == timedelta(minutes=5)
    assert settings.host_id  # the host name
    assert settings.host_root is None and settings.max_revisions == 5


def test_state_lives_in_var_lib_for_root_and_in_xdg_state_for_users(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert state_dir() == Path("/var/lib/fleetshift")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "fleetshift"


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "hostId: from-file\nstore: file:///from-file\npollInterval: 10s\nzone: a\n"
        "tags: {app: hello, env: prod, team: web}\nlogging: {level: debug}\n"
    )
    environ = {"FLEETSHIFT_AGENT_STORE": "s3://from-env/prefix", "FLEETSHIFT_AGENT_POLL_INTERVAL": "20s",
               "FLEETSHIFT_AGENT_TAGS": "env=staging,rack=", "FLEETSHIFT_AGENT_LOGGING_FORMAT": "json",
               "FLEETSHIFT_AGENT_HEARTBEAT_INTERVAL": "2m"}
    args = parse("--config", str(config), "--poll-interval", "1s", "--tag", "env=canary", "--host-id", "web-9")
    settings = settings_from_args(args, environ)
    assert settings.host_id == "web-9"  # flag
    assert settings.store == "s3://from-env/prefix"  # environment over file
    assert settings.poll_interval == timedelta(seconds=1)  # flag over environment over file
    assert settings.heartbeat_interval == timedelta(minutes=2)
    assert settings.zone == "a"  # file only
    assert settings.tags == {"app": "hello", "env": "canary", "team": "web", "rack": ""}  # merged key by key
    assert (settings.logging.level, settings.logging.format) == ("debug", "json")


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("hostId: via-variable\n")
    assert load_settings(None, environ={"FLEETSHIFT_AGENT_CONFIG": str(config)}).host_id == "via-variable"


def test_file_errors_name_file_line_column_and_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("hostId: web-1\npollInterval: soon\nlogging:\n  level: loud\nheartbeatIntervall: 1m\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert raised.value.problems == [
        f"{config}:2:1: pollInterval: invalid duration 'soon': write a number and a unit, like 90s, 5m, 1h30m",
        f"{config}:4:3: logging.level: expected 'debug', 'info', 'warning' or 'error', not 'loud'",
        f"{config}:5:1: heartbeatIntervall: unknown key; did you mean `heartbeatInterval`?",
    ]


def test_unknown_keys_suggest_the_key_they_most_likely_meant(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("polInterval: 5s\nhost_id: web-1\nlogging:\n  formt: json\ncolour: blue\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert sorted(raised.value.problems) == [
        f"{config}:1:1: polInterval: unknown key; did you mean `pollInterval`?",
        f"{config}:4:3: logging.formt: unknown key; did you mean `format`?",
        f"{config}:5:1: colour: unknown key (see agent.yaml.example for every key)",
    ]


def test_a_tab_is_named_with_its_position(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("hostId: web-1\ntags:\n\tapp: hello\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert raised.value.problems == [f"{config}:3:1: not valid YAML: a tab character (YAML indents with spaces only)"]


def test_environment_and_flag_errors_name_the_variable_or_flag(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_from_args(parse("--host-id", "web/1", "--store", "ftp://x"),
                           {"FLEETSHIFT_AGENT_MAX_REVISIONS": "zero"})
    assert raised.value.problems == [
        "--host-id: 'web/1' cannot be a host id: use letters, digits, '.', '_' and '-', starting with a letter "
        "or digit (it becomes part of store keys)",
        "--store: 'ftp://x' is not a store URL: write file:///path/to/dir or s3://bucket/prefix",
        "FLEETSHIFT_AGENT_MAX_REVISIONS: expected a whole number of at least 1, not 'zero'",
    ]
    with pytest.raises(SettingsError, match=r"--tag oops: tag 'oops' must be written KEY=VALUE"):
        settings_from_args(parse("--tag", "oops"), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hostId: [unclosed\n", ":2:1: not valid YAML: expected ',' or ']', but got '<stream end>' (while parsing "
                                "a flow sequence at 1:9)"),
        ("- a list\n", ":1:1: the settings file must be a mapping"),
        ("zone: a\nzone: b\n", ":2:1: zone: duplicate key"),
        ("pollInterval: 10ms\n", ":1:1: pollInterval: must be at least 50ms"),
    ],
)
def test_broken_files(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert message in raised.value.problems[0] and raised.value.problems[0].startswith(str(config))


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_unknown_variables_are_found_for_a_warning() -> None:
    environ = {"FLEETSHIFT_AGENT_STOR": "x", "FLEETSHIFT_AGENT_STORE": "y", "FLEETSHIFT_AGENT_CONFIG": "z"}
    assert unknown_environment_variables(environ) == ["FLEETSHIFT_AGENT_STOR"]


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("FLEETSHIFT_AGENT_STOR", "FLEETSHIFT_AGENT_STORE"),
        ("FLEETSHIFT_AGENT_POL_INTERVAL", "FLEETSHIFT_AGENT_POLL_INTERVAL"),
        ("FLEETSHIFT_AGENT_LOGGING_LEVL", "FLEETSHIFT_AGENT_LOGGING_LEVEL"),
        ("FLEETSHIFT_AGENT_CONFG", "FLEETSHIFT_AGENT_CONFIG"),
        ("FLEETSHIFT_AGENT_SOMETHING_ELSE", None),
    ],
)
def test_unknown_variables_suggest_the_variable_they_most_likely_meant(name: str, meant: str | None) -> None:
    assert meant_variable(name) == meant


@pytest.mark.slow
def test_cli_prints_located_errors_and_exits_1_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("store: file:///x\nmaxRevisions: 0\n")
    result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config), "--once"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"deploy-agent: {config}:2:1: maxRevisions: expected a whole number of at least 1, not 0\n"


def test_report_output_defaults_file_environment_and_typos(tmp_path: Path) -> None:
    settings = load_settings(None, environ={})
    assert (settings.report_output.tail_bytes, settings.report_output.redact) == (2048, True)
    example = load_settings(EXAMPLE, environ={})
    assert "\n  tailBytes:" in EXAMPLE.read_text() and "\n  redact:" in EXAMPLE.read_text()
    assert example.report_output == settings.report_output

    config = tmp_path / "agent.yaml"
    config.write_text("reportOutput:\n  tailBytes: 0\n  redact: false\n")
    off = load_settings(config, environ={}).report_output
    assert (off.tail_bytes, off.redact) == (0, False)
    from_env = load_settings(config, environ={"FLEETSHIFT_AGENT_REPORT_OUTPUT_TAIL_BYTES": "512"}).report_output
    assert (from_env.tail_bytes, from_env.redact) == (512, False)

    config.write_text("reportOutput:\n  tailByte: 10\n  redact: true\nreportOuput: {}\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert sorted(raised.value.problems) == [
        f"{config}:2:3: reportOutput.tailByte: unknown key; did you mean `tailBytes`?",
        f"{config}:4:1: reportOuput: unknown key; did you mean `reportOutput`?",
    ]
    config.write_text("reportOutput: {tailBytes: -1}\n")
    with pytest.raises(SettingsError, match=r"tailBytes: expected a whole number from 0 to 1048576, not -1"):
        load_settings(config, environ={})
    assert meant_variable("FLEETSHIFT_AGENT_REPORT_OUTPUT_TAIL_BYTE") == "FLEETSHIFT_AGENT_REPORT_OUTPUT_TAIL_BYTES"


def test_metrics_are_off_by_default_and_set_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert not load_settings(None, environ={}).metrics.enabled
    example = load_settings(EXAMPLE, environ={}).metrics
    assert (example.address, example.textfile, example.enabled) == (None, None, False)
    assert "\n  address:" in EXAMPLE.read_text() and "\n  textfile:" in EXAMPLE.read_text()

    config = tmp_path / "agent.yaml"
    config.write_text("metrics:\n  address: 127.0.0.1:9720\n  textfile: /var/lib/node_exporter/textfile/a.prom\n")
    metrics = load_settings(config, environ={}).metrics
    assert metrics.address == "127.0.0.1:9720" and metrics.textfile == Path("/var/lib/node_exporter/textfile/a.prom")
    overridden = load_settings(config, environ={"FLEETSHIFT_AGENT_METRICS_ADDRESS": "[::1]:9721",
                                                "FLEETSHIFT_AGENT_METRICS_TEXTFILE": ""}).metrics
    assert (overridden.address, overridden.textfile) == ("[::1]:9721", None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("address: 9720", "9720 is a number, not an address to listen on: write HOST:PORT in quotes, e.g. "
                          "'127.0.0.1:9720' (or ':9720' for every interface)"),
        ("address: '9720'", "'9720' is not an address to listen on: write HOST:PORT, e.g. 127.0.0.1:9720 (or "
                            ":9720 for every interface, [::1]:9720 for IPv6)"),
        ("address: localhost:http", "'localhost:http' is not an address to listen on"),
        ("address: 127.0.0.1:70000", "'127.0.0.1:70000' is not an address to listen on"),
        ("address: 127.0.0.1:0", "'127.0.0.1:0' is not an address to listen on"),
        ("address: ::1:9720", "'::1:9720' is not an address to listen on: put an IPv6 address in brackets"),
        ("address: '[]:9720'", "'[]:9720' is not an address to listen on: brackets hold an IPv6 address"),
        ("textfile: /tmp/agent.txt", "'/tmp/agent.txt' must end in .prom: node_exporter's textfile collector reads "
                                     "only *.prom files"),
        ("adress: 127.0.0.1:9720", "unknown key; did you mean `address`?"),
    ],
)
def test_metrics_errors_name_file_line_and_field(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"hostId: web-1\nmetrics:\n  {text}\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    field = text.split(":", 1)[0]
    [message] = raised.value.problems
    assert message.startswith(f"{config}:3:3: metrics.{field}: {problem}"), message


def test_metrics_errors_from_the_environment_name_the_variable() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(None, environ={"FLEETSHIFT_AGENT_METRICS_ADDRESS": "everywhere"})
    assert raised.value.problems == [
        "FLEETSHIFT_AGENT_METRICS_ADDRESS: 'everywhere' is not an address to listen on: write HOST:PORT, e.g. "
        "127.0.0.1:9720 (or :9720 for every interface, [::1]:9720 for IPv6)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9720", ("127.0.0.1", 9720)), (":9720", ("", 9720)), ("[::1]:1", ("::1", 1)),
     ("agent.example.com:65535", ("agent.example.com", 65535))],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"FLEETSHIFT_AGENT_RUNAS_ALLOWED": "no"}, ("runas_allowed", False)),
        ({"FLEETSHIFT_AGENT_RUNAS_ALLOWED": "ON"}, ("runas_allowed", True)),
        ({"FLEETSHIFT_AGENT_RUNAS_ALLOWED": "t"}, ("runas_allowed", True)),
        ({"FLEETSHIFT_AGENT_MAX_REVISIONS": " 7 "}, ("max_revisions", 7)),
        ({"FLEETSHIFT_AGENT_MAX_REVISIONS": "+7"}, ("max_revisions", 7)),
        ({"FLEETSHIFT_AGENT_REPORT_OUTPUT_TAIL_BYTES": "1_000"}, ("report_output", 1000)),
    ],
)
def test_text_settings_read_as_before_the_agent_left_pydantic(variables: dict[str, str],
                                                              expected: tuple[str, object]) -> None:
    """Environment variables are text: the words and numbers pydantic read from them still read the same."""
    settings = load_settings(None, environ=variables)
    name, value = expected
    got = getattr(settings, name)
    assert (got.tail_bytes if name == "report_output" else got) == value
    assert name in settings.given_fields


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("FLEETSHIFT_AGENT_MAX_REVISIONS", "1e3"),  # msgspec and float() read it; pydantic did not
        ("FLEETSHIFT_AGENT_MAX_REVISIONS", "\u0663"),  # an Arabic-Indic three: int() reads it; pydantic did not
        ("FLEETSHIFT_AGENT_MAX_REVISIONS", "0x10"),
        ("FLEETSHIFT_AGENT_MAX_REVISIONS", "10."),
        ("FLEETSHIFT_AGENT_RUNAS_ALLOWED", "True "),  # pydantic did not strip a boolean's word
        ("FLEETSHIFT_AGENT_RUNAS_ALLOWED", "2"),
    ],
)
def test_text_pydantic_refused_is_still_refused(variable: str, text: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable}: expected .*, not {text!r}"):
        load_settings(None, environ={variable: text})


def test_a_snake_case_file_merges_with_the_environment_and_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    """`report_output:` in the file and a REPORT_OUTPUT variable are one section, not two where the last wins."""
    config = tmp_path / "agent.yaml"
    config.write_text("report_output:\n  tail_bytes: 10\nhost_id: web-1\n")
    settings = load_settings(config, environ={"FLEETSHIFT_AGENT_REPORT_OUTPUT_REDACT": "false"})
    assert (settings.report_output.tail_bytes, settings.report_output.redact, settings.host_id) == (10, False, "web-1")
    config.write_text("hostId: web-1\nhost_id: web-2\nreportOutput:\n  tailBytes: 1\n  tail_bytes: 2\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert raised.value.problems == [
        f"{config}:2:1: host_id: given twice, as `hostId` and `host_id`",
        f"{config}:5:3: reportOutput.tail_bytes: given twice, as `tailBytes` and `tail_bytes`",
    ]
    # The snake_case spelling first, and a variable setting the same key: still the file's second key, never the
    # variable (which did nothing wrong).
    config.write_text("host_id: web-1\nhostId: web-2\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={"FLEETSHIFT_AGENT_HOST_ID": "web-3"})
    assert raised.value.problems == [f"{config}:2:1: hostId: given twice, as `host_id` and `hostId`"]
    # A snake_case key keeps its line in any other error.
    config.write_text("hostId: web-1\nreport_output:\n  tail_bytes: -1\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    assert raised.value.problems == [
        f"{config}:3:3: reportOutput.tailBytes: expected a whole number from 0 to 1048576, not -1"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rootDir: 5", "1:1: rootDir: expected a path, not 5"),
        ("logDir: [a]", "1:1: logDir: expected a path, not a list"),
        ("rootDir: 2024-01-01", "1:1: rootDir: expected a path, not a date"),
        ("tags:\n  a: 1", "2:3: tags.a: expected text, not 1"),
        ("tags:\n  a: 1\n  b: x\n  c: [2]",
         ["2:3: tags.a: expected text, not 1", "4:3: tags.c: expected text, not a list"]),
        ("tags: {1: a}", "1:1: tags.1: expected text as a key, not 1"),
        ("commandSigning:\n  trustedKeys: [1]", "2:17: commandSigning.trustedKeys.0: expected text, not 1"),
        ("maxRevisions: true", "1:1: maxRevisions: expected a whole number of at least 1, not True"),
    ],
)
def test_a_value_of_the_wrong_kind_is_a_located_error_not_a_traceback(tmp_path: Path, text: str,
                                                                       problem: str | list[str]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text + "\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config, environ={})
    expected = [problem] if isinstance(problem, str) else problem
    assert raised.value.problems == [f"{config}:{each}" for each in expected]
