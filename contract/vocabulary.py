"""The words the store's records are made of, shared by both implementations of those records.

Why a module of its own: the records have two implementations generated from one definition (contract/models.py,
pydantic, for the reconciler; contract/wire.py, msgspec, for the agent, which must stay small when idle: issue 18
and docs/design.md, "Two implementations of the records"). What both need and neither owns lives here, free of
either library: the schema version, CodeDeploy's lifecycle vocabulary, the enumerations, and the behaviour of
the records that have some (a revision's identity, a tag filter's match, a command's targets).

The behaviour classes are mixins: they read fields their record declares, and raise ValueError for a record
that breaks a rule; pydantic and msgspec both report that as a validation error at the record's path.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

SCHEMA_VERSION = 1

#: CodeDeploy's fixed lifecycle order (reference §2.1); the agent always runs events in this order,
#: whatever order an appspec lists its hooks in.
LIFECYCLE_EVENTS: tuple[str, ...] = (
    "BeforeBlockTraffic",
    "AfterBlockTraffic",
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
    "BeforeAllowTraffic",
    "AfterAllowTraffic",
)
#: The two events the agent runs no script for when a group has traffic control: it waits while the reconciler
#: takes the host out of its load balancers (BlockTraffic) and puts it back (AllowTraffic), docs/traffic.md.
BLOCK_TRAFFIC = "BlockTraffic"
ALLOW_TRAFFIC = "AllowTraffic"
TRAFFIC_STEPS: frozenset[str] = frozenset({BLOCK_TRAFFIC, ALLOW_TRAFFIC})
#: Events a deployment runs when the command does not say otherwise (in-place, no load balancer).
DEFAULT_EVENTS: tuple[str, ...] = (
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
)
#: Events of a group with traffic control (CodeDeploy's in-place order with a load balancer, reference §2.1).
#: The agent runs every other event as without traffic control; at these two it waits for the reconciler.
TRAFFIC_CONTROL_EVENTS: tuple[str, ...] = (
    "BeforeBlockTraffic",
    BLOCK_TRAFFIC,
    "AfterBlockTraffic",
    *DEFAULT_EVENTS,
    "BeforeAllowTraffic",
    ALLOW_TRAFFIC,
    "AfterAllowTraffic",
)
#: The agent's own step after ValidateService when the group has a `healthCheck` (docs/gates.md): an HTTP check
#: of the host that must pass continuously for `minHealthyTime` before the host counts as succeeded. No script
#: can be attached to it; it runs before BeforeAllowTraffic, so a host that is not healthy never gets traffic.
HEALTH_CHECK = "HealthCheck"
#: Events whose scripts come from the last successful revision (reference §2.2).
PREVIOUS_REVISION_EVENTS: frozenset[str] = frozenset(
    {"BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop"}
)


class FileExistsBehavior(StrEnum):
    DISALLOW = "DISALLOW"
    OVERWRITE = "OVERWRITE"
    RETAIN = "RETAIN"


class EventStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class LifecycleErrorCode(StrEnum):
    """The console's names for the agent's ScriptError codes (reference §2.4)."""

    SCRIPT_MISSING = "ScriptMissing"
    SCRIPT_NOT_EXECUTABLE = "ScriptNotExecutable"
    SCRIPT_TIMED_OUT = "ScriptTimedOut"
    SCRIPT_FAILED = "ScriptFailed"
    UNKNOWN_ERROR = "UnknownError"
    OUTPUTS_LEFT_OPEN = "OutputsLeftOpen"
    FAILED_AFTER_RESTART = "FailedAfterRestart"


class CommandStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConflictReason(StrEnum):
    #: The agent found the host id owned by another installation whose heartbeat is fresh, and did not start.
    REFUSED = "refused"
    #: The agent was running and found its registration or status written by another installation; it
    #: stopped writing and exited rather than fight over the keys.
    OVERWRITTEN = "overwritten"


class TrafficStepState(StrEnum):
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


#: Refusals a status keeps (the newest); `refusedTotal` counts them all since the agent started.
MAX_REFUSALS = 5


def group_key(application: str, deployment_group: str) -> str:
    return f"{application}/{deployment_group}"


class RevisionBehaviour:
    """Exactly one source; identity is the location tuple, as in CodeDeploy (reference §6)."""

    if TYPE_CHECKING:
        s3: Any
        git: Any
        local: Any
        sha256: str | None

    def check_sources(self) -> None:
        # Counted without building a list: this runs for every revision of every status a pass reads (issue 18).
        if (self.s3 is not None) + (self.git is not None) + (self.local is not None) != 1:
            given = [name for name in ("s3", "git", "local") if getattr(self, name) is not None]
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a revision needs exactly one source of s3, git or local (found: {found})")

    @property
    def kind(self) -> Literal["s3", "git", "local"]:
        if self.s3 is not None:
            return "s3"
        if self.git is not None:
            return "git"
        return "local"

    def identity(self) -> str:
        """A stable string naming the revision; equal identities mean the same bytes will be deployed."""
        if self.s3 is not None:
            s3 = self.s3
            text = f"s3://{s3.bucket}/{s3.key}#{s3.bundle_type}"
            if s3.version:
                text += f"?versionId={s3.version}"
            if s3.e_tag:
                text += f"&etag={s3.e_tag.strip(chr(34))}"
        elif self.git is not None:
            text = f"git:{self.git.repository}@{self.git.commit}"
        else:
            assert self.local is not None
            text = f"local:{self.local.path}#{self.local.bundle_type}"
        if self.sha256:
            text += f"!sha256={self.sha256}"
        return text

    def short(self) -> str:
        """For humans: tables, plans, progress lines."""
        if self.s3 is not None:
            version = f"@{self.s3.version[:8]}" if self.s3.version else ""
            return f"s3://{self.s3.bucket}/{self.s3.key}{version}"
        if self.git is not None:
            name = re.sub(r"(\.git)?/*$", "", self.git.repository).rsplit("/", 1)[-1]
            return f"{name}@{self.git.commit[:7]}"
        assert self.local is not None
        path: str = self.local.path
        return path


class TagMatchBehaviour:
    """One of a group's tag filters as a command carries it (the manifest's `TagFilter`, in the contract)."""

    if TYPE_CHECKING:
        key: str | None
        value: str | None
        type: Literal["KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE"]

    def matches(self, tags: dict[str, str]) -> bool:
        if self.type == "KEY_ONLY":
            return self.key in tags
        if self.type == "VALUE_ONLY":
            return self.value in tags.values()
        return self.key is not None and tags.get(self.key) == self.value


class CommandTargetsBehaviour:
    """Whether a host is one a command's targets name (see `CommandTargets` in contract/models.py)."""

    if TYPE_CHECKING:
        tag_sets: Any
        hosts: list[str]
        instance_id: str | None

    def admits(self, host_id: str, tags: dict[str, str], instance_id: str | None) -> bool:
        if host_id in self.hosts:
            return True
        if self.instance_id is not None and instance_id == self.instance_id:
            return True
        return bool(self.tag_sets) and all(any(f.matches(tags) for f in tag_set) for tag_set in self.tag_sets)
