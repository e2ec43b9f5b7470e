"""Loading manifests from a folder or from a Git commit, and validating them all before anything is used.

Flow: files (from a commit's tree, so two refs can be compared, or from a plain folder for `validate` before
committing) -> YAML nodes with line marks -> one pydantic model per document -> cross-document checks ->
`Desired`. Every problem in every file is collected and reported together as `ManifestErrors`; a repo with
any error yields no `Desired` at all, which is how "nothing is applied from an invalid repo" is enforced.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError

from contract.gitmessages import git_reason
from contract.yamlmarks import LocatedYaml, YamlKeyProblem, YamlPath, did_you_mean, known_keys, load_located
from reconciler.desired.gitmirror import sync_mirror
from reconciler.desired.manifests import (
    API_VERSION,
    BUILTIN_CONFIGS,
    KINDS,
    MANIFEST_MODELS,
    ApplicationManifest,
    DeploymentConfigManifest,
    DeploymentGroupManifest,
    Desired,
    SourceRef,
)
from reconciler.errors import ManifestError, ManifestErrors, SourceError

YAML_SUFFIXES = (".yaml", ".yml")
Path_ = YamlPath


@dataclass(frozen=True)
class ManifestFile:
    """One file's bytes and the name to show in messages (relative to the manifests folder)."""

    name: str
    content: bytes


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


def parse_documents(file: ManifestFile) -> tuple[list[_Document], list[ManifestError]]:
    """YAML -> plain Python with a line/column for every key and item; syntax errors become ManifestErrors."""
    text, error = _decode(file)
    if text is None:
        assert error is not None
        return [], [error]
    documents: list[_Document] = []
    try:
        for index, located in load_located(text):
            documents.append(_Document(located.data, located.marks, file=file.name, index=index))
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
    return documents, []


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
    if kind not in MANIFEST_MODELS:
        return None, [err(("kind",), f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")]
    try:
        return MANIFEST_MODELS[kind].model_validate(data), []
    except ValidationError as exc:
        return None, [err(tuple(e["loc"]), pydantic_message(e, MANIFEST_MODELS[kind])) for e in exc.errors()]


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
        sources[key] = SourceRef(document.file, document.where(())[0])
        if isinstance(manifest, ApplicationManifest):
            applications[manifest.metadata.name] = manifest
        elif isinstance(manifest, DeploymentGroupManifest):
            groups[manifest.metadata.name] = manifest
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
    for document in failed:
        data = document.data
        spec_data = data.get("spec") if isinstance(data, dict) and data.get("kind") == "DeploymentGroup" else None
        if isinstance(spec_data, dict):
            errors.extend(_check_references(
                document, spec_data.get("application"), spec_data.get("deploymentConfig"), known, err))
    if errors:
        return None, errors
    return Desired(commit=None, applications=applications, groups=groups, configs=configs, sources=sources), []


def load_files(files: Iterable[ManifestFile], *, commit: str | None = None) -> Desired:
    """Validate every document of every file; raise ManifestErrors listing all problems, or return Desired."""
    errors: list[ManifestError] = []
    validated: list[tuple[_Document, Any]] = []
    failed: list[_Document] = []
    for file in sorted(files, key=lambda f: f.name):
        documents, parse_errors = parse_documents(file)
        errors.extend(parse_errors)
        for document in documents:
            manifest, doc_errors = _check_document(document)
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
    )


# --------------------------------------------------------------------------------------------------
# Sources: a plain folder, or a commit of a Git repository


#: YAML files CI services read from the top of a repository; never manifests (hidden ones, such as
#: .gitlab-ci.yml and .github/workflows/, are skipped as hidden).
CI_FILES = frozenset({"bitbucket-pipelines.yml", "azure-pipelines.yml", "appveyor.yml"})
#: The reconciler's own settings file, often committed next to the manifests.
SETTINGS_FILE = "deploy.yaml"
_MANIFEST_KEY = re.compile(rb"^(apiVersion|kind)\s*:", re.MULTILINE)


def not_a_manifest(name: str, content: bytes) -> str | None:
    """Why the YAML file `name` (relative to the manifests folder) is not read as a manifest, or None.

    With the default `path: .` the manifests folder is the whole repository, which usually also holds CI
    workflows and `deploy.yaml`; reading those as manifests would make every such repository invalid. Only
    files that plainly are not manifests are skipped, by path, so a real manifest with a mistake in it is
    still reported: anything under a hidden folder or named with a leading dot (.github/, .gitlab-ci.yml,
    .pre-commit-config.yaml), the well-known CI files at the top, and `deploy.yaml` at the top unless it
    has an `apiVersion:` or `kind:` line (then it is a manifest someone named deploy.yaml).
    """
    parts = PurePosixPath(name).parts
    if any(part.startswith(".") and part not in (".", "..") for part in parts):
        return "hidden"
    if len(parts) == 1 and name in CI_FILES:
        return "a CI file"
    if len(parts) == 1 and name == SETTINGS_FILE and not _MANIFEST_KEY.search(content):
        return "the reconciler's settings file"
    return None


def files_from_folder(folder: Path) -> list[ManifestFile]:
    """Every manifest file under `folder` (see `not_a_manifest` for what is skipped); a file given by name
    is always read, since someone asked for exactly it."""
    if not folder.exists():
        raise SourceError(f"{folder}: no such folder")
    if folder.is_file():
        return [ManifestFile(folder.name, folder.read_bytes())]
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in YAML_SUFFIXES and path.is_file():
            name = path.relative_to(folder).as_posix()
            content = path.read_bytes()
            if not_a_manifest(name, content) is None:
                found.append(ManifestFile(name, content))
    return found


def load_folder(folder: Path) -> Desired:
    return load_files(files_from_folder(folder))


@dataclass(frozen=True)
class GitSource:
    """Where manifests live: a repository (URL or local path), a ref, and a sub-folder inside it."""

    repository: str
    ref: str = "HEAD"
    path: str = "."


def open_repository(repository: str, *, fetch: bool = True, stop: threading.Event | None = None) -> Any:
    """A GitPython Repo for a local checkout, or a cached bare mirror of a remote URL (fetched when asked).

    Remote repositories are mirrored once under the cache directory and fetched on each load, so a
    long-running `reconcile watch` costs one incremental fetch per poll, not one clone; git runs bounded in
    time and killed when `stop` is set (`reconciler.desired.gitmirror`). Every failure is a
    SourceError carrying git's own reason (see `git_reason`), so `reconcile`, `reconcile plan` and `watch`
    can say why a URL cannot be read without a traceback.
    """
    import git

    local = Path(repository).expanduser()
    try:
        if local.exists():
            return git.Repo(local, search_parent_directories=False)
    except git.exc.InvalidGitRepositoryError as exc:
        raise SourceError(
            f"{repository}: not a Git repository (give the top folder of a checkout, or a URL git can clone)"
        ) from exc
    except git.exc.NoSuchPathError as exc:
        raise SourceError(f"{repository}: no such path") from exc
    mirror = sync_mirror(repository, stop=stop or threading.Event(), fetch=fetch)
    try:
        return git.Repo(mirror)
    except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError) as exc:
        # The cached mirror, not the user's URL, is broken (a disk cleanup, a hand edit).
        raise SourceError(
            f"{repository}: the cached mirror {mirror} is not a usable Git repository; delete it to clone again"
        ) from exc


def _commit(repo: Any, repository: str, ref: str) -> Any:
    """The commit `ref` names, or a SourceError saying what the repository does have."""
    import git

    try:
        return repo.commit(ref)
    except git.exc.GitCommandError as exc:
        raise SourceError(f"{repository}: no commit named {ref!r}: {git_reason(exc.stderr, exc.status)}") from exc
    except (git.exc.BadName, ValueError) as exc:
        raise SourceError(f"{repository}: no commit named {ref!r}{unknown_ref_hint(repo, exc)}") from exc


def unknown_ref_hint(repo: Any, exc: BaseException) -> str:
    """Why a ref names no commit, for the end of a message: what git said about the revision spec, or the
    branches and tags there are (the usual mistake is a branch name: `master` for `main`)."""
    detail = str(exc)
    spec = re.search(r"Invalid revision spec '.*' - (.+?)'? did not resolve to an object", detail)
    if spec:
        return f": {spec.group(1)}"
    try:
        branches = sorted(head.name for head in repo.heads)
        tags = sorted(tag.name for tag in repo.tags)
    except (OSError, ValueError):
        return ""
    if not branches and not tags:
        return " (the repository has no commits yet)"

    def some(names: list[str]) -> str:
        shown = ", ".join(names[:10])
        return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "") if names else "none"

    return f" (not a branch, tag or commit of it; branches: {some(branches)}; tags: {some(tags)})"


def resolve_commit(repository: str, ref: str, *, fetch: bool = True) -> str:
    """The full SHA `ref` names in `repository` (a branch, tag, short or full SHA)."""
    repo = open_repository(repository, fetch=fetch)
    return str(_commit(repo, repository, ref).hexsha)


def files_from_commit(
    repository: str, ref: str, path: str = ".", *, fetch: bool = True
) -> tuple[str, list[ManifestFile]]:
    """Manifest files from the commit's tree (never the working tree) and the resolved SHA; files that are
    plainly not manifests are skipped (`not_a_manifest`)."""

    repo = open_repository(repository, fetch=fetch)
    commit = _commit(repo, repository, ref)
    tree = commit.tree
    sub = PurePosixPath(path.strip("/") or ".")
    if str(sub) != ".":
        try:
            tree = tree / str(sub)
        except KeyError as exc:
            raise SourceError(f"{repository}@{commit.hexsha[:7]}: no folder {str(sub)!r}") from exc
        if tree.type != "tree":
            raise SourceError(f"{repository}@{commit.hexsha[:7]}: {str(sub)!r} is not a folder")
    files: list[ManifestFile] = []
    for item in _walk(tree):
        name = PurePosixPath(item.path).relative_to(sub).as_posix() if str(sub) != "." else item.path
        content = item.data_stream.read()
        if not_a_manifest(name, content) is None:
            files.append(ManifestFile(name, content))
    return str(commit.hexsha), files


def _walk(tree: Any) -> Iterator[Any]:
    for item in tree.traverse():
        if item.type == "blob" and PurePosixPath(item.path).suffix in YAML_SUFFIXES:
            yield item


def load_git(source: GitSource, *, fetch: bool = True) -> Desired:
    commit, files = files_from_commit(source.repository, source.ref, source.path, fetch=fetch)
    return load_files(files, commit=commit)
