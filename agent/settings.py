"""The agent's settings: `agent.yaml`, overridden by FLEETSHIFT_AGENT_* environment variables, overridden by
the flags of `deploy-agent run`.

Where it sits: read once by `deploy-agent run` (agent/daemon/cli.py) before anything else happens.
`agent.yaml.example` at the root of the repository documents every key. A broken setting is a user mistake
like a broken manifest, so errors name the file, line and column (or the variable, or the flag), the key,
and what is expected; the CLI prints them and exits 1, never with a traceback.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from contract.durations import Duration
from contract.layers import KeyPath, Layer, Layers, given, put
from contract.models import Model
from contract.paths import default_store, state_dir
from contract.yamlmarks import LocatedYaml, YamlKeyProblem, YamlPath, did_you_mean, known_keys, load_located

ENV_PREFIX = "FLEETSHIFT_AGENT_"
#: Read when --config is not given and FLEETSHIFT_AGENT_CONFIG is not set; absent is fine.
DEFAULT_CONFIG_FILE = Path("/etc/fleetshift/agent.yaml")


_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
#: `hostId: auto`: the instance id on EC2 (as CodeDeploy names EC2 instances), the short host name elsewhere;
#: replaced at start-up (agent/daemon/ec2identity.py), never written to the store.
AUTO_HOST_ID = "auto"


def default_root_dir() -> Path:
    return state_dir() / "deployment-root"


def default_host_id() -> str:
    """The short host name: what people call the machine, and stable across reboots."""
    return socket.gethostname().split(".", 1)[0] or "localhost"


class LoggingSettings(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class ReportOutputSettings(Model):
    """How much of a hook's output leaves the host in event reports, and whether secrets are taken out first
    (docs/agent.md, "What hosts publish")."""

    tail_bytes: int = Field(
        default=2048, ge=0, le=1 << 20,
        description="Last bytes of each event's output put into its report (like CodeDeploy's 2 KB log tail); 0: none.",
    )
    redact: bool = Field(default=True, description="Replace secrets in hook output and messages by [REDACTED].")


class CommandSigningSettings(Model):
    """`commandSigning`: the reconciler keys this agent trusts (docs/trust.md). With none, anything in the
    store is acted on, as before signing existed."""

    trusted_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (`ssh-ed25519 AAAA...` lines from `reconcile keys show`) whose signatures this "
        "agent accepts; several during a rotation. Any key set: unsigned or wrongly signed commands are refused.",
    )
    trusted_keys_file: Path | None = Field(
        default=None, description="A file of more such lines (one per line, # comments), e.g. from config management."
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_parse(cls, value: list[str]) -> list[str]:
        from contract.signing import SigningError, load_public_key  # cryptography only when keys are set

        for index, text in enumerate(value):
            try:
                load_public_key(text)
            except SigningError as exc:
                raise ValueError(f"item {index + 1}: {exc}") from None
        return value


class Ec2Settings(Model):
    """`ec2`: whether this agent asks the EC2 instance metadata service (IMDSv2) who its host is, so an EC2
    instance needs no identity settings (agent/daemon/ec2identity.py, docs/aws-fleet.md)."""

    metadata: Literal["auto", "required", "disabled"] = Field(
        default="auto",
        description="auto: ask on EC2, carry on with the defaults elsewhere; required: refuse to start without "
        "an answer; disabled: never ask.",
    )
    endpoint: str | None = Field(
        default=None,
        description="The metadata service; default AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254.",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        from agent.daemon.imds import endpoint_problem

        problem = endpoint_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (every IPv4 interface, as node_exporter writes it) as (host, port);
    the host is "" for `:PORT`. Raises ValueError saying what to write. Names are resolved only when the agent
    binds, so a typo in a host name is a start-up error there, with the resolver's words."""
    example = "write HOST:PORT, e.g. 127.0.0.1:9720 (or :9720 for every interface, [::1]:9720 for IPv6)"
    host, colon, port_text = text.strip().rpartition(":")
    if not colon or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not an address to listen on: {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or ":" not in host:
            raise ValueError(f"{text!r} is not an address to listen on: brackets hold an IPv6 address; {example}")
    elif ":" in host or "[" in host or "]" in host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not an address to listen on: put an IPv6 address in brackets; {example}")
    return host, int(port_text)


class MetricsSettings(Model):
    """`metrics`: the agent's own Prometheus metrics (agent/metrics.py, docs/agent.md "Metrics"), served over
    HTTP, written to a node_exporter textfile, or both. Off unless one is set: a host that does not scrape its
    agent loads no Prometheus code."""

    address: str | None = Field(
        default=None, description="Serve /metrics here (HOST:PORT, e.g. 127.0.0.1:9720); unset: no HTTP server."
    )
    textfile: Path | None = Field(
        default=None,
        description="Write the metrics to this file (ending in .prom) for node_exporter's textfile collector.",
    )

    @field_validator("address", mode="before")
    @classmethod
    def _address_is_host_port(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            # `address: 9720` (a port alone) is a number in YAML, and YAML 1.1 reads `1:20` as the number 80.
            raise ValueError(f"{value} is a number, not an address to listen on: write HOST:PORT in quotes, e.g. "
                             "'127.0.0.1:9720' (or ':9720' for every interface)")
        if isinstance(value, str):
            parse_listen_address(value)
        return value

    @field_validator("textfile")
    @classmethod
    def _textfile_is_prom(cls, value: Path | None) -> Path | None:
        # node_exporter's textfile collector reads only *.prom files: any other name would be written and ignored.
        if value is not None and value.suffix != ".prom":
            raise ValueError(f"{str(value)!r} must end in .prom: node_exporter's textfile collector reads only "
                             "*.prom files")
        return value

    @property
    def enabled(self) -> bool:
        return self.address is not None or self.textfile is not None


class AgentSettings(Model):
    """Every key of agent.yaml. Field names are snake_case here and camelCase in the file."""

    host_id: str = Field(
        default_factory=default_host_id,
        description=f"This host's id in the store; `{AUTO_HOST_ID}`: the EC2 instance id on EC2, the host name "
        "elsewhere.",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="On-premises tags deployment groups select on.")
    zone: str | None = Field(default=None, description="Availability zone, for zone-by-zone rollouts.")
    address: str | None = Field(
        default=None,
        description="Where load balancers reach this host (IP or DNS name): IP target groups, traffic commands.",
    )
    instance_id: str | None = Field(
        default=None, description="This host's EC2 instance id, for target groups of target type instance."
    )
    region: str | None = Field(default=None, description="The AWS region this host runs in (EC2: from IMDS).")
    store: str = Field(default_factory=default_store, description="file://DIR or s3://bucket/prefix.")
    root_dir: Path = Field(default_factory=default_root_dir, description="Deployment root: bundles, logs, state.")
    host_root: Path | None = Field(default=None, description="Prefix for absolute appspec destinations.")
    log_dir: Path | None = Field(default=None, description="Also append the agent's log to <logDir>/deploy-agent.log.")
    max_revisions: int = Field(default=5, ge=1, description="Deployment folders kept per deployment group.")
    poll_interval: Duration = Field(default=timedelta(seconds=10), description="Idle command poll interval.")
    busy_poll_interval: Duration = Field(
        default=timedelta(seconds=1), description="Poll interval while a command runs and for a minute after."
    )
    # Minutes, not seconds: on S3 a PUT costs 12.5 GETs, and the heartbeat is an idle host's main cost
    # (docs/store-and-daemon.md, "Polling and heartbeat costs").
    heartbeat_interval: Duration = Field(default=timedelta(minutes=5), description="Idle heartbeat interval.")
    report_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="On exit (--once, SIGTERM): how long to keep trying to write the last report.",
    )
    runas_allowed: bool = Field(default=True, description="Let appspec hooks switch user with runas.")
    report_output: ReportOutputSettings = Field(default_factory=ReportOutputSettings)
    command_signing: CommandSigningSettings = Field(default_factory=CommandSigningSettings)
    ec2: Ec2Settings = Field(default_factory=Ec2Settings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("host_id")
    @classmethod
    def _host_id_is_a_key_segment(cls, value: str) -> str:
        if not _HOST_ID.fullmatch(value):
            raise ValueError(
                f"{value!r} cannot be a host id: use letters, digits, '.', '_' and '-', starting with a letter "
                "or digit (it becomes part of store keys)"
            )
        return value

    @field_validator("store")
    @classmethod
    def _known_store_scheme(cls, value: str) -> str:
        if not value.startswith(("file://", "s3://")):
            raise ValueError(f"{value!r} is not a store URL: write file:///path/to/dir or s3://bucket/prefix")
        return value

    @field_validator("poll_interval", "busy_poll_interval", "heartbeat_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=50):
            raise ValueError("must be at least 50ms")
        return value

    @field_validator("tags")
    @classmethod
    def _tag_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key.strip():
                raise ValueError("tag keys must not be empty")
        return value


class SettingsError(Exception):
    """The settings cannot be used; `problems` holds one located line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------------------------------
# Sources


#: The sections of agent.yaml (keys holding keys): their variables are FLEETSHIFT_AGENT_<SECTION>_<KEY>.
_SECTIONS: dict[str, type[Model]] = {
    "logging": LoggingSettings,
    "report_output": ReportOutputSettings,
    "command_signing": CommandSigningSettings,
    "ec2": Ec2Settings,
    "metrics": MetricsSettings,
}

#: (flag or variable name) per settings key, for errors and for the docs.
_ENV_FIELDS: dict[str, tuple[str, ...]] = {
    f"{ENV_PREFIX}{name.upper()}": (info.alias or name,)
    for name, info in AgentSettings.model_fields.items()
    if name not in _SECTIONS
} | {
    f"{ENV_PREFIX}{section.upper()}_{name.upper()}": (AgentSettings.model_fields[section].alias or section,
                                                      info.alias or name)
    for section, model in _SECTIONS.items()
    for name, info in model.model_fields.items()
}
ENV_VARIABLES = tuple(_ENV_FIELDS)


def parse_tags(text: str, where: str) -> dict[str, str]:
    """`KEY=VALUE[,KEY=VALUE...]`; `KEY=` gives an empty value (CodeDeploy's KEY_ONLY tags)."""
    tags: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise SettingsError([f"{where}: tag {item!r} must be written KEY=VALUE (KEY= for a key-only tag)"])
        tags[key.strip()] = value.strip()
    return tags


def _environment_layer(environ: Mapping[str, str]) -> Layer:
    values: dict[str, Any] = {}
    origins: dict[KeyPath, str] = {}
    for variable, path in _ENV_FIELDS.items():
        if variable not in environ:
            continue
        raw = environ[variable]
        value: Any = parse_tags(raw, variable) if path == ("tags",) else raw
        if path == ("commandSigning", "trustedKeys"):  # one key per line (or comma-separated)
            # A comma separates keys only before the next `ssh-ed25519`: a key's comment may hold commas.
            value = [line.strip() for line in re.split(r"\n|,(?=\s*ssh-ed25519\s)", raw) if line.strip()]
        if raw == "" and path in (("hostRoot",), ("logDir",), ("zone",), ("region",), ("ec2", "endpoint"),
                                     ("metrics", "address"), ("metrics", "textfile")):
            value = None
        put(values, path, value)
        origins[path] = variable
    return Layer(values, origins)


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """FLEETSHIFT_AGENT_* variables that set nothing (a typo like FLEETSHIFT_AGENT_STOR), for a warning."""
    known = set(_ENV_FIELDS) | {f"{ENV_PREFIX}CONFIG"}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def meant_variable(name: str) -> str | None:
    """The FLEETSHIFT_AGENT_* variable an unknown one most likely meant (FLEETSHIFT_AGENT_POL_INTERVAL ->
    FLEETSHIFT_AGENT_POLL_INTERVAL), for the warning about it; None when nothing is close."""
    known = {variable.removeprefix(ENV_PREFIX): variable for variable in (*_ENV_FIELDS, f"{ENV_PREFIX}CONFIG")}
    meant = did_you_mean(name.removeprefix(ENV_PREFIX), known)
    return known[meant] if meant is not None else None


class _LocatedYaml:
    """The settings file's data plus where each key sits, so errors can point at a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marks: dict[YamlPath, tuple[int, int]] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SettingsError([f"{path}: settings file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError([f"{path}: cannot read the settings file: {exc}"]) from None
        try:
            documents = list(load_located(text))
        except YamlKeyProblem as problem:
            dotted = ".".join(map(str, problem.path))
            detail = "duplicate key" if problem.message.startswith("duplicate key") else problem.message
            raise SettingsError([f"{path}:{problem.line}:{problem.column}: {dotted}: {detail}"]) from None
        except yaml.MarkedYAMLError as exc:
            mark, context = exc.problem_mark, exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            detail = f" ({exc.context} at {context.line + 1}:{context.column + 1})" if context and exc.context else ""
            raise SettingsError([f"{where}: not valid YAML: {exc.problem}{detail}"]) from None
        except yaml.YAMLError as exc:
            raise SettingsError([f"{path}: not valid YAML: {exc}"]) from None
        if len(documents) > 1:
            raise SettingsError([f"{path}: not valid YAML: expected one document, found {len(documents)}"])
        located = documents[0][1] if documents else LocatedYaml({}, {})
        self.data: Any = located.data if located.data is not None else {}
        if not isinstance(self.data, dict):
            raise SettingsError([f"{path}:1:1: the settings file must be a mapping of keys to values"])
        self.marks = located.marks

    def where(self, loc: YamlPath) -> str:
        for length in range(len(loc), 0, -1):
            mark = self.marks.get(loc[:length])
            if mark is not None:
                return f"{self.path}:{mark[0]}:{mark[1]}"
        return str(self.path)


def load_settings(
    config_file: Path | None,
    *,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentSettings:
    """File < environment < flags. `flags` uses the file's (camelCase) shape and holds only flags given;
    `flag_names` maps a key to the flag that set it, for error messages."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(environ[f"{ENV_PREFIX}CONFIG"])
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    located = _LocatedYaml(config_file) if config_file is not None else None
    data: dict[str, Any] = dict(located.data) if located is not None else {}
    environment = _environment_layer(environ)
    env_origins = environment.origins
    given_flags = given(flags or {})
    layers = Layers(
        data,
        environment,
        Layer(given_flags, {(key,): flag_names[key] for key in given_flags if flag_names and key in flag_names}),
    )
    try:
        return AgentSettings.model_validate(layers.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            named = True  # a flag or a variable already names the setting
            origin = layers.origin(loc)
            if origin is not None:
                where = origin
            elif located is not None:
                where, named = located.where(loc), False
            else:
                where, named = "defaults", False
            field = ".".join(loc) or "(settings)"
            if named and len(loc) <= 2 and (len(loc) == 1 or loc[:2] in env_origins):
                problems.append(f"{where}: {_message(error)}")
            else:
                problems.append(f"{where}: {field}: {_message(error)}")
        raise SettingsError(problems) from None


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        # A typo is the usual cause: name the key it most likely meant, as appspec errors do.
        loc = tuple(error["loc"])
        meant = did_you_mean(str(loc[-1]), known_keys(AgentSettings, loc[:-1])) if loc else None
        if meant is not None:
            return f"unknown key; did you mean `{meant}`?"
        return "unknown key (see agent.yaml.example for every key)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
