"""`deploy-agent run`'s command line: its flags, settings from file < environment < flags, logging to stderr
and the log folder, and the one-line errors and exit codes around the Agent (agent/daemon/loop.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from agent import __version__
from agent.daemon.ec2identity import IdentityError, read_platform, resolve_identity
from agent.daemon.flags import add_run_parser
from agent.daemon.identity import HostIdInUse, StateError
from agent.daemon.loop import Agent
from agent.daemon.statefile import STATE_FILE, root_lock
from agent.lifecycle.runner import LifecycleRunner, RunnerSettings
from agent.metrics import MetricsUnavailable, open_metrics
from agent.settings import (
    AgentSettings,
    SettingsError,
    load_settings,
    meant_variable,
    parse_tags,
    unknown_environment_variables,
)
from contract.exitcodes import ExitCode
from contract.logs import configure_logging
from contract.signals import stop_on_signals
from contract.signing import Trust
from contract.store import StoreError, open_store
from contract.store.sealed import seal_store

log = structlog.get_logger("agent.daemon.loop")


def register(subparsers: Any) -> None:
    """`run` on `subparsers`, running `run_command` (the flags are in agent/daemon/flags.py, so that
    `deploy-agent --help` loads none of the daemon)."""
    add_run_parser(subparsers).set_defaults(func=run_command)


_FLAGS = {
    "hostId": "--host-id",
    "store": "--store",
    "rootDir": "--root-dir",
    "hostRoot": "--host-root",
    "tags": "--tag",
    "zone": "--zone",
    "address": "--address",
    "instanceId": "--instance-id",
    "ec2": "--ec2-metadata",
    "pollInterval": "--poll-interval",
    "heartbeatInterval": "--heartbeat-interval",
}


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> AgentSettings:
    flags: dict[str, Any] = {}
    for key, flag in _FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if key == "tags":
            tags: dict[str, str] = {}
            for item in value or []:
                tags.update(parse_tags(item, f"--tag {item}"))
            value = tags or None
        if key == "ec2" and value is not None:
            value = {"metadata": value}
        if value is not None:
            flags[key] = str(value) if isinstance(value, Path) else value
    return load_settings(args.config, flags=flags, flag_names=_FLAGS, environ=environ)


class _Tee:
    """stderr plus the agent's log file (logDir): one log, two places."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


def _configure_logging(args: argparse.Namespace, settings: AgentSettings) -> None:
    level = getattr(args, "log_level", None) or settings.logging.level
    chosen = getattr(args, "log_format", "auto")
    log_format = chosen if chosen != "auto" else settings.logging.format
    json_lines = {"auto": None, "console": False, "json": True}[log_format]
    stream: TextIO | _Tee = sys.stderr
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = (settings.log_dir / "deploy-agent.log").open("a", encoding="utf-8", buffering=1)
        stream = _Tee(sys.stderr, log_file)
    configure_logging(level, json_lines=json_lines, stream=cast(TextIO, stream))


def make_runner(settings: AgentSettings) -> LifecycleRunner:
    """The lifecycle runner for these settings (also used by tests/daemon to run an agent in-process)."""
    return LifecycleRunner(
        RunnerSettings(
            root_dir=settings.root_dir,
            host_root=settings.host_root,
            max_revisions=settings.max_revisions,
            runas_allowed=settings.runas_allowed,
            report_tail_bytes=settings.report_output.tail_bytes,
            report_redact=settings.report_output.redact,
        )
    )


def command_trust(settings: AgentSettings) -> Trust | None:
    """The reconciler keys this agent trusts, from agent.yaml's `commandSigning` (None: none configured)."""
    signing = settings.command_signing
    lines = list(signing.trusted_keys)
    if signing.trusted_keys_file is not None:
        path = signing.trusted_keys_file
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError([f"commandSigning.trustedKeysFile: cannot read {path}: {exc}"]) from None
        lines += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise SettingsError([f"commandSigning.trustedKeysFile: {path} holds no keys; an empty trust list would "
                                 "run unsigned commands, so it is refused"])
    if not lines:
        return None
    from contract.signing import SigningError, load_public_key

    keys = []
    for number, line in enumerate(lines, 1):
        try:
            keys.append(load_public_key(line))
        except SigningError as exc:
            raise SettingsError([f"commandSigning: key {number}: {exc}"]) from None
    return Trust(keys)


def run_command(args: argparse.Namespace) -> int:
    """`deploy-agent run`: the CLI layer. Renders errors as one line each and maps them to exit codes."""
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"deploy-agent: {problem}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        _configure_logging(args, settings)
    except OSError as exc:
        print(f"deploy-agent: cannot open the log folder {settings.log_dir}: {exc.strerror}", file=sys.stderr)
        return ExitCode.INVALID
    for name in unknown_environment_variables(os.environ):
        log.warning("settings.unknown_variable", variable=name, did_you_mean=meant_variable(name))
    try:
        settings = resolve_identity(settings, os.environ, read_platform())
    except IdentityError as exc:
        print(f"deploy-agent: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        trust = command_trust(settings)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"deploy-agent: {problem}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        store = seal_store(open_store(settings.store), trust=trust)
    except StoreError as exc:
        print(f"deploy-agent: store {settings.store}: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        metrics = open_metrics(settings, version=__version__)
    except MetricsUnavailable as exc:
        print(f"deploy-agent: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    try:
        with stop_on_signals() as stop, root_lock(settings.root_dir):
            agent = Agent(settings, store, make_runner(settings), stop, take_over=args.take_over, metrics=metrics)
            code = agent.run_once() if args.once else agent.run_forever()
    except (HostIdInUse, StateError) as exc:
        print(f"deploy-agent: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    except OSError as exc:
        print(f"deploy-agent: cannot use the deployment root {settings.root_dir}: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    finally:
        metrics.close()
    if code == ExitCode.STORE_UNAVAILABLE:
        print(f"deploy-agent: the store {settings.store} is unavailable; unreported results are kept in "
              f"{settings.root_dir / STATE_FILE} and sent on the next run", file=sys.stderr)
    return int(code)
