"""Install: planning (reference 1.3, 1.5, 7.2, 7.3), cleanup of the previous revision (3.2, 7.7), and the
all-or-nothing execution that leaves the previous revision in place when anything fails."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.lifecycle.appspec import parse_appspec
from agent.lifecycle.install import (
    InstallPlan,
    MakeDir,
    plan_install,
)
from agent.lifecycle.layout import DeploymentRoot
from agent.lifecycle.transaction import execute_install, recover_interrupted_install
from contract.vocabulary import FileExistsBehavior
from tests.agent.conftest import Bundle, Sandbox, require, statuses
from tests.conftest import require_root, require_tool

DISALLOW, OVERWRITE, RETAIN = FileExistsBehavior.DISALLOW, FileExistsBehavior.OVERWRITE, FileExistsBehavior.RETAIN


def plan(
    bundle: Bundle,
    host: Path,
    appspec: str,
    behavior: FileExistsBehavior = DISALLOW,
    cleanup: list[str] | None = None,
) -> InstallPlan:
    spec = parse_appspec(textwrap.dedent(appspec).lstrip())
    return plan_install(spec, bundle.path, behavior=behavior, previous_cleanup=cleanup or [], host_root=host)


def steps(result: InstallPlan, host: Path) -> list[str]:
    """Steps as `mkdir /dst` and `copy <bundle path> /dst/file`, host paths shown without the host root."""
    shown = []
    for step in result.steps:
        target = "/" + step.target.relative_to(host).as_posix()
        if isinstance(step, MakeDir):
            shown.append(f"mkdir {target}")
        else:
            source = step.source.relative_to(host.parent / "bundles" / "b").as_posix()
            shown.append(f"{'overwrite' if step.overwrite else 'copy'} {source} {target}")
    return shown


@pytest.fixture
def bundle(make_bundle) -> Bundle:
    return make_bundle("b")


@pytest.fixture
def host(tmp_path: Path) -> Path:
    path = tmp_path / "host"
    path.mkdir()
    return path


# 7.2 cases 22-26: the copy algorithm


def test_no_files_means_no_instructions(bundle: Bundle, host: Path) -> None:
    assert plan(bundle, host, "version: 0.0\nos: linux\n").steps == ()


def test_file_sources_copy_into_existing_destination_folders(bundle: Bundle, host: Path) -> None:
    bundle.file("src1")
    bundle.file("src2")
    (host / "dst1").mkdir()
    (host / "dst2").mkdir()
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: src1, destination: /dst1}
          - {source: src2, destination: /dst2}
    """)
    assert steps(result, host) == ["copy src1 /dst1/src1", "copy src2 /dst2/src2"]


def test_missing_ancestors_are_created_top_down(bundle: Bundle, host: Path) -> None:
    bundle.file("src1")
    (host / "dst1").mkdir()
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: src1, destination: /dst1/foo/bar}\n")
    assert steps(result, host) == ["mkdir /dst1/foo", "mkdir /dst1/foo/bar", "copy src1 /dst1/foo/bar/src1"]


def test_directory_source_merges_its_contents_into_the_destination(bundle: Bundle, host: Path) -> None:
    bundle.file("src/bar", "1")
    bundle.file("src/foo/bar", "2")
    bundle.file("src/.hidden", "3")
    (host / "dst1").mkdir()
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: src, destination: /dst1}\n")
    assert steps(result, host) == [
        "copy src/.hidden /dst1/.hidden",
        "copy src/bar /dst1/bar",
        "mkdir /dst1/foo",
        "copy src/foo/bar /dst1/foo/bar",
    ]


def test_source_slash_is_the_whole_bundle_including_the_appspec(bundle: Bundle, host: Path) -> None:
    bundle.appspec("version: 0.0\nos: linux\n")
    bundle.file("a.txt")
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: /, destination: /app}\n")
    assert steps(result, host) == ["mkdir /app", "copy a.txt /app/a.txt", "copy appspec.yml /app/appspec.yml"]


@pytest.mark.parametrize(
    ("behavior", "expected_steps", "deferred", "retained"),
    [
        (DISALLOW, ["copy src/foo /dst1/foo"], 1, 0),
        (OVERWRITE, ["overwrite src/bar /dst1/bar", "copy src/foo /dst1/foo"], 0, 0),
        (RETAIN, ["copy src/foo /dst1/foo"], 0, 1),
    ],
)
def test_file_exists_behavior_decides_about_foreign_files(
    bundle: Bundle, host: Path, behavior, expected_steps, deferred, retained
) -> None:
    bundle.file("src/bar")
    bundle.file("src/foo")
    (host / "dst1").mkdir()
    (host / "dst1/bar").write_text("foreign")
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: src, destination: /dst1}\n", behavior)
    assert steps(result, host) == expected_steps
    assert [str(c.relative_to(host)) for c in result.conflicts] == ["dst1/bar"]
    assert len(result.deferred) == deferred
    assert len(result.retained) == retained
    if deferred:
        assert "/dst1/bar already exists and was not installed by this deployment group" in str(result.deferred[0])


def test_a_dangling_symlink_in_the_way_is_a_conflict_not_written_through(bundle: Bundle, host: Path) -> None:
    bundle.file("a.txt")
    (host / "out").mkdir()
    os.symlink(host / "elsewhere", host / "out" / "a.txt")
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: a.txt, destination: /out}\n")
    assert len(result.deferred) == 1


# 7.3 case 31: plan-time collisions


def test_two_sources_for_one_destination(bundle: Bundle, host: Path) -> None:
    bundle.file("one/x")
    bundle.file("two/x")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: one/x, destination: /d}
          - {source: two/x, destination: /d}
    """)
    assert [str(p) for p in result.errors] == [
        "appspec.yml:5: files: two sources install /d/x: one/x and two/x; remove one of them from the files section"
    ]


def test_file_and_folder_at_the_same_destination(bundle: Bundle, host: Path) -> None:
    bundle.file("x")
    bundle.file("dir/x/inner")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: x, destination: /d}
          - {source: dir, destination: /d}
    """)
    assert [p.message for p in result.errors] == [
        "/d/x must be a folder for source 'dir', but source 'x' installs a file there"
    ]


def test_same_folder_twice_is_created_once(bundle: Bundle, host: Path) -> None:
    bundle.file("a")
    bundle.file("b")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: a, destination: /d}
          - {source: b, destination: /d/}
    """)
    assert steps(result, host) == ["mkdir /d", "copy a /d/a", "copy b /d/b"]


def test_missing_source_is_found_before_anything_is_created(bundle: Bundle, host: Path) -> None:
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: nope, destination: /dest}\n")
    assert [p.message for p in result.errors] == ["source 'nope' does not exist in the bundle"]
    assert result.steps == ()


def test_a_file_where_a_folder_is_needed(bundle: Bundle, host: Path) -> None:
    bundle.file("a")
    (host / "d").write_text("I am a file")
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: a, destination: /d/sub}\n")
    assert [p.message for p in result.errors] == ["/d is a file on the host, but a folder is needed there"]


# 7.7 cases 58-59: execution, the cleanup list, and the next deployment's cleanup


APPSPEC_58 = """
version: 0.0
os: linux
files:
  - source: a.txt
    destination: /out/x
  - source: sub
    destination: /out/s
  - source: link.txt
    destination: /out/x
"""


def test_install_records_created_paths_in_order_and_next_install_cleans_them(
    sandbox: Sandbox, make_bundle
) -> None:
    bundle = make_bundle("v")
    bundle.appspec(APPSPEC_58)
    bundle.file("a.txt", "a")
    bundle.file("sub/b.txt", "b")
    bundle.file("sub/deeper/c.txt", "c")
    os.symlink("a.txt", bundle.path / "link.txt")
    outcome = sandbox.deploy(bundle)
    assert outcome.status == "Succeeded", outcome.message
    out = sandbox.on_host("/out")
    cleanup = (sandbox.root / "deployment-instructions" / "dg-1-cleanup").read_text().splitlines()
    assert [str(Path(p).relative_to(sandbox.host)) for p in cleanup] == [
        "out",
        "out/x",
        "out/x/a.txt",
        "out/s",
        "out/s/b.txt",
        "out/s/deeper",
        "out/s/deeper/c.txt",
        "out/x/link.txt",
    ]
    assert os.readlink(out / "x/link.txt") == "a.txt"
    assert (out / "x/link.txt").read_text() == "a"
    instructions = json.loads((sandbox.root / "deployment-instructions" / "dg-1-install.json").read_text())
    assert [i["type"] for i in instructions["instructions"]] == ["mkdir", "mkdir", "copy", "mkdir", "copy",
                                                                 "mkdir", "copy", "copy"]

    # 7.7 case 59: a stray file keeps its folders alive; everything the group installed goes.
    (out / "s/stray.txt").write_text("mine")
    bundle2 = make_bundle("v2")
    bundle2.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: new.txt, destination: /out/s}\n")
    bundle2.file("new.txt", "new")
    outcome = sandbox.deploy(bundle2)
    assert outcome.status == "Succeeded", outcome.message
    remaining = sorted(str(p.relative_to(sandbox.host)) for p in out.rglob("*"))
    assert remaining == ["out/s", "out/s/new.txt", "out/s/stray.txt"]
    cleanup = (sandbox.root / "deployment-instructions" / "dg-1-cleanup").read_text().splitlines()
    assert cleanup == [str(out / "s/new.txt")]


def test_redeploying_the_same_bundle_never_trips_disallow(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    bundle.file("app/index.html", "v1")
    for _ in range(3):
        assert sandbox.deploy(bundle).status == "Succeeded"
    assert sandbox.on_host("/srv/app/index.html").read_text() == "v1"


# 7.7 case 60, improved: a conflict leaves the previous revision installed


def test_disallow_conflict_fails_before_touching_the_previous_revision(sandbox: Sandbox, make_bundle) -> None:
    v1 = make_bundle("v1")
    v1.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    v1.file("app/index.html", "v1")
    assert sandbox.deploy(v1).status == "Succeeded"
    sandbox.on_host("/srv/other").mkdir()
    sandbox.on_host("/srv/other/conf").write_text("foreign")
    v2 = make_bundle("v2")
    v2.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: app, destination: /srv/app}
          - {source: conf, destination: /srv/other}
    """)
    v2.file("app/index.html", "v2")
    v2.file("conf", "new")
    outcome = sandbox.deploy(v2)
    assert outcome.status == "Failed"
    assert statuses(outcome)["DownloadBundle"] == "Failed"
    assert "/srv/other/conf already exists and was not installed by this deployment group" in (outcome.message or "")
    assert sandbox.on_host("/srv/app/index.html").read_text() == "v1"
    assert sandbox.on_host("/srv/other/conf").read_text() == "foreign"

    # RETAIN keeps the foreign file and does not record it; OVERWRITE replaces it and records it.
    outcome = sandbox.deploy(v2, file_exists_behavior="RETAIN")
    assert outcome.status == "Succeeded", outcome.message
    assert sandbox.on_host("/srv/other/conf").read_text() == "foreign"
    cleanup = (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text().splitlines()
    assert str(sandbox.on_host("/srv/other/conf")) not in cleanup
    outcome = sandbox.deploy(v2, file_exists_behavior="OVERWRITE")
    assert outcome.status == "Succeeded", outcome.message
    assert sandbox.on_host("/srv/other/conf").read_text() == "new"
    cleanup = (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text().splitlines()
    assert str(sandbox.on_host("/srv/other/conf")) in cleanup


def test_appspec_file_exists_behavior_wins_over_the_deployment_option(sandbox: Sandbox, make_bundle) -> None:
    sandbox.on_host("/d").mkdir()
    sandbox.on_host("/d/f").write_text("foreign")
    bundle = make_bundle()
    bundle.appspec(
        "version: 0.0\nos: linux\nfile_exists_behavior: DISALLOW\nfiles:\n  - {source: f, destination: /d}\n"
    )
    bundle.file("f", "new")
    assert sandbox.deploy(bundle, file_exists_behavior="OVERWRITE").status == "Failed"
    assert sandbox.on_host("/d/f").read_text() == "foreign"


def test_before_install_may_clear_the_way_for_disallow(sandbox: Sandbox, make_bundle) -> None:
    """Compatibility: bundles that delete foreign files in BeforeInstall keep working."""
    sandbox.on_host("/d").mkdir()
    sandbox.on_host("/d/f").write_text("foreign")
    bundle = make_bundle()
    bundle.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: f, destination: /d}
        hooks:
          BeforeInstall:
            - location: clear.sh
    """)
    bundle.file("f", "new")
    bundle.script("clear.sh", f"rm -f {sandbox.on_host('/d/f')}\n")
    outcome = sandbox.deploy(bundle)
    assert outcome.status == "Succeeded", outcome.message
    assert sandbox.on_host("/d/f").read_text() == "new"


# No half-installed host


def test_a_path_longer_than_the_file_system_allows_is_found_when_planning(bundle: Bundle, host: Path) -> None:
    """The appspec refuses a destination no host can hold (over 4095 bytes); one that fits alone but not under
    this agent's host root is found when planning, before anything is moved."""
    bundle.file("a")
    destination = "/deep/" + "/".join(["d" * 202] * 20)
    assert len(destination) <= 4095 < len(str(host)) + len(destination)
    result = plan(bundle, host, f"version: 0.0\nos: linux\nfiles:\n  - {{source: a, destination: {destination}}}\n")
    assert result.errors and "is longer than this host's file system allows" in result.errors[0].message
    assert len(result.errors) == 1


def test_failed_install_puts_the_previous_revision_back(sandbox: Sandbox, make_bundle) -> None:
    require_root("the kernel must refuse a write into /sys/kernel even though the plan allows it")
    require(os.path.isdir("/sys/kernel"), "needs sysfs mounted at /sys")
    v1 = make_bundle("v1")
    v1.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    v1.file("app/index.html", "v1")
    v1.file("app/old-only.txt", "old")
    assert sandbox.deploy(v1).status == "Succeeded"
    cleanup_before = (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text()

    # A destination the plan accepts (a folder, through a symlink an admin made) but the kernel refuses to
    # write into: the copy fails half-way through Install, after v1's files were moved aside.
    os.symlink("/sys/kernel", sandbox.on_host("/kernel"))
    v2 = make_bundle("v2")
    v2.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: app, destination: /srv/app}
          - {source: extra.txt, destination: /kernel}
    """)
    v2.file("app/index.html", "v2")
    v2.file("app/new-only.txt", "new")
    v2.file("extra.txt", "x")
    outcome = sandbox.deploy(v2)
    assert statuses(outcome)["Install"] == "Failed", outcome.message
    assert "extra.txt" in (outcome.message or "")
    assert "the previous revision's files were put back" in (outcome.message or "")
    app = sandbox.on_host("/srv/app")
    assert sorted(p.name for p in app.iterdir()) == ["index.html", "old-only.txt"]
    assert (app / "index.html").read_text() == "v1"
    assert (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text() == cleanup_before
    assert not (sandbox.root / "deployment-instructions/dg-1-install-journal").exists()
    assert not list(sandbox.root.glob("dg-1/*/install-backup"))

    # And the next good deployment still cleans up v1 normally.
    v3 = make_bundle("v3")
    v3.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    v3.file("app/index.html", "v3")
    assert sandbox.deploy(v3).status == "Succeeded"
    assert sorted(p.name for p in app.iterdir()) == ["index.html"]


CRASHING_INSTALL = """
import os, sys
from pathlib import Path
import agent.lifecycle.transaction as install
from agent.lifecycle.appspec import load_appspec
from agent.lifecycle.install import plan_install
from agent.lifecycle.layout import DeploymentRoot
from contract.models import FileExistsBehavior

root, host, archive = (Path(p) for p in sys.argv[1:4])
layout = DeploymentRoot(root)
spec = load_appspec(archive)
plan = plan_install(spec, archive, behavior=FileExistsBehavior.DISALLOW,
                            previous_cleanup=layout.read_cleanup("dg-1"), host_root=host)
copies = 0
real_copy = install._copy
def copy_then_die(step):
    global copies
    copies += 1
    if copies == 3:
        os._exit(9)  # the agent dies mid-Install: no cleanup, no undo
    real_copy(step)
install._copy = copy_then_die
install.execute_install(plan, layout=layout, group_id="dg-1", deployment=layout.deployment("dg-1", "d-CRASH"))
"""


@pytest.mark.slow
def test_install_cut_off_by_a_crash_is_undone_on_the_next_run(sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    v1 = make_bundle("v1")
    v1.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    for name in ("a", "b", "c"):
        v1.file(f"app/{name}", f"v1-{name}")
    assert sandbox.deploy(v1).status == "Succeeded"
    v2 = make_bundle("v2")
    v2.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    for name in ("a", "b", "c", "d"):
        v2.file(f"app/{name}", f"v2-{name}")
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_INSTALL)
    crashed = subprocess.run(
        [sys.executable, str(script), str(sandbox.root), str(sandbox.host), str(v2.path)],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        check=False,
    )
    assert crashed.returncode == 9, crashed.stderr.decode()
    app = sandbox.on_host("/srv/app")
    assert sorted(p.name for p in app.iterdir()) == ["a", "b"]  # half of v2, none of v1: the crash window
    assert sandbox.runner.recover_interrupted() == ["dg-1"]
    assert {p.name: p.read_text() for p in app.iterdir()} == {"a": "v1-a", "b": "v1-b", "c": "v1-c"}
    assert not recover_interrupted_install(DeploymentRoot(sandbox.root), "dg-1")
    assert sandbox.deploy(v2).status == "Succeeded"
    assert sorted(p.name for p in app.iterdir()) == ["a", "b", "c", "d"]


# Permissions (reference 1.5, 7.2 case 27, 7.3 case 31)


PERMISSIONS = """
version: 0.0
os: linux
files:
  - {source: app, destination: /srv/app}
permissions:
  - object: /srv/app
    pattern: "*.sh"
    except: ["skip*"]
    mode: 4750
    owner: nobody
    group: nogroup
    type: [file]
  - object: /srv/app
    mode: 750
    type: [directory]
  - object: /srv/app/conf
    pattern: "**"
    mode: 640
    type: [file]
"""


def test_permissions_apply_to_this_deployments_paths_only(sandbox: Sandbox, make_bundle) -> None:
    require_root("changing owners to nobody:nogroup")
    bundle = make_bundle()
    bundle.appspec(PERMISSIONS)
    bundle.file("app/run.sh", mode=0o644)
    bundle.file("app/skip.sh", mode=0o644)
    bundle.file("app/readme", mode=0o644)
    bundle.file("app/conf/a.conf", mode=0o644)
    bundle.file("app/conf/deep/b.conf", mode=0o644)
    os.symlink("readme", bundle.path / "app/link.sh")
    sandbox.on_host("/srv/app").mkdir(parents=True)
    outcome = sandbox.deploy(bundle)
    assert outcome.status == "Succeeded", outcome.message
    app = sandbox.on_host("/srv/app")

    def mode(name: str) -> int:
        return stat.S_IMODE((app / name).lstat().st_mode)

    run = (app / "run.sh").stat()
    assert stat.S_IMODE(run.st_mode) == 0o4750, "setuid must survive the owner change"
    assert pwd.getpwuid(run.st_uid).pw_name == "nobody"
    assert grp.getgrgid(run.st_gid).gr_name == "nogroup"
    assert mode("skip.sh") == 0o644
    assert mode("readme") == 0o644
    assert (app / "link.sh").lstat().st_uid == 0 or pwd.getpwuid((app / "link.sh").lstat().st_uid).pw_name == "nobody"
    assert mode("readme") == 0o644, "a link's target must not be chmod'ed through the link"
    assert mode("conf") == 0o750 and mode("conf/deep") == 0o750
    assert mode("conf/a.conf") == 0o640 and mode("conf/deep/b.conf") == 0o640
    assert mode(".") == 0o755, "the object folder itself is never matched, and it existed before"


def test_permissions_set_twice_for_one_path_is_an_error(bundle: Bundle, host: Path) -> None:
    bundle.file("app/a")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: app, destination: /srv}
        permissions:
          - {object: /srv, mode: 644}
          - {object: /srv, pattern: "a", mode: 600}
    """)
    assert [p.message for p in result.errors] == [
        "permissions for /srv/a are set more than once (entries 0 and 1); make the patterns exclusive"
    ]


def test_file_object_needs_the_default_pattern(bundle: Bundle, host: Path) -> None:
    bundle.file("a")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: a, destination: /d}
        permissions:
          - {object: /d/a, pattern: glob, mode: 644}
          - {object: /d/a, except: [glob], mode: 644}
    """)
    assert [p.message for p in result.errors] == [
        "object /d/a is a file, so pattern must be '**' (found 'glob')",
        "object /d/a is a file; `except` applies to folders only",
    ]


def test_unknown_owner_is_deferred_and_unmatched_object_warns(bundle: Bundle, host: Path) -> None:
    bundle.file("a")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: a, destination: /d}
        permissions:
          - {object: /d, owner: no-such-user-here, group: no-such-group-here}
          - {object: /elsewhere, mode: 644}
    """)
    assert [p.message for p in result.deferred] == [
        "user 'no-such-user-here' does not exist on this host",
        "group 'no-such-group-here' does not exist on this host",
    ]
    assert [p.message for p in result.warnings] == [
        "object /elsewhere is neither installed by this revision nor an existing folder, so this entry changes nothing"
    ]


ACL_APPSPEC = """
version: 0.0
os: linux
files:
  - {source: app, destination: /srv/app}
permissions:
  - object: /srv/app
    acls: ["u:nobody:rw"]
    mode: 640
    type: [file]
  - object: /srv/app
    acls: ["d:g:nogroup:rx", "g:nogroup:7"]
    type: [directory]
"""


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH set to one empty folder: the host has none of the optional tools (setfacl, semanage,
    restorecon), whatever this machine has installed. Tests may put stand-ins in it."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_acls_without_setfacl_are_one_clear_error_naming_every_entry(
    bundle: Bundle, host: Path, bare_path: Path
) -> None:
    bundle.file("app/a")
    bundle.file("app/sub/b")
    result = plan(bundle, host, ACL_APPSPEC)
    assert [str(p) for p in result.errors] == [
        "appspec.yml:6: permissions: ACLs need the setfacl command, which is not installed on this host (install "
        "the acl package); needed by permissions[0] (appspec.yml:6), permissions[1] (appspec.yml:10)"
    ]


def test_one_acl_entry_without_setfacl_names_its_field(bundle: Bundle, host: Path, bare_path: Path) -> None:
    bundle.file("app/a")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: app, destination: /srv/app}
        permissions:
          - {object: /srv/app, mode: 750, type: [directory]}
          - {object: /srv/app, pattern: a, acls: ["u:nobody:r"], type: [file]}
    """)
    assert [str(p) for p in result.errors] == [
        "appspec.yml:7: permissions[1].acls: ACLs need the setfacl command, which is not installed on this host "
        "(install the acl package); needed by permissions[1] (appspec.yml:7)"
    ]


def test_acls_are_applied_with_setfacl(sandbox: Sandbox, make_bundle) -> None:
    require_tool("setfacl", "acl")
    require_tool("getfacl", "acl")
    bundle = make_bundle()
    bundle.appspec(ACL_APPSPEC)
    bundle.file("app/a")
    bundle.file("app/sub/b")
    outcome = sandbox.deploy(bundle)
    assert outcome.status == "Succeeded", outcome.message

    def acl(path: str) -> list[str]:
        listing = subprocess.run(
            ["getfacl", "-p", "-c", str(sandbox.on_host(path))], capture_output=True, text=True, check=True
        )
        return [line for line in listing.stdout.splitlines() if line]

    assert acl("/srv/app/a") == ["user::rw-", "user:nobody:rw-", "group::r--", "mask::rw-", "other::---"]
    assert acl("/srv/app/sub") == [
        "user::rwx", "group::r-x", "group:nogroup:rwx", "mask::rwx", "other::r-x",
        "default:user::rwx", "default:group::r-x", "default:group:nogroup:r-x", "default:mask::r-x",
        "default:other::r-x",
    ]


SELINUX_APPSPEC = """
version: 0.0
os: linux
files:
  - {source: app, destination: /srv/app}
permissions:
  - object: /srv/app
    context: {type: httpd_sys_content_t}
    type: [file]
  - object: /srv/app
    context: {type: httpd_sys_content_t}
    type: [directory]
"""


def test_selinux_context_without_tools_is_a_clear_error(bundle: Bundle, host: Path, bare_path: Path) -> None:
    bundle.file("app/a")
    bundle.file("app/sub/b")
    result = plan(bundle, host, SELINUX_APPSPEC)
    needed = "needed by permissions[0] (appspec.yml:6), permissions[1] (appspec.yml:9)"
    assert [str(p) for p in result.errors] == [
        "appspec.yml:6: permissions: SELinux contexts need the semanage command, which is not installed on this "
        f"host (install the policycoreutils-python-utils package); {needed}",
        "appspec.yml:6: permissions: SELinux contexts need the restorecon command, which is not installed on this "
        f"host (install the policycoreutils package); {needed}",
    ]


def test_selinux_context_with_only_one_of_the_tools_names_the_missing_one(
    bundle: Bundle, host: Path, bare_path: Path
) -> None:
    stand_in = bare_path / "semanage"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    bundle.file("app/a")
    bundle.file("app/sub/b")
    result = plan(bundle, host, SELINUX_APPSPEC)
    assert [p.message for p in result.errors] == [
        "SELinux contexts need the restorecon command, which is not installed on this host (install the "
        "policycoreutils package); needed by permissions[0] (appspec.yml:6), permissions[1] (appspec.yml:9)"
    ]


def test_a_bundle_needing_a_missing_tool_is_refused_before_anything_runs(
    sandbox: Sandbox, make_bundle, bare_path: Path, tmp_path: Path
) -> None:
    """The whole deployment, not only the plan: DownloadBundle fails, no hook runs, nothing is installed."""
    marker = tmp_path / "ran"
    bundle = make_bundle()
    bundle.appspec(ACL_APPSPEC + "hooks:\n  BeforeInstall:\n    - location: before.sh\n")
    bundle.file("app/a")
    (bundle.path / "before.sh").write_text(f"#!/bin/sh\necho ran > {marker}\n")
    (bundle.path / "before.sh").chmod(0o755)
    outcome = sandbox.deploy(bundle)
    assert statuses(outcome)["DownloadBundle"] == "Failed"
    assert (outcome.message or "").count("setfacl") == 1, outcome.message
    assert not marker.exists()
    assert not sandbox.on_host("/srv/app").exists()


def test_execute_refuses_a_plan_with_problems(bundle: Bundle, host: Path, tmp_path: Path) -> None:
    result = plan(bundle, host, "version: 0.0\nos: linux\nfiles:\n  - {source: nope, destination: /dest}\n")
    layout = DeploymentRoot(tmp_path / "root")
    layout.ensure()
    from agent.errors import InstallError

    with pytest.raises(InstallError, match="source 'nope' does not exist"):
        execute_install(result, layout=layout, group_id="g", deployment=layout.deployment("g", "d"))
    assert not (host / "dest").exists()


def test_permission_targets_follow_the_reference_sequence(bundle: Bundle, host: Path) -> None:
    """Reference 7.2 case 27: copies and mkdirs first, then permissions in entry order."""
    bundle.file("src1")
    (bundle.path / "src2").mkdir()
    bundle.file("src3/file1")
    bundle.file("src3/file2")
    bundle.file("src3/dir1/file1")
    result = plan(bundle, host, """
        version: 0.0
        os: linux
        files:
          - {source: src1, destination: /dst1}
          - {source: src2, destination: /dst2}
          - {source: src3, destination: /dst3}
        permissions:
          - {object: /dst1/src1, type: [file], mode: 600}
          - {object: /, pattern: "dst*", type: [directory], mode: 700}
          - {object: /dst3/, pattern: "file*", except: ["*2"], mode: 640}
    """)
    assert not result.errors
    assert ["/" + p.target.relative_to(host).as_posix() for p in result.permissions] == [
        "/dst1/src1", "/dst1", "/dst2", "/dst3", "/dst3/file1"
    ]


# Symlinks: installed as links, never written through, put back by a rollback


def test_an_existing_symlink_at_a_destination_is_replaced_not_written_through(
    sandbox: Sandbox, make_bundle, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    sandbox.on_host("/srv/app").mkdir(parents=True)
    os.symlink(victim, sandbox.on_host("/srv/app/index.html"))
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    bundle.file("app/index.html", "new")
    refused = sandbox.deploy(bundle)
    assert refused.status == "Failed"
    assert "/srv/app/index.html already exists and was not installed by this deployment group" in (
        refused.message or ""
    )
    assert sandbox.deploy(bundle, file_exists_behavior="OVERWRITE").status == "Succeeded"
    installed = sandbox.on_host("/srv/app/index.html")
    assert not installed.is_symlink() and installed.read_text() == "new"
    assert victim.read_text() == "precious"


def test_a_failed_install_puts_the_previous_links_back(
    sandbox: Sandbox, make_bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = make_bundle("v1")
    v1.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    v1.file("app/a.txt", "v1")
    os.symlink("/etc/myapp/config.yml", v1.path / "app/config.yml")
    os.symlink("missing-v1", v1.path / "app/dangling")
    os.symlink("a.txt", v1.path / "app/inner")
    assert sandbox.deploy(v1).status == "Succeeded"
    app = sandbox.on_host("/srv/app")
    before = {p.name: os.readlink(p) if p.is_symlink() else p.read_text() for p in app.iterdir()}
    cleanup_before = (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text()

    v2 = make_bundle("v2")
    v2.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n")
    v2.file("app/a.txt", "v2")
    os.symlink("/etc/myapp/v2.yml", v2.path / "app/config.yml")
    os.symlink("missing-v2", v2.path / "app/dangling")
    v2.file("app/z-last.txt", "v2")

    import agent.lifecycle.transaction as install

    real_copy = install._copy

    def copy_until_the_disk_fails(step: install.Copy) -> None:
        if step.target.name == "z-last.txt":
            raise OSError(28, "No space left on device", str(step.target))
        real_copy(step)

    monkeypatch.setattr(install, "_copy", copy_until_the_disk_fails)
    outcome = sandbox.deploy(v2)
    assert statuses(outcome)["Install"] == "Failed", outcome.message
    assert "No space left on device" in (outcome.message or "")
    assert "the previous revision's files were put back" in (outcome.message or "")
    after = {p.name: os.readlink(p) if p.is_symlink() else p.read_text() for p in app.iterdir()}
    assert after == before == {
        "a.txt": "v1", "config.yml": "/etc/myapp/config.yml", "dangling": "missing-v1", "inner": "a.txt"
    }
    assert all((app / name).is_symlink() for name in ("config.yml", "dangling", "inner"))
    assert (sandbox.root / "deployment-instructions/dg-1-cleanup").read_text() == cleanup_before
