"""Where manifest files come from: a plain folder (`reconcile validate` before committing) or a commit's tree
in a Git repository (never the working tree, so two refs can be compared and uncommitted edits never leak in).

Where it sits: `reconciler.desired.loader` turns the files read here into a validated `Desired`; a remote URL is
mirrored by `reconciler.desired.gitmirror`. Files that plainly are not manifests (hidden ones, CI files,
the settings file) are skipped here, by path (`not_a_manifest`), so validation only sees candidates.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from contract.gitmessages import GIT_NO_PROMPT, git_reason
from reconciler.desired.gitmirror import sync_mirror
from reconciler.errors import SourceError

YAML_SUFFIXES = (".yaml", ".yml")
#: The largest manifest or settings file read (1 MiB): a hundred times the largest real one; a bigger file is
#: not read into memory at all and is reported as a located error (`reconciler.desired.loader`).
MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ManifestFile:
    """One file's bytes and the name to show in messages (relative to the manifests folder).

    `oversize`: the file's size when it is larger than `MAX_FILE_BYTES`; `content` is then left empty."""

    name: str
    content: bytes
    oversize: int | None = None


def bounded_file(name: str, path: Path) -> ManifestFile:
    """A file from disk, not read when it is larger than `MAX_FILE_BYTES`."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return ManifestFile(name, b"", oversize=size)
    return ManifestFile(name, path.read_bytes())


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
        return [bounded_file(folder.name, folder)]
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in YAML_SUFFIXES and path.is_file():
            file = bounded_file(path.relative_to(folder).as_posix(), path)
            if not_a_manifest(file.name, file.content) is None:
                found.append(file)
    return found


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
            return _safe(git.Repo(local, search_parent_directories=False))
    except git.exc.InvalidGitRepositoryError as exc:
        raise SourceError(
            f"{repository}: not a Git repository (give the top folder of a checkout, or a URL git can clone)"
        ) from exc
    except git.exc.NoSuchPathError as exc:
        raise SourceError(f"{repository}: no such path") from exc
    mirror = sync_mirror(repository, stop=stop or threading.Event(), fetch=fetch)
    try:
        return _safe(git.Repo(mirror))
    except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError) as exc:
        # The cached mirror, not the user's URL, is broken (a disk cleanup, a hand edit).
        raise SourceError(
            f"{repository}: the cached mirror {mirror} is not a usable Git repository; delete it to clone again"
        ) from exc


def _safe(repo: Any) -> Any:
    """The repository with git's environment for the reconciler: no prompts, no replace objects
    (contract.gitmessages.GIT_NO_PROMPT), for every git process GitPython starts for it, `cat-file` included."""
    repo.git.update_environment(**GIT_NO_PROMPT)
    return repo


def _commit(repo: Any, repository: str, ref: str) -> Any:
    """The commit `ref` names, or a SourceError saying what the repository does have."""
    import git

    if not ref.startswith("refs/") and _ambiguous(repo, ref):
        # git (and GitPython) would take the tag: somebody allowed to push tags, often a weaker right than pushing
        # to a protected branch, would then decide what is deployed (docs/trust.md).
        raise SourceError(f"{repository}: {ref!r} names both a branch and a tag; refusing to guess which one is "
                          f"meant: set the ref to refs/heads/{ref} or refs/tags/{ref}, or delete the tag")
    try:
        return repo.commit(ref)
    except git.exc.GitCommandError as exc:
        raise SourceError(f"{repository}: no commit named {ref!r}: {git_reason(exc.stderr, exc.status)}") from exc
    except (git.exc.BadName, ValueError) as exc:
        raise SourceError(f"{repository}: no commit named {ref!r}{unknown_ref_hint(repo, exc)}") from exc


def _ambiguous(repo: Any, ref: str) -> bool:
    try:
        return any(head.name == ref for head in repo.heads) and any(tag.name == ref for tag in repo.tags)
    except (OSError, ValueError):
        return False


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


def _git_dir(repository: str, *, fetch: bool) -> Path | None:
    """The git directory the fast path (`reconciler.desired.gitcli`) reads: a local repository's, or the mirror of
    a remote one, brought up to date here when `fetch` (so the GitPython path after it must not fetch again).
    None: not a repository the fast path can find; the GitPython path says why."""
    from reconciler.desired import gitcli  # it reads into this module's `ManifestFile`

    local = Path(repository).expanduser()
    if local.exists():
        return gitcli.local_git_dir(repository)
    return sync_mirror(repository, stop=threading.Event(), fetch=fetch)


def resolve_commit(repository: str, ref: str, *, fetch: bool = True) -> str:
    """The full SHA `ref` names in `repository` (a branch, tag, short or full SHA)."""
    from reconciler.desired import gitcli

    git_dir = _git_dir(repository, fetch=fetch)
    if git_dir is not None:
        found = gitcli.resolve(git_dir, ref)
        if found is not None:
            return found
    repo = open_repository(repository, fetch=False if git_dir is not None else fetch)
    return str(_commit(repo, repository, ref).hexsha)


def files_from_commit(
    repository: str, ref: str, path: str = ".", *, fetch: bool = True
) -> tuple[str, list[ManifestFile]]:
    """Manifest files from the commit's tree (never the working tree) and the resolved SHA; files that are
    plainly not manifests are skipped (`not_a_manifest`).

    Read by the git program (`reconciler.desired.gitcli`) when that just works; through GitPython otherwise, which
    is also where every error is worded."""
    from reconciler.desired import gitcli

    git_dir = _git_dir(repository, fetch=fetch)
    if git_dir is not None:
        commit = gitcli.resolve(git_dir, ref)
        found = gitcli.tree_files(git_dir, commit, path, YAML_SUFFIXES, MAX_FILE_BYTES) if commit else None
        if commit is not None and found is not None:
            return commit, [file for file in found if not_a_manifest(file.name, file.content) is None]
    return _files_from_commit(repository, ref, path, fetch=False if git_dir is not None else fetch)


def _files_from_commit(repository: str, ref: str, path: str, *, fetch: bool) -> tuple[str, list[ManifestFile]]:
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
        size = int(item.size)  # asked first: an oversize file's stream is never opened (an unread one breaks GitPython)
        file = ManifestFile(name, b"", oversize=size) if size > MAX_FILE_BYTES else ManifestFile(
            name, item.data_stream.read())
        if not_a_manifest(name, file.content) is None:
            files.append(file)
    return str(commit.hexsha), files


def _walk(tree: Any) -> Iterator[Any]:
    for item in tree.traverse():
        if item.type == "blob" and PurePosixPath(item.path).suffix in YAML_SUFFIXES:
            yield item


__all__ = [
    "CI_FILES",
    "MAX_FILE_BYTES",
    "SETTINGS_FILE",
    "YAML_SUFFIXES",
    "GitSource",
    "ManifestFile",
    "bounded_file",
    "files_from_commit",
    "files_from_folder",
    "not_a_manifest",
    "open_repository",
    "resolve_commit",
    "unknown_ref_hint",
]
