"""The agent's error tree for deploying a revision (issue 3).

Every failure of the deployment engine ends up as one of these, so the lifecycle runner can turn it into an
event report (with CodeDeploy's `LifecycleErrorCode`) and the CLI into a message and an exit code, never a
traceback. Third-party errors (botocore, GitPython, zipfile, tarfile, OSError) are translated into these once,
at the module that calls the library.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.vocabulary import LifecycleErrorCode


class AgentError(Exception):
    """Base of every error the deployment engine reports as a message rather than a traceback.

    `error_code` is what the event report carries (reference section 2.4: anything that is not a script
    problem is UnknownError); `retryable` says whether the same command could succeed later unchanged (a
    network blip fetching the bundle) as opposed to needing a new revision or a fix on the host.
    """

    error_code: LifecycleErrorCode = LifecycleErrorCode.UNKNOWN_ERROR
    retryable: bool = False


class UsageError(AgentError):
    """Command-line options or a command document that cannot be acted on (bad type, bad event order)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a bundle, located as precisely as the source allows.

    `where` is `appspec.yml:12` or a path; `field` a dotted path such as `hooks.BeforeInstall[0].timeout`.
    """

    where: str
    field: str | None
    message: str

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        if self.field:
            prefix += f"{self.field}: "
        return prefix + self.message


class RevisionInvalid(AgentError):
    """The new revision cannot be deployed: its appspec, its files, its scripts or its install plan.

    Carries every problem found, not just the first, because the point of validating up front is that a
    person fixes the bundle once rather than once per deployment attempt.
    """

    def __init__(self, problems: list[Problem], *, headline: str | None = None) -> None:
        self.problems = problems
        self.headline = headline or "the revision is invalid"
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return f"{self.headline}: {self.problems[0]}"
        lines = "; ".join(str(p) for p in self.problems)
        return f"{self.headline} ({len(self.problems)} problems): {lines}"


class BundleError(AgentError):
    """The bundle could not be fetched or unpacked."""


class BundleNotFound(BundleError):
    """The location names nothing: no such file, S3 object, repository or commit."""


class BundleUnavailable(BundleError):
    """The source did not answer or answered with a transient error; the same command may work later."""

    retryable = True


class ChecksumMismatch(BundleError):
    """The bytes fetched are not the bytes the revision pinned (sha256 or S3 eTag)."""


class UnsafeBundle(BundleError):
    """The archive tries to write outside its folder, or is too big: rejected before it can do harm."""


class InstallError(AgentError):
    """Copying files, setting permissions or cleaning up the previous revision failed."""


class HostStateError(AgentError):
    """The deployment root is unusable (cannot be created, or its records are corrupt)."""
