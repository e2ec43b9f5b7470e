"""git as a child process that can be stopped, for both sides: the reconciler mirroring the config repository
(reconciler/desired/gitmirror.py) and the agent fetching a Git revision (agent/fetch/git.py).

A network that accepts a connection and never answers keeps `git fetch` waiting forever, so every git command of
ours runs in its own process group, is bounded in time and is killed on request: SIGTERM (git removes its lock
files), then SIGKILL after `GIT_TERM_GRACE_SECONDS`, for the whole group (ssh, a remote helper). This module
decides nothing about what a failure means; each caller raises its own error with its own words.

kill -9 of the caller while git runs: git is in its own process group and outlives it until its network call
ends. The agent records the group in its state file and kills it at its next start (agent/daemon/orphans.py);
under systemd (`KillMode=control-group`) it dies with the service anyway.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from contract.gitmessages import GIT_NO_PROMPT

#: A git process being killed first gets SIGTERM, so it removes its lock files, then SIGKILL after this.
GIT_TERM_GRACE_SECONDS = 1.0
#: How often a running git process (and the stop request) is looked at while waiting for it.
GIT_POLL_SECONDS = 0.05


class GitStopped(Exception):
    """Asked to stop while git was running; git was killed."""


class GitTimedOut(Exception):
    """git did not finish within its time limit and was killed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"git did not finish within {seconds:g}s and was killed")
        self.seconds = seconds


class GitFailed(Exception):
    """git exited with an error; `stderr` is what it printed (for contract.gitmessages.git_reason)."""

    def __init__(self, returncode: int, stderr: bytes) -> None:
        super().__init__(f"git exited with {returncode}")
        self.returncode = returncode
        self.stderr = stderr


def end_process_group(process: subprocess.Popen[bytes], grace: float = GIT_TERM_GRACE_SECONDS) -> None:
    """Kill a git process and whatever it started (ssh, a remote helper): SIGTERM, then SIGKILL."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_git(
    args: list[str],
    *,
    cwd: Path | None,
    timeout: float,
    stopped: Callable[[], bool] = lambda: False,
    wait: Callable[[float], object] = time.sleep,
    stdout: IO[bytes] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Run `git args` to completion. Raises GitStopped when `stopped()` turns true, GitTimedOut after `timeout`
    seconds, GitFailed when git exits non-zero; in the first two cases git's process group is killed first.

    `wait(seconds)` sleeps between looks (a threading.Event's `wait` wakes at once when it is set); `stdout`
    receives git's output (else it is discarded); `on_start(pid)` is told the process group as soon as git
    runs; `on_poll()` is called at every look and may raise to stop git (it is killed, the error propagates)."""
    env = {**os.environ, **GIT_NO_PROMPT}
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL, stderr=errors, start_new_session=True,
        )
        try:
            if on_start is not None:
                on_start(process.pid)
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                if stopped():
                    raise GitStopped()
                if time.monotonic() >= deadline:
                    raise GitTimedOut(timeout)
                if on_poll is not None:
                    on_poll()
                wait(GIT_POLL_SECONDS)
        except BaseException:
            end_process_group(process)
            raise
        if process.returncode != 0:
            errors.seek(0)
            raise GitFailed(process.returncode, errors.read())
