"""Exit codes of `reconcile`, one place, documented in the README. Scripts and CI branch on these."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    #: Converged (`--once`), valid (`validate`), no changes (`plan`), command done.
    OK = 0
    #: Invalid input: manifests, settings, flags, or an unreadable config repo. Nothing was written.
    INVALID = 1
    #: `plan` only (like `terraform plan -detailed-exitcode`): the plan has changes.
    CHANGES = 2
    #: A deployment failed and was rolled back to the last good revision.
    FAILED_ROLLED_BACK = 3
    #: A deployment failed and was not rolled back (rollback disabled, or the rollback failed too).
    FAILED = 4
    #: `--timeout` passed with deployments still in flight (they keep their state; re-run to continue).
    TIMED_OUT = 5
    #: `--plan plan.json` refused: what the plan was computed from has changed since.
    STALE_PLAN = 6
    #: Another reconciler holds the write lease.
    LEASE_HELD = 7
    #: The store could not be reached or refused access.
    STORE_UNAVAILABLE = 8
    #: Interrupted by Ctrl-C outside a pass loop (the shell's convention, 128 + SIGINT).
    INTERRUPTED = 130
    #: `--once` stopped by SIGTERM/SIGINT between two passes: the current pass finished, the lease was released
    #: (128 + SIGTERM, the convention for a terminated process).
    TERMINATED = 143
