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

import contextlib
import errno
import os
import pwd
import selectors
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.lifecycle.appspec import HookScript, bundle_relative
from agent.lifecycle.scriptlog import ScriptLog
from contract.models import LifecycleErrorCode

log = structlog.get_logger("agent.lifecycle.hooks")

_READ_SIZE = 65536
_MAX_LINE = 65536


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
) -> ScriptOutcome:
    """Run one hook script to completion, timeout or failure. Never raises for the script's own faults.

    `deadline` (a `time.monotonic()` value) is the command's overall limit; the script gets whichever of
    its own timeout and that limit ends first.
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
        _wait(process, location=location, who=launch.who, script_log=script_log, until=started + timeout,
              limit=_limit_text(timeout, limit_is_command), grace=settings.kill_grace_seconds)
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
    real = os.path.realpath(path)
    root = os.path.realpath(archive_dir)
    if not real.startswith(root + os.sep):
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
    capture = _Capture(process, script_log)
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
        escalated = _stop_group(process, capture, grace)
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


class _Capture:
    """Reads a child's stdout and stderr line by line, and notices its exit, on one thread with select."""

    def __init__(self, process: subprocess.Popen[bytes], script_log: ScriptLog) -> None:
        self.process = process
        self.script_log = script_log
        self.selector = selectors.DefaultSelector()
        self.partial: dict[int, bytearray] = {}
        self.names: dict[int, str] = {}
        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, name)
            self.partial[fd] = bytearray()
            self.names[fd] = name
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(process.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")
        self.exited = False

    def open_streams(self) -> list[str]:
        return [self.names[fd] for fd in self.partial]

    def _check_exit(self) -> None:
        if not self.exited and self.process.poll() is not None:
            self.exited = True
            if self.pidfd is not None:
                self.selector.unregister(self.pidfd)
                os.close(self.pidfd)
                self.pidfd = None

    def until(self, deadline: float) -> bool:
        """Pump output until the process exited and both streams closed (True), or the deadline (False)."""
        while True:
            self._check_exit()
            if self.exited and not self.partial:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Without a pidfd, an exit is only noticed by polling; keep that cheap but prompt.
            wait = remaining if self.pidfd is not None or self.exited else min(remaining, 0.05)
            for key, _ in self.selector.select(wait):
                if key.data == "exit":
                    self._check_exit()
                else:
                    self._read(int(key.fd))

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._flush(fd, final=True)
            self.selector.unregister(fd)
            del self.partial[fd]
            return
        buffer = self.partial[fd]
        buffer.extend(data)
        self._flush(fd, final=False)

    def _flush(self, fd: int, *, final: bool) -> None:
        buffer = self.partial[fd]
        name = self.names[fd]
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            self.script_log.output(name, buffer[:newline].decode("utf-8", "replace").rstrip("\r"))
            del buffer[: newline + 1]
        if len(buffer) > _MAX_LINE or (final and buffer):
            self.script_log.output(name, buffer.decode("utf-8", "replace"))
            buffer.clear()

    def drain(self, seconds: float) -> None:
        """Keep reading (so the child never blocks on a full pipe) while waiting for it to exit."""
        self.until(time.monotonic() + seconds)

    def close(self) -> None:
        for fd in list(self.partial):
            self._flush(fd, final=True)
        self.partial.clear()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.selector.close()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        self.script_log.flush()


def _stop_group(process: subprocess.Popen[bytes], capture: _Capture, grace: float) -> bool:
    """SIGTERM the script's process group, then SIGKILL it if the leader is still there after `grace`.
    Returns True if SIGKILL was needed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        capture.drain(min(0.05, max(deadline - time.monotonic(), 0)))
        if process.poll() is not None:
            # The leader is gone; anything left in its group gets SIGKILL too, as the timeout promised.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
