"""Loading manifests from a folder or from a Git commit, and validating them all before anything is used.

Flow: files (read by `reconciler.desired.sources`: from a commit's tree, so two refs can be compared, or from
a plain folder for `validate` before committing) -> YAML nodes with line marks -> one pydantic model per
document -> cross-document checks -> `Desired`. Every problem in every file is collected and reported together
as `ManifestErrors`; a repo with any error yields no `Desired` at all, which is how "nothing is applied from an
invalid repo" is enforced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError

from contract.durations import format_duration
from contract.yamlbounds import YamlRefused
from contract.yamlmarks import (
    LocatedYaml,
    YamlKeyProblem,
    YamlPath,
    did_you_mean,
    known_keys,
    load_located,
)
from reconciler.desired.manifests import (
    API_VERSION,
    BUILTIN_CONFIGS,
    KINDS,
    MANIFEST_MODELS,
    ApplicationManifest,
    DeploymentConfigManifest,
    DeploymentGroupManifest,
    Desired,
    NotificationManifest,
    SourceRef,
)
from reconciler.desired.secrets import is_secret, secret_field_paths
from reconciler.desired.sources import (
    MAX_FILE_BYTES,
    GitSource,
    ManifestFile,
    files_from_commit,
    files_from_folder,
)
from reconciler.errors import ManifestError, ManifestErrors

Path_ = YamlPath


@dataclass
class _Document(LocatedYaml):
    """A located YAML document and where it came from."""

    file: str = ""
    index: int = 0

    @property
    def label(self) -> str:
        if isinstance(self.data, dict):
            kind = self.data.get("kind")
            meta = self.data.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if isinstance(kind, str) and isinstance(name, str):
                return f"{kind}/{name}"
            if isinstance(kind, str):
                return f"{kind}/?"
        return f"document {self.index + 1}"


def _decode(file: ManifestFile) -> tuple[str | None, ManifestError | None]:
    try:
        return file.content.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        before = file.content[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        return None, ManifestError(
            file.name, line, column, None, None, f"file is not valid UTF-8 (byte 0x{file.content[exc.start]:02x})"
        )


def _mebibytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def parse_documents(file: ManifestFile) -> tuple[list[_Document], list[ManifestError]]:
    """YAML -> plain Python with a line/column for every key and item; every failure to read the file, down
    to hostile input (`contract.yamlmarks` bounds size, depth and alias expansion), becomes a ManifestError."""
    size = file.oversize if file.oversize is not None else len(file.content)
    if size > MAX_FILE_BYTES:
        return [], [ManifestError(file.name, 1, 1, None, None, f"the file is {_mebibytes(size)} ({size:,} bytes); "
                                  f"at most {_mebibytes(MAX_FILE_BYTES)} is read")]
    text, error = _decode(file)
    if text is None:
        assert error is not None
        return [], [error]
    documents: list[_Document] = []
    try:
        for index, located in load_located(text):
            documents.append(_Document(located.data, located.marks, file=file.name, index=index))
    except YamlRefused as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return documents, [ManifestError(file.name, line, column, None, None, f"YAML: {exc.problem}")]
    except YamlKeyProblem as problem:
        return documents, [ManifestError(file.name, problem.line, problem.column, None, None, problem.message)]
    except ConstructorError as exc:
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return documents, [ManifestError(file.name, line, column, None, None, f"YAML: {exc.problem}")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        return documents, [ManifestError(file.name, line, column, None, None, f"YAML syntax error: {reason}")]
    except Exception as exc:  # a commit must never crash the reader; the bounds above should make this unreachable
        reason = f"YAML: cannot read the file ({_unexpected(exc)})"
        return documents, [ManifestError(file.name, 1, 1, None, None, reason)]
    return documents, []


def _unexpected(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: Where an unknown manifest field should be checked when no known field is close to it.
MANIFEST_REFERENCE = "the manifest reference or schemas/"


def pydantic_message(error: Any, model: type[BaseModel] | None = None, reference: str = MANIFEST_REFERENCE) -> str:
    """Pydantic's messages, reworded where they would puzzle someone editing YAML.

    `model` is the model that was validated: with it, an unknown field names the field it most likely
    meant (a typo is the usual cause, and pydantic itself only says "extra inputs are not permitted").
    `reference` is where to look otherwise; the settings files pass their own, not the manifests'.
    """
    kind = error["type"]
    ctx = error.get("ctx") or {}
    # A field marked secret: its value never reaches an error message, which `plan` prints in pull requests
    # (docs/trust.md, "Secrets in output").
    if (model is not None and kind not in ("extra_forbidden", "missing", "too_short", "too_long")
            and is_secret(tuple(error["loc"]), secret_field_paths(model))):
        return f"{error['msg']} (value not shown: a secret field)"
    if kind == "extra_forbidden":
        loc = tuple(error["loc"])
        if model is not None and loc and isinstance(loc[-1], str):
            meant = did_you_mean(loc[-1], known_keys(model, loc[:-1]))
            if meant is not None:
                return f"unknown field; did you mean `{meant}`?"
        return f"unknown field (check the spelling against {reference})"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')} (got {error.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return f"{error.get('input')!r} does not match the allowed pattern {ctx.get('pattern')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"needs {word} {bound} item{'' if bound == 1 else 's'} (got {ctx.get('actual_length')})"
    given = error.get("input")
    if kind == "string_type" and isinstance(given, int | float) and not isinstance(given, bool):
        return f"expected text but YAML read a number ({given!r}); put the value in quotes"
    if isinstance(given, str | int | float | bool) or given is None:
        return f"{error['msg']} (got {given!r})"
    return str(error["msg"])


def _check_document(document: _Document) -> tuple[Any | None, list[ManifestError]]:
    data = document.data
    label = document.label

    def err(path: Path_, message: str) -> ManifestError:
        line, column = document.where(path)
        field = ".".join(str(p) for p in path) if path else None
        return ManifestError(document.file, line, column, label, field, message)

    if not isinstance(data, dict):
        return None, [err((), f"a manifest must be a mapping with apiVersion, kind, metadata and spec "
                              f"(got {type(data).__name__})")]
    api_version = data.get("apiVersion")
    if api_version != API_VERSION:
        shown = "missing" if api_version is None else repr(api_version)
        return None, [err(("apiVersion",), f"must be {API_VERSION!r} ({shown})")]
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in MANIFEST_MODELS:
        return None, [err(("kind",), f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")]
    try:
        return MANIFEST_MODELS[kind].model_validate(data), []
    except ValidationError as exc:
        return None, [err(tuple(e["loc"]), pydantic_message(e, MANIFEST_MODELS[kind])) for e in exc.errors()]


def _checked(document: _Document) -> tuple[Any | None, list[ManifestError]]:
    """`_check_document`, with any failure inside validation turned into an error at the document: one
    hostile document must not crash the reader (and, under `reconcile watch`, every restart of it)."""
    try:
        return _check_document(document)
    except Exception as exc:  # reported, located, and the commit refused
        line, column = document.where(())
        return None, [ManifestError(document.file, line, column, document.label, None,
                                    f"cannot validate this document ({_unexpected(exc)})")]


def _raw_names(failed: list[_Document]) -> set[tuple[str, str]]:
    """(kind, name) of documents that failed validation but still say what they are."""
    names = set()
    for document in failed:
        data = document.data
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
            name = data["metadata"].get("name")
            if isinstance(data.get("kind"), str) and isinstance(name, str):
                names.add((data["kind"], name))
    return names


def _check_references(
    document: _Document,
    application: object,
    config: object,
    known: set[tuple[str, str]],
    err: Any,
) -> list[ManifestError]:
    """A DeploymentGroup's references must resolve; names of invalid documents count as defined, so a broken
    Application yields its own error, not a second one on every group that uses it."""
    errors = []
    if isinstance(application, str) and ("Application", application) not in known:
        names = ", ".join(sorted(n for k, n in known if k == "Application")) or "none defined"
        errors.append(err(document, ("spec", "application"), f"no Application named {application!r} (known: {names})"))
    if isinstance(config, str) and config not in BUILTIN_CONFIGS and ("DeploymentConfig", config) not in known:
        choices = ", ".join([*sorted(n for k, n in known if k == "DeploymentConfig"), *BUILTIN_CONFIGS])
        errors.append(err(document, ("spec", "deploymentConfig"),
                          f"no DeploymentConfig named {config!r} (choose from: {choices})"))
    return errors


def _cross_check(
    validated: list[tuple[_Document, Any]],
    failed: list[_Document],
) -> tuple[Desired | None, list[ManifestError]]:
    errors: list[ManifestError] = []
    seen: dict[tuple[str, str], _Document] = {}
    applications: dict[str, ApplicationManifest] = {}
    groups: dict[str, DeploymentGroupManifest] = {}
    configs: dict[str, DeploymentConfigManifest] = {}
    notifications: dict[str, NotificationManifest] = {}
    sources: dict[tuple[str, str], SourceRef] = {}

    def err(document: _Document, path: Path_, message: str) -> ManifestError:
        line, column = document.where(path)
        return ManifestError(document.file, line, column, document.label, ".".join(map(str, path)), message)

    for document, manifest in validated:
        key = (manifest.kind, manifest.metadata.name)
        if key in seen:
            first = seen[key]
            line, _ = first.where(("metadata", "name"))
            errors.append(err(document, ("metadata", "name"),
                              f"duplicate {manifest.kind} {manifest.metadata.name!r}; first defined at "
                              f"{first.file}:{line}"))
            continue
        seen[key] = document
        sources[key] = SourceRef(document.file, document.where(())[0], document.marks)
        if isinstance(manifest, ApplicationManifest):
            applications[manifest.metadata.name] = manifest
        elif isinstance(manifest, DeploymentGroupManifest):
            groups[manifest.metadata.name] = manifest
        elif isinstance(manifest, NotificationManifest):
            notifications[manifest.metadata.name] = manifest
        else:
            configs[manifest.metadata.name] = manifest

    known = set(seen) | _raw_names(failed)
    for document, manifest in validated:
        if not isinstance(manifest, DeploymentGroupManifest) or seen.get(
            ("DeploymentGroup", manifest.metadata.name)
        ) is not document:
            continue
        spec = manifest.spec
        errors.extend(_check_references(document, spec.application, spec.deployment_config, known, err))
        application = applications.get(spec.application)
        if application is not None and spec.revision is None and application.spec.default_revision is None:
            errors.append(err(document, ("spec", "revision"),
                              f"no revision: set spec.revision here or spec.defaultRevision on "
                              f"Application {spec.application!r}"))
        config = configs.get(spec.deployment_config)
        timeout = config.spec.host_timeout if config is not None else None
        check = spec.health_check
        if check is not None and timeout is not None and timeout <= check.healthy_deadline:
            errors.append(err(document, ("spec", "healthCheck", "healthyDeadline"),
                              f"healthyDeadline ({format_duration(check.healthy_deadline)}) is not shorter than "
                              f"the hostTimeout ({format_duration(timeout)}) of DeploymentConfig "
                              f"{spec.deployment_config!r}: a host still within its health deadline would be "
                              "counted failed as timed out; shorten it or lengthen hostTimeout"))
        if spec.auto_scaling is not None and not spec.targets.auto_scaling_groups:
            errors.append(err(document, ("spec", "autoScaling"),
                              "autoScaling names the launch lifecycle hook of the targets' Auto Scaling groups, but "
                              "targets name none: add spec.targets.autoScalingGroups or remove autoScaling"))
    for document in failed:
        data = document.data
        spec_data = data.get("spec") if isinstance(data, dict) and data.get("kind") == "DeploymentGroup" else None
        if isinstance(spec_data, dict):
            errors.extend(_check_references(
                document, spec_data.get("application"), spec_data.get("deploymentConfig"), known, err))
    if errors:
        return None, errors
    return Desired(commit=None, applications=applications, groups=groups, configs=configs, sources=sources,
                   notifications=notifications), []


def load_files(files: Iterable[ManifestFile], *, commit: str | None = None) -> Desired:
    """Validate every document of every file; raise ManifestErrors listing all problems, or return Desired."""
    errors: list[ManifestError] = []
    validated: list[tuple[_Document, Any]] = []
    failed: list[_Document] = []
    for file in sorted(files, key=lambda f: f.name):
        documents, parse_errors = parse_documents(file)
        errors.extend(parse_errors)
        for document in documents:
            manifest, doc_errors = _checked(document)
            errors.extend(doc_errors)
            if manifest is not None:
                validated.append((document, manifest))
            else:
                failed.append(document)
    desired, cross_errors = _cross_check(validated, failed)
    errors.extend(cross_errors)
    if errors or desired is None:
        raise ManifestErrors(sorted(errors, key=lambda e: (e.file, e.line, e.column)))
    return Desired(
        commit=commit,
        applications=desired.applications,
        groups=desired.groups,
        configs=desired.configs,
        sources=desired.sources,
        notifications=desired.notifications,
    )


def load_folder(folder: Path) -> Desired:
    return load_files(files_from_folder(folder))


def load_git(source: GitSource, *, fetch: bool = True) -> Desired:
    commit, files = files_from_commit(source.repository, source.ref, source.path, fetch=fetch)
    return load_files(files, commit=commit)


__all__ = [
    "MANIFEST_REFERENCE",
    "load_files",
    "load_folder",
    "load_git",
    "parse_documents",
    "pydantic_message",
]
