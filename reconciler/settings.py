"""The reconciler's settings: `deploy.yaml`, overridden by FLEETSHIFT_* environment variables, overridden by flags.

`deploy.yaml.example` documents every key. Errors name the file, line and key, like manifest errors do, because
a broken settings file is a user mistake like any other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from contract.durations import Duration
from contract.models import Model
from contract.paths import default_store
from reconciler.errors import ManifestError, ManifestErrors, SettingsError
from reconciler.loader import ManifestFile, parse_documents, pydantic_message

ENV_PREFIX = "FLEETSHIFT_"
DEFAULT_CONFIG_FILE = "deploy.yaml"


class RepositorySettings(Model):
    url: str = Field(default=".", description="URL or local path of the config repo.")
    ref: str = Field(default="HEAD", description="Branch, tag or commit whose manifests are desired state.")
    path: str = Field(default=".", description="Folder inside the repo that holds the manifests.")


class ReconcileSettings(Model):
    poll_interval: Duration = Field(default=timedelta(seconds=1), description="Re-read agents while rolling out.")
    resync_interval: Duration = Field(default=timedelta(seconds=30), description="watch: full pass this often.")
    fetch_interval: Duration = Field(default=timedelta(seconds=30), description="watch: fetch a remote repo.")
    heartbeat_timeout: Duration = Field(
        default=timedelta(minutes=3),
        description="A host silent for longer than this (or 3 heartbeat intervals, whichever is longer) is unhealthy.",
    )
    timeout: Duration = Field(default=timedelta(minutes=30), description="--once gives up after this.")
    lease_duration: Duration = Field(default=timedelta(seconds=60), description="How long the write lease lasts.")
    history_limit: int = Field(default=20, ge=1, description="Deployments remembered per group.")


class LoggingSettings(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class DeploySettings(Model):
    repository: RepositorySettings = Field(default_factory=RepositorySettings)
    store: str = Field(
        default_factory=default_store,
        description="file://DIR or s3://bucket/prefix; the default is the agent's default, on this machine.",
    )
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """FLEETSHIFT_STORE, FLEETSHIFT_REPOSITORY_URL, FLEETSHIFT_RECONCILE_POLL_INTERVAL, FLEETSHIFT_LOGGING_LEVEL..."""
    overrides: dict[str, Any] = {}
    sections: dict[str, type[Model]] = {
        "repository": RepositorySettings,
        "reconcile": ReconcileSettings,
        "logging": LoggingSettings,
    }
    if f"{ENV_PREFIX}STORE" in environ:
        overrides["store"] = environ[f"{ENV_PREFIX}STORE"]
    for section, model in sections.items():
        for name, info in model.model_fields.items():
            env_name = f"{ENV_PREFIX}{section}_{name}".upper()
            if env_name in environ:
                alias = info.alias or name
                overrides.setdefault(section, {})[alias] = environ[env_name]
    return overrides


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge where None in `top` means "not given" (an unset flag), never "set to null"."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping):
            merged[key] = _merge(merged[key] if isinstance(merged.get(key), dict) else {}, value)
        elif value is not None:
            merged[key] = value
    return merged


def load_settings(
    config_file: Path | None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DeploySettings:
    """File < environment < flags. A missing default `deploy.yaml` is fine; a missing named one is an error.

    `flags` uses the file's shape, e.g. {"store": "...", "repository": {"url": "..."}}.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    marks_doc = None
    name = str(config_file) if config_file else DEFAULT_CONFIG_FILE
    path = config_file or (Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).exists() else None)
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"{path}: settings file not found")
        documents, errors = parse_documents(ManifestFile(str(path), path.read_bytes()))
        if errors:
            raise ManifestErrors(errors)
        if documents:
            marks_doc = documents[0]
            if not isinstance(marks_doc.data, dict):
                raise SettingsError(f"{path}:1:1: settings must be a mapping of keys to values")
            data = marks_doc.data
    env_overrides = _env_overrides(environ)
    data = _merge(data, env_overrides)
    data = _merge(data, flags or {})
    try:
        return DeploySettings.model_validate(data)
    except ValidationError as exc:
        in_file: list[ManifestError] = []
        elsewhere: list[str] = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = ".".join(map(str, loc))
            message = pydantic_message(error)
            # Name the source the bad value came from: the flag, the variable, or the file's line.
            if _dig(flags or {}, loc) is not None:
                elsewhere.append(f"{FLAG_NAMES.get(dotted, 'flag for ' + dotted)}: {message}")
            elif _dig(env_overrides, loc) is not None:
                snake = re.sub(r"([A-Z])", r"_\1", dotted.replace(".", "_"))
                elsewhere.append(f"{ENV_PREFIX}{snake}".upper() + f": {message}")
            else:
                line, column = marks_doc.where(loc) if marks_doc else (1, 1)
                in_file.append(ManifestError(name, line, column, None, dotted, message))
        if elsewhere:
            raise SettingsError("\n".join([*elsewhere, *map(str, in_file)])) from None
        raise ManifestErrors(in_file) from None


#: The flag that sets each settings key, for error messages.
FLAG_NAMES = {
    "store": "--store",
    "repository.url": "--repo",
    "repository.ref": "--ref",
    "repository.path": "--path",
    "reconcile.timeout": "--timeout",
    "logging.level": "--log-level",
    "logging.format": "--log-format",
}


def _dig(data: Mapping[str, Any], loc: tuple[str | int, ...]) -> Any:
    current: Any = data
    for part in loc:
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current
