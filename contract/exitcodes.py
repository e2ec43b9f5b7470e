"""Exit codes of `reconcile` and `deploy-agent`, one numbering for both (documented in the README and
docs/store-and-daemon.md): scripts and CI branch on these, and the same situation gets the same number whichever
tool met it (4 a deployment or command failed, 8 the store is unavailable)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    #: Converged (`--once`), valid (`validate`), no changes (`plan`), command done.
    OK = 0
    #: Invalid input: manifests, settings, flags, or an unreadable config repo; nothing was written. For the
    #: agent: invalid settings, an unusable deployment root, or a host id owned by another live installation.
    INVALID = 1
    #: `plan` only (like `terraform plan -detailed-exitcode`): the plan has changes.
    CHANGES = 2
    #: A deployment failed and was rolled back to the last good revision.
    FAILED_ROLLED_BACK = 3
    #: A deployment failed and was not rolled back (rollback disabled, or the rollback failed too); for
    #: `deploy-agent run --once`: the command ran (or was found cut off by a crash) and failed, and was reported.
    FAILED = 4
    #: `--timeout` passed with deployments still in flight (they keep their state; re-run to continue).
    TIMED_OUT = 5
    #: `--plan plan.json` refused: what the plan was computed from has changed since.
    STALE_PLAN = 6
    #: Another reconciler holds the write lease.
    LEASE_HELD = 7
    #: The store could not be reached or refused access.
    STORE_UNAVAILABLE = 8
    #: The config commit failed `repository.verify` (unsigned, signed by a signer not allowed, or a history that
    #: rewrites what was already applied): refused by `--once`, `watch` and `plan`; nothing was written.
    UNVERIFIED_COMMIT = 9
    #: Interrupted by Ctrl-C outside a pass loop (the shell's convention, 128 + SIGINT).
    INTERRUPTED = 130
    #: `--once` stopped by SIGTERM/SIGINT between two passes: the current pass finished, the lease was released
    #: (128 + SIGTERM, the convention for a terminated process).
    TERMINATED = 143
