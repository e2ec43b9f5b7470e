"""`repository.verify` for the commands that apply a config commit: resolve the ref once, check the commit before
anything is loaded or written, and hand the same verifier to the passes (docs/trust.md, "Verified commits").

Where it sits: `reconciler.cli.run` calls `verified_commit` before loading the manifests, so a refused commit
exits 9 without taking the lease or writing anything; the passes check it again under the lease
(`reconciler.shell.applied`), against the record as it is then. `reconcile plan` checks its head through
`CommitVerifier.verify_change` instead (`reconciler.cli.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from contract.store import Store, StoreError
from reconciler.cli.common import open_for_reading
from reconciler.desired.sources import open_repository, resolve_commit
from reconciler.desired.verify import CommitVerifier, Verification
from reconciler.settings import DeploySettings
from reconciler.shell.applied import AppliedConfigLedger
from reconciler.shell.signing import require_signed_record

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class VerifiedCommit:
    """The commit the configured ref names, checked; `verifier` remembers what passed, for the passes."""

    commit: str
    verifier: CommitVerifier
    verification: Verification


def verified_commit(settings: DeploySettings) -> VerifiedCommit:
    """Resolve `repository.ref` (fetching a remote once) and check the commit it names against the record of the
    last applied one. Raises SettingsError (exit 1) for unusable signers, UnverifiedCommit (exit 9) for a commit
    the policy refuses.

    The record is read without the lease; a store that cannot be read now is left to the lease and the passes,
    which check again under the lease (strict mode then checks the commit alone here, and its range there)."""
    repository = settings.repository
    require_signed_record(settings)
    verifier = CommitVerifier(repository.verify)
    commit = resolve_commit(repository.url, repository.ref)
    if verifier.mode == "none":
        return VerifiedCommit(commit, verifier, Verification(commit, "none"))
    try:
        store, missing = open_for_reading(settings)
        if missing is None:
            ledger = AppliedConfigLedger(store, verifier, repository=repository.url, ref=repository.ref)
            return VerifiedCommit(commit, verifier, ledger.check(commit))
    except StoreError as exc:
        log.warning("verify.store_unreadable", store=settings.store, error=str(exc),
                    note="the commit is checked again under the lease")
    git_dir = Path(open_repository(repository.url, fetch=False).git_dir)
    return VerifiedCommit(commit, verifier, verifier.verify(git_dir, commit, None))


def applied_config(settings: DeploySettings, store: Store, verifier: CommitVerifier) -> AppliedConfigLedger:
    """The record of applied commits for the passes of this run, on the store they write to."""
    return AppliedConfigLedger(store, verifier, repository=settings.repository.url, ref=settings.repository.ref)


__all__ = ["VerifiedCommit", "applied_config", "verified_commit"]
