"""A revision in a Git repository at a full commit id: fetched into a bare cache under the deployment root,
then exported with `git archive`. GitPython is imported here only, on first use, so starting the agent
never loads it (tests/daemon/test_import_boundary.py)."""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from agent.errors import BundleError, BundleNotFound, BundleUnavailable
from agent.fetch.revision import FetchedBundle
from contract.gitmessages import GIT_NO_PROMPT, git_reason
from contract.models import Revision

log = structlog.get_logger("agent.fetch.git")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_git(revision: Revision, bundle_path: Path, cache_root: Path) -> FetchedBundle:
    import git
    from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError

    location = revision.git
    assert location is not None
    url = location.repository
    if url.startswith("-") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", url):
        # `-...` would be read as an option by git; `ext::`/`fd::` transports run arbitrary commands.
        raise BundleError(f"refusing Git repository {url!r}: use an https://, ssh://, git:// URL or a path")
    cache = cache_root / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".git")
    with _locked(cache_root / (cache.name + ".lock")):
        try:
            try:
                repo = git.Repo(cache)
            except (InvalidGitRepositoryError, NoSuchPathError):
                shutil.rmtree(cache, ignore_errors=True)
                repo = git.Repo.init(cache, bare=True)
            repo.git.update_environment(**GIT_NO_PROMPT)
            if not _has_commit(repo, location.commit, BadName):
                started = time.monotonic()
                try:
                    # Most servers (and every local repository) hand out a commit by id directly.
                    repo.git.fetch("--quiet", url, location.commit)
                except GitCommandError:
                    # Others only serve advertised refs: fetch every branch and tag instead. If this fails
                    # too, its error says why (the first one's is usually the same, or only "not our ref").
                    repo.git.fetch("--quiet", "--tags", url, "+refs/heads/*:refs/heads/*")
                log.info("bundle.git_fetched", repository=url, seconds=round(time.monotonic() - started, 3))
            if not _has_commit(repo, location.commit, BadName):
                raise BundleNotFound(
                    f"commit {location.commit} is not in {url} (fetched it by id, then every branch and tag); "
                    "was it pushed?"
                )
            with bundle_path.open("wb") as out:
                repo.archive(out, location.commit, format="tar")
        except GitCommandError as exc:
            reason = git_reason(exc.stderr, exc.status)
            if re.search(r"does not appear to be a git repository|not found|does not exist|No such|"
                         r"not a git repository", reason, re.IGNORECASE):
                raise BundleNotFound(f"cannot read Git repository {url}: {reason}") from exc
            if re.search(r"Authentication failed|Permission denied|could not read Username|terminal prompts "
                         r"disabled|403", reason, re.IGNORECASE):
                raise BundleError(
                    f"Git repository {url} refused the agent's credentials: {reason}; give the agent read access "
                    "(a deploy key, or a credential helper for its user)"
                ) from exc
            if re.search(r"resolve host|timed out|Connection|unable to access|early EOF|Network is unreachable",
                         reason, re.IGNORECASE):
                raise BundleUnavailable(f"cannot reach Git repository {url}: {reason}") from exc
            raise BundleError(f"git failed for {url} at {location.commit}: {reason}") from exc
    return FetchedBundle(bundle_path, "tar")


def _has_commit(repo: Any, commit: str, bad_name: type[Exception]) -> bool:
    try:
        return bool(repo.commit(commit).hexsha == commit)
    except (bad_name, ValueError):
        return False
