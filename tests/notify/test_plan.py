"""`reconcile plan` shows a Notification change as a reviewer needs it: the object, the fields that changed, the
variable or file a secret comes from (never a value: none is in the manifests), and no rollout for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.gitrepo import ConfigRepo
from tests.reconciler.fleet import APPLICATION, group_manifest

NOTIFICATION = """\
apiVersion: deploy/v1
kind: Notification
metadata:
  name: oncall
spec:
  events: {events}
  webhook:
    urlFrom: {{env: {variable}}}
"""


def plan(repo: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reconciler.cli.main", "plan", "--repo", str(repo), "--path", "manifests",
               "--log-level", "warning", "--offline", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_plan_shows_a_notification_change_and_no_rollout(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.write("manifests/app.yaml", APPLICATION)
    repo.write("manifests/web.yaml", group_manifest())
    base = repo.commit("app")
    repo.write("manifests/oncall.yaml", NOTIFICATION.format(events='["deployment.failed"]', variable="HOOK_URL"))
    added = repo.commit("notify on-call")
    repo.write("manifests/oncall.yaml", NOTIFICATION.format(events='["deployment.failed", "rollback.*"]',
                                                            variable="HOOK_URL_V2"))
    changed = repo.commit("more events, new hook")

    result = plan(repo.path, tmp_path, "--base", base, "--head", added)
    assert result.returncode == 2, result.stderr
    assert "+ Notification/oncall  (manifests/oncall.yaml:1)" in result.stdout, result.stdout
    assert "webhook: {urlFrom: {env: HOOK_URL}}" in result.stdout, "no empty headers: {} shown"
    assert "0 deployments would start" in result.stdout

    result = plan(repo.path, tmp_path, "--base", added, "--head", changed, "--format", "json")
    assert result.returncode == 2, result.stderr
    document = json.loads(result.stdout)
    [change] = document["changes"]
    assert (change["kind"], change["name"], change["change"]) == ("Notification", "oncall", "changed")
    fields = {field["path"]: (field["before"], field["after"]) for field in change["fields"]}
    assert fields == {
        "events": (["deployment.failed"], ["deployment.failed", "rollback.*"]),
        "webhook.urlFrom.env": ("HOOK_URL", "HOOK_URL_V2"),
    }
    assert document["rollouts"] == [], "a notification changes no deployment"
