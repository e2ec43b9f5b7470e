"""`deploy-agent local` and `deploy-agent validate`: codedeploy-local's options and event rules, exit codes,
and messages a person can act on (observed sections 3 and 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.cli.local import parse_events
from agent.errors import UsageError
from tests.agent.conftest import Bundle, run_cli

APP = """
version: 0.0
os: linux
files:
  - source: app
    destination: /srv/app
hooks:
  BeforeInstall:
    - location: scripts/hook.sh
  ValidateService:
    - location: scripts/hook.sh
"""


def app_bundle(bundle: Bundle, trace: Path) -> Bundle:
    bundle.appspec(APP)
    bundle.file("app/index.html", "hello")
    bundle.script("scripts/hook.sh", f'echo "$LIFECYCLE_EVENT $APPLICATION_NAME $DEPLOYMENT_GROUP_NAME '
                  f'$DEPLOYMENT_GROUP_ID $DEPLOYMENT_ID" >> {trace}\necho "hook $LIFECYCLE_EVENT ran"\n')
    return bundle


def paths(tmp_path: Path) -> list[str]:
    return ["--root-dir", str(tmp_path / "root"), "--host-root", str(tmp_path / "host")]


# Event lists (observed section 3; reference 7.6 cases 54-55)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, list(__import__("contract.models", fromlist=["LIFECYCLE_EVENTS"]).LIFECYCLE_EVENTS)),
        ("ApplicationStart,BeforeInstall", ["DownloadBundle", "Install", "ApplicationStart", "BeforeInstall"]),
        ("DownloadBundle,ApplicationStart", ["DownloadBundle", "Install", "ApplicationStart"]),
        ("BeforeInstall,Install", ["DownloadBundle", "BeforeInstall", "Install"]),
        ("ValidateService,ValidateService", ["DownloadBundle", "Install", "ValidateService", "ValidateService"]),
        ("ApplicationStop", ["DownloadBundle", "Install", "ApplicationStop"]),
        ("Stop,Start,HealthCheck", ["DownloadBundle", "Install", "Stop", "Start", "HealthCheck"]),
    ],
)
def test_events_follow_codedeploy_local_rules(given: str | None, expected: list[str]) -> None:
    assert parse_events(given) == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("AfterInstall,DownloadBundle", "only BeforeBlockTraffic, AfterBlockTraffic, ApplicationStop may come before "
         "DownloadBundle"),
        ("Install,DownloadBundle", "may come before DownloadBundle"),
        ("ApplicationStart,Install", "only BeforeBlockTraffic, AfterBlockTraffic, ApplicationStop, DownloadBundle, "
         "BeforeInstall may come before Install"),
        (",", "needs at least one event"),
    ],
)
def test_bad_event_orders_are_refused(given: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_events(given)


# local


def test_local_deploys_a_directory_bundle(make_bundle, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    bundle = app_bundle(make_bundle(), trace)
    result = run_cli("local", "--bundle-location", str(bundle.path), *paths(tmp_path))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"Deploying {bundle.path} as d-")
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["BeforeBlockTraffic", "Succeeded"], ["AfterBlockTraffic", "Succeeded"], ["ApplicationStop", "Succeeded"],
        ["DownloadBundle", "Succeeded"], ["BeforeInstall", "Succeeded"], ["Install", "Succeeded"],
        ["AfterInstall", "Succeeded"], ["ApplicationStart", "Succeeded"], ["ValidateService", "Succeeded"],
        ["BeforeAllowTraffic", "Succeeded"], ["AfterAllowTraffic", "Succeeded"],
    ]
    assert lines[-1].startswith("Local deployment succeeded. Log: ")
    assert (tmp_path / "host/srv/app/index.html").read_text() == "hello"
    event, application, group_name, group_id, deployment_id = trace.read_text().splitlines()[0].split()
    assert (event, application, group_name, group_id) == (
        "BeforeInstall", str(bundle.path), "LocalFleet", "default-local-deployment-group"
    )
    assert deployment_id.startswith("d-") and deployment_id.endswith("-local") and len(deployment_id) == 17


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_local_deploys_archives_and_detects_their_type(kind: str, make_bundle, tmp_path: Path) -> None:
    bundle = app_bundle(make_bundle(), tmp_path / "trace")
    archive = {"zip": lambda: bundle.zip(tmp_path / "b.zip"), "tar": lambda: bundle.tar(tmp_path / "b.tar"),
               "tgz": lambda: bundle.tar(tmp_path / "b.tgz", gz=True)}[kind]()
    result = run_cli("local", "-l", str(archive), "--application-name", "shop", "--deployment-group-name", "web",
                     "--deployment-group", "dg-web", *paths(tmp_path))
    assert result.code == 0, result.err
    assert "BeforeInstall shop web dg-web d-" in (tmp_path / "trace").read_text()
    bundle_file = next((tmp_path / "root/dg-web").iterdir()) / "bundle.tar"
    assert bundle_file.is_symlink() and bundle_file.resolve() == archive.resolve()


def test_local_failure_explains_itself_in_one_paragraph(make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  ApplicationStart:\n    - location: scripts/start.sh\n")
    bundle.script("scripts/start.sh", "echo starting\necho 'port 8080 already in use' >&2\nexit 7\n")
    result = run_cli("local", "-l", str(bundle.path), *paths(tmp_path))
    assert result.code == 1
    assert "  ApplicationStart    Failed" in result.out
    assert "ScriptFailed: scripts/start.sh exited with code 7" in result.out
    (paragraph,) = result.err.splitlines()
    assert paragraph.startswith("Local deployment failed. ApplicationStart failed: scripts/start.sh exited with "
                                "code 7. Last output: ")
    assert "[stdout]starting" in paragraph and "[stderr]port 8080 already in use" in paragraph
    log_path = paragraph.rsplit("Full log: ", 1)[1]
    assert Path(log_path).is_file()
    assert "[stderr]port 8080 already in use" in Path(log_path).read_text()


def test_local_file_exists_behavior_option(make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: a.txt, destination: /d}\n")
    bundle.file("a.txt", "new")
    (tmp_path / "host/d").mkdir(parents=True)
    (tmp_path / "host/d/a.txt").write_text("old")
    refused = run_cli("local", "-l", str(bundle.path), *paths(tmp_path))
    assert refused.code == 1
    assert "/d/a.txt already exists and was not installed by this deployment group" in refused.err
    kept = run_cli("local", "-l", str(bundle.path), "--file-exists-behavior", "retain", *paths(tmp_path))
    assert kept.code == 0 and (tmp_path / "host/d/a.txt").read_text() == "old"
    replaced = run_cli("local", "-l", str(bundle.path), "--file-exists-behavior", "OVERWRITE", *paths(tmp_path))
    assert replaced.code == 0 and (tmp_path / "host/d/a.txt").read_text() == "new"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-l", "{missing}"], "does not exist"),
        (["-l", "{dir}", "--type", "zip"], "is a folder, but --type is zip"),
        (["-l", "{file}", "--type", "directory"], "is a file, but --type is directory"),
        (["-l", "{dir}", "--type", "tgzz"], "--type 'tgzz' is not one of zip, tar, tgz, directory"),
        (["-l", "http://example.com/x.zip"], "only local paths and s3:// locations are supported"),
        (["-l", "s3://ab/app.zip"], "s3://ab/app.zip: Expected `str` of length >= 3 - at `$.s3.bucket`"),
        (["-l", "s3://bundles/", "--type", "zip"], "s3://bundles/: Expected `str` of length >= 1 - at `$.s3.key`"),
        (["-l", "{dir}", "--file-exists-behavior", "BOGUS"], "'BOGUS' is not DISALLOW, OVERWRITE or RETAIN"),
        (["-l", "{dir}", "--events", "AfterInstall,DownloadBundle"], "may come before DownloadBundle"),
        (["-l", "{dir}", "--deployment-group", "../x"], "cannot be used as a folder name"),
    ],
)
def test_local_usage_errors_exit_2_with_a_message(args: list[str], fragment: str, make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\n")
    file = bundle.file("some-file.zip", "x")
    values = {"missing": str(tmp_path / "nope"), "dir": str(bundle.path), "file": str(file)}
    result = run_cli("local", *[a.format(**values) for a in args], *paths(tmp_path))
    assert result.code == 2
    assert result.err.startswith("deploy-agent local: ")
    assert fragment in result.err
    assert not (tmp_path / "host/srv").exists()


def test_local_without_an_appspec(make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.file("readme.txt")
    result = run_cli("local", "-l", str(bundle.path), *paths(tmp_path))
    assert result.code == 1
    assert "cannot be deployed: no appspec.yml or appspec.yaml at the top of the revision" in result.err


# validate


def test_validate_a_bundle_shows_hooks_and_the_install_plan(make_bundle, tmp_path: Path) -> None:
    bundle = app_bundle(make_bundle(), tmp_path / "trace")
    result = run_cli("validate", str(bundle.path), *paths(tmp_path))
    assert result.code == 0, result.out
    assert result.out.splitlines() == [
        f"{bundle.path}: appspec.yml version 0.0, os linux",
        "Hooks, in the order they run:",
        "  BeforeInstall       scripts/hook.sh (3600 s)",
        "  ValidateService     scripts/hook.sh (3600 s)",
        "Install plan (file_exists_behavior DISALLOW):",
        "  mkdir   /srv/",
        "  mkdir   /srv/app/",
        "  copy    /srv/app/index.html  <- app",
        "valid",
    ]
    assert not (tmp_path / "host/srv").exists(), "validate changes nothing"
    assert not (tmp_path / "trace").exists()


def test_validate_reports_every_problem_and_exits_1(make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: nope, destination: /srv}
        permissions:
          - {object: /srv, mode: 0644}
        hooks:
          BeforeInstal:
            - location: b.sh
    """)
    result = run_cli("validate", str(bundle.path), *paths(tmp_path))
    assert result.code == 1
    out = result.out.splitlines()
    assert [line for line in out if line.startswith(("warning:", "error:", "invalid"))] == [
        "warning: appspec.yml:6: permissions[0].mode: `mode: 0644` is an octal number in YAML 1.1, read as 420, "
        "so the mode set is 420 (as under CodeDeploy); write `mode: 644` or `mode: \"0644\"` if you meant 0644",
        "warning: appspec.yml:6: permissions[0]: object /srv is neither installed by this revision nor an existing "
        "folder, so this entry changes nothing",
        "error: appspec.yml:8: hooks.BeforeInstal: BeforeInstal is not a lifecycle event, so it would never run; "
        "did you mean BeforeInstall?",
        "error: appspec.yml:4: files: source 'nope' does not exist in the bundle",
        "invalid: 2 problem(s)",
    ]


def test_local_names_the_line_of_a_misspelled_hook(make_bundle, tmp_path: Path) -> None:
    """A typo in a hook name is refused before anything runs, pointing at the line to fix."""
    bundle = make_bundle()
    bundle.appspec("""
        version: 0.0
        os: linux
        hooks:
          BeforeInstall:
            - location: ok.sh
          AfterInstal:
            - location: ok.sh
    """)
    bundle.script("ok.sh", f"touch {tmp_path / 'ran'}\n")
    result = run_cli("local", "-l", str(bundle.path), *paths(tmp_path))
    assert result.code == 1
    assert (
        "appspec.yml:6: hooks.AfterInstal: AfterInstal is not a lifecycle event, so it would never run; "
        "did you mean AfterInstall?"
    ) in result.err
    assert not (tmp_path / "ran").exists(), "a bundle with a misspelled hook must not start running"


def test_validate_shows_conflicts_under_each_behavior(make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: a.txt, destination: /d}\n")
    bundle.file("a.txt")
    (tmp_path / "host/d").mkdir(parents=True)
    (tmp_path / "host/d/a.txt").write_text("foreign")
    result = run_cli("validate", str(bundle.path), *paths(tmp_path))
    assert result.code == 1
    assert "Files already on this host at 1 destination(s), not installed by this deployment group:" in result.out
    assert "  /d/a.txt" in result.out
    assert "DISALLOW: the deployment fails   OVERWRITE: they are replaced" in result.out
    ok = run_cli("validate", str(bundle.path), "--file-exists-behavior", "OVERWRITE", "--format", "json",
                 *paths(tmp_path))
    assert ok.code == 0
    document = json.loads(ok.out)
    assert document["valid"] is True
    assert document["fileExistsBehavior"] == "OVERWRITE"
    assert document["conflicts"] == ["/d/a.txt"]
    assert document["install"] == ["replace /d/a.txt  <- a.txt"]


def test_validate_treats_a_conflict_a_hook_may_clear_as_may_fail(make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    bundle.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: a.txt, destination: /d}
        hooks:
          BeforeInstall:
            - location: clean.sh
    """)
    bundle.file("a.txt")
    bundle.script("clean.sh", "true\n")
    (tmp_path / "host/d").mkdir(parents=True)
    (tmp_path / "host/d/a.txt").write_text("foreign")
    result = run_cli("validate", str(bundle.path), *paths(tmp_path))
    assert result.code == 0
    assert "may fail: appspec.yml:4: files: /d/a.txt already exists" in result.out
    assert "(a script that runs earlier may fix this)" in result.out


def test_validate_an_appspec_file_alone(tmp_path: Path) -> None:
    appspec = tmp_path / "appspec.yml"
    appspec.write_text(APP)
    result = run_cli("validate", str(appspec))
    assert result.code == 0
    assert "Checked the appspec only" in result.out
    appspec.write_text("version: '0.0'\nos: linux\n")
    bad = run_cli("validate", str(appspec), "--format", "json")
    assert bad.code == 1
    assert json.loads(bad.out)["errors"] == [
        {"where": "appspec.yml:1", "field": "version",
         "message": "must be the number 0.0, not the quoted text '0.0': remove the quotes"}
    ]


def test_validate_a_malicious_archive(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("appspec.yml", "version: 0.0\nos: linux\n")
        zf.writestr("../evil.txt", "x")
    result = run_cli("validate", str(archive), *paths(tmp_path))
    assert result.code == 1
    assert "climbs out of the bundle with '..'" in result.out
    assert not (tmp_path / "evil.txt").exists()


def test_validate_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope"))
    assert result.code == 2
    assert "does not exist" in result.err


def test_local_deploys_from_s3(s3_server, make_bundle, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    client = s3_server.client()
    client.create_bucket(Bucket="cli-bundles")
    bundle = app_bundle(make_bundle(), tmp_path / "trace")
    client.put_object(Bucket="cli-bundles", Key="app.tgz", Body=bundle.tar(tmp_path / "b.tgz", gz=True).read_bytes())
    result = run_cli("local", "-l", "s3://cli-bundles/app.tgz", *paths(tmp_path))
    assert result.code == 0, result.err
    assert (tmp_path / "host/srv/app/index.html").read_text() == "hello"
    missing_type = run_cli("local", "-l", "s3://cli-bundles/app", *paths(tmp_path))
    assert missing_type.code == 2
    assert "pass --type zip, tar or tgz for s3://cli-bundles/app" in missing_type.err


HOSTILE_SEEDS = Path(__file__).parents[1] / "fuzz" / "corpus" / "appspecs"


@pytest.mark.parametrize("seed", ["timeout-inf", "long-names", "control-characters", "timestamp-groupdict",
                                  "alias-bomb", "wrong-types"])
def test_hostile_appspecs_fail_located_in_local_and_validate(make_bundle, tmp_path: Path, seed: str) -> None:
    bundle = make_bundle()
    bundle.appspec((HOSTILE_SEEDS / f"{seed}.yml").read_text())
    bundle.script("scripts/a.sh", "exit 0\n")
    checked = run_cli("validate", str(bundle.path), *paths(tmp_path))
    assert checked.code == 1, checked
    assert re.search(r"^error: appspec\.yml:\d+", checked.out, re.M), checked.out
    assert "\x1b" not in checked.out, "control characters are escaped in the report"
    # `local` runs the runner's early check: the deployment fails before any event, naming the line.
    deployed = run_cli("local", "-l", str(bundle.path), *paths(tmp_path))
    assert deployed.code == 1, deployed
    assert "checked before anything ran" in deployed.err and "appspec.yml:" in deployed.err
    assert not (tmp_path / "host").exists() or not any((tmp_path / "host").iterdir())


def test_names_the_os_refuses_are_problems_or_usage_errors(make_bundle, tmp_path: Path) -> None:
    too_long = "x" * 300
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\n")
    named = run_cli("validate", str(bundle.path), "--appspec-filename", too_long, *paths(tmp_path))
    assert named.code == 1
    assert "cannot look for the appspec under this name: File name too long" in named.out
    for command in (["validate", str(tmp_path / too_long)], ["local", "-l", str(tmp_path / too_long)]):
        result = run_cli(*command)
        assert result.code == 2, result
        assert "File name too long" in result.err
