"""`reconcile plan`: the command-line layer over `reconciler.plan.engine`.

It resolves the two refs (head, and base = the merge base with the default branch unless given), loads and
validates the manifests at both, reads the fleet from the store when it can, asks `compute_plan` for the
plan, prints it in the chosen format and, with `--out`, saves it with the fingerprints that
`reconcile --once --plan` checks. Exit codes follow `terraform plan -detailed-exitcode`: 0 no changes,
2 changes, and each failure its own, so a CI workflow can tell whose problem it is:

- 1 with `reconcile plan: the head has N manifest errors` (the plan, with the errors, is on stdout): the
  change itself is invalid, the author fixes it;
- 1 with `reconcile plan: cannot read the config repository: ...` (nothing on stdout): the checkout, a ref or
  git failed, the workflow is broken, not the change; likewise bad flags or settings;
- 9 with `reconcile plan: config commit ... refused` (nothing on stdout): `repository.verify` refuses the head,
  or in strict mode a commit the change adds (unsigned, or signed by a signer not allowed; docs/trust.md);
- 8 (as everywhere in `reconcile`): the store could not be read. The plan is still printed, computed offline
  (hosts and batches from the selectors alone), because the diff is worth reviewing anyway; but a run that
  was asked to read the fleet and could not must not pass for a complete plan. `--offline` asks for no store.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from contract.exitcodes import ExitCode
from contract.signing import Trust
from contract.store import InvalidStoreURL, Store, StoreError
from reconciler.core import Observed, State
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import files_from_commit, open_repository
from reconciler.desired.verify import CommitVerifier, UnverifiedCommit
from reconciler.errors import ManifestErrors, ReconcilerError, SourceError
from reconciler.plan.engine import (
    DEFAULT_ROLLBACK_WARNING_HOSTS,
    Fleet,
    LoadedRef,
    Plan,
    PlanOptions,
    compute_plan,
    saved_plan,
    write_saved_plan,
)
from reconciler.plan.render import GITHUB_COMMENT_LIMIT, count, render_json, render_markdown, render_text
from reconciler.settings import DeploySettings
from reconciler.shell.fleet import read_memberships
from reconciler.shell.observe import StoreReader
from reconciler.shell.signing import store_keys

log = structlog.get_logger(__name__)

#: Where to look for "the default branch" when neither --base nor a branch in repository.ref says.
DEFAULT_BRANCH_CANDIDATES = ("origin/HEAD", "origin/main", "origin/master", "main", "master")


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "plan",
        parents=[parent],
        help="show what merging a change would do: semantic diff, hosts, batches, warnings",
        description=(
            "Compare the manifests at two refs (base: the merge base with the default branch, head: HEAD), "
            "and show what applying the head would do: the deployments that start, their hosts and batches "
            "(from the store when reachable), and the warnings that matter in review."
        ),
        epilog="Exit codes: 0 no changes, 2 changes, 1 invalid input (invalid head manifests, unreadable config "
        "repository or ref, unsaved --out), 8 the store could not be read (the plan is printed, computed offline), "
        "9 the head (or, with repository.verify.mode strict, a commit the change adds) is refused by "
        "repository.verify.",
    )
    parser.add_argument("--base", default=None, help="ref to compare with (default: merge base of head and the "
                        "default branch: repository.ref if it names a branch, else origin/HEAD, main, master)")
    parser.add_argument("--head", default=None, help="ref whose manifests would be applied (default: HEAD)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="text for terminals, markdown for a pull-request comment, json for bots")
    parser.add_argument("--out", type=Path, default=None,
                        help="save the plan with fingerprints for `reconcile --once --plan FILE` (needs the store)")
    parser.add_argument("--offline", action="store_true",
                        help="do not read the store: hosts and batches from the selectors alone")
    parser.add_argument("--mermaid", action="store_true", help="markdown: add a Mermaid timeline of each rollout")
    parser.add_argument("--markdown-limit", type=int, default=GITHUB_COMMENT_LIMIT, metavar="CHARS",
                        help=f"markdown: at most this many characters (default {GITHUB_COMMENT_LIMIT}, GitHub's limit)")
    parser.add_argument("--rollback-warning-hosts", type=int, default=DEFAULT_ROLLBACK_WARNING_HOSTS, metavar="N",
                        help=f"warn when rollback is disabled on a group of more than N hosts "
                             f"(default {DEFAULT_ROLLBACK_WARNING_HOSTS})")
    parser.set_defaults(func=run_plan)


@dataclass(frozen=True)
class PlanRequest:
    """Everything `reconcile plan` needs besides the clock, resolved from flags and settings."""

    repository: str
    manifest_path: str = "."
    head: str | None = None
    base: str | None = None
    #: The branch the reconciler deploys from (`repository.ref`); the default base is the merge base with it.
    configured_ref: str = "HEAD"
    #: None: offline on purpose (--offline); "" means none is configured.
    store: str | None = None
    #: Keys whose signatures the store's records must carry (signing configured), else None: not checked.
    trust: Trust | None = None
    options: PlanOptions = field(default_factory=PlanOptions)
    #: `repository.verify`: the head (and in strict mode every commit the change adds) is checked before its
    #: manifests are read; None checks nothing.
    verifier: CommitVerifier | None = None


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    head: LoadedRef
    fleet: Fleet | None
    fleet_note: str | None
    #: The store was to be read and could not be (not: --offline, none configured, a folder not created yet).
    store_error: bool = False


def make_plan(request: PlanRequest, *, now: datetime) -> PlanResult:
    """Resolve the refs, load both sides and the fleet, and compute the plan. Raises SourceError for refs or
    repositories that cannot be read; manifest errors are carried in the plan.

    The fleet's documents are frozen out of the collector's sight once read (`StoreReader.freeze_cold_reads`) and
    handed back when the plan is made: they stay alive until then, and without that each of the collections that
    making the plan triggers walked all of them again (~0.15 s of a 10,000-host plan, issue 18)."""
    try:
        return _make_plan(request, now=now)
    finally:
        gc.unfreeze()


def _make_plan(request: PlanRequest, *, now: datetime) -> PlanResult:
    head_ref = request.head or "HEAD"
    refs = _refs_with_git(request, head_ref) or _refs(request, head_ref)
    head_commit, base_ref, base_commit, base_note, git_dir = refs
    if request.verifier is not None:
        request.verifier.verify_change(git_dir, head_commit, base_commit)  # UnverifiedCommit: exit 9
    head = load_ref(request.repository, head_ref, head_commit, request.manifest_path, side="head")
    base = load_ref(request.repository, base_ref, base_commit, request.manifest_path, side="base", note=base_note)
    fleet: Fleet | None
    fleet_note: str | None
    store_error = False
    if request.store is None:
        fleet, fleet_note = None, "--offline"
    elif not request.store:
        fleet, fleet_note = None, "no store configured"
    else:
        fleet, fleet_note, store_error = read_fleet(request.store, request.trust, freeze=True)
    if fleet is not None and head.desired is not None:
        fleet = read_ec2(fleet, head.desired, now)
    plan = compute_plan(base, head, fleet=fleet, now=now, repository=request.repository,
                        path=request.manifest_path, fleet_note=fleet_note, store_error=store_error,
                        options=request.options)
    return PlanResult(plan=plan, head=head, fleet=fleet, fleet_note=fleet_note, store_error=store_error)


def run_plan(args: argparse.Namespace, settings: DeploySettings) -> int:
    if args.markdown_limit < 1000:
        raise ReconcilerError("--markdown-limit must be at least 1000 characters")
    if args.rollback_warning_hosts < 0:
        raise ReconcilerError("--rollback-warning-hosts must be 0 or more")
    request = PlanRequest(
        repository=settings.repository.url,
        manifest_path=settings.repository.path,
        head=args.head,
        base=args.base,
        configured_ref=settings.repository.ref,
        verifier=CommitVerifier(settings.repository.verify),
        store=None if args.offline else settings.store,
        trust=None if args.offline else store_keys(settings, writer=False)[1],
        options=PlanOptions(rollback_warning_hosts=args.rollback_warning_hosts,
                            heartbeat_timeout=settings.reconcile.heartbeat_timeout,
                            require_immutable_revisions=settings.policy.require_immutable_revisions),
    )
    try:
        result = make_plan(request, now=datetime.now(UTC))
    except UnverifiedCommit as exc:
        # Like invalid manifests, the change's own fault; said before anything is planned, nothing on stdout.
        print(f"reconcile plan: {exc}\n  nothing was planned (exit {int(ExitCode.UNVERIFIED_COMMIT)}).",
              file=sys.stderr)
        return ExitCode.UNVERIFIED_COMMIT
    except SourceError as exc:
        # Not the change's fault: the checkout, a ref or git. Said apart from invalid manifests (same exit 1,
        # but nothing on stdout and this wording) so a CI log points at the workflow, not the pull request.
        print(f"reconcile plan: cannot read the config repository: {exc}; nothing was planned.", file=sys.stderr)
        return ExitCode.INVALID
    plan = result.plan
    if args.format == "json":
        sys.stdout.write(render_json(plan))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(plan, mermaid=args.mermaid, limit=args.markdown_limit))
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(render_text(plan, color=color, width=_terminal_width()))
    sys.stdout.flush()
    if not plan.head.valid:
        print(f"reconcile plan: the head has {count(len(plan.head.errors), 'manifest error')}; nothing was "
              f"planned.", file=sys.stderr)
        return ExitCode.INVALID
    if result.store_error:
        print(f"reconcile plan: {result.fleet_note}; the plan above was computed offline (hosts and batches from "
              f"the selectors alone){' and was not saved' if args.out is not None else ''}. Exit "
              f"{int(ExitCode.STORE_UNAVAILABLE)}: the store is unavailable (--offline plans without it).",
              file=sys.stderr)
        return ExitCode.STORE_UNAVAILABLE
    if args.out is not None:
        if result.fleet is None:
            print(f"reconcile plan: --out needs the store ({result.fleet_note}): a saved plan records the group "
                  f"states and host membership it was computed from, so `reconcile --once --plan` can refuse it "
                  f"once they change. The plan was not saved.", file=sys.stderr)
            return ExitCode.INVALID
        assert result.head.desired is not None
        write_saved_plan(args.out, saved_plan(plan, result.head.desired, result.fleet))
        print(f"reconcile plan: saved to {args.out}; apply exactly this plan with "
              f"`reconcile --once --plan {args.out}`", file=sys.stderr)
    return ExitCode.CHANGES if plan.has_changes else ExitCode.OK


def _terminal_width() -> int:
    try:
        return max(60, os.get_terminal_size(sys.stdout.fileno()).columns)
    except (OSError, ValueError):
        return 120


# --------------------------------------------------------------------------------------------------
# Refs

#: Head commit, base ref, base commit, a note on how the base was chosen, and the git directory.
Refs = tuple[str, str, str, str | None, Path]


def _refs(request: PlanRequest, head_ref: str) -> Refs:
    """Both sides' commits through GitPython, which words every failure (a ref that names nothing, a path that is
    no repository, a remote URL that cannot be fetched) and finds the default base."""
    repo = open_repository(request.repository)
    head_commit = _resolve(repo, request.repository, head_ref, "--head")
    if request.base:
        base_ref, base_note = request.base, None
        base_commit = _resolve(repo, request.repository, request.base, "--base")
    else:
        base_ref, base_commit, base_note = default_base(repo, request.repository, head_commit, head_ref,
                                                        request.configured_ref)
    return head_commit, base_ref, base_commit, base_note, Path(repo.git_dir)


def _refs_with_git(request: PlanRequest, head_ref: str) -> Refs | None:
    """Both sides' commits by the git program alone (`reconciler.desired.gitcli`), for the usual case of a CI job: a
    local checkout with `--base` given. Without it `reconcile plan` imported GitPython only to resolve two refs,
    ~30 ms of every plan (issue 18); the manifests are read by the git program already (`files_from_commit`).

    None (the GitPython path then runs, and says what is wrong) for anything else: a remote URL, no `--base` (the
    merge base with the default branch), a ref that names nothing or both a branch and a tag. git reads a few refs
    GitPython refuses, as `--once` already did: a short SHA that is also a blob's prefix (the commit is taken) and a
    reflog date (`main@{1.day.ago}`)."""
    from reconciler.desired import gitcli

    if not request.base or not Path(request.repository).expanduser().exists():
        return None
    git_dir = gitcli.local_git_dir(request.repository)
    if git_dir is None:
        return None
    head_commit = gitcli.resolve(git_dir, head_ref)
    base_commit = gitcli.resolve(git_dir, request.base) if head_commit is not None else None
    if head_commit is None or base_commit is None:
        return None
    return head_commit, request.base, base_commit, None, git_dir


def _resolve(repo: Any, repository: str, ref: str, flag: str) -> str:
    import git

    try:
        return str(repo.commit(ref).hexsha)
    except (git.exc.BadName, ValueError, git.exc.GitCommandError):
        raise SourceError(f"{repository}: {flag} {ref!r} names no commit (a branch, tag or SHA)") from None


def default_base(repo: Any, repository: str, head_commit: str, head_ref: str,
                 configured_ref: str) -> tuple[str, str, str]:
    """The merge base of head with the default branch: what the change is reviewed against in a PR.

    The default branch is `repository.ref` when it names a branch (the ref the reconciler deploys from),
    otherwise the first that exists of origin/HEAD, origin/main, origin/master, main, master."""
    import git

    candidates = [configured_ref] if configured_ref not in ("", "HEAD") else []
    candidates += [c for c in DEFAULT_BRANCH_CANDIDATES if c not in candidates]
    for candidate in candidates:
        try:
            branch = repo.commit(candidate)
        except (git.exc.BadName, ValueError, git.exc.GitCommandError):
            continue
        bases = repo.merge_base(branch, head_commit)
        if bases:
            return candidate, str(bases[0].hexsha), f"merge base of {head_ref} and {candidate}"
    raise SourceError(f"{repository}: cannot find the default branch to compare with (tried "
                      f"{', '.join(candidates)}); pass --base REF")


def load_ref(repository: str, ref: str, commit: str, manifest_path: str, *, side: str,
             note: str | None = None) -> LoadedRef:
    """Manifests at `commit`, or their errors. A base without the manifests folder is an empty desired
    state (the change creates it); a head without it is an error."""
    try:
        resolved, files = files_from_commit(repository, commit, manifest_path, fetch=False)
    except SourceError as exc:
        if side == "base" and "no folder" in str(exc):
            return LoadedRef(ref=ref, commit=commit, desired=Desired(commit=commit),
                             note=f"{note + '; ' if note else ''}no {manifest_path} folder at base")
        raise
    try:
        return LoadedRef(ref=ref, commit=resolved, desired=load_files(files, commit=resolved), note=note)
    except ManifestErrors as exc:
        return LoadedRef(ref=ref, commit=resolved, desired=None, errors=exc.errors, note=note)


# --------------------------------------------------------------------------------------------------
# The fleet


def read_fleet(store_url: str, trust: Trust | None = None, *, freeze: bool = False
               ) -> tuple[Fleet | None, str | None, bool]:
    """The store's view, or None and why not, and whether that is an error. A store that cannot be read
    makes the plan offline (with a warning) rather than failing it: a reviewer still gets the diff and the
    selectors. With `freeze`, what is read is frozen (`read_observed_and_state`): the caller calls
    `gc.unfreeze()` when done with it."""
    from contract.store import open_store
    from contract.store.file import missing_folder
    from contract.store.sealed import seal_store

    try:
        # A plan only reads: it must not create a file store's folder. A missing one means nothing was ever
        # deployed from here (or the path is wrong), which the plan says.
        store = seal_store(open_store(store_url, create=False), trust=trust)
        if missing_folder(store) is not None:
            return None, f"store {store_url} does not exist", False
        observed, state = read_observed_and_state(store, freeze=freeze)
    except InvalidStoreURL:
        raise  # a mistake in the settings (exit 1), not an unreachable store
    except StoreError as exc:
        log.warning("plan.store_unreadable", store=store_url, error=str(exc))
        return None, f"store {store_url} could not be read: {exc}", True
    return Fleet(store=store_url, observed=observed, state=state), None, False


def read_ec2(fleet: Fleet, desired: Desired, now: datetime) -> Fleet:
    """The fleet with the EC2 membership of the head's groups with EC2 or Auto Scaling targets, read as a pass
    reads it (issue 16), so the plan lists their missing hosts. A read that fails (no credentials, access denied)
    is an unknown membership the plan warns about (EC2_NOT_READ), never a failed plan."""
    if not any(group.targets.uses_aws for group in desired.desired_groups().values()):
        return fleet
    return dataclasses.replace(fleet, observed=read_memberships(desired, fleet.observed, now, fleet.state))


def read_observed_and_state(store: Store, *, freeze: bool = False) -> tuple[Observed, State]:
    """Agents' documents and the reconciler's records, read the way a pass reads them (one look, no cache
    to keep: a plan runs once). With `freeze`, a cold read of `hosts/` is frozen out of the collector's sight
    (`StoreReader.freeze_cold_reads`) until the caller's `gc.unfreeze()`."""
    reader = StoreReader(store)
    reader.freeze_cold_reads = freeze
    snapshot = reader.snapshot()
    return snapshot.observed, snapshot.state
