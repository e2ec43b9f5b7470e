"""The agent's settings: `agent.yaml`, overridden by FLEETSHIFT_AGENT_* environment variables, overridden by
the flags of `deploy-agent run`.

Where it sits: read once by `deploy-agent run` (agent/daemon/cli.py) before anything else happens.
`agent.yaml.example` at the root of the repository documents every key. A broken setting is a user mistake
like a broken manifest, so errors name the file, line and column (or the variable, or the flag), the key,
and what is expected; the CLI prints them and exits 1, never with a traceback.

The settings are msgspec structs, not pydantic models: an idle agent does not load pydantic (contract/wirebase.py
says why). Every key is checked on its own (`_check_section`), so a file with three mistakes gets three lines, as
with pydantic, and each key's rules are next to its section (`_RULES`).
"""

from __future__ import annotations

import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from contract.annotations import type_members
from contract.durations import parse_duration
from contract.layers import KeyPath, Layer, Layers, given, put
from contract.paths import default_store, state_dir
from contract.wirebase import WireRecord
from contract.yamlmarks import LocatedYaml, YamlKeyProblem, YamlPath, did_you_mean, load_located

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


class _Section(WireRecord, frozen=True, kw_only=True):
    """A mapping of agent.yaml: camelCase in the file, snake_case here; frozen, unknown keys refused, and
    `model_copy` (agent/daemon/ec2identity.py), all from the records' base."""


class LoggingSettings(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class ReportOutputSettings(_Section, frozen=True, kw_only=True):
    """How much of a hook's output leaves the host in event reports, and whether secrets are taken out first
    (docs/agent.md, "What hosts publish")."""

    #: Last bytes of each event's output put into its report (like CodeDeploy's 2 KB log tail); 0: none.
    tail_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] = 2048
    #: Replace secrets in hook output and messages by [REDACTED].
    redact: bool = True


class CommandSigningSettings(_Section, frozen=True, kw_only=True):
    """`commandSigning`: the reconciler keys this agent trusts (docs/trust.md). With none, anything in the
    store is acted on, as before signing existed."""

    #: Public keys (`ssh-ed25519 AAAA...` lines from `reconcile keys show`) whose signatures this agent accepts;
    #: several during a rotation. Any key set: unsigned or wrongly signed commands are refused.
    trusted_keys: list[str] = msgspec.field(default_factory=list)
    #: A file of more such lines (one per line, # comments), e.g. from config management.
    trusted_keys_file: Path | None = None


def _keys_parse(value: list[str]) -> None:
    from contract.signing import SigningError, load_public_key  # cryptography only when keys are set

    for index, text in enumerate(value):
        try:
            load_public_key(text)
        except SigningError as exc:
            raise ValueError(f"item {index + 1}: {exc}") from None


class Ec2Settings(_Section, frozen=True, kw_only=True):
    """`ec2`: whether this agent asks the EC2 instance metadata service (IMDSv2) who its host is, so an EC2
    instance needs no identity settings (agent/daemon/ec2identity.py, docs/aws-fleet.md)."""

    #: auto: ask on EC2, carry on with the defaults elsewhere; required: refuse to start without an answer;
    #: disabled: never ask.
    metadata: Literal["auto", "required", "disabled"] = "auto"
    #: The metadata service; default AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254.
    endpoint: str | None = None


def _endpoint_is_http(value: str | None) -> None:
    from agent.daemon.imds import endpoint_problem

    problem = endpoint_problem(value) if value is not None else None
    if problem is not None:
        raise ValueError(problem)


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


class MetricsSettings(_Section, frozen=True, kw_only=True):
    """`metrics`: the agent's own Prometheus metrics (agent/metrics.py, docs/agent.md "Metrics"), served over
    HTTP, written to a node_exporter textfile, or both. Off unless one is set: a host that does not scrape its
    agent loads no Prometheus code."""

    #: Serve /metrics here (HOST:PORT, e.g. 127.0.0.1:9720); unset: no HTTP server.
    address: str | None = None
    #: Write the metrics to this file (ending in .prom) for node_exporter's textfile collector.
    textfile: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None or self.textfile is not None


def _address_is_host_port(value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        # `address: 9720` (a port alone) is a number in YAML, and YAML 1.1 reads `1:20` as the number 80.
        raise ValueError(f"{value} is a number, not an address to listen on: write HOST:PORT in quotes, e.g. "
                         "'127.0.0.1:9720' (or ':9720' for every interface)")
    if isinstance(value, str):
        parse_listen_address(value)


def _textfile_is_prom(value: Path | None) -> None:
    # node_exporter's textfile collector reads only *.prom files: any other name would be written and ignored.
    if value is not None and value.suffix != ".prom":
        raise ValueError(f"{str(value)!r} must end in .prom: node_exporter's textfile collector reads only "
                         "*.prom files")


class AgentSettings(_Section, frozen=True, kw_only=True):
    """Every key of agent.yaml. Field names are snake_case here and camelCase in the file."""

    #: This host's id in the store; `auto`: the EC2 instance id on EC2, the host name elsewhere.
    host_id: str = msgspec.field(default_factory=default_host_id)
    #: On-premises tags deployment groups select on.
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    #: Availability zone, for zone-by-zone rollouts.
    zone: str | None = None
    #: Where load balancers reach this host (IP or DNS name): IP target groups, traffic commands.
    address: str | None = None
    #: This host's EC2 instance id, for target groups of target type instance.
    instance_id: str | None = None
    #: The AWS region this host runs in (EC2: from IMDS).
    region: str | None = None
    #: file://DIR or s3://bucket/prefix.
    store: str = msgspec.field(default_factory=default_store)
    #: Deployment root: bundles, logs, state.
    root_dir: Path = msgspec.field(default_factory=default_root_dir)
    #: Prefix for absolute appspec destinations.
    host_root: Path | None = None
    #: Also append the agent's log to <logDir>/deploy-agent.log.
    log_dir: Path | None = None
    #: Deployment folders kept per deployment group.
    max_revisions: Annotated[int, msgspec.Meta(ge=1)] = 5
    #: Idle command poll interval.
    poll_interval: timedelta = timedelta(seconds=10)
    #: Poll interval while a command runs and for a minute after.
    busy_poll_interval: timedelta = timedelta(seconds=1)
    #: Idle heartbeat interval. Minutes, not seconds: on S3 a PUT costs 12.5 GETs, and the heartbeat is an idle
    #: host's main cost (docs/store-and-daemon.md, "Polling and heartbeat costs").
    heartbeat_interval: timedelta = timedelta(minutes=5)
    #: On exit (--once, SIGTERM): how long to keep trying to write the last report.
    report_timeout: timedelta = timedelta(seconds=10)
    #: Let appspec hooks switch user with runas.
    runas_allowed: bool = True
    report_output: ReportOutputSettings = msgspec.field(default_factory=ReportOutputSettings)
    command_signing: CommandSigningSettings = msgspec.field(default_factory=CommandSigningSettings)
    ec2: Ec2Settings = msgspec.field(default_factory=Ec2Settings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    #: The settings given (by the file, the environment or a flag) rather than defaulted, by field name; filled by
    #: `load_settings`, not a key of agent.yaml. agent/daemon/ec2identity.py lets the instance metadata fill the
    #: others only.
    given_fields: frozenset[str] = frozenset()



def _host_id_is_a_key_segment(value: str) -> None:
    if not _HOST_ID.fullmatch(value):
        raise ValueError(
            f"{value!r} cannot be a host id: use letters, digits, '.', '_' and '-', starting with a letter "
            "or digit (it becomes part of store keys)"
        )


def _known_store_scheme(value: str) -> None:
    if not value.startswith(("file://", "s3://")):
        raise ValueError(f"{value!r} is not a store URL: write file:///path/to/dir or s3://bucket/prefix")


def _at_least_50ms(value: timedelta) -> None:
    if value < timedelta(milliseconds=50):
        raise ValueError("must be at least 50ms")


def _tag_keys(value: dict[str, str]) -> None:
    for key in value:
        if not key.strip():
            raise ValueError("tag keys must not be empty")


#: Each key's own rule, after its type is checked: (section or "", field) -> a function raising ValueError.
_RULES: dict[tuple[str, str], Any] = {
    ("", "host_id"): _host_id_is_a_key_segment,
    ("", "store"): _known_store_scheme,
    ("", "poll_interval"): _at_least_50ms,
    ("", "busy_poll_interval"): _at_least_50ms,
    ("", "heartbeat_interval"): _at_least_50ms,
    ("", "tags"): _tag_keys,
    ("command_signing", "trusted_keys"): _keys_parse,
    ("ec2", "endpoint"): _endpoint_is_http,
    ("metrics", "textfile"): _textfile_is_prom,
}
#: Rules that look at the value as written, before its type is checked.
_RULES_BEFORE: dict[tuple[str, str], Any] = {
    ("metrics", "address"): _address_is_host_port,
}


class SettingsError(Exception):
    """The settings cannot be used; `problems` holds one located line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------------------------------
# Sources


#: The sections of agent.yaml (keys holding keys): their variables are FLEETSHIFT_AGENT_<SECTION>_<KEY>.
_SECTIONS: dict[str, type[_Section]] = {
    "logging": LoggingSettings,
    "report_output": ReportOutputSettings,
    "command_signing": CommandSigningSettings,
    "ec2": Ec2Settings,
    "metrics": MetricsSettings,
}


def _keys(section: type[_Section]) -> dict[str, msgspec.structs.FieldInfo]:
    """A section's fields by the key that sets them in agent.yaml."""
    return {info.encode_name: info for info in msgspec.structs.fields(section) if info.name != "given_fields"}


_TOP = _keys(AgentSettings)
#: (flag or variable name) per settings key, for errors and for the docs.
_ENV_FIELDS: dict[str, tuple[str, ...]] = {
    f"{ENV_PREFIX}{info.name.upper()}": (key,) for key, info in _TOP.items() if info.name not in _SECTIONS
} | {
    f"{ENV_PREFIX}{info.name.upper()}_{inner.name.upper()}": (key, inner_key)
    for key, info in _TOP.items() if info.name in _SECTIONS
    for inner_key, inner in _keys(_SECTIONS[info.name]).items()
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
    twice: list[tuple[YamlPath, str]] = []  # keys of the file written both ways: located in the file, always
    data: dict[str, Any] = (
        _camel_keys(located.data, AgentSettings, (), located.marks, twice) if located is not None else {}
    )
    environment = _environment_layer(environ)
    env_origins = environment.origins
    given_flags = given(flags or {})
    layers = Layers(
        data,
        environment,
        Layer(given_flags, {(key,): flag_names[key] for key in given_flags if flag_names and key in flag_names}),
    )
    found: list[tuple[YamlPath, str]] = []
    values = _check_section(layers.data, AgentSettings, (), found)
    if not found and not twice:
        return AgentSettings(**values, given_fields=frozenset(values))
    problems = [f"{located.where(loc)}: {'.'.join(map(str, loc))}: {message}" for loc, message in twice if located]
    for loc, message in found:
        named = True  # a flag or a variable already names the setting
        origin = layers.origin(tuple(str(part) for part in loc))
        if origin is not None:
            where = origin
        elif located is not None:
            where, named = located.where(loc), False
        else:
            where, named = "defaults", False
        field = ".".join(map(str, loc)) or "(settings)"
        if named and len(loc) <= 2 and (len(loc) == 1 or loc[:2] in env_origins):
            problems.append(f"{where}: {message}")
        else:
            problems.append(f"{where}: {field}: {message}")
    raise SettingsError(problems)


def _camel_keys(
    data: Mapping[Any, Any],
    section: type[_Section],
    loc: KeyPath,
    marks: dict[YamlPath, tuple[int, int]],
    twice: list[tuple[YamlPath, str]],
) -> dict[str, Any]:
    """The file's mapping at `loc` with every key as the environment and the flags spell it (`host_id:` is read as
    `hostId:`, as pydantic read it), so the layers merge one key, not two; the marks follow (never over the mark of
    a key spelled that way in the file). A key written both ways goes into `twice` with its own path, the one
    written second, since no variable or flag can be the cause."""
    keys = _keys(section)
    by_name = {info.name: info.encode_name for info in keys.values()}
    spelled: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = by_name.get(key, key) if isinstance(key, str) and key not in keys else key
        if name in spelled:
            twice.append(((*loc, key), f"given twice, as `{spelled[name]}` and `{key}`"))
            continue
        spelled[name] = key
        if name != key:
            for path, mark in list(marks.items()):
                if path[: len(loc) + 1] == (*loc, key):
                    marks.setdefault((*loc, name, *path[len(loc) + 1:]), mark)
        info = keys.get(name)
        if info is not None and info.name in _SECTIONS and section is AgentSettings and isinstance(value, Mapping):
            out[name] = _camel_keys(value, _SECTIONS[info.name], (*loc, name), marks, twice)
        else:
            out[name] = value
    return out


def _check_section(
    data: Any, section: type[_Section], loc: KeyPath, found: list[tuple[YamlPath, str]], name: str = ""
) -> dict[str, Any]:
    """The fields of one mapping of agent.yaml, by field name, each checked on its own; what is wrong with each
    key goes into `found` with its path, and such a key is left out. `name`: the section's field name ("" at the
    top), which `_RULES` are keyed by."""
    if not isinstance(data, Mapping):
        found.append((loc, f"expected a mapping of keys to values, not {_shown(data)}"))
        return {}
    keys = _keys(section)  # by their camelCase names only: `_camel_keys` renamed the file's snake_case ones
    values: dict[str, Any] = {}
    unknown: list[tuple[YamlPath, str]] = []
    given_keys: dict[str, tuple[Any, Any]] = {}
    for key, raw in data.items():
        info = keys.get(key) if isinstance(key, str) else None
        if info is None:
            meant = did_you_mean(str(key), keys)
            unknown.append(((*loc, str(key)), f"unknown key; did you mean `{meant}`?" if meant is not None
                            else "unknown key (see agent.yaml.example for every key)"))
        else:
            given_keys[info.name] = (key, raw)
    for info in keys.values():  # in the order of the fields, as the example file lists them
        if info.name not in given_keys:
            continue
        key, raw = given_keys[info.name]
        path = (*loc, str(key))
        if info.name in _SECTIONS and section is AgentSettings:
            before = len(found)
            fields = _check_section(raw, _SECTIONS[info.name], path, found, info.name)
            if len(found) == before:
                values[info.name] = _SECTIONS[info.name](**fields)
            continue
        try:
            before_rule = _RULES_BEFORE.get((name, info.name))
            if before_rule is not None:
                before_rule(raw)
            value = _value(raw, info.type)
            rule = _RULES.get((name, info.name))
            if rule is not None:
                rule(value)
        except _ItemProblems as exc:
            found.extend(((*path, part), message) for part, message in exc.entries)
            continue
        except ValueError as exc:
            found.append((path, str(exc)))
            continue
        values[info.name] = value
    found.extend(unknown)
    return values


def _value(raw: Any, annotation: Any) -> Any:
    """One setting as its field's type: durations in words (`90s`), paths from text, the rest as msgspec converts
    values from YAML or the environment (text to numbers and booleans where the field asks for them)."""
    if annotation is timedelta:
        if isinstance(raw, timedelta):
            return raw
        if not isinstance(raw, str):
            raise ValueError(f"expected a duration such as 90s, 5m or 1h, not {_shown(raw)}")
        return parse_duration(raw)
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
    if choices and raw not in choices:
        listed = ", ".join(repr(choice) for choice in choices[:-1]) + f" or {choices[-1]!r}"
        raise ValueError(f"expected {listed}, not {_shown(raw)}")
    leaves = type_members(annotation)
    if isinstance(raw, str) and str not in leaves:
        raw = _from_text(raw, leaves, annotation)
    container = next((leaf for leaf in leaves if typing.get_origin(leaf) in (dict, list)), None)
    origin, args = typing.get_origin(container), typing.get_args(container)
    entries: list[tuple[str | int, str]] = []  # each entry on its own, so an error names its key or index
    if origin is dict and isinstance(raw, Mapping):
        for key, item in raw.items():
            if not isinstance(key, str):
                entries.append((str(key), f"expected text as a key, not {_shown(key)}"))
            elif not _fits(item, args[1]):
                entries.append((key, f"expected {_expected(args[1])}, not {_shown(item)}"))
    elif origin is list and isinstance(raw, list):
        entries = [(index, f"expected {_expected(args[0])}, not {_shown(item)}")
                   for index, item in enumerate(raw) if not _fits(item, args[0])]
    if entries:
        raise _ItemProblems(entries)
    try:
        return msgspec.convert(raw, annotation, strict=False, dec_hook=_path)
    except msgspec.ValidationError:
        raise ValueError(f"expected {_expected(annotation)}, not {_shown(raw)}") from None


class _ItemProblems(ValueError):
    """The wrong entries of a mapping or list setting: (key or index, added to the setting's path; what is wrong)."""

    def __init__(self, entries: list[tuple[str | int, str]]) -> None:
        super().__init__("; ".join(message for _, message in entries))
        self.entries = entries


def _fits(item: Any, annotation: Any) -> bool:
    try:
        msgspec.convert(item, annotation, strict=False)
    except msgspec.ValidationError:
        return False
    return True


#: The words pydantic took for true and false in a setting given as text (an environment variable, a quoted
#: YAML value); kept so that settings that worked before the agent left pydantic still work.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


#: A whole number as pydantic read one from text: ASCII digits, a sign, `_` between digits, a fraction of zeros
#: (`" 7 "`, `+7`, `1_0`, `7.0`); not `1e3` nor other scripts' digits (`٣`), which Python's `int()` would take.
_WHOLE = re.compile(r"\s*[+-]?\d+(?:_\d+)*(?:\.0+)?\s*", re.ASCII)


def _from_text(raw: str, leaves: list[Any], annotation: Any) -> Any:
    """A setting given as text for a boolean or a whole number: the words and numbers pydantic read from text
    (`_TRUE`, `_FALSE`, `_WHOLE`), anything else refused here (not left to msgspec, which reads more)."""
    if bool in leaves:
        word = raw.lower()  # not stripped, as pydantic did not
        if word not in _TRUE | _FALSE:
            raise ValueError(f"expected true or false, not {raw!r}")
        return word in _TRUE
    if int in leaves:
        if not _WHOLE.fullmatch(raw):
            raise ValueError(f"expected {_expected(annotation)}, not {raw!r}")
        return int(raw.strip().split(".")[0])
    return raw


def _expected(annotation: Any) -> str:
    """What a field takes, in words: `a whole number of at least 1`, `a list of text`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        meta = next((item for item in annotation.__metadata__ if isinstance(item, msgspec.Meta)), None)
        lowest, highest = (meta.ge, meta.le) if meta is not None else (None, None)
        bounds = (f" from {lowest} to {highest}" if lowest is not None and highest is not None
                  else f" of at least {lowest}" if lowest is not None else "")
        return _expected(args[0]) + bounds
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(arg) for arg in args if arg is not type(None))
    if origin is list:
        return f"a list of {_expected(args[0])}"
    if origin is dict:
        return f"a mapping of {_expected(args[0])} to {_expected(args[1])}"
    words = {int: "a whole number", bool: "true or false", str: "text", Path: "a path", float: "a number"}
    return words.get(annotation, str(getattr(annotation, "__name__", annotation)))


def _path(kind: type, raw: Any) -> Any:
    if kind is Path and isinstance(raw, str):
        return Path(raw)
    raise TypeError(f"not a {kind.__name__}")  # msgspec reports it as a validation error of the field


def _shown(raw: Any) -> str:
    return f"{raw!r}" if isinstance(raw, str | int | float | bool) or raw is None else f"a {type(raw).__name__}"
