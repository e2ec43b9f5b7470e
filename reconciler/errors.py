"""The reconciler's error tree. Every user mistake ends here, so the CLI can print it and exit non-zero
without a traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base for errors the CLI reports as a message and an exit code."""


class SourceError(ReconcilerError):
    """The config repo or folder could not be read (bad path, bad ref, git failure)."""


class SettingsError(ReconcilerError):
    """deploy.yaml, environment variables or flags are invalid."""


@dataclass(frozen=True)
class ManifestError:
    """One problem in one manifest, located precisely enough for an editor to jump to it."""

    file: str
    line: int
    column: int
    resource: str | None  # "DeploymentGroup/web", or None when the document could not be identified
    field: str | None  # dotted path inside the document, e.g. "spec.targets.tagSets.0.0.type"
    message: str

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}:{self.column}:"]
        if self.resource:
            parts.append(f"{self.resource}:")
        if self.field:
            parts.append(f"{self.field}:")
        parts.append(self.message)
        return " ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "resource": self.resource,
            "field": self.field,
            "message": self.message,
        }


class ManifestErrors(ReconcilerError):
    """All problems found in a config repo; raised instead of returning a partially valid Desired."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} manifest error(s)")

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
