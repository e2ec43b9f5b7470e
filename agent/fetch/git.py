"""A revision in a Git repository at a full commit id: fetched into a bare cache under the deployment root,
then exported with `git archive`.

Every git command runs as a child process in its own process group through contract/gitrun.py (shared with the
reconciler's config mirror), polled with the command's `FetchBudget`: a remote that accepts and never answers,
a stop request (SIGTERM, a newer command) or the command's deadline kill git (SIGTERM, then SIGKILL) within a
fraction of a second, and the failure names the repository and how long it waited. `git archive` is capped at
`FetchLimits.max_bytes`. The git process group is reported through `budget.on_child`, so the daemon records it
in its state file. Starting the agent loads no Git library at all (tests/daemon/test_import_boundary.py).

kill -9 of the agent while git runs: git (its own process group) outlives the agent; the next start kills that
group from the state file before reporting the command FailedAfterRestart (agent/daemon/orphans.py). A fetch cut
off leaves the bare cache as git leaves it after a kill (objects are written before refs, so it stays
consistent; a stale lock file is removed by git's next run or fails it with git's own message); a cut `git
archive` leaves a partial `bundle.tar` that is never unpacked.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import structlog

from agent.errors import BundleError, BundleNotFound, BundleUnavailable, UnsafeBundle
from agent.fetch.bounds import FetchBudget, size_text
from agent.fetch.revision import FetchedBundle
from contract import gitrun
from contract.gitmessages import git_reason
from contract.wire import Revision

log = structlog.get_logger("agent.fetch.git")

#: A backstop for one git command when the command has no deadline at all (the budget normally has one).
GIT_MAX_SECONDS = 24 * 3600.0


@contextmanager
def _locked(path: Path, budget: FetchBudget) -> Iterator[None]:
    """The cache's lock, waited for under the budget (only another fetch of this agent can hold it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                budget.wait(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_git(revision: Revision, bundle_path: Path, cache_root: Path,
              budget: FetchBudget | None = None) -> FetchedBundle:
    location = revision.git
    assert location is not None
    budget = budget or FetchBudget.unbounded()
    url, commit = location.repository, location.commit
    if url.startswith("-") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", url):
        # `-...` would be read as an option by git; `ext::`/`fd::` transports run arbitrary commands.
        raise BundleError(f"refusing Git repository {url!r}: use an https://, ssh://, git:// URL or a path")
    cache = cache_root / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".git")
    git = _Git(budget, cache)
    with _locked(cache_root / (cache.name + ".lock"), budget):
        try:
            if not (cache / "HEAD").is_file() or not (cache / "objects").is_dir():
                shutil.rmtree(cache, ignore_errors=True)
                git.run(["init", "--quiet", "--bare", str(cache)], step=f"preparing the Git cache for {url}",
                        in_cache=False)
            if not git.has_commit(commit):
                step = f"fetching commit {commit} from Git repository {url}"
                try:
                    # Most servers (and every local repository) hand out a commit by id directly.
                    git.run(["fetch", "--quiet", url, commit], step=step)
                except gitrun.GitFailed:
                    # Others only serve advertised refs: fetch every branch and tag instead. If this fails
                    # too, its error says why (the first one's is usually the same, or only "not our ref").
                    git.run(["fetch", "--quiet", "--tags", url, "+refs/heads/*:refs/heads/*"],
                            step=f"fetching every branch and tag of Git repository {url}")
                log.info("bundle.git_fetched", repository=url, seconds=round(budget.clock() - budget.step_started, 3))
            if not git.has_commit(commit):
                raise BundleNotFound(
                    f"commit {commit} is not in {url} (fetched it by id, then every branch and tag); was it pushed?"
                )
            with bundle_path.open("wb") as out:
                git.run(["archive", "--format=tar", commit], step=f"exporting commit {commit} of {url}", stdout=out,
                        cap=bundle_path)
        except gitrun.GitFailed as exc:
            raise _git_error(url, commit, git_reason(exc.stderr, exc.returncode)) from exc
    return FetchedBundle(bundle_path, "tar")


class _Git:
    """git commands against one cache, each under the budget."""

    def __init__(self, budget: FetchBudget, cache: Path) -> None:
        self.budget = budget
        self.cache = cache

    def run(self, args: list[str], *, step: str | None = None, in_cache: bool = True,
            stdout: IO[bytes] | None = None, cap: Path | None = None) -> None:
        budget = self.budget
        if step is not None:
            budget.step(step)
        limit = budget.remaining()

        def poll() -> None:
            if cap is not None:
                size = cap.stat().st_size
                if size > budget.limits.max_bytes:
                    raise UnsafeBundle(f"{budget.step_name}: more than {size_text(budget.limits.max_bytes)}, the "
                                       "agent's limit for a bundle; nothing was unpacked")
            budget.check()

        def started(pid: int) -> None:
            if budget.on_child is not None:
                budget.on_child(pid)

        try:
            gitrun.run_git(args, cwd=self.cache if in_cache else None,
                           timeout=(limit + 1.0) if limit is not None else GIT_MAX_SECONDS, stdout=stdout,
                           on_start=started, on_poll=poll)
        except gitrun.GitTimedOut:
            budget.check()  # the budget's own message when it is what ran out
            raise BundleUnavailable(f"{budget.step_name}: git did not finish within {GIT_MAX_SECONDS:g} s") from None
        finally:
            if budget.on_child is not None:
                budget.on_child(None)

    def has_commit(self, commit: str) -> bool:
        try:
            self.run(["cat-file", "-e", f"{commit}^{{commit}}"])
        except gitrun.GitFailed:
            return False
        return True


def _git_error(url: str, commit: str, reason: str) -> BundleError:
    if re.search(r"does not appear to be a git repository|not found|does not exist|No such|"
                 r"not a git repository", reason, re.IGNORECASE):
        return BundleNotFound(f"cannot read Git repository {url}: {reason}")
    if re.search(r"Authentication failed|Permission denied|could not read Username|terminal prompts "
                 r"disabled|403", reason, re.IGNORECASE):
        return BundleError(
            f"Git repository {url} refused the agent's credentials: {reason}; give the agent read access "
            "(a deploy key, or a credential helper for its user)"
        )
    if re.search(r"resolve host|timed out|Connection|unable to access|early EOF|Network is unreachable",
                 reason, re.IGNORECASE):
        return BundleUnavailable(f"cannot reach Git repository {url}: {reason}")
    return BundleError(f"git failed for {url} at {commit}: {reason}")
