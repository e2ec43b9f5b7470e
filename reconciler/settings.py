"""The reconciler's settings: `deploy.yaml`, overridden by FLEETSHIFT_* environment variables, overridden by flags.

`deploy.yaml.example` documents every key. Errors name the file, line and key, like manifest errors do, because
a broken settings file is a user mistake like any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from contract.layers import KeyPath, Layer, Layers, given, put
from contract.models import Model
from contract.paths import default_store
from contract.yamlmarks import did_you_mean
from reconciler.core.state import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_HISTORY_LIMIT
from reconciler.desired.durations import Duration
from reconciler.desired.loader import parse_documents, pydantic_message
from reconciler.desired.sources import bounded_file
from reconciler.errors import ManifestError, ManifestErrors, SettingsError

ENV_PREFIX = "FLEETSHIFT_"
#: `reconcile.warmStartInterval`: during a rollout of the whole fleet a PUT of ~1 MB per 10,000 hosts every five
#: minutes at most, and none at all while nothing changes (reconciler/shell/warmstart.py).
DEFAULT_WARM_START_INTERVAL = timedelta(minutes=5)
#: Below this a lease holder would rewrite the cache after nearly every pass of a rollout (and retry a failed write
#: just as often, against a store that may be throttling it).
MIN_WARM_START_INTERVAL = timedelta(seconds=1)
DEFAULT_CONFIG_FILE = "deploy.yaml"
#: Where an unknown settings key should be checked (not the manifest reference: a different file).
SETTINGS_REFERENCE = "deploy.yaml.example or the README's Configuration section"


class VerifySettings(Model):
    """`repository.verify`: which config commits the reconciler accepts (docs/trust.md, "Verified commits")."""

    mode: Literal["none", "head", "strict"] = Field(
        default="none",
        description="none: any commit; head: the commit deployed must carry a good signature by an allowed signer; "
        "strict: every commit since the last applied one must, and the new commit must descend from it.",
    )
    allowed_signers_file: Path | None = Field(
        default=None,
        description="SSH signatures: git's gpg.ssh.allowedSignersFile (one `principal key` line per signer).",
    )
    gpg_keys_file: Path | None = Field(
        default=None,
        description="OpenPGP signatures: a file of public keys (armored or binary); only these keys are trusted.",
    )


class RepositorySettings(Model):
    url: str = Field(default=".", description="URL or local path of the config repo.")
    ref: str = Field(default="HEAD", description="Branch, tag or commit whose manifests are desired state.")
    path: str = Field(
        default=".",
        description="Folder inside the repo that holds the manifests; the default, the whole repository, skips "
        "hidden files and folders, CI files and deploy.yaml at the top (reconciler.desired.sources.not_a_manifest).",
    )
    verify: VerifySettings = Field(default_factory=VerifySettings)


class ReconcileSettings(Model):
    poll_interval: Duration = Field(default=timedelta(seconds=1), description="Re-read agents while rolling out.")
    resync_interval: Duration = Field(default=timedelta(seconds=30), description="watch: full pass this often.")
    fetch_interval: Duration = Field(default=timedelta(seconds=30), description="watch: fetch a remote repo.")
    heartbeat_timeout: Duration = Field(
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        description="A host silent for longer than this (or 3 heartbeat intervals, whichever is longer) is unhealthy.",
    )
    timeout: Duration = Field(default=timedelta(minutes=30), description="--once gives up after this.")
    lease_duration: Duration = Field(default=timedelta(seconds=60), description="How long the write lease lasts.")
    history_limit: int = Field(default=DEFAULT_HISTORY_LIMIT, ge=1, description="Deployments remembered per group.")
    warm_start_interval: Duration = Field(
        default=DEFAULT_WARM_START_INTERVAL,
        description="The lease holder on S3 (watch, a long --once): rewrite the warm-start cache at most this often.",
    )

    @field_validator("warm_start_interval")
    @classmethod
    def _warm_start_interval(cls, value: timedelta) -> timedelta:
        if value < MIN_WARM_START_INTERVAL:
            raise ValueError("must be at least 1s: shorter would rewrite the warm-start cache after nearly every pass")
        return value


class SigningSettings(Model):
    """`signing`: the Ed25519 key the reconciler signs what agents act on with (docs/trust.md)."""

    key_file: Path | None = Field(
        default=None,
        description="Private key (PEM PKCS#8 or OpenSSH, from `reconcile keys generate` or ssh-keygen -t ed25519); "
        "or the key itself in FLEETSHIFT_SIGNING_KEY. Unset: documents are written unsigned.",
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (`ssh-ed25519 AAAA...` lines) whose signatures are still accepted on what the "
        "store holds: the previous key during a rotation.",
    )


class PolicySettings(Model):
    """`policy`: rules every manifest revision must follow, checked by validate, plan and every pass."""

    require_immutable_revisions: bool = Field(
        default=False,
        description="Every revision must name immutable content: an S3 revision a version or sha256, "
        "a Git revision a full commit id, a local revision a bundle file with its sha256 "
        "(reconciler/desired/policy.py).",
    )


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`127.0.0.1:9464`, `[::1]:9464`, `:9464` for every interface) as (host, port); ValueError
    saying what is wrong otherwise. Port 0 asks the system for a free port (the one chosen is logged)."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9464, or :9464 for every interface)")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{text!r}: port {port} is out of range (0-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, like [::1]:9464")
    return host or "0.0.0.0", port  # noqa: S104 - ":PORT" means every interface, as the user asked


class MetricsSettings(Model):
    """`metrics`: Prometheus metrics of the reconciler (docs/metrics.md). Flags override each key."""

    address: str | None = Field(
        default=None,
        description="reconcile watch: serve /metrics on HOST:PORT (flag --metrics-address). Unset: not served.",
    )
    textfile: Path | None = Field(
        default=None,
        description="reconcile --once: write the metrics to this file (node-exporter's textfile collector, name it "
        "*.prom), atomically, after every pass and at the end (flag --metrics-textfile).",
    )
    push_url: str | None = Field(
        default=None,
        description="reconcile --once: push the metrics at the end to this Pushgateway-compatible URL, job "
        "fleetshift_reconcile (flag --metrics-push-url). A failed push is a warning.",
    )
    host_series: bool = Field(
        default=True,
        description="Export one series per host (fleetshift_host_up, fleetshift_host_on_desired_revision); turn "
        "off for very large fleets, the per-group counts stay.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen_address(value)
        return value

    @field_validator("push_url")
    @classmethod
    def _push_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL (for example http://pushgateway:9091)")
        return value


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
    signing: SigningSettings = Field(default_factory=SigningSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


_SECTIONS: dict[str, type[Model]] = {
    "repository": RepositorySettings,
    "reconcile": ReconcileSettings,
    "signing": SigningSettings,
    "policy": PolicySettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
}
#: The signing key itself (PEM or OpenSSH text), for CI secret stores; never a settings key, so it cannot end
#: up in deploy.yaml.
SIGNING_KEY_VARIABLE = f"{ENV_PREFIX}SIGNING_KEY"
#: Every variable the reconciler reads, and the (section, key) it sets; None for the top-level `store`.
ENV_VARIABLES: dict[str, tuple[str, ...] | None] = {f"{ENV_PREFIX}STORE": None} | {
    f"{ENV_PREFIX}{section}_{name}".upper(): (section, info.alias or name)
    for section, model in _SECTIONS.items()
    for name, info in model.model_fields.items()
    if not (isinstance(info.annotation, type) and issubclass(info.annotation, Model))
    and info.annotation != list[str]
} | {
    f"{ENV_PREFIX}REPOSITORY_VERIFY_{name}".upper(): ("repository", "verify", info.alias or name)
    for name, info in VerifySettings.model_fields.items()
}
#: The agent's variables (FLEETSHIFT_AGENT_*): the agent reads and checks them, the reconciler leaves them be.
AGENT_ENV_PREFIX = f"{ENV_PREFIX}AGENT_"


def _environment_layer(environ: Mapping[str, str]) -> Layer:
    """FLEETSHIFT_STORE, FLEETSHIFT_REPOSITORY_URL, FLEETSHIFT_RECONCILE_POLL_INTERVAL, FLEETSHIFT_LOGGING_LEVEL..."""
    values: dict[str, Any] = {}
    origins: dict[KeyPath, str] = {}
    for env_name, target in ENV_VARIABLES.items():
        if env_name not in environ:
            continue
        path = ("store",) if target is None else target
        put(values, path, environ[env_name])
        origins[path] = env_name
    return Layer(values, origins)


def unknown_environment_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """FLEETSHIFT_* variables that look like reconciler settings but set nothing, each with the variable it
    most likely meant (or None), for a warning: a typo such as FLEETSHIFT_STOR would otherwise be ignored
    without a word and the reconciler would quietly use another store.

    The FLEETSHIFT_ prefix is shared, so not every such variable is a mistake: the agent's
    FLEETSHIFT_AGENT_* (the agent checks those), CI variables the examples use (FLEETSHIFT_REQUIRE_PLAN,
    FLEETSHIFT_GITLAB_TOKEN, FLEETSHIFT_PLAN_ROLE_ARN...), the test suite's FLEETSHIFT_REGEN. The rule: a
    variable is reported when the first word after FLEETSHIFT_ names a settings section (REPOSITORY,
    RECONCILE, LOGGING), abbreviates one (REPO, LOG) or is a typo of one (RECONCLE), or when the whole name
    is close to a real variable (FLEETSHIFT_STOR) or extends one (FLEETSHIFT_STORE_URL). Anything else is
    somebody else's variable and is left alone.
    """
    sections = [section.upper() for section in _SECTIONS]
    known_rests = {name.removeprefix(ENV_PREFIX): name for name in ENV_VARIABLES}
    unknown: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        if (not name.startswith(ENV_PREFIX) or name in ENV_VARIABLES or name.startswith(AGENT_ENV_PREFIX)
                or name == SIGNING_KEY_VARIABLE):
            continue
        rest = name.removeprefix(ENV_PREFIX)
        head, _, tail = rest.partition("_")
        abbreviated = [s for s in sections if len(head) >= 3 and s.startswith(head)]
        section = head if head in sections else (abbreviated[0] if abbreviated else did_you_mean(head, sections))
        if section is not None:
            keys = {known.removeprefix(f"{section}_"): full for known, full in known_rests.items()
                    if known.startswith(f"{section}_")}
            meant = did_you_mean(tail, keys) if tail else None
            unknown.append((name, keys[meant] if meant is not None else None))
        elif (meant := did_you_mean(rest, known_rests)) is not None:
            unknown.append((name, known_rests[meant]))
        elif any(rest.startswith(f"{known}_") for known in known_rests):
            unknown.append((name, next(full for known, full in known_rests.items() if rest.startswith(f"{known}_"))))
    return unknown


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
        documents, errors = parse_documents(bounded_file(str(path), path))
        if errors:
            raise ManifestErrors(errors)
        if documents:
            marks_doc = documents[0]
            if not isinstance(marks_doc.data, dict):
                raise SettingsError(f"{path}:1:1: settings must be a mapping of keys to values")
            data = marks_doc.data
    layers = Layers(
        data,
        _environment_layer(environ),
        Layer.named_by(given(flags or {}), lambda path: FLAG_NAMES.get(".".join(path), "flag for " + ".".join(path))),
    )
    try:
        return DeploySettings.model_validate(layers.data)
    except ValidationError as exc:
        in_file: list[ManifestError] = []
        elsewhere: list[str] = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = ".".join(map(str, loc))
            message = pydantic_message(error, DeploySettings, SETTINGS_REFERENCE)
            # Name the source the bad value came from: the flag, the variable, or the file's line.
            origin = layers.origin(loc)
            if origin is not None:
                elsewhere.append(f"{origin}: {message}")
            else:
                line, column = marks_doc.where(loc) if marks_doc else (1, 1)
                in_file.append(ManifestError(name, line, column, None, dotted, message))
        if elsewhere:
            raise SettingsError("\n".join([*elsewhere, *map(str, in_file)])) from None
        raise ManifestErrors(sorted(in_file, key=lambda e: (e.line, e.column))) from None


#: The flag that sets each settings key, for error messages.
FLAG_NAMES = {
    "store": "--store",
    "repository.url": "--repo",
    "repository.ref": "--ref",
    "repository.path": "--path",
    "reconcile.timeout": "--timeout",
    "logging.level": "--log-level",
    "logging.format": "--log-format",
    "metrics.address": "--metrics-address",
    "metrics.textfile": "--metrics-textfile",
    "metrics.pushUrl": "--metrics-push-url",
}

