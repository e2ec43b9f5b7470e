"""Mirrors of remote config repositories, kept up to date by git processes that can be killed.

`reconcile --once`, `plan` and `watch` read manifests from a remote URL through a bare mirror under the cache
folder (one clone, then one incremental fetch per load). git runs as a child process in its own process group,
bounded in time and stopped on request, because a network that accepts and never answers must neither wedge a
CI job nor delay `watch`'s stop. A first clone goes to a temporary folder renamed into place when complete, so
a clone killed half-way (kill -9 of the reconciler included) never leaves a broken mirror: the next load
clones again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from contract.gitmessages import GIT_NO_PROMPT, git_reason
from reconciler.errors import SourceError

#: A `git fetch` of a remote repository that has not finished after this long is killed; the next fetch comes
#: `fetchInterval` later. While git runs no pass does, so this also bounds how long a hung network can hold
#: up a rollout in flight.
FETCH_TIMEOUT_SECONDS = 60.0
#: The first clone of a remote repository may take longer than a fetch.
CLONE_TIMEOUT_SECONDS = 600.0
#: A git process being killed first gets SIGTERM, so it removes its lock files, then SIGKILL after this.
GIT_TERM_GRACE_SECONDS = 1.0
#: How often the loop looks at a running git process (and at the stop event) while waiting for it.
GIT_POLL_SECONDS = 0.05


class Interrupted(Exception):
    """Asked to stop while git was running; git was killed."""


def cache_dir() -> Path:
    """Where mirrors of remote repositories live: $XDG_CACHE_HOME/fleetshift/repos (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetshift" / "repos"




def mirror_path(url: str) -> Path:
    """Where the bare mirror of a remote repository lives."""
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]


def _end(process: subprocess.Popen[bytes]) -> None:
    """Kill a git process and whatever it started (ssh, a remote helper): SIGTERM, then SIGKILL."""
    for signum, grace in ((signal.SIGTERM, GIT_TERM_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_git(args: list[str], *, cwd: Path | None, stop: threading.Event, timeout: float, what: str) -> None:
    """Run `git args`, killing it when `stop` is set (Interrupted) or after `timeout` seconds (SourceError).

    git runs in its own process group, so the kill reaches its children too and a Ctrl-C on the terminal
    reaches only the watcher, which then kills git itself."""
    env = {**os.environ, **GIT_NO_PROMPT}
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=errors, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if stop.is_set():
                _end(process)
                raise Interrupted(what)
            if time.monotonic() >= deadline:
                _end(process)
                raise SourceError(f"{what}: git {args[0]} did not finish within {timeout:g}s and was killed")
            stop.wait(GIT_POLL_SECONDS)
        if process.returncode != 0:
            errors.seek(0)
            raise SourceError(f"{what}: git {args[0]} failed: {git_reason(errors.read(), process.returncode)}")


def sync_mirror(url: str, *, stop: threading.Event, fetch: bool = True, fetch_timeout: float = FETCH_TIMEOUT_SECONDS,
                clone_timeout: float = CLONE_TIMEOUT_SECONDS) -> Path:
    """Bring the bare mirror of a remote repository up to date: clone it once, then fetch. Killable.

    A clone goes to a temporary folder renamed into place when complete, so a clone killed half-way never
    leaves a broken mirror behind."""
    if url.startswith(("/", ".", "~")):
        raise SourceError(f"{url}: no such folder")
    mirror = mirror_path(url)
    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{mirror.name}.", suffix=".partial", dir=mirror.parent))
        try:
            run_git(["clone", "--mirror", "--quiet", url, str(partial)], cwd=None, stop=stop,
                    timeout=clone_timeout, what=url)
            try:
                partial.rename(mirror)
            except OSError:
                if not mirror.exists():  # not "another watcher cloned it first"
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return mirror
    if not fetch:
        return mirror
    run_git(["fetch", "--prune", "--quiet", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            cwd=mirror, stop=stop, timeout=fetch_timeout, what=url)
    return mirror
