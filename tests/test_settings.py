"""deploy.yaml < FLEETSHIFT_* variables < flags, and located errors for a broken settings file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.errors import ManifestErrors, SettingsError
from reconciler.settings import DeploySettings, load_settings

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
        f"{config}:4:3: reconcile.pollIntervall: unknown field (check the spelling against the manifest reference "
        "or schemas/)",
    ]


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
