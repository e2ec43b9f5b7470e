"""Mirrors of remote config repositories, kept up to date by git processes that can be killed.

`reconcile --once`, `plan` and `watch` read manifests from a remote URL through a bare mirror under the cache
folder (one clone, then one incremental fetch per load). git runs as a child process in its own process group,
bounded in time and stopped on request, because a network that accepts and never answers must neither wedge a
CI job nor delay `watch`'s stop. A first clone goes to a temporary folder renamed into place when complete, so
a clone killed half-way (kill -9 of the reconciler included) never leaves a broken mirror: the next load
clones again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from contract import gitrun
from contract.gitmessages import git_reason
from reconciler.errors import SourceError

#: A `git fetch` of a remote repository that has not finished after this long is killed; the next fetch comes
#: `fetchInterval` later. While git runs no pass does, so this also bounds how long a hung network can hold
#: up a rollout in flight.
FETCH_TIMEOUT_SECONDS = 60.0
#: The first clone of a remote repository may take longer than a fetch.
CLONE_TIMEOUT_SECONDS = 600.0
#: How long a killed git process gets between SIGTERM and SIGKILL, and how often it is looked at (contract/gitrun.py).
GIT_TERM_GRACE_SECONDS = gitrun.GIT_TERM_GRACE_SECONDS
GIT_POLL_SECONDS = gitrun.GIT_POLL_SECONDS


class Interrupted(Exception):
    """Asked to stop while git was running; git was killed."""


def cache_dir() -> Path:
    """Where mirrors of remote repositories live: $XDG_CACHE_HOME/fleetshift/repos (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetshift" / "repos"




def mirror_path(url: str) -> Path:
    """Where the bare mirror of a remote repository lives."""
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]


def run_git(args: list[str], *, cwd: Path | None, stop: threading.Event, timeout: float, what: str) -> None:
    """Run `git args`, killing it when `stop` is set (Interrupted) or after `timeout` seconds (SourceError).

    git runs in its own process group (contract/gitrun.py), so the kill reaches its children too and a Ctrl-C on
    the terminal reaches only the watcher, which then kills git itself."""
    try:
        gitrun.run_git(args, cwd=cwd, timeout=timeout, stopped=stop.is_set, wait=stop.wait)
    except gitrun.GitStopped:
        raise Interrupted(what) from None
    except gitrun.GitTimedOut:
        raise SourceError(f"{what}: git {args[0]} did not finish within {timeout:g}s and was killed") from None
    except gitrun.GitFailed as exc:
        raise SourceError(f"{what}: git {args[0]} failed: {git_reason(exc.stderr, exc.returncode)}") from None


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
