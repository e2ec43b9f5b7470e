"""`config/applied.json`: the config commit this store last applied, and the check of a new commit against it.

Where it sits: around every pass of `reconcile --once` and `watch` (`PassRunner` calls `confirm` before a pass
and `record` after it), and before a commit is loaded at all (`check`, from the CLI and the watch loop).
`repository.verify: strict` starts its range after the recorded commit (`reconciler.desired.verify`).

Why the check runs twice: before the lease, so a refused commit exits 9 without waiting for the lease or
writing anything; and under it, before the first write of a pass, because another reconciler may have applied
a newer commit in between, and strict mode must check the new commit against that one. The second check costs
one read (a conditional one in strict mode, on every pass: a 304 with no body on S3) and no git run unless the
record changed; `CommitVerifier` remembers what passed.

Crash safety: the record is written after a pass that applied the commit (by compare-and-swap, so a reconciler
that lost the lease cannot overwrite a newer record). Killed between the pass's writes and the record, the next
run finds the previous commit recorded and checks a range that starts earlier: it contains only commits that
were already checked, so it passes again (unless a signer was removed in between; then the run is refused, the
safe side). A record that cannot be read is a refusal in strict mode (where the range would start is unknown)
and ignored otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from contract.clock import Now, utc_now
from contract.keys import APPLIED_CONFIG_KEY
from contract.models import AppliedConfig
from contract.store import PreconditionFailed, Store, StoreError
from contract.store.docs import DocumentInvalid, Versioned, create_document, read_if_changed, replace_document
from reconciler.desired.sources import open_repository
from reconciler.desired.verify import CommitVerifier, UnverifiedCommit, Verification

log = structlog.get_logger(__name__)


class AppliedConfigLedger:
    """Reads and writes `config/applied.json` for one process, and checks commits against it."""

    def __init__(self, store: Store, verifier: CommitVerifier, *, repository: str, ref: str,
                 clock: Now = utc_now) -> None:
        self.store = store
        self.verifier = verifier
        self.repository = repository
        self.ref = ref
        self.clock = clock
        self._record: Versioned[AppliedConfig] | None = None
        #: The version of an applied.json that could not be read (replaced by the next record).
        self._unreadable_version: str | None = None
        self._read_once = False
        #: The commit checked against the record as last read (None: check before the next pass).
        self._confirmed: str | None = None

    @property
    def applied(self) -> AppliedConfig | None:
        """The record as last read or written."""
        return self._record.document if self._record is not None else None

    def _read(self, commit: str) -> bool:
        """Read the record (conditionally, when one is known). True when it changed since the last read.
        `commit`: the commit about to be checked, named in the refusal when the record cannot be read."""
        before = self._record
        try:
            self._record = read_if_changed(self.store, APPLIED_CONFIG_KEY, AppliedConfig, self._record)
            self._unreadable_version = None
        except DocumentInvalid as exc:
            self._record = None
            if self.verifier.mode == "strict":
                raise UnverifiedCommit(
                    commit=commit, subject="", signer="not checked", reason=str(exc),
                    problem="the last applied config commit cannot be read from the store, so strict mode "
                            "cannot tell where its range starts",
                    policy="repository.verify.mode: strict (every commit since the last applied one is checked)",
                    hint=f"restore {APPLIED_CONFIG_KEY}, or delete it to check the next commit alone, as on a "
                         f"first run (docs/trust.md)") from None
            if exc.version != self._unreadable_version:
                log.warning("applied.unreadable", key=APPLIED_CONFIG_KEY, error=str(exc))
            self._unreadable_version = exc.version
        changed = not self._read_once or before is not self._record
        self._read_once = True
        return changed

    def _verify(self, commit: str) -> Verification:
        git_dir = Path(open_repository(self.repository, fetch=False).git_dir)
        return self.verifier.verify(git_dir, commit, self.applied)

    def check(self, commit: str) -> Verification:
        """Check `commit` against the record as it is now in the store (raises UnverifiedCommit)."""
        if self.verifier.mode == "none":
            return Verification(commit, "none")
        self._read(commit)
        return self._verify(commit)

    def confirm(self, commit: str | None) -> None:
        """Before a pass writes anything, under the lease: `commit` still passes against the record as it is now.

        Strict mode re-reads the record on every pass (conditionally) and checks again when it changed; head mode
        checks once per commit; mode none never reads."""
        if commit is None or self.verifier.mode == "none":
            return
        if self.verifier.mode == "strict":
            if self._read(commit) or self._confirmed != commit:
                self._confirmed = None
                self._verify(commit)
        elif self._confirmed != commit:
            self._read(commit)
            self._verify(commit)
        self._confirmed = commit

    def record(self, commit: str | None, *, before_write: Callable[[], None] | None = None) -> None:
        """After a pass that applied `commit` (no write conflict): make the record say so, by compare-and-swap.
        Nothing is written when it already does.

        A store failure here leaves the pass's own writes as they are and the record for after the next pass;
        with verification on, a failure that will not go away by itself (access denied) is raised. With mode
        none nothing depends on the record, so a store that refuses the key (an S3 policy from before
        `config/*`) only gets a warning."""
        if commit is None:
            return
        try:
            self._write(commit, before_write)
        except PreconditionFailed:
            # Written by someone else since it was read (a reconciler that held the lease before): read it again
            # and check the commit against it before the next pass writes.
            log.warning("applied.conflict", key=APPLIED_CONFIG_KEY, commit=commit)
            self._record = None
            self._read_once = False
            self._confirmed = None
        except StoreError as exc:
            if not (exc.retryable or self.verifier.mode == "none"):
                raise
            log.warning("applied.not_recorded", key=APPLIED_CONFIG_KEY, commit=commit, error=str(exc))

    def _write(self, commit: str, before_write: Callable[[], None] | None) -> None:
        if not self._read_once:
            self._read(commit)
        current = self.applied
        mode = self.verifier.mode
        if current is not None and (current.commit, current.verified, current.ref) == (commit, mode, self.ref):
            return
        document = AppliedConfig(commit=commit, ref=self.ref, applied_at=self.clock(), verified=mode)
        version = self._record.version if self._record is not None else self._unreadable_version
        if before_write is not None:
            before_write()
        if version is None:
            new_version = create_document(self.store, APPLIED_CONFIG_KEY, document)
        else:
            new_version = replace_document(self.store, APPLIED_CONFIG_KEY, document, version)
        self._record = Versioned(document, new_version)
        self._unreadable_version = None
        log.info("applied.recorded", commit=commit, ref=self.ref, verified=mode,
                 previous=current.commit if current is not None else None)


__all__ = ["AppliedConfigLedger"]
