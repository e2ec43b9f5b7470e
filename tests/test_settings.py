"""deploy.yaml < FLEETSHIFT_* variables < flags, and located errors for a broken settings file."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.errors import ManifestErrors, SettingsError
from reconciler.settings import DeploySettings, load_settings, unknown_environment_variables

ROOT = Path(__file__).resolve().parent.parent


def test_example_file_is_valid_and_documents_every_key() -> None:
    example = ROOT / "deploy.yaml.example"
    settings = load_settings(example, environ={})
    assert settings.repository.path == "manifests"
    text = example.read_text()
    for section, model in (("repository", settings.repository), ("reconcile", settings.reconcile),
                           ("logging", settings.logging)):
        for name, info in type(model).model_fields.items():
            assert f"  {info.alias or name}:" in text, f"{section}.{info.alias or name} is not documented"
    assert "\nstore:" in text


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "deploy.yaml"
    config.write_text("store: file:///from-file\nrepository: {url: /repo, ref: main}\nreconcile: {timeout: 10m}\n")
    env = {"FLEETSHIFT_STORE": "s3://from-env/prefix", "FLEETSHIFT_RECONCILE_TIMEOUT": "20m",
           "FLEETSHIFT_REPOSITORY_REF": "release"}
    settings = load_settings(config, environ=env, flags={"store": "file:///from-flag", "repository": {"url": None}})
    assert settings.store == "file:///from-flag"
    assert settings.reconcile.timeout == timedelta(minutes=20)
    assert settings.repository.ref == "release"
    assert settings.repository.url == "/repo"  # an unset flag (None) does not override


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, environ={}) == DeploySettings()


def test_broken_settings_name_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "deploy.yaml"
    config.write_text("store: file:///x\nreconcile:\n  timeout: soon\n  pollIntervall: 1s\n")
    with pytest.raises(ManifestErrors) as raised:
        load_settings(config, environ={})
    assert [str(e) for e in raised.value.errors] == [
        f"{config}:3:3: reconcile.timeout: invalid duration 'soon': write a number and a unit, like 90s, 5m, 1h30m",
        f"{config}:4:3: reconcile.pollIntervall: unknown field; did you mean `pollInterval`?",
    ]


def test_unknown_keys_point_at_the_settings_reference_not_the_manifests(tmp_path: Path) -> None:
    config = tmp_path / "deploy.yaml"
    config.write_text("repository:\n  branch: main\nstroe: file:///x\ncolour: blue\nlogging: {levle: debug}\n")
    with pytest.raises(ManifestErrors) as raised:
        load_settings(config, environ={})
    assert [str(e) for e in raised.value.errors] == [
        f"{config}:2:3: repository.branch: unknown field (check the spelling against deploy.yaml.example or the "
        "README's Configuration section)",
        f"{config}:3:1: stroe: unknown field; did you mean `store`?",
        f"{config}:4:1: colour: unknown field (check the spelling against deploy.yaml.example or the README's "
        "Configuration section)",
        f"{config}:5:11: logging.levle: unknown field; did you mean `level`?",
    ]
    assert "manifest" not in str(raised.value)


def test_a_tab_is_named_with_its_position(tmp_path: Path) -> None:
    config = tmp_path / "deploy.yaml"
    config.write_text("store: file:///x\nrepository:\n\turl: /srv/config\n")
    with pytest.raises(ManifestErrors) as raised:
        load_settings(config, environ={})
    assert [str(e) for e in raised.value.errors] == [
        f"{config}:3:1: YAML syntax error: a tab character (YAML indents with spaces only)"
    ]


def test_unknown_variables_that_look_like_settings_are_found_with_a_suggestion() -> None:
    environ = {
        "FLEETSHIFT_STOR": "typo of a top-level key",
        "FLEETSHIFT_STORE_URL": "an invented longer name",
        "FLEETSHIFT_RECONCLE_TIMEOUT": "typo in the section",
        "FLEETSHIFT_RECONCILE_POL_INTERVAL": "typo in the key",
        "FLEETSHIFT_LOG_LEVEL": "abbreviated section",
        "FLEETSHIFT_REPOSITORY_BRANCH": "a key that does not exist",
        # Known, or not the reconciler's: never reported.
        "FLEETSHIFT_STORE": "s3://b/p",
        "FLEETSHIFT_REPOSITORY_REF": "main",
        "FLEETSHIFT_AGENT_STOR": "the agent warns about its own",
        "FLEETSHIFT_REGEN": "1",
        "FLEETSHIFT_REQUIRE_PLAN": "true",
        "FLEETSHIFT_GITLAB_TOKEN": "secret",
        "FLEETSHIFT_PLAN_ROLE_ARN": "arn",
        "FLEETSHIFT_APPLY_ROLE_ARN": "arn",
        "PATH": "/usr/bin",
    }
    assert unknown_environment_variables(environ) == [
        ("FLEETSHIFT_LOG_LEVEL", "FLEETSHIFT_LOGGING_LEVEL"),
        ("FLEETSHIFT_RECONCILE_POL_INTERVAL", "FLEETSHIFT_RECONCILE_POLL_INTERVAL"),
        ("FLEETSHIFT_RECONCLE_TIMEOUT", "FLEETSHIFT_RECONCILE_TIMEOUT"),
        ("FLEETSHIFT_REPOSITORY_BRANCH", None),
        ("FLEETSHIFT_STOR", "FLEETSHIFT_STORE"),
        ("FLEETSHIFT_STORE_URL", "FLEETSHIFT_STORE"),
    ]


def test_every_documented_variable_is_known() -> None:
    """The variables the README and deploy.yaml.example name must never be warned about."""
    text = (ROOT / "deploy.yaml.example").read_text() + (ROOT / "README.md").read_text()
    named = set(re.findall(r"FLEETSHIFT_(?:STORE|REPOSITORY_[A-Z_]+|RECONCILE_[A-Z_]+|LOGGING_[A-Z_]+)\b", text))
    named.discard("FLEETSHIFT_RECONCILE_")  # "FLEETSHIFT_RECONCILE_<KEY>"-style placeholders
    assert "FLEETSHIFT_REPOSITORY_REF" in named
    assert unknown_environment_variables(dict.fromkeys(named, "x")) == []


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_reconciler_and_agent_default_to_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.settings import load_settings as load_agent_settings

    monkeypatch.chdir(tmp_path)
    assert load_settings(None, environ={}).store == load_agent_settings(None, environ={}).store


def test_bad_values_from_flags_and_variables_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no deploy.yaml here
    with pytest.raises(SettingsError) as raised:
        load_settings(None, environ={"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "often"},
                      flags={"reconcile": {"timeout": "soon"}})
    assert sorted(str(raised.value).splitlines()) == [
        "--timeout: invalid duration 'soon': write a number and a unit, like 90s, 5m, 1h30m",
        "FLEETSHIFT_RECONCILE_POLL_INTERVAL: invalid duration 'often': write a number and a unit, like 90s, 5m, 1h30m",
    ]


def test_layers_merge_mappings_key_by_key_and_remember_who_set_what() -> None:
    """contract/layers.py, the precedence both sides share."""
    from contract.layers import Layer, Layers, given

    file = {"repository": {"url": "file-url", "ref": "main"}, "logging": "oops", "tags": {"a": "1"}}
    environment = Layer({"repository": {"ref": "env-ref"}, "zone": None}, {("repository", "ref"): "FLEETSHIFT_REF"})
    flags = Layer.named_by(given({"repository": {"url": None, "ref": "flag-ref"}, "tags": {"b": "2"}, "x": None}),
                           lambda path: "--" + ".".join(path))
    layers = Layers(file, environment, flags)
    assert layers.data == {"repository": {"url": "file-url", "ref": "flag-ref"}, "logging": "oops",
                           "tags": {"a": "1", "b": "2"}, "zone": None}
    assert layers.origin(("repository", "ref")) == "--repository.ref"
    assert layers.origin(("tags", "b")) == "--tags.b"
    assert layers.origin(("repository", "url")) is None, "from the file"
    env_only = Layers(file, environment, Layer({"tags": {"b": "2"}}, {("tags",): "--tag"}))
    assert env_only.origin(("repository", "ref")) == "FLEETSHIFT_REF"
    assert env_only.origin(("tags", "a", 0)) == "--tag", "a path covers what is under it"
