"""Hook scripts as real processes: start, capture, time out, report (reference 2.3-2.5).

Called by the lifecycle runner once per script of a lifecycle event. Compatible with the reference agent:
the script path is inside the revision, it gets a new process group, stdin is closed, stdout and stderr are
read line by line into `logs/scripts.log` (`[stdout]`/`[stderr]` lines) and into the shared deployments log,
the environment is the agent's plus the CodeDeploy variables, a non-executable script is made executable, a
timeout kills the whole process group, and a script that exits while a background child still holds its
output fails at the timeout instead of hanging (ISSUE #118).

Where users of the reference agent lose time, this module does better:

- the working directory is the revision folder, not whatever the agent's was (ISSUE #67, #244);
- SIGTERM escalates to SIGKILL after a grace period, so a script ignoring SIGTERM cannot outlive its timeout;
- the outcome says what happened: exit code, signal name, timeout, missing interpreter, and keeps the last
  lines of output for the event report, not only in a log file;
- `runas` switches user directly (setuid/setgid with the user's groups, HOME, USER, LOGNAME, SHELL), without
  `su`, so it works without a terminal (ISSUE #191) and the script sees the user's home (ISSUE #73).
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.fetch import bundle_environment
from agent.lifecycle.appspec import HookScript
from agent.lifecycle.appspec_values import bundle_relative
from agent.lifecycle.capture import Capture, stop_group
from agent.lifecycle.hostview import resolves_inside
from agent.lifecycle.scriptlog import ScriptLog
from contract.vocabulary import LifecycleErrorCode
from contract.wire import HostCommand

log = structlog.get_logger("agent.lifecycle.hooks")



@dataclass(frozen=True)
class ScriptOutcome:
    """What one script did. `error_code` is None on success."""

    location: str
    error_code: LifecycleErrorCode | None
    exit_code: int | None
    message: str | None
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.error_code is None


@dataclass(frozen=True)
class HookSettings:
    kill_grace_seconds: float = 10.0
    runas_allowed: bool = True


def hook_environment(command: HostCommand, event: str, host_root: Path | None) -> dict[str, str]:
    """The agent's environment (minus stale BUNDLE_*), the CodeDeploy variables (reference 2.3) and
    FLEETSHIFT_HOST_ROOT."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BUNDLE_")}
    environment.update(
        LIFECYCLE_EVENT=event,
        DEPLOYMENT_ID=command.deployment_id,
        APPLICATION_NAME=command.application,
        DEPLOYMENT_GROUP_NAME=command.deployment_group,
        DEPLOYMENT_GROUP_ID=command.deployment_group_id,
        # Where absolute destinations really land: empty in production (host root `/`), the sandbox
        # folder under `--host-root`, so `"$FLEETSHIFT_HOST_ROOT/srv/app"` is right in both. Always set,
        # so scripts under `set -u` work too.
        FLEETSHIFT_HOST_ROOT=host_root_text(host_root),
    )
    environment.update(bundle_environment(command.revision))
    return environment


def host_root_text(host_root: Path | None) -> str:
    """`FLEETSHIFT_HOST_ROOT` for hooks: "" for the real root, so a script prefixes absolute paths with it
    unconditionally; never a trailing `/`, so `$FLEETSHIFT_HOST_ROOT/etc` has no `//`."""
    if host_root is None:
        return ""
    return str(host_root.absolute()).rstrip("/")


def resolve_runas(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


class _ScriptFault(Exception):
    """One step of `run_script` found the script cannot run or did not succeed; becomes its outcome."""

    def __init__(self, code: LifecycleErrorCode, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Launch:
    """How the script is started: its command line, environment, user and how messages name that user."""

    command: list[str]
    env: dict[str, str]
    popen_user: dict[str, Any]
    who: str


def run_script(
    script: HookScript,
    *,
    archive_dir: Path,
    environment: dict[str, str],
    script_log: ScriptLog,
    settings: HookSettings,
    deadline: float | None = None,
    on_spawn: Callable[[int | None], None] | None = None,
) -> ScriptOutcome:
    """Run one hook script to completion, timeout or failure. Never raises for the script's own faults.

    `deadline` (a `time.monotonic()` value) is the command's overall limit; the script gets whichever of
    its own timeout and that limit ends first. `on_spawn(pgid)` is told the script's process group right after
    it starts (the daemon records it, to kill it if the agent dies meanwhile) and `on_spawn(None)` after it
    ended; kill -9 between the start and that record leaves the script running unrecorded (a window of one
    state-file write).
    """
    started = time.monotonic()
    location = script.location
    script_log.script(location)
    path = archive_dir / bundle_relative(location)
    try:
        _make_runnable(location, path, archive_dir, script_log)
        launch = _launch_for(script, path, environment, settings)
        timeout, limit_is_command = _time_limit(script, started, deadline)
        log.info("hook.started", script=location, timeout=script.timeout, runas=script.runas)
        process = _spawn(location, launch, archive_dir)
        if on_spawn is not None:
            on_spawn(process.pid)
        try:
            _wait(process, location=location, who=launch.who, script_log=script_log, until=started + timeout,
                  limit=_limit_text(timeout, limit_is_command), grace=settings.kill_grace_seconds)
        finally:
            if on_spawn is not None:
                on_spawn(None)
    except _ScriptFault as fault:
        script_log.note(fault.message)
        log.info("hook.failed", script=location, error_code=fault.code.value, exit_code=fault.exit_code,
                 reason=fault.message)
        return ScriptOutcome(location, fault.code, fault.exit_code, fault.message, time.monotonic() - started)
    seconds = time.monotonic() - started
    log.info("hook.succeeded", script=location, seconds=round(seconds, 3))
    return ScriptOutcome(location, None, 0, None, seconds)


def _make_runnable(location: str, path: Path, archive_dir: Path, script_log: ScriptLog) -> None:
    """The script must be a file of the revision; one without its execute bit gets it."""
    try:
        info = path.stat()
    except OSError:
        raise _ScriptFault(
            LifecycleErrorCode.SCRIPT_MISSING, f"script {location} does not exist in the revision ({path})"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise _ScriptFault(LifecycleErrorCode.SCRIPT_MISSING, f"script {location} is not a file ({path})")
    if info.st_mode & 0o111:
        return
    # Bundles zipped on some systems lose the execute bit; the reference agent adds it back too. Only to
    # the bundle's own files: a script that is a link out of the bundle would have a host file changed.
    if not resolves_inside(path, archive_dir):
        real = os.path.realpath(path)
        raise _ScriptFault(
            LifecycleErrorCode.SCRIPT_NOT_EXECUTABLE,
            f"script {location} is a symlink to {real}, outside the bundle, which is not executable; the agent "
            "only makes the bundle's own files executable",
        )
    try:
        os.chmod(path, stat.S_IMODE(info.st_mode) | (0o111 & ~_umask()))
        script_log.note(f"{location} was not executable; made it executable")
    except OSError as exc:
        raise _ScriptFault(
            LifecycleErrorCode.SCRIPT_NOT_EXECUTABLE, f"cannot make {location} executable: {exc.strerror}"
        ) from exc


def _launch_for(script: HookScript, path: Path, environment: dict[str, str], settings: HookSettings) -> _Launch:
    """The command line, and for `runas` the user switch (ids, groups, HOME, USER, LOGNAME, SHELL)."""
    location = script.location
    command = [str(path)]
    env = dict(environment)
    popen_user: dict[str, Any] = {}
    who = ""
    if script.runas:
        account = resolve_runas(script.runas)
        if account is None:
            raise _ScriptFault(
                LifecycleErrorCode.SCRIPT_FAILED, f"runas user {script.runas!r} does not exist on this host"
            )
        if not settings.runas_allowed:
            raise _ScriptFault(LifecycleErrorCode.SCRIPT_FAILED, f"{location} asks to run as {script.runas!r}, "
                               "but this agent does not allow runas")
        if os.geteuid() != 0 and account.pw_uid != os.geteuid():
            raise _ScriptFault(LifecycleErrorCode.SCRIPT_FAILED, f"{location} asks to run as {script.runas!r}, "
                               "which needs the agent to run as root")
        popen_user = {
            "user": account.pw_uid,
            "group": account.pw_gid,
            "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid),
        }
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name,
                   SHELL=account.pw_shell or "/bin/sh")
        who = f" as {account.pw_name}"
    if script.sudo and os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    return _Launch(command, env, popen_user, who)


def _time_limit(script: HookScript, started: float, deadline: float | None) -> tuple[float, bool]:
    """Seconds the script may run, and whether the command's overall limit (not its own timeout) sets it."""
    timeout = float(script.timeout)
    if deadline is not None and deadline - started < timeout:
        return max(deadline - started, 0.0), True
    return timeout, False


def _spawn(location: str, launch: _Launch, archive_dir: Path) -> subprocess.Popen[bytes]:
    """Its own process group, stdin closed, the revision folder as working directory."""
    try:
        return subprocess.Popen(
            launch.command,
            cwd=archive_dir,
            env=launch.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            close_fds=True,
            **launch.popen_user,
        )
    except OSError as exc:
        raise _ScriptFault(
            LifecycleErrorCode.SCRIPT_FAILED, _spawn_error(location, exc, launch.who, archive_dir)
        ) from exc


def _wait(
    process: subprocess.Popen[bytes],
    *,
    location: str,
    who: str,
    script_log: ScriptLog,
    until: float,
    limit: str,
    grace: float,
) -> None:
    """Capture the output until the script ends; raise `_ScriptFault` unless it exited 0 in time."""
    capture = Capture(process, script_log)
    finished = capture.until(until)
    if not finished and capture.exited:
        streams = " and ".join(capture.open_streams())
        capture.close()
        code = process.returncode
        raise _ScriptFault(
            LifecycleErrorCode.OUTPUTS_LEFT_OPEN,
            f"{location}{who} exited (code {code}) but a process it started kept its {streams} open until "
            f"the {limit} ran out; start background processes with `> /dev/null 2>&1 < /dev/null &`",
            exit_code=code,
        )
    if not finished:
        escalated = stop_group(process, capture, grace)
        capture.close()
        how = f"SIGTERM, then SIGKILL after {grace:g} s" if escalated else "SIGTERM"
        raise _ScriptFault(
            LifecycleErrorCode.SCRIPT_TIMED_OUT,
            f"{location}{who} did not finish within the {limit}; its process group was stopped ({how})",
        )
    capture.close()
    code = process.returncode
    if code < 0:
        raise _ScriptFault(
            LifecycleErrorCode.SCRIPT_FAILED, f"{location}{who} was killed by signal {_signal_name(-code)}",
            exit_code=code,
        )
    if code != 0:
        raise _ScriptFault(LifecycleErrorCode.SCRIPT_FAILED, f"{location}{who} exited with code {code}", exit_code=code)


def _limit_text(seconds: float, command_limit: bool) -> str:
    if command_limit:
        return f"command's remaining time limit of {seconds:.0f} s"
    return f"timeout of {seconds:g} s"


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def _spawn_error(location: str, exc: OSError, who: str, cwd: Path) -> str:
    if exc.errno == errno.ENOEXEC:
        return f"cannot start {location}{who}: it is not a program and has no #! line"
    if exc.errno == errno.ENOENT:
        return f"cannot start {location}{who}: the interpreter named on its #! line was not found"
    if exc.errno == errno.EACCES:
        return (f"cannot start {location}{who}: permission denied (the user needs read and execute access to "
                f"the script and to {cwd})")
    return f"cannot start {location}{who}: {exc.strerror or exc}"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
