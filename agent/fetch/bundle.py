"""Bundles: fetching a revision (local path, S3, Git), checking its bytes, and unpacking it safely.

The DownloadBundle step of the lifecycle (reference 3.2, 3.7). `fetch_bundle` puts the revision's bytes in
the deployment folder (as `bundle.tar`, whatever the format, like the reference agent) and checks the
pinned sha256 / S3 eTag before anything is unpacked; `unpack_bundle` turns it into `deployment-archive/`.

Every extractor is our own code over `zipfile`/`tarfile`, with the same rules and no fallback to another
tool (the reference agent falls back from `unzip` to rubyzip, which writes `../` entries outside the target,
reference 3.8). Rules, for zip, tar, tgz and directory bundles alike:

- entry names must be relative and free of `..` components;
- symlinks are kept as symlinks, their target text unchanged, wherever they point (`config ->
  /etc/myapp/config.yml`, `../shared`, or nowhere yet), as the reference agent keeps them: they are created
  only after every regular file and folder is written, and no entry may sit under a name the bundle has as a
  link, so nothing is ever written through one. What a link points at is only looked at later, by the
  installer, which copies a link leading out of the bundle as a link and never follows it;
- hard links must point at a regular file extracted earlier from the same archive;
- device files, FIFOs and sockets are refused;
- entry count and total size are capped (`ExtractLimits`), checked against the archive's own headers
  before writing and against the bytes actually written while writing.

A refused bundle leaves nothing behind but a partial `deployment-archive/` inside the deployment folder,
which is removed before the error is raised.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import hashlib
import io
import os
import posixpath
import pwd
import queue
import re
import shutil
import stat
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

import structlog

from agent.errors import BundleError, BundleNotFound, BundleUnavailable, ChecksumMismatch, UnsafeBundle, UsageError
from contract.gitmessages import GIT_NO_PROMPT, git_reason
from contract.models import Revision

log = structlog.get_logger("agent.fetch.bundle")

BundleType = Literal["zip", "tar", "tgz", "directory"]
BUNDLE_TYPES: tuple[str, ...] = ("zip", "tar", "tgz", "directory")
#: The reference agent names the downloaded artifact bundle.tar whatever its format (reference 3.1).
BUNDLE_FILE_NAME = "bundle.tar"
_CHUNK = 1 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ExtractLimits:
    """Caps that stop a zip bomb or a runaway bundle before it fills the disk."""

    max_bytes: int = 8 << 30
    max_entries: int = 250_000


@dataclass(frozen=True)
class FetchedBundle:
    """The revision's bytes on this host. For a directory bundle `path` is the source folder itself."""

    path: Path
    bundle_type: BundleType
    #: BUNDLE_* variables the hooks get (reference 2.3): S3 bucket/key/version/eTag or the Git commit.
    environment: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None


# --------------------------------------------------------------------------------------------------
# Fetching


def fetch_bundle(revision: Revision, deployment_dir: Path, *, git_cache_dir: Path) -> FetchedBundle:
    """Bring the revision's bytes into `deployment_dir` and verify them. Raises a `BundleError`."""
    deployment_dir.mkdir(parents=True, exist_ok=True)
    bundle_path = deployment_dir / BUNDLE_FILE_NAME
    _remove_path(bundle_path)
    if revision.s3 is not None:
        fetched = _fetch_s3(revision, bundle_path)
    elif revision.git is not None:
        fetched = _fetch_git(revision, bundle_path, git_cache_dir)
    else:
        fetched = _fetch_local(revision, bundle_path)
    if revision.sha256 is not None:
        if fetched.bundle_type == "directory":
            raise UsageError("a sha256 can only be checked for a bundle file, not for a directory bundle")
        actual = fetched.sha256 or sha256_of(fetched.path)
        if actual != revision.sha256:
            raise ChecksumMismatch(
                f"the bundle's sha256 is {actual}, but the revision pins {revision.sha256}: the bundle at the "
                "source changed or is not the one the revision names; nothing was unpacked"
            )
        fetched = FetchedBundle(fetched.path, fetched.bundle_type, fetched.environment, actual)
    return fetched


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def detect_bundle_type(path: Path) -> BundleType:
    """Guess a local bundle's type from what it is, not only from its name (used when --type is absent)."""
    if path.is_dir():
        return "directory"
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tgz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if name.endswith(".tar"):
        return "tar"
    raise UsageError(f"cannot tell what kind of bundle {path} is; pass --type zip, tar, tgz or directory")


def _fetch_local(revision: Revision, bundle_path: Path) -> FetchedBundle:
    assert revision.local is not None
    location = Path(revision.local.path).expanduser().absolute()
    bundle_type: BundleType = revision.local.bundle_type
    if not location.exists():
        raise BundleNotFound(f"the bundle {location} does not exist")
    if bundle_type == "directory":
        if not location.is_dir():
            raise UsageError(f"{location} is a file, but the bundle type is directory; pass its type (zip, tar, tgz)")
        return FetchedBundle(location, "directory")
    if location.is_dir():
        raise UsageError(f"{location} is a directory, but the bundle type is {bundle_type}; use type directory")
    # Like the reference agent: a symlink rather than a copy, so a large local bundle is not stored twice.
    bundle_path.symlink_to(location)
    return FetchedBundle(bundle_path, bundle_type)


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    # AWS_ENDPOINT_URL, AWS_REGION and credentials come from the environment, as boto3 reads them natively.
    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def _fetch_s3(revision: Revision, bundle_path: Path) -> FetchedBundle:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    location = revision.s3
    assert location is not None
    where = f"s3://{location.bucket}/{location.key}" + (f" (version {location.version})" if location.version else "")
    params: dict[str, str] = {"Bucket": location.bucket, "Key": location.key}
    if location.version:
        params["VersionId"] = location.version
    digest = hashlib.sha256()
    try:
        response = _s3_client().get_object(**params)
        with bundle_path.open("wb") as out:
            for chunk in response["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except NoCredentialsError as exc:
        raise BundleError(f"cannot download {where}: no AWS credentials found for the agent") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = error.get("Message") or code
        if code in {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404"} or status == 404:
            raise BundleNotFound(f"{where} does not exist ({detail})") from exc
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"} or status == 403:
            raise BundleError(
                f"access to {where} was denied ({detail}); the agent's credentials need s3:GetObject"
                + (" and s3:GetObjectVersion" if location.version else "")
            ) from exc
        if status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout", "InternalError"}:
            raise BundleUnavailable(f"S3 could not serve {where} right now ({detail}); retry later") from exc
        raise BundleError(f"cannot download {where}: {detail}") from exc
    except (BotoCoreError, OSError) as exc:
        raise BundleUnavailable(f"cannot download {where}: {exc}") from exc
    actual_etag = str(response.get("ETag", "")).strip('"')
    if location.e_tag and location.e_tag.strip('"') != actual_etag:
        raise ChecksumMismatch(
            f"{where} has eTag {actual_etag}, but the revision pins {location.e_tag.strip(chr(34))}: the object "
            "was replaced since the revision was written; pin its version or update the eTag"
        )
    environment = {"BUNDLE_BUCKET": location.bucket, "BUNDLE_KEY": location.key}
    if location.version:
        environment["BUNDLE_VERSION"] = location.version
    if location.e_tag:
        environment["BUNDLE_ETAG"] = location.e_tag.strip('"')
    log.info("bundle.downloaded", source=where, bytes=bundle_path.stat().st_size)
    return FetchedBundle(bundle_path, location.bundle_type, environment, digest.hexdigest())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_git(revision: Revision, bundle_path: Path, cache_root: Path) -> FetchedBundle:
    import git
    from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError

    location = revision.git
    assert location is not None
    url = location.repository
    if url.startswith("-") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", url):
        # `-...` would be read as an option by git; `ext::`/`fd::` transports run arbitrary commands.
        raise BundleError(f"refusing Git repository {url!r}: use an https://, ssh://, git:// URL or a path")
    cache = cache_root / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".git")
    with _locked(cache_root / (cache.name + ".lock")):
        try:
            try:
                repo = git.Repo(cache)
            except (InvalidGitRepositoryError, NoSuchPathError):
                shutil.rmtree(cache, ignore_errors=True)
                repo = git.Repo.init(cache, bare=True)
            repo.git.update_environment(**GIT_NO_PROMPT)
            if not _has_commit(repo, location.commit, BadName):
                started = time.monotonic()
                try:
                    # Most servers (and every local repository) hand out a commit by id directly.
                    repo.git.fetch("--quiet", url, location.commit)
                except GitCommandError:
                    # Others only serve advertised refs: fetch every branch and tag instead. If this fails
                    # too, its error says why (the first one's is usually the same, or only "not our ref").
                    repo.git.fetch("--quiet", "--tags", url, "+refs/heads/*:refs/heads/*")
                log.info("bundle.git_fetched", repository=url, seconds=round(time.monotonic() - started, 3))
            if not _has_commit(repo, location.commit, BadName):
                raise BundleNotFound(
                    f"commit {location.commit} is not in {url} (fetched it by id, then every branch and tag); "
                    "was it pushed?"
                )
            with bundle_path.open("wb") as out:
                repo.archive(out, location.commit, format="tar")
        except GitCommandError as exc:
            reason = git_reason(exc.stderr, exc.status)
            if re.search(r"does not appear to be a git repository|not found|does not exist|No such|"
                         r"not a git repository", reason, re.IGNORECASE):
                raise BundleNotFound(f"cannot read Git repository {url}: {reason}") from exc
            if re.search(r"Authentication failed|Permission denied|could not read Username|terminal prompts "
                         r"disabled|403", reason, re.IGNORECASE):
                raise BundleError(
                    f"Git repository {url} refused the agent's credentials: {reason}; give the agent read access "
                    "(a deploy key, or a credential helper for its user)"
                ) from exc
            if re.search(r"resolve host|timed out|Connection|unable to access|early EOF|Network is unreachable",
                         reason, re.IGNORECASE):
                raise BundleUnavailable(f"cannot reach Git repository {url}: {reason}") from exc
            raise BundleError(f"git failed for {url} at {location.commit}: {reason}") from exc
    return FetchedBundle(bundle_path, "tar", {"BUNDLE_COMMIT": location.commit})


def _has_commit(repo: Any, commit: str, bad_name: type[Exception]) -> bool:
    try:
        return bool(repo.commit(commit).hexsha == commit)
    except (bad_name, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# Unpacking


def unpack_bundle(fetched: FetchedBundle, archive_dir: Path, limits: ExtractLimits | None = None) -> None:
    """Replace `archive_dir` with the bundle's contents, then unwrap a single top-level folder that holds
    the appspec (reference 1.1). On any error the partial folder is removed."""
    limits = limits or ExtractLimits()
    _remove_path(archive_dir)
    archive_dir.mkdir(parents=True)
    started = time.monotonic()
    extractor = _Extractor(archive_dir, limits)
    try:
        if fetched.bundle_type != "directory":
            extractor.start_writer()
        if fetched.bundle_type == "directory":
            extractor.copy_directory(fetched.path)
        elif fetched.bundle_type == "zip":
            extractor.extract_zip(fetched.path)
        elif fetched.bundle_type in {"tar", "tgz"}:
            extractor.extract_tar(fetched.path, compressed=fetched.bundle_type == "tgz")
        else:
            raise UsageError(f"unknown bundle type {fetched.bundle_type!r}; use zip, tar, tgz or directory")
        extractor.finish()
        _unwrap_single_folder(archive_dir)
    except OSError as exc:
        _abandon(extractor, archive_dir)
        if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
            raise BundleError(f"the disk filled up while unpacking the bundle into {archive_dir}") from exc
        raise BundleError(f"cannot unpack the bundle into {archive_dir}: {exc}") from exc
    except BaseException:
        _abandon(extractor, archive_dir)
        raise
    log.info(
        "bundle.unpacked",
        type=fetched.bundle_type,
        entries=extractor.entries,
        bytes=extractor.written,
        seconds=round(time.monotonic() - started, 3),
    )


def _abandon(extractor: _Extractor, archive_dir: Path) -> None:
    """After a failure: let the writer thread finish (its own errors no longer matter), then remove the
    partial folder, so nothing is written into it after it is gone."""
    with suppress(BaseException):
        extractor.stop_writer()
    _remove_path(archive_dir)


def _unwrap_single_folder(archive_dir: Path) -> None:
    entries = os.listdir(archive_dir)
    if len(entries) != 1:
        return
    only = archive_dir / entries[0]
    if only.is_symlink() or not only.is_dir():
        return
    if not any(re.search("appspec", name, re.IGNORECASE) for name in os.listdir(only)):
        return
    staging = archive_dir.with_name(archive_dir.name + ".unwrap")
    _remove_path(staging)
    os.rename(only, staging)
    os.rmdir(archive_dir)
    os.rename(staging, archive_dir)


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


class _Extractor:
    """Writes entries under one target folder, enforcing the module's rules for every bundle format."""

    def __init__(self, target: Path, limits: ExtractLimits) -> None:
        self.target = target
        self.target_text = str(target)
        #: Set while unpacking an archive with many small files (see `_BackgroundWriter`).
        self.writer: _BackgroundWriter | None = None
        self.limits = limits
        self.entries = 0
        self.written = 0
        self.regular: set[str] = set()
        self.made_dirs: set[str] = {""}
        self.symlinks: dict[str, str] = {}
        self.dir_attrs: list[tuple[str, int | None, float | None, tuple[int, int] | None]] = []
        self.as_root = os.geteuid() == 0
        #: Names the bundle in messages ("zip bundle app.zip"); set by the format's entry point.
        self.source = "bundle"
        self.umask = _current_umask()
        self._ids: dict[tuple[str, str], int] = {}

    # -- naming and accounting

    def safe_name(self, raw: str, *, source: str) -> str | None:
        """The entry's path relative to the target, or None for the archive's own root (`./`)."""
        name = raw.replace("\\", "/") if "\\" in raw and "/" not in raw else raw
        if "\x00" in name:
            raise UnsafeBundle(f"{source}: entry {raw!r} has a NUL byte in its name")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise UnsafeBundle(f"{source}: entry {raw!r} has an absolute path; bundle entries must be relative")
        parts = [p for p in name.split("/") if p not in {"", "."}]
        if ".." in parts:
            raise UnsafeBundle(f"{source}: entry {raw!r} climbs out of the bundle with '..'")
        if not parts:
            return None
        return "/".join(parts)

    def count(self, name: str, source: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnsafeBundle(
                f"{source}: more than {self.limits.max_entries} entries; raise the agent's bundle entry limit if "
                "this bundle is legitimate"
            )

    def _too_big(self, source: str) -> UnsafeBundle:
        return UnsafeBundle(
            f"{source}: unpacks to more than {self.limits.max_bytes} bytes (a zip bomb, or a bundle larger than "
            "the agent's limit); nothing was installed"
        )

    # -- writing

    def ensure_parent(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent in self.made_dirs:
            return
        # Every missing ancestor must be a plain folder-to-be, never a file or a link of the bundle, so
        # os.makedirs below cannot follow a link (links only exist once `finish` runs, but be strict anyway).
        ancestor = parent
        while ancestor and ancestor not in self.made_dirs:
            if ancestor in self.regular or ancestor in self.symlinks:
                raise UnsafeBundle(
                    f"{self.source}: entry {name!r} is inside {ancestor!r}, which the bundle also has as a file "
                    "or link (writing through a link is refused)"
                )
            ancestor = posixpath.dirname(ancestor)
        os.makedirs(self.target / parent, exist_ok=True)
        while parent and parent not in self.made_dirs:
            self.made_dirs.add(parent)
            parent = posixpath.dirname(parent)

    def make_dir(self, name: str, mode: int | None, mtime: float | None, owner: tuple[int, int] | None) -> None:
        if name in self.regular or name in self.symlinks:
            raise UnsafeBundle(f"{self.source}: entry {name!r} is both a folder and a file or link in the bundle")
        self.ensure_parent(name)
        path = self.target / name
        if name not in self.made_dirs:
            with suppress(FileExistsError):
                os.mkdir(path)
            self.made_dirs.add(name)
        # Modes and times are applied at the end, deepest first, so a read-only folder can still be filled.
        self.dir_attrs.append((name, mode, mtime, owner))

    def write_file(
        self,
        name: str,
        stream: IO[bytes],
        *,
        mode: int | None,
        mtime: float | None,
        owner: tuple[int, int] | None,
        source: str,
        size: int | None = None,
    ) -> None:
        """Write one regular file from `stream` (exactly `size` bytes when given, else to its end)."""
        if name in self.made_dirs:
            raise UnsafeBundle(f"{source}: entry {name!r} is both a folder and a file in the bundle")
        self.ensure_parent(name)
        self.symlinks.pop(name, None)
        final_mode = mode if mode is not None else 0o666 & ~self.umask
        if size is not None and size <= _CHUNK and self.writer is not None:
            data = stream.read(size)
            if len(data) != size:
                raise BundleError(f"{source}: entry {name!r} is cut short; the bundle is truncated")
            if self.written + size > self.limits.max_bytes:
                raise self._too_big(source)
            self.written += size
            self.writer.submit(f"{self.target_text}/{name}", data, final_mode, mtime, owner)
            self.regular.add(name)
            return
        if self.writer is not None:
            self.writer.drain()
        fd = os.open(f"{self.target_text}/{name}", _CREATE_FLAGS, 0o600)
        try:
            budget = self.limits.max_bytes - self.written
            remaining = size if size is not None else -1
            while remaining:
                chunk = stream.read(_CHUNK if remaining < 0 else min(remaining, _CHUNK))
                if not chunk:
                    if remaining > 0:
                        raise BundleError(f"{source}: entry {name!r} is cut short; the bundle is truncated")
                    break
                remaining -= len(chunk) if remaining > 0 else 0
                budget -= len(chunk)
                if budget < 0:
                    raise self._too_big(source)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            self.written = self.limits.max_bytes - budget
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, final_mode)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.regular.add(name)

    def hard_link(self, name: str, link_target_raw: str, source: str) -> None:
        if self.writer is not None:
            self.writer.drain()
        if link_target_raw.startswith("/") or ".." in link_target_raw.replace("\\", "/").split("/"):
            raise UnsafeBundle(f"{source}: hard link {name!r} points outside the bundle ({link_target_raw!r})")
        link_target = self.safe_name(link_target_raw, source=source)
        if link_target is None or link_target not in self.regular:
            raise UnsafeBundle(
                f"{source}: hard link {name!r} -> {link_target_raw!r} does not point at a file extracted earlier "
                "from the same bundle"
            )
        self.ensure_parent(name)
        path = self.target / name
        if path.is_symlink() or path.exists():
            path.unlink()
        os.link(self.target / link_target, path, follow_symlinks=False)
        self.regular.add(name)

    def symlink(self, name: str, link_target: str, source: str) -> None:
        # Any target is accepted, absolute or outside the bundle or dangling: the link is data, installed
        # as a link. Safety comes from never writing or reading through it (see `ensure_parent`, `finish`).
        if "\x00" in link_target:
            raise UnsafeBundle(f"{source}: symlink {name!r} has a NUL byte in its target")
        if not link_target:
            raise UnsafeBundle(f"{source}: symlink {name!r} has an empty target")
        if name in self.made_dirs:
            raise UnsafeBundle(f"{source}: entry {name!r} is both a folder and a symlink in the bundle")
        self.regular.discard(name)
        self.symlinks[name] = link_target

    def finish(self) -> None:
        """Create the symlinks (after every file, so nothing was written through one; `ensure_parent` refuses
        a link under a name that is itself a link), then set folder modes and times deepest first."""
        self.stop_writer()
        for name, link_target in self.symlinks.items():
            self.ensure_parent(name)
            path = self.target / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            os.symlink(link_target, path)
        for name, mode, mtime, owner in sorted(self.dir_attrs, key=lambda item: item[0].count("/"), reverse=True):
            path = self.target / name
            if owner is not None:
                os.lchown(path, *owner)
            if mode is not None:
                os.chmod(path, mode)
            if mtime is not None:
                os.utime(path, (mtime, mtime))

    def start_writer(self) -> None:
        if self.writer is None and (os.cpu_count() or 1) > 1:
            self.writer = _BackgroundWriter()

    def stop_writer(self) -> None:
        """Wait for queued files and stop the thread; raises the first error the thread hit."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.drain()
            finally:
                writer.close()

    # -- ownership, like `tar -p` run as root (names first, then numeric ids)

    def owner_of(self, uname: str, gname: str, uid: int, gid: int) -> tuple[int, int] | None:
        if not self.as_root:
            return None
        return self._lookup("u", uname, uid), self._lookup("g", gname, gid)

    def _lookup(self, kind: str, name: str, fallback: int) -> int:
        key = (kind, name)
        if not name:
            return fallback
        if key not in self._ids:
            try:
                self._ids[key] = pwd.getpwnam(name).pw_uid if kind == "u" else grp.getgrnam(name).gr_gid
            except KeyError:
                self._ids[key] = fallback
        return self._ids[key]

    def file_mode(self, mode: int) -> int:
        return mode & 0o7777 if self.as_root else mode & 0o777 & ~self.umask

    # -- formats

    def extract_zip(self, path: Path) -> None:
        source = self.source = f"zip bundle {path.name}"
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError(f"{source} is not a readable zip archive: {exc}") from exc
        with archive:
            infos = archive.infolist()
            if len(infos) > self.limits.max_entries:
                raise UnsafeBundle(
                    f"{source}: {len(infos)} entries, more than the limit of {self.limits.max_entries}"
                )
            if sum(info.file_size for info in infos) > self.limits.max_bytes:
                raise self._too_big(source)
            try:
                for info in infos:
                    self._zip_entry(archive, info, source)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
                raise BundleError(f"{source} is damaged or uses an unsupported feature: {exc}") from exc
            except RuntimeError as exc:  # zipfile reports encrypted entries this way
                raise BundleError(f"{source}: {exc}") from exc

    def _zip_entry(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> None:
        name = self.safe_name(info.filename, source=source)
        if name is None:
            return
        self.count(name, source)
        if info.flag_bits & 0x1:
            raise BundleError(f"{source}: entry {name!r} is encrypted; encrypted bundles are not supported")
        unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
        kind = stat.S_IFMT(unix_mode)
        mtime = time.mktime((*info.date_time, 0, 0, -1))
        if kind and kind not in {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK}:
            raise UnsafeBundle(f"{source}: entry {name!r} is a device, FIFO or socket; only files are allowed")
        if info.is_dir() or kind == stat.S_IFDIR:
            # unzip, like the reference agent's extractor, keeps permission bits but not setuid/setgid.
            self.make_dir(name, (unix_mode & 0o777) or None, mtime, None)
        elif kind == stat.S_IFLNK:
            if info.file_size > 4096:
                raise UnsafeBundle(f"{source}: symlink {name!r} has an implausibly long target")
            self.symlink(name, archive.read(info).decode("utf-8", "surrogateescape"), source)
        else:
            mode = unix_mode & 0o777 if unix_mode & 0o777 else None
            with archive.open(info) as stream:
                self.write_file(name, stream, mode=mode, mtime=mtime, owner=None, source=source, size=info.file_size)

    def extract_tar(self, path: Path, *, compressed: bool) -> None:
        source = self.source = f"{'tgz' if compressed else 'tar'} bundle {path.name}"
        try:
            # Members are read strictly in order, so a forward-only gzip reader is enough; it is much faster
            # than tarfile's own stream mode, which re-slices its whole buffer on every small read.
            with path.open("rb") as raw, (_ThreadedGunzip(raw) if compressed else raw) as stream, \
                    tarfile.open(fileobj=cast(IO[bytes], stream), mode="r:") as archive:
                while (member := archive.next()) is not None:
                    self._tar_entry(archive, member, source)
                    # Forget each header once handled: a huge bundle must not pile them up in memory.
                    archive.members.clear()  # type: ignore[attr-defined]
        except (tarfile.TarError, EOFError, zlib.error, _GzipDamaged) as exc:
            kind = "gzip-compressed tar" if compressed else "tar archive"
            raise BundleError(f"{source} is not a readable {kind} (damaged or truncated?): {exc}") from exc

    def _tar_entry(self, archive: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> None:
        name = self.safe_name(member.name, source=source)
        if name is None:
            return
        self.count(name, source)
        owner = self.owner_of(member.uname, member.gname, member.uid, member.gid)
        if member.isreg():
            if self.written + member.size > self.limits.max_bytes:
                raise self._too_big(source)
            if member.sparse is None:
                # Read the data straight from the archive stream, which sits right at it: no per-file
                # wrapper objects (tarfile seeks forward past the padding to the next header itself).
                stream: IO[bytes] = archive.fileobj  # type: ignore[assignment]
                stream.seek(member.offset_data)
            else:
                extracted = archive.extractfile(member)
                assert extracted is not None
                stream = extracted
            self.write_file(
                name, stream, mode=self.file_mode(member.mode), mtime=member.mtime, owner=owner, source=source,
                size=member.size,
            )
        elif member.isdir():
            self.make_dir(name, self.file_mode(member.mode), member.mtime, owner)
        elif member.issym():
            self.symlink(name, member.linkname, source)
        elif member.islnk():
            self.hard_link(name, member.linkname, source)
        elif member.ischr() or member.isblk():
            raise UnsafeBundle(f"{source}: entry {name!r} is a device file; only files are allowed")
        elif member.isfifo():
            raise UnsafeBundle(f"{source}: entry {name!r} is a FIFO; only files are allowed")
        else:
            raise UnsafeBundle(f"{source}: entry {name!r} has an unsupported type ({member.type!r})")

    def copy_directory(self, root: Path) -> None:
        """A directory bundle is copied like `cp -r` (reference: modes kept minus the umask, owner and times
        not kept), under the same rules as an archive."""
        source = self.source = f"directory bundle {root}"
        stack = [""]
        while stack:
            relative = stack.pop()
            with os.scandir(root / relative if relative else root) as entries:
                for entry in entries:
                    name = f"{relative}/{entry.name}" if relative else entry.name
                    self.count(name, source)
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(info.st_mode):
                        self.symlink(name, os.readlink(entry.path), source)
                    elif stat.S_ISDIR(info.st_mode):
                        self.make_dir(name, info.st_mode & 0o777 & ~self.umask, None, None)
                        stack.append(name)
                    elif stat.S_ISREG(info.st_mode):
                        if self.written + info.st_size > self.limits.max_bytes:
                            raise self._too_big(source)
                        with open(entry.path, "rb") as stream:
                            self.write_file(
                                name, stream, mode=info.st_mode & 0o777 & ~self.umask, mtime=None, owner=None,
                                source=source,
                            )
                    else:
                        raise UnsafeBundle(f"{source}: {name!r} is a device, FIFO or socket; only files are allowed")


class _BackgroundWriter:
    """Creates small files on a second thread while the main thread parses the archive.

    open/write/close release the GIL, so on a host with two or more cores writing overlaps with header
    parsing, much as `tar` overlaps with its gzip child. The main thread stays the only one that decides
    anything: names, limits and folders are checked before a file is queued, and every operation whose
    order matters (a large file, a hard link, the final symlinks) first waits for the queue to empty.
    """

    _QUEUE_FILES = 64

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[str, bytes, int, float | None, tuple[int, int] | None] | None] = (
            queue.Queue(self._QUEUE_FILES)
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="bundle-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    _create_file(*job)
            except BaseException as exc:
                self._error = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def submit(self, path: str, data: bytes, mode: int, mtime: float | None, owner: tuple[int, int] | None) -> None:
        self.check()
        self._jobs.put((path, data, mode, mtime, owner))

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def drain(self) -> None:
        self._jobs.join()
        self.check()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def _create_file(path: str, data: bytes, mode: int, mtime: float | None, owner: tuple[int, int] | None) -> None:
    fd = os.open(path, _CREATE_FLAGS, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


class _GzipDamaged(Exception):
    pass


class _ThreadedGunzip:
    """A forward-only reader of a gzip file whose inflating runs on a background thread.

    zlib releases the GIL while it inflates, so decompression overlaps with parsing and writing the
    entries, the way `tar -z` overlaps with its gzip child process. At most `_QUEUE_CHUNKS` chunks of
    `_CHUNK` bytes wait in memory, so a gzip bomb cannot run ahead of the size checks. `seek` only goes
    forward, which is all `tarfile` needs when members are read in order.
    """

    _QUEUE_CHUNKS = 16

    def __init__(self, raw: IO[bytes]) -> None:
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(self._QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._current = b""
        self._offset = 0
        self._position = 0
        self._finished = False
        self._thread = threading.Thread(target=self._inflate, args=(raw,), name="gunzip", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _inflate(self, raw: IO[bytes]) -> None:
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = b""
            while not self._stop.is_set():
                if not pending:
                    pending = raw.read(_CHUNK)
                    if not pending:
                        break
                out = inflater.decompress(pending, _CHUNK)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    rest = inflater.unused_data + pending
                    if rest.strip(b"\0"):
                        if not rest.startswith(b"\x1f\x8b"):
                            raise _GzipDamaged("unexpected data after the end of the gzip stream")
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member follows
                        pending = rest
                    else:
                        pending = b""
                        tail = raw.read(_CHUNK)
                        if tail.strip(b"\0"):
                            raise _GzipDamaged("unexpected data after the end of the gzip stream")
                if out and not self._put(out):
                    return
            if not inflater.eof and not self._stop.is_set():
                raise _GzipDamaged("the gzip stream is truncated")
            self._put(None)
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(exc)

    def _next_chunk(self) -> bool:
        if self._finished:
            return False
        item = self._chunks.get()
        if item is None:
            self._finished = True
            return False
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        self._current, self._offset = item, 0
        return True

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            available = len(self._current) - self._offset
            if available <= 0:
                if not self._next_chunk():
                    break
                continue
            take = min(available, wanted)
            parts.append(self._current[self._offset : self._offset + take])
            self._offset += take
            wanted -= take
        data = b"".join(parts)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        target = position if whence == io.SEEK_SET else self._position + position
        if whence not in {io.SEEK_SET, io.SEEK_CUR} or target < self._position:
            raise io.UnsupportedOperation("a gzip bundle is read forward only")
        while self._position < target:
            if not self.read(min(target - self._position, _CHUNK)):
                break
        return self._position

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with suppress(queue.Empty):
                self._chunks.get(timeout=0.05)
        self._thread.join()

    def __enter__(self) -> _ThreadedGunzip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
