"""Bundles: every format unpacked by our own extractors, single-folder unwrap, sha256, S3 over HTTP (moto
server), Git at a commit, and malicious archives refused with nothing written outside the target."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from agent.errors import BundleError, BundleNotFound, BundleUnavailable, ChecksumMismatch, UnsafeBundle
from agent.fetch import (
    BUNDLE_TYPES,
    BundleType,
    ExtractLimits,
    FetchedBundle,
    detect_bundle_type,
    fetch_bundle,
    unpack_bundle,
)
from contract.gitmessages import git_reason
from contract.wire import GitLocation, LocalLocation, Revision, S3Location
from tests.agent.conftest import Bundle, Sandbox, run_cli, statuses
from tests.gitrepo import ConfigRepo

APPSPEC = """
version: 0.0
os: linux
files:
  - source: app
    destination: /srv/app
hooks:
  AfterInstall:
    - location: scripts/env.sh
"""


def sample(bundle: Bundle) -> Bundle:
    bundle.appspec(APPSPEC)
    bundle.file("app/index.html", "<h1>hi</h1>")
    bundle.file("app/sub/nested.txt", "nested", mode=0o640)
    bundle.script("scripts/env.sh", 'env | grep -E "^(BUNDLE_|LIFECYCLE_EVENT)" | sort > "$OUT"\n')
    os.symlink("index.html", bundle.path / "app" / "link.html")
    return bundle


def tree(root: Path) -> dict[str, str]:
    """Relative path -> what it is (content for files, target for links, '/' for folders)."""
    result = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            result[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            result[name] = "/"
        else:
            result[name] = path.read_text()
    return result


EXPECTED_TREE = {
    "app": "/",
    "app/index.html": "<h1>hi</h1>",
    "app/link.html": "-> index.html",
    "app/sub": "/",
    "app/sub/nested.txt": "nested",
    "appspec.yml": APPSPEC.lstrip(),
    "scripts": "/",
    "scripts/env.sh": '#!/bin/sh\nenv | grep -E "^(BUNDLE_|LIFECYCLE_EVENT)" | sort > "$OUT"\n',
}


# --------------------------------------------------------------------------------------------------
# Formats and unwrapping (reference 1.1, 3.7; 7.5 cases 46-47)


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz", "directory"])
def test_every_format_unpacks_to_the_same_tree(kind: str, make_bundle, tmp_path: Path) -> None:
    bundle = sample(make_bundle())
    path = {
        "zip": lambda: bundle.zip(tmp_path / "b.zip"),
        "tar": lambda: bundle.tar(tmp_path / "b.tar"),
        "tgz": lambda: bundle.tar(tmp_path / "b.tgz", gz=True),
        "directory": lambda: bundle.path,
    }[kind]()
    assert detect_bundle_type(path) == kind
    target = tmp_path / "out"
    unpack_bundle(FetchedBundle(path, kind), target)
    assert tree(target) == EXPECTED_TREE
    assert stat.S_IMODE((target / "app/sub/nested.txt").stat().st_mode) == 0o640
    assert (target / "scripts/env.sh").stat().st_mode & 0o111


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_single_top_level_folder_holding_the_appspec_is_unwrapped(kind: str, make_bundle, tmp_path: Path) -> None:
    bundle = sample(make_bundle())
    path = bundle.zip(tmp_path / "b.zip", prefix="myapp-1.0/") if kind == "zip" else bundle.tar(
        tmp_path / "b.tgz", gz=True, prefix="myapp-1.0/"
    )
    target = tmp_path / "out"
    unpack_bundle(FetchedBundle(path, kind), target)
    assert tree(target) == EXPECTED_TREE


def test_single_folder_without_appspec_is_kept(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("only/readme.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    unpack_bundle(FetchedBundle(archive, "tar"), tmp_path / "out")
    assert tree(tmp_path / "out") == {"only": "/", "only/readme.txt": "x"}


def test_tar_keeps_modes_times_and_owner_as_root(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("run.sh")
        info.size, info.mode, info.mtime = 2, 0o4750, 1_600_000_000
        info.uid, info.gid, info.uname, info.gname = 65534, 65534, "", ""
        tar.addfile(info, io.BytesIO(b"hi"))
    unpack_bundle(FetchedBundle(archive, "tar"), tmp_path / "out")
    result = (tmp_path / "out/run.sh").stat()
    assert int(result.st_mtime) == 1_600_000_000
    if os.geteuid() == 0:
        assert stat.S_IMODE(result.st_mode) == 0o4750
        assert (result.st_uid, result.st_gid) == (65534, 65534)


def test_tar_dot_root_entry_and_hard_links_inside_the_bundle(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    with tarfile.open(archive, "w") as tar:
        root = tarfile.TarInfo("./")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        info = tarfile.TarInfo("./a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        link = tarfile.TarInfo("./b.txt")
        link.type, link.linkname = tarfile.LNKTYPE, "./a.txt"
        tar.addfile(link)
    unpack_bundle(FetchedBundle(archive, "tar"), tmp_path / "out")
    assert tree(tmp_path / "out") == {"a.txt": "a", "b.txt": "a"}
    assert (tmp_path / "out/a.txt").stat().st_ino == (tmp_path / "out/b.txt").stat().st_ino


@pytest.mark.parametrize("data", [b"not an archive at all", b"PK\x03\x04garbage"])
def test_damaged_archives_are_clear_errors(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    path.write_bytes(data)
    with pytest.raises(BundleError, match="is not a readable zip archive"):
        unpack_bundle(FetchedBundle(path, "zip"), tmp_path / "out")
    path.write_bytes(data)
    with pytest.raises(BundleError, match="is not a readable gzip-compressed tar"):
        unpack_bundle(FetchedBundle(path, "tgz"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Malicious bundles: refused, and nothing lands outside the target


def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def cast_type(kind: str) -> BundleType:
    assert kind in BUNDLE_TYPES
    return kind  # type: ignore[return-value]


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _outside_snapshot(tmp_path: Path) -> set[str]:
    return {str(p) for p in tmp_path.rglob("*") if "deploy" not in p.parts}


MALICIOUS_TARS = {
    "zip-slip": ([(_member("../evil.txt"), b"evil")], "'../evil.txt' climbs out of the bundle with '..'"),
    "deep-slip": ([(_member("a/../../evil.txt"), b"evil")], "climbs out of the bundle"),
    "absolute": ([(_member("/tmp/fleetshift-abs-evil.txt"), b"evil")], "has an absolute path"),
    "symlink-absolute-then-write": (
        [(_member("a", tarfile.SYMTYPE, "/etc"), None), (_member("a/passwd"), b"evil")],
        "entry 'a/passwd' is inside 'a', which the bundle also has as a file or link (writing through a link is "
        "refused)",
    ),
    "symlink-escape-then-write": (
        [(_member("link", tarfile.SYMTYPE, "../.."), None), (_member("link/evil.txt"), b"evil")],
        "writing through a link is refused",
    ),
    "symlink-then-folder-under-it": (
        [(_member("a", tarfile.SYMTYPE, "/tmp"), None), (_member("a/sub", tarfile.DIRTYPE), None)],
        "writing through a link is refused",
    ),
    "symlink-then-link-under-it": (
        [(_member("a", tarfile.SYMTYPE, "/etc"), None), (_member("a/cron.d", tarfile.SYMTYPE, "x"), None)],
        "writing through a link is refused",
    ),
    "folder-then-symlink-over-it": (
        [(_member("a/f"), b"x"), (_member("a", tarfile.SYMTYPE, "/etc"), None)],
        "entry 'a' is both a folder and a symlink",
    ),
    "hard-link-outside": (
        [(_member("passwd", tarfile.LNKTYPE, "../../../etc/passwd"), None)],
        "hard link 'passwd' points outside the bundle",
    ),
    "hard-link-absolute": (
        [(_member("passwd", tarfile.LNKTYPE, "/etc/passwd"), None)],
        "hard link 'passwd' points outside the bundle",
    ),
    "hard-link-to-unknown": (
        [(_member("x", tarfile.LNKTYPE, "not-extracted"), None)],
        "does not point at a file extracted earlier",
    ),
    "char-device": ([(_member("null", tarfile.CHRTYPE), None)], "'null' is a device file"),
    "block-device": ([(_member("sda", tarfile.BLKTYPE), None)], "'sda' is a device file"),
    "fifo": ([(_member("pipe", tarfile.FIFOTYPE), None)], "'pipe' is a FIFO"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
@pytest.mark.parametrize("gz", [False, True])
def test_malicious_tar_is_refused(case: str, gz: bool, tmp_path: Path) -> None:
    members, fragment = MALICIOUS_TARS[case]
    source = _tar_with(tmp_path / "raw.tar", *members)
    path = source
    if gz:
        import gzip

        path = tmp_path / "b.tgz"
        path.write_bytes(gzip.compress(source.read_bytes()))
    before = _outside_snapshot(tmp_path)
    target = tmp_path / "deploy" / "deployment-archive"
    with pytest.raises(UnsafeBundle) as caught:
        unpack_bundle(FetchedBundle(path, "tgz" if gz else "tar"), target)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith(f"{'tgz' if gz else 'tar'} bundle {path.name}: ")
    assert _outside_snapshot(tmp_path) == before
    assert not target.exists()
    assert not Path("/tmp/fleetshift-abs-evil.txt").exists()


def _zip_with(path: Path, *entries: tuple[str, bytes, int | None]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


MALICIOUS_ZIPS = {
    "zip-slip": ([("../evil.txt", b"evil", None)], "climbs out of the bundle"),
    "backslash-slip": ([("..\\evil.txt", b"evil", None)], "climbs out of the bundle"),
    "absolute": ([("/tmp/fleetshift-abs-evil.txt", b"evil", None)], "has an absolute path"),
    "symlink-absolute-then-write": (
        [("a", b"/etc", stat.S_IFLNK | 0o777), ("a/passwd", b"evil", None)],
        "entry 'a/passwd' is inside 'a'",
    ),
    "symlink-escape-then-write": (
        [("link", b"..", stat.S_IFLNK | 0o777), ("link/evil.txt", b"evil", None)],
        "writing through a link is refused",
    ),
    "char-device": ([("null", b"", stat.S_IFCHR | 0o666)], "is a device, FIFO or socket"),
    "fifo": ([("pipe", b"", stat.S_IFIFO | 0o666)], "is a device, FIFO or socket"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
def test_malicious_zip_is_refused(case: str, tmp_path: Path) -> None:
    entries, fragment = MALICIOUS_ZIPS[case]
    path = _zip_with(tmp_path / "b.zip", *entries)
    before = _outside_snapshot(tmp_path)
    target = tmp_path / "deploy" / "deployment-archive"
    with pytest.raises(UnsafeBundle) as caught:
        unpack_bundle(FetchedBundle(path, "zip"), target)
    assert str(caught.value).startswith("zip bundle b.zip: ")
    assert fragment in str(caught.value)
    assert _outside_snapshot(tmp_path) == before
    assert not target.exists()


def test_zip_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("zeros.bin", bytes(32 << 20))
    assert path.stat().st_size < 100_000
    target = tmp_path / "deploy" / "deployment-archive"
    with pytest.raises(UnsafeBundle, match="unpacks to more than 8388608 bytes"):
        unpack_bundle(FetchedBundle(path, "zip"), target, ExtractLimits(max_bytes=8 << 20))
    assert not target.exists()


def test_tgz_bomb_is_stopped_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for index in range(4):
            info = tarfile.TarInfo(f"zeros-{index}.bin")
            info.size = 4 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(UnsafeBundle, match="unpacks to more than"):
        unpack_bundle(FetchedBundle(path, "tgz"), tmp_path / "out", ExtractLimits(max_bytes=10 << 20))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar", "directory"])
def test_too_many_entries_is_refused(kind: str, make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    for index in range(30):
        bundle.file(f"f{index}.txt", "x")
    path = {"zip": lambda: bundle.zip(tmp_path / "b.zip"), "tar": lambda: bundle.tar(tmp_path / "b.tar"),
            "directory": lambda: bundle.path}[kind]()
    with pytest.raises(UnsafeBundle, match="20"):
        unpack_bundle(FetchedBundle(path, kind), tmp_path / "out", ExtractLimits(max_entries=20))


LINKS_APPSPEC = """
version: 0.0
os: linux
files:
  - source: app
    destination: /srv/app
  - source: etc
    destination: /srv
"""

#: Links real bundles carry, which the reference agent installs as links: name -> target text.
OUTWARD_LINKS = {
    "app/config.yml": "/etc/myapp/config.yml",  # absolute, usually not there yet: the host provides it
    "app/shared": "../../shared",  # relative, climbing out of the bundle
    "app/dangling": "not-built-yet.txt",  # points nowhere
    "app/logs": "/var/log",  # absolute, to a folder that exists: must not be copied as a folder
    "etc": "/etc",  # a link as a mapping's whole source
}


def links_bundle(bundle: Bundle) -> Bundle:
    bundle.appspec(LINKS_APPSPEC)
    bundle.file("app/index.html", "hi")
    for name, target in OUTWARD_LINKS.items():
        os.symlink(target, bundle.path / name)
    return bundle


def _archive(bundle: Bundle, kind: str, tmp_path: Path) -> Path:
    makers = {
        "zip": lambda: bundle.zip(tmp_path / "b.zip"),
        "tar": lambda: bundle.tar(tmp_path / "b.tar"),
        "tgz": lambda: bundle.tar(tmp_path / "b.tgz", gz=True),
        "directory": lambda: bundle.path,
    }
    return makers[kind]()


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz", "directory"])
def test_links_out_of_the_bundle_unpack_as_links(kind: str, make_bundle, tmp_path: Path) -> None:
    path = _archive(links_bundle(make_bundle()), kind, tmp_path)
    target = tmp_path / "deploy" / "deployment-archive"
    unpack_bundle(FetchedBundle(path, cast_type(kind)), target)
    for name, link in OUTWARD_LINKS.items():
        assert os.readlink(target / name) == link, name


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz", "directory"])
def test_links_out_of_the_bundle_install_as_links(kind: str, sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    """CodeDeploy compatibility: `config.yml -> /etc/myapp/config.yml` and friends deploy, unchanged."""
    path = _archive(links_bundle(make_bundle()), kind, tmp_path)
    outcome = sandbox.deploy(path, bundle_type=kind)
    assert outcome.status == "Succeeded", outcome.message
    app = sandbox.on_host("/srv/app")
    assert (app / "index.html").read_text() == "hi"
    for name, link in OUTWARD_LINKS.items():
        installed = sandbox.on_host("/srv/" + name)
        assert installed.is_symlink(), f"{name} must be installed as a link, not followed"
        assert os.readlink(installed) == link, name
    assert not Path("/etc/myapp").exists(), "nothing is written where a link points"
    cleanup = (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text().splitlines()
    assert str(app / "logs") in cleanup and str(sandbox.on_host("/srv/etc")) in cleanup

    # The next revision removes the links themselves, never what they point at.
    empty = make_bundle("empty")
    empty.appspec("version: 0.0\nos: linux\n")
    assert sandbox.deploy(empty).status == "Succeeded"
    assert not app.exists()
    assert Path("/var/log").is_dir() and Path("/etc").is_dir()


def test_validate_lists_links_out_of_the_bundle_without_complaint(make_bundle, tmp_path: Path) -> None:
    path = _archive(links_bundle(make_bundle()), "tgz", tmp_path)
    result = run_cli("validate", str(path), "--root-dir", str(tmp_path / "root"), "--host-root", str(tmp_path / "h"))
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert "  copy    /srv/app/config.yml  <- app  (symlink to /etc/myapp/config.yml)" in lines
    assert "  copy    /srv/app/logs  <- app  (symlink to /var/log)" in lines
    assert "  copy    /srv/etc  <- etc  (symlink to /etc)" in lines
    assert not [line for line in lines if line.startswith(("error", "warning", "may fail"))]


def test_a_source_path_through_a_link_out_of_the_bundle_is_refused(make_bundle, sandbox: Sandbox) -> None:
    """`source: etc/passwd` with `etc -> /etc` would copy this host's file: reading through the link is refused."""
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: etc/passwd, destination: /srv}\n")
    os.symlink("/etc", bundle.path / "etc")
    outcome = sandbox.deploy(bundle)
    assert statuses(outcome)["DownloadBundle"] == "Failed"
    assert (
        "appspec.yml:4: files: source 'etc/passwd' is reached through a symlink that leads out of the bundle"
    ) in (outcome.message or "")
    assert not sandbox.on_host("/srv").exists()


def test_an_appspec_that_is_a_link_out_of_the_bundle_is_not_read(make_bundle, sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password: hunter2\n")
    bundle = make_bundle()
    os.symlink(secret, bundle.path / "appspec.yml")
    outcome = sandbox.deploy(bundle)
    assert statuses(outcome)["DownloadBundle"] == "Failed"
    assert f"appspec.yml: is a symlink to {secret}, outside the bundle" in (outcome.message or "")
    assert "hunter2" not in (outcome.message or "")


def test_a_script_linking_out_of_the_bundle_is_never_chmodded(make_bundle, sandbox: Sandbox, tmp_path: Path) -> None:
    host_script = tmp_path / "host-tool.sh"
    host_script.write_text("#!/bin/sh\necho ran\n")
    host_script.chmod(0o644)
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: tool.sh\n")
    os.symlink(host_script, bundle.path / "tool.sh")
    outcome = sandbox.deploy(bundle)
    assert statuses(outcome)["AfterInstall"] == "Failed"
    assert f"script tool.sh is a symlink to {host_script}, outside the bundle, which is not executable" in (
        outcome.message or ""
    )
    assert stat.S_IMODE(host_script.stat().st_mode) == 0o644


def test_malicious_bundle_fails_download_and_stops_nothing(sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    first = make_bundle("v1")
    first.appspec("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: stop.sh\n")
    first.script("stop.sh", f"touch {marker}\n")
    assert sandbox.deploy(first).status == "Succeeded"
    evil = _zip_with(tmp_path / "evil.zip", ("appspec.yml", b"version: 0.0\nos: linux\n", None),
                     ("../../evil.txt", b"x", None))
    outcome = sandbox.deploy(evil, bundle_type="zip")
    assert statuses(outcome) == {
        "ApplicationStop": "Skipped",
        "DownloadBundle": "Failed",
        "BeforeInstall": "Skipped",
        "Install": "Skipped",
        "AfterInstall": "Skipped",
        "ApplicationStart": "Skipped",
        "ValidateService": "Skipped",
    }
    assert "climbs out of the bundle with '..'" in (outcome.message or "")
    assert not marker.exists(), "the running application must not be stopped for a bundle that cannot deploy"


# --------------------------------------------------------------------------------------------------
# Checksums and sources


def test_sha256_is_checked_before_unpacking(make_bundle, tmp_path: Path) -> None:
    archive = sample(make_bundle()).zip(tmp_path / "b.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    good = Revision(local=LocalLocation(path=str(archive), bundle_type="zip"), sha256=digest)
    fetched = fetch_bundle(good, tmp_path / "d1", git_cache_dir=tmp_path / "git")
    assert fetched.sha256 == digest
    assert (tmp_path / "d1/bundle.tar").resolve() == archive.resolve()
    bad = Revision(local=LocalLocation(path=str(archive), bundle_type="zip"), sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="nothing was unpacked"):
        fetch_bundle(bad, tmp_path / "d2", git_cache_dir=tmp_path / "git")
    assert not (tmp_path / "d2/deployment-archive").exists()


def test_missing_local_bundle_is_not_found(tmp_path: Path) -> None:
    revision = Revision(local=LocalLocation(path=str(tmp_path / "nope.zip"), bundle_type="zip"))
    with pytest.raises(BundleNotFound, match="does not exist"):
        fetch_bundle(revision, tmp_path / "d", git_cache_dir=tmp_path / "git")


@pytest.fixture
def s3(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    return s3_server.client()


def test_s3_revision_over_http(s3, sandbox: Sandbox, make_bundle, tmp_path: Path, monkeypatch) -> None:
    bucket = f"bundles-{time.monotonic_ns()}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = sample(make_bundle("old"))
    old.file("app/index.html", "old")
    first = s3.put_object(Bucket=bucket, Key="app/bundle.zip", Body=old.zip(tmp_path / "old.zip").read_bytes())
    new = sample(make_bundle("new"))
    s3.put_object(Bucket=bucket, Key="app/bundle.zip", Body=new.zip(tmp_path / "new.zip").read_bytes())
    out = tmp_path / "env.txt"
    monkeypatch.setenv("OUT", str(out))

    pinned = Revision(s3=S3Location(bucket=bucket, key="app/bundle.zip", bundle_type="zip",
                                    version=first["VersionId"], e_tag=first["ETag"]))
    outcome = sandbox.deploy(tmp_path, revision=pinned)
    assert outcome.status == "Succeeded", outcome.message
    assert sandbox.on_host("/srv/app/index.html").read_text() == "old"
    etag = first["ETag"].strip('"')
    assert out.read_text().splitlines() == [
        f"BUNDLE_BUCKET={bucket}",
        f"BUNDLE_ETAG={etag}",
        "BUNDLE_KEY=app/bundle.zip",
        f"BUNDLE_VERSION={first['VersionId']}",
        "LIFECYCLE_EVENT=AfterInstall",
    ]

    stale = Revision(s3=S3Location(bucket=bucket, key="app/bundle.zip", bundle_type="zip", e_tag=first["ETag"]))
    outcome = sandbox.deploy(tmp_path, revision=stale)
    assert outcome.status == "Failed"
    assert f"but the revision pins {etag}" in (outcome.message or "")

    missing = Revision(s3=S3Location(bucket=bucket, key="nope.zip", bundle_type="zip"))
    outcome = sandbox.deploy(tmp_path, revision=missing)
    assert f"s3://{bucket}/nope.zip does not exist" in (outcome.message or "")


def test_git_revision_at_a_commit(sandbox: Sandbox, tmp_path: Path, monkeypatch) -> None:
    repo = ConfigRepo(tmp_path / "repo")
    repo.write("appspec.yml", APPSPEC)
    repo.write("app/index.html", "first")
    repo.write("scripts/env.sh", '#!/bin/sh\nenv | grep -E "^(BUNDLE_|LIFECYCLE_EVENT)" | sort > "$OUT"\n')
    (tmp_path / "repo/scripts/env.sh").chmod(0o755)
    first = repo.commit("first")
    repo.write("app/index.html", "second")
    second = repo.commit("second")
    out = tmp_path / "env.txt"
    monkeypatch.setenv("OUT", str(out))

    for commit, content in ((first, "first"), (second, "second"), (first, "first")):
        revision = Revision(git=GitLocation(repository=str(repo.path), commit=commit))
        outcome = sandbox.deploy(tmp_path, revision=revision)
        assert outcome.status == "Succeeded", outcome.message
        assert sandbox.on_host("/srv/app/index.html").read_text() == content
        assert out.read_text().splitlines() == [f"BUNDLE_COMMIT={commit}", "LIFECYCLE_EVENT=AfterInstall"]

    unknown = Revision(git=GitLocation(repository=str(repo.path), commit="1" * 40))
    outcome = sandbox.deploy(tmp_path, revision=unknown)
    assert outcome.status == "Failed"
    assert outcome.message == (
        f"DownloadBundle failed: commit {'1' * 40} is not in {repo.path} (fetched it by id, then every branch "
        "and tag); was it pushed?"
    )

    nowhere = Revision(git=GitLocation(repository=str(tmp_path / "no-repo"), commit=first))
    outcome = sandbox.deploy(tmp_path, revision=nowhere)
    assert outcome.status == "Failed"
    assert outcome.message == (
        f"DownloadBundle failed: cannot read Git repository {tmp_path / 'no-repo'}: '{tmp_path / 'no-repo'}' does "
        "not appear to be a git repository."
    )


@pytest.fixture
def git_commit(tmp_path: Path) -> tuple[ConfigRepo, str]:
    repo = ConfigRepo(tmp_path / "repo")
    repo.write("appspec.yml", "version: 0.0\nos: linux\n")
    return repo, repo.commit("first")


def _git_failure(url: str, commit: str, tmp_path: Path) -> BundleError:
    revision = Revision(git=GitLocation(repository=url, commit=commit))
    with pytest.raises(BundleError) as caught:
        fetch_bundle(revision, tmp_path / "d", git_cache_dir=tmp_path / "git")
    return caught.value


def test_git_error_for_a_path_that_does_not_exist_keeps_gits_reason(git_commit, tmp_path: Path) -> None:
    _, commit = git_commit
    error = _git_failure(str(tmp_path / "missing"), commit, tmp_path)
    assert isinstance(error, BundleNotFound)
    assert str(error) == (
        f"cannot read Git repository {tmp_path / 'missing'}: '{tmp_path / 'missing'}' does not appear to be a git "
        "repository"
    )


def test_git_error_for_a_file_url_to_a_folder_that_is_not_a_repository(git_commit, tmp_path: Path) -> None:
    _, commit = git_commit
    plain = tmp_path / "plain-folder"
    plain.mkdir()
    (plain / "README").write_text("not a repository")
    error = _git_failure(plain.as_uri(), commit, tmp_path)
    assert isinstance(error, BundleNotFound)
    assert str(error).startswith(f"cannot read Git repository {plain.as_uri()}: ")
    assert "does not appear to be a git repository" in str(error)
    assert "and the repository exists" not in str(error), "git's boilerplate advice is dropped"


def test_git_error_for_a_host_that_does_not_resolve_is_retryable(git_commit, tmp_path: Path) -> None:
    _, commit = git_commit
    error = _git_failure("https://git.invalid/x.git", commit, tmp_path)
    assert isinstance(error, BundleUnavailable)
    assert error.retryable
    assert str(error).startswith("cannot reach Git repository https://git.invalid/x.git: ")
    assert "Could not resolve host: git.invalid" in str(error)


def test_git_error_for_a_commit_that_is_not_in_a_real_repository(git_commit, tmp_path: Path) -> None:
    repo, _ = git_commit
    error = _git_failure(str(repo.path), "2" * 40, tmp_path)
    assert isinstance(error, BundleNotFound)
    assert str(error) == (
        f"commit {'2' * 40} is not in {repo.path} (fetched it by id, then every branch and tag); was it pushed?"
    )


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (
            "\n  stderr: 'fatal: '/x' does not appear to be a git repository\nfatal: Could not read from remote "
            "repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.'",
            "'/x' does not appear to be a git repository",
        ),
        (
            "remote: Invalid username or password.\nfatal: Authentication failed for 'https://h/x.git/'",
            "remote: Invalid username or password.; Authentication failed for 'https://h/x.git/'",
        ),
        ("", "git exited with status 128"),
    ],
)
def test_git_error_reason_keeps_the_lines_that_say_why(stderr: str, expected: str) -> None:
    assert git_reason(stderr, 128) == expected


# The gzip reader and the background writer: edge cases of the fast paths


def _tar_bytes(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_large_and_duplicate_entries_keep_the_archive_order(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    raw = _tar_bytes(("a.bin", b"small first"), ("a.bin", big), ("b.txt", b"one"), ("b.txt", b"two"))
    import gzip

    path = tmp_path / "b.tgz"
    path.write_bytes(gzip.compress(raw))
    unpack_bundle(FetchedBundle(path, "tgz"), tmp_path / "out")
    assert (tmp_path / "out/a.bin").read_bytes() == big
    assert (tmp_path / "out/b.txt").read_bytes() == b"two"
    zip_path = tmp_path / "b.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.bin", big)
        archive.writestr("c.txt", b"c")
    unpack_bundle(FetchedBundle(zip_path, "zip"), tmp_path / "out2")
    assert (tmp_path / "out2/a.bin").read_bytes() == big


@pytest.mark.parametrize("between", ["nothing", "a symlink"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_with_several_writers_a_name_given_twice_ends_as_its_last_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, between: str
) -> None:
    """The small files of a bundle are written by several threads at once (`extract.WRITER_THREADS`): a second
    entry of the same name after the first (which takes longer to inflate or write), with or without a symlink of
    that name in between, must still be the one left, as when one thread wrote them in the archive's order."""
    import agent.fetch.extract as extract

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(extract, "WRITER_THREADS", 4)
    slow = os.urandom(200_000)  # incompressible: inflating it takes a while
    entries: list[tuple[str, bytes | None]] = []
    for index in range(50):
        name = f"d/f{index:03d}.txt"
        entries.append((name, slow))
        if between == "a symlink":
            entries.append((name, None))
        entries.append((name, b"last %d" % index))
    if kind == "zip":
        path = tmp_path / "b.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name": the point of the test
            for name, data in entries:
                if data is None:
                    info = zipfile.ZipInfo(name)
                    info.create_system = 3
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    archive.writestr(info, "elsewhere")
                else:
                    archive.writestr(name, data)
    else:
        path = tmp_path / "b.tar"
        with tarfile.open(path, "w") as tar:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type, info.linkname = tarfile.SYMTYPE, "elsewhere"
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    unpack_bundle(FetchedBundle(path, kind), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out/d").iterdir()} == {
        f"f{index:03d}.txt": b"last %d" % index for index in range(50)}


def test_concatenated_gzip_members_are_one_stream(tmp_path: Path) -> None:
    import gzip

    raw = _tar_bytes(("x.txt", b"x" * 5000), ("y.txt", b"y"))
    path = tmp_path / "b.tgz"
    path.write_bytes(gzip.compress(raw[:3000]) + gzip.compress(raw[3000:]))
    unpack_bundle(FetchedBundle(path, "tgz"), tmp_path / "out")
    assert tree(tmp_path / "out") == {"x.txt": "x" * 5000, "y.txt": "y"}


@pytest.mark.parametrize("damage", ["truncated", "garbage-after", "cut-inside-a-file"])
def test_damaged_tgz_is_a_clear_error(damage: str, tmp_path: Path) -> None:
    import gzip

    raw = _tar_bytes(("x.bin", os.urandom(200_000)))
    data = gzip.compress(raw)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage-after":
        data += b"this is not gzip"
    else:
        data = gzip.compress(raw[:100_000])
    path = tmp_path / "b.tgz"
    path.write_bytes(data)
    with pytest.raises(BundleError) as caught:
        unpack_bundle(FetchedBundle(path, "tgz"), tmp_path / "out")
    assert str(caught.value).startswith("tgz bundle b.tgz")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", ["--upload-pack=touch /tmp/x", "ext::sh -c touch% /tmp/x"])
def test_git_urls_that_would_run_commands_are_refused(url: str, tmp_path: Path) -> None:
    revision = Revision(git=GitLocation(repository=url, commit="1" * 40))
    with pytest.raises(BundleError, match="refusing Git repository"):
        fetch_bundle(revision, tmp_path / "d", git_cache_dir=tmp_path / "git")
