"""`policy.requireImmutableRevisions` (docs/trust.md, "Pinned revisions"): every revision the manifests name
must name content that cannot change under the same name. The rule for each kind of revision, the violations
located as the loader locates errors, and the commands as a user runs them against a real Git config repo:
`validate` and `plan` exit 1 with file:line:column, `--once` and `watch` apply nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from contract.models import GitLocation, Revision
from contract.store import open_store
from reconciler.desired.loader import load_files
from reconciler.desired.policy import check_revision_policy, mutable_reason, revision_policy_violations
from reconciler.desired.sources import ManifestFile
from reconciler.errors import ManifestErrors
from reconciler.settings import DeploySettings
from reconciler.shell.watch import Watcher
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import wait_for

COMMIT = "3f2c9e1b7d5a4c8e9f0a1b2c3d4e5f6a7b8c9d0e"
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
POLICY_ON = {"FLEETSHIFT_POLICY_REQUIRE_IMMUTABLE_REVISIONS": "true"}

S3 = {"s3": {"bucket": "releases", "key": "web/web-1.4.2.zip", "bundleType": "zip"}}
S3_VERSION = {"s3": {**S3["s3"], "version": "3sL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"}}
S3_ETAG = {"s3": {**S3["s3"], "eTag": "0a1b2c3d4e5f60718293a4b5c6d7e8f9"}}
GIT = {"git": {"repository": "https://git.example.com/platform/web.git", "commit": COMMIT}}
LOCAL_FILE = {"local": {"path": "/opt/bundles/web.tgz", "bundleType": "tgz"}}
LOCAL_DIRECTORY = {"local": {"path": "/opt/bundles/web", "bundleType": "directory"}}


@pytest.mark.parametrize(
    ("revision", "immutable"),
    [
        (S3, False),
        (S3_VERSION, True),
        ({**S3, "sha256": SHA256}, True),
        (S3_ETAG, False),  # an eTag detects a replaced object at best; it is no digest to trust
        (GIT, True),
        (LOCAL_FILE, False),
        ({**LOCAL_FILE, "sha256": SHA256}, True),
        (LOCAL_DIRECTORY, False),
        ({**LOCAL_DIRECTORY, "sha256": SHA256}, False),  # a directory cannot be pinned: the agent hashes files only
    ],
    ids=["s3", "s3-version", "s3-sha256", "s3-etag", "git", "local-file", "local-file-sha256", "local-directory",
         "local-directory-sha256"],
)
def test_each_kind_of_revision(revision: dict[str, Any], immutable: bool) -> None:
    assert (mutable_reason(Revision.model_validate(revision)) is None) is immutable


def test_the_reasons_speak_of_what_can_change() -> None:
    s3 = mutable_reason(Revision.model_validate(S3))
    assert s3 == (("s3",), "revision s3://releases/web/web-1.4.2.zip is mutable: policy.requireImmutableRevisions "
                           "needs version or sha256 (the object can be replaced under the same key)")
    etag = mutable_reason(Revision.model_validate(S3_ETAG))
    assert etag is not None and "an eTag is not enough" in etag[1]
    directory = mutable_reason(Revision.model_validate(LOCAL_DIRECTORY))
    assert directory is not None and "needs a bundle file (zip, tar or tgz) with its sha256" in directory[1]


def test_a_git_revision_that_is_not_a_full_commit_id_is_mutable() -> None:
    """The manifest format already refuses one; the policy does not rely on that staying so."""
    branch = Revision.model_construct(git=GitLocation.model_construct(repository="https://git.example.com/web.git",
                                                                      commit="main"))
    reason = mutable_reason(branch)
    assert reason == (("git", "commit"), "revision web@main is mutable: policy.requireImmutableRevisions needs the "
                                         "full 40-character commit id (a branch, tag or short id can move)")


# -- located violations

APPLICATION = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: web
spec:
  defaultRevision:
    local: {path: /opt/bundles/web, bundleType: directory}
"""

#: `revision:` is at line 7; its source at line 8, column 5.
GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: {name}
spec:
  application: web
  revision:
{revision}
  targets:
    tagSets:
      - - {{key: app, value: web}}
"""


def group(name: str, revision: dict[str, Any]) -> str:
    return GROUP.format(name=name, revision=_yaml(revision, indent=4))


def _yaml(value: dict[str, Any], indent: int) -> str:
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(_yaml(item, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {json.dumps(item)}")
    return "\n".join(lines)


def desired_from(files: dict[str, str]) -> Any:
    return load_files([ManifestFile(name, text.encode()) for name, text in files.items()])


def test_violations_name_file_line_column_and_field() -> None:
    desired = desired_from({
        "apps.yaml": APPLICATION,
        "web.yaml": group("web", S3),
        "api.yaml": group("api", {**LOCAL_FILE, "sha256": SHA256}),
        "worker.yaml": group("worker", S3_VERSION),
    })
    violations = revision_policy_violations(desired, require_immutable_revisions=True)
    assert [str(v) for v in violations] == [
        "apps.yaml:7:5: Application/web: spec.defaultRevision.local: revision /opt/bundles/web (a directory on each "
        "host) is mutable and cannot be pinned: policy.requireImmutableRevisions needs a bundle file (zip, tar or "
        "tgz) with its sha256",
        "web.yaml:8:5: DeploymentGroup/web: spec.revision.s3: revision s3://releases/web/web-1.4.2.zip is mutable: "
        "policy.requireImmutableRevisions needs version or sha256 (the object can be replaced under the same key)",
    ]
    assert revision_policy_violations(desired, require_immutable_revisions=False) == []
    with pytest.raises(ManifestErrors) as refused:
        check_revision_policy(desired, require_immutable_revisions=True)
    assert refused.value.errors == violations
    assert check_revision_policy(desired, require_immutable_revisions=False) is desired


# -- the commands, as a user runs them


def reconcile(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli.main", *args], cwd=cwd, capture_output=True,
                          check=False, text=True, timeout=120, env={**os.environ, **(env or {})})


def config_repo(tmp_path: Path, web: dict[str, Any]) -> ConfigRepo:
    """A config repo on main with a pinned base commit, then `web` at head of branch `change`."""
    repo = ConfigRepo(tmp_path / "config")
    repo.write("manifests/apps.yaml", APPLICATION.replace("local: {path: /opt/bundles/web, bundleType: directory}",
                                                          f"git: {json.dumps(GIT['git'])}"))
    repo.write("manifests/web.yaml", group("web", S3_VERSION))
    repo.commit("pinned")
    repo.repo.git.checkout("-b", "change")
    repo.write("manifests/web.yaml", group("web", web))
    repo.commit("web from a mutable S3 object")
    return repo


WEB_VIOLATION = ("manifests/web.yaml:8:5: DeploymentGroup/web: spec.revision.s3: revision "
                 "s3://releases/web/web-1.4.2.zip is mutable: policy.requireImmutableRevisions needs version or "
                 "sha256 (the object can be replaced under the same key)")


def test_validate_reports_violations_as_errors_when_the_policy_is_on(tmp_path: Path) -> None:
    repo = config_repo(tmp_path, S3)
    common = ("validate", "--repo", str(repo.path), "--ref", "change", "--path", "manifests")
    off = reconcile(*common, cwd=tmp_path)
    assert off.returncode == 0, off.stderr

    on = reconcile(*common, cwd=tmp_path, env=POLICY_ON)
    assert on.returncode == 1 and "Traceback" not in on.stderr
    assert on.stderr.splitlines() == [WEB_VIOLATION.removeprefix("manifests/"), "1 error(s); nothing was applied."]
    as_json = json.loads(reconcile(*common, "--format", "json", cwd=tmp_path, env=POLICY_ON).stdout)
    assert as_json["valid"] is False
    assert as_json["errors"] == [{"file": "web.yaml", "line": 8, "column": 5, "resource": "DeploymentGroup/web",
                                  "field": "spec.revision.s3", "message": WEB_VIOLATION.split("spec.revision.s3: ")[1]}]

    # deploy.yaml in the checkout says it too, and a folder is checked like a ref.
    repo.write("deploy.yaml", "policy:\n  requireImmutableRevisions: true\n")
    folder = reconcile("validate", "manifests", cwd=repo.path)
    assert folder.returncode == 1 and WEB_VIOLATION.removeprefix("manifests/") in folder.stderr


def test_plan_of_a_change_that_breaks_the_policy_fails_the_check(tmp_path: Path) -> None:
    repo = config_repo(tmp_path, S3)
    common = ("plan", "--repo", str(repo.path), "--path", "manifests", "--offline", "--base", "main", "--head",
              "change", "--log-level", "warning")
    off = reconcile(*common, cwd=tmp_path)
    assert off.returncode == 2, off.stderr  # the same change plans normally without the policy

    text = reconcile(*common, cwd=tmp_path, env=POLICY_ON)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "The head has 1 manifest error; nothing can be planned from it:" in text.stdout
    assert WEB_VIOLATION in text.stdout
    assert "reconcile plan: the head has 1 manifest error; nothing was planned." in text.stderr

    markdown = reconcile(*common, "--format", "markdown", cwd=tmp_path, env=POLICY_ON)
    assert markdown.returncode == 1
    assert "policy.requireImmutableRevisions needs version or sha256" in markdown.stdout
    assert "manifests/web.yaml:8:5" in markdown.stdout

    as_json = reconcile(*common, "--format", "json", cwd=tmp_path, env=POLICY_ON)
    head = json.loads(as_json.stdout)["head"]
    assert as_json.returncode == 1 and head["valid"] is False and head["errors"] == [WEB_VIOLATION]


def test_a_change_that_follows_the_policy_plans_as_usual(tmp_path: Path) -> None:
    repo = config_repo(tmp_path, {**S3, "sha256": SHA256})
    result = reconcile("plan", "--repo", str(repo.path), "--path", "manifests", "--offline", "--base", "main",
                       "--head", "change", cwd=tmp_path, env=POLICY_ON)
    assert result.returncode == 2, result.stdout + result.stderr


def test_once_applies_nothing_from_a_commit_that_breaks_the_policy(tmp_path: Path) -> None:
    repo = config_repo(tmp_path, S3)
    store = tmp_path / "store"
    result = reconcile("--once", "--no-wait", "--repo", str(repo.path), "--ref", "change", "--path", "manifests",
                       "--store", store.as_uri(), cwd=tmp_path, env=POLICY_ON)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-2:] == [WEB_VIOLATION.removeprefix("manifests/"),
                                               "1 error(s); nothing was applied."]
    assert not store.exists() or not list(store.rglob("*.json")), "nothing may be written"

    applied = reconcile("--once", "--no-wait", "--repo", str(repo.path), "--ref", "main", "--path", "manifests",
                        "--store", store.as_uri(), "--log-level", "warning", cwd=tmp_path, env=POLICY_ON)
    assert applied.returncode == 0, applied.stderr  # the pinned commit is applied under the same policy
    assert list(store.rglob("groups/web/web.json"))


def test_watch_keeps_the_last_commit_that_follows_the_policy(tmp_path: Path) -> None:
    repo = config_repo(tmp_path, S3)
    repo.repo.git.checkout("main")
    pinned = repo.repo.head.commit.hexsha
    settings = DeploySettings.model_validate({
        "repository": {"url": str(repo.path), "ref": "main", "path": "manifests"},
        "store": (tmp_path / "store").as_uri(),
        "reconcile": {"pollInterval": "20ms", "resyncInterval": "50ms", "leaseDuration": "5s"},
        "policy": {"requireImmutableRevisions": True},
    })
    stop = threading.Event()
    watcher = Watcher(open_store(settings.store), settings, stop=stop)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: watcher.desired is not None and watcher.desired.commit == pinned, 20, "the pinned commit")
        repo.repo.git.merge("change")
        mutable = repo.repo.head.commit.hexsha
        wait_for(lambda: watcher.invalid_commit == mutable, 20, "the mutable commit refused")
        assert thread.is_alive()
        assert watcher.desired is not None and watcher.desired.commit == pinned
    finally:
        stop.set()
        watcher.wake.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
