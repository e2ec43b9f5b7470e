"""Reading a commit with the git program alone: the fast path of `reconciler.desired.sources` (issue 18).

Why: every `reconcile --once` and `reconcile plan` resolves a ref and reads the manifests of a commit. GitPython
costs ~90 ms to import and two round trips to its `cat-file` processes per file; three git processes (`rev-parse`
with `for-each-ref`, `ls-tree`, one `cat-file --batch`) do the same work in a few milliseconds.

Only the way that succeeds is here. Anything unusual (a ref that names nothing or names both a branch and a tag,
a path that is no folder, a folder that is not a repository, git failing) returns None, and the caller takes
the GitPython path, which says what is wrong in the words the tests and the docs know. So the errors, and what
counts as a manifest (`not_a_manifest`), stay in one place.

Same rules as the GitPython path: git runs with `GIT_NO_PROMPT` (no prompts, no replace objects); a local path is
read as the repository it is (a work tree with `.git`, or a bare repository), never as a folder inside some
other repository found by searching upwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

from contract.gitmessages import GIT_NO_PROMPT
from reconciler.desired.sources import ManifestFile

#: A local git command that takes longer than this is not "the fast path" any more: the GitPython path runs
#: instead (and says what went wrong if something did).
LOCAL_GIT_TIMEOUT_SECONDS = 60.0


def local_git_dir(repository: str) -> Path | None:
    """The git directory of a local repository path (`PATH/.git`, or PATH itself when it is bare), None when
    `repository` is not such a path (a URL, a missing folder, a plain folder)."""
    local = Path(repository).expanduser()
    dot_git = local / ".git"
    if dot_git.is_dir() or dot_git.is_file():  # a file: a linked work tree or a submodule (`gitdir: ...`)
        return dot_git
    if (local / "HEAD").is_file() and (local / "objects").is_dir() and (local / "refs").is_dir():
        return local
    return None


def _git(git_dir: Path, *args: str, stdin: bytes | None = None) -> bytes | None:
    """git's standard output, or None when it failed or took too long."""
    try:
        done = subprocess.run(
            ["git", f"--git-dir={git_dir}", *args], input=stdin, capture_output=True, check=False,
            env={**os.environ, **GIT_NO_PROMPT}, timeout=LOCAL_GIT_TIMEOUT_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def resolve(git_dir: Path, ref: str) -> str | None:
    """The full SHA of the commit `ref` names; None when it names none, or names both a branch and a tag (the
    GitPython path refuses that with its own message), or git failed."""
    if not ref or ref.startswith("-"):
        return None
    if not ref.startswith("refs/"):
        listed = _git(git_dir, "for-each-ref", "--format=%(refname)", f"refs/heads/{ref}", f"refs/tags/{ref}")
        if listed is None:
            return None
        names = set(listed.decode("utf-8", "replace").splitlines())
        if f"refs/heads/{ref}" in names and f"refs/tags/{ref}" in names:
            return None
    out = _git(git_dir, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if out is None:
        return None
    commit = out.decode("ascii", "replace").strip()
    return commit if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit) else None


def tree_files(
    git_dir: Path, commit: str, path: str, suffixes: tuple[str, ...], limit: int
) -> list[ManifestFile] | None:
    """Every blob under the folder `path` of `commit` whose name ends with one of `suffixes`, in tree order, with
    its bytes (none when it is larger than `limit`); None when `path` is not a folder of the commit or git failed.
    Names are relative to `path`."""
    sub = PurePosixPath(path.strip("/") or ".")
    if ".." in sub.parts:
        return None  # git would normalise `m/../other` and list `other/`: the GitPython path refuses it
    args = ["--literal-pathspecs", "ls-tree", "-r", "-z", "--long", "--full-tree", commit]
    if str(sub) != ".":
        args += ["--", f"{sub}/"]
    listed = _git(git_dir, *args)
    if listed is None:
        return None
    entries: list[tuple[str, str, int]] = []
    for record in listed.split(b"\0"):
        if not record:
            continue
        meta, _, raw_name = record.partition(b"\t")
        fields = meta.split()
        if len(fields) != 4:
            return None
        _mode, kind, sha, size = (field.decode("ascii", "replace") for field in fields)
        full = raw_name.decode("utf-8", "surrogateescape")
        if kind != "blob" or PurePosixPath(full).suffix not in suffixes:
            continue
        try:
            name = full if str(sub) == "." else PurePosixPath(full).relative_to(sub).as_posix()
        except ValueError:
            return None  # git listed something outside the folder asked for: let the GitPython path decide
        entries.append((name, sha, int(size)))
    if not entries and str(sub) != ".":
        return None  # no such folder (git has no empty folders), or nothing in it: the GitPython path says which
    wanted = [sha for _, sha, size in entries if size <= limit]
    contents = _cat_blobs(git_dir, wanted) if wanted else {}
    if contents is None:
        return None
    return [
        ManifestFile(name, b"", oversize=size) if size > limit else ManifestFile(name, contents[sha])
        for name, sha, size in entries
    ]


def _cat_blobs(git_dir: Path, shas: list[str]) -> dict[str, bytes] | None:
    """The bytes of each blob, read by one `git cat-file --batch`."""
    out = _git(git_dir, "cat-file", "--batch", stdin="".join(f"{sha}\n" for sha in shas).encode())
    if out is None:
        return None
    found: dict[str, bytes] = {}
    at = 0
    for sha in shas:
        header_end = out.find(b"\n", at)
        if header_end < 0:
            return None
        header = out[at:header_end].split()
        if len(header) != 3 or header[0].decode() != sha or header[1] != b"blob":
            return None
        size = int(header[2])
        start = header_end + 1
        found[sha] = out[start:start + size]
        at = start + size + 1  # the newline after each object
    return found


__all__ = ["LOCAL_GIT_TIMEOUT_SECONDS", "local_git_dir", "resolve", "tree_files"]
