"""Secrets stay out of what the reconciler prints (docs/trust.md, "Secrets in output"): `reconcile plan` never
shows a field marked secret or a URL's credentials, in any format, in a saved plan or in a stale plan's refusal;
the `--once` summary, `status` and `history` redact and bound whatever a host reported, whatever the agent did
(here a status document forged straight into a file:// store, as an agent with `reportOutput.redact: false`, an
old agent or anyone with write access to `hosts/<id>/status.json` could write it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.keys import status_key
from contract.models import CommandProgress, CommandStatus, EventReport, EventStatus, HostStatus
from contract.redact import HOST_TEXT_LIMIT, REDACTED, public_host_text, redact_url
from contract.store import open_store
from reconciler.desired.loader import load_files
from reconciler.desired.sources import ManifestFile
from reconciler.errors import ManifestErrors
from reconciler.plan.diff import diff_manifests
from reconciler.plan.public import HIDDEN_CHANGE, HIDDEN_VALUE
from tests.gitrepo import ConfigRepo
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, now

COMMIT_A = "3f2c9e1b7d5a4c8e9f0a1b2c3d4e5f6a7b8c9d0e"
COMMIT_B = "8a01d2f4c3b2a1908f7e6d5c4b3a29180f7e6d5c"

#: Every value below must never appear in a plan's output.
BASE_REPO_TOKEN = "ghp_BaseT0kenBaseT0ken01"
HEAD_REPO_TOKEN = "ghp_HeadT0kenHeadT0ken02"
BASE_LB_TOKEN = "lb-S3cret-base-0001"
HEAD_LB_TOKEN = "lb-S3cret-head-0002"
API_LB_TOKEN = "lb-S3cret-api-0003"
BASE_CHECK_TOKEN = "hc-T0ken-base-0004"
HEAD_CHECK_TOKEN = "hc-T0ken-head-0005"
PROMETHEUS_PASSWORD = "pr0m-Passw0rd-0006"
PLAN_SECRETS = (BASE_REPO_TOKEN, HEAD_REPO_TOKEN, BASE_LB_TOKEN, HEAD_LB_TOKEN, API_LB_TOKEN, BASE_CHECK_TOKEN,
                HEAD_CHECK_TOKEN, PROMETHEUS_PASSWORD)

APPLICATION = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: web
"""

GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: {name}
spec:
  application: web
  revision:
    git: {{repository: "https://{repo_token}@github.com/acme/web.git", commit: {commit}}}
  targets: {{hosts: [{name}-1]}}
  trafficControl:
    loadBalancers:
      - command: {{name: lb, run: [/usr/local/bin/lb-ctl, --token, "{lb_token}"]}}
  healthCheck:
    url: "http://{{address}}:8080/healthz?token={check_token}"
{analysis}"""

ANALYSIS = f"""\
  analysis:
    - name: errors
      prometheus:
        address: "https://grafana:{PROMETHEUS_PASSWORD}@prometheus.example.com"
        query: sum(rate(errors[1m]))
      successCondition: result < 1
"""


def web(*, repo_token: str, commit: str, lb_token: str, check_token: str, analysis: str = "", name: str = "web") -> str:
    return GROUP.format(name=name, repo_token=repo_token, commit=commit, lb_token=lb_token, check_token=check_token,
                        analysis=analysis)


BASE = web(repo_token=BASE_REPO_TOKEN, commit=COMMIT_A, lb_token=BASE_LB_TOKEN, check_token=BASE_CHECK_TOKEN)
HEAD = web(repo_token=HEAD_REPO_TOKEN, commit=COMMIT_B, lb_token=HEAD_LB_TOKEN, check_token=HEAD_CHECK_TOKEN,
           analysis=ANALYSIS)
API = web(name="api", repo_token=HEAD_REPO_TOKEN, commit=COMMIT_B, lb_token=API_LB_TOKEN, check_token=HEAD_CHECK_TOKEN)


def assert_no_plan_secret(text: str, where: str) -> None:
    for secret in PLAN_SECRETS:
        assert secret not in text, f"{secret} leaked into {where}:\n{text}"


def reconcile(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli.main", *args], cwd=cwd, capture_output=True,
                          check=False, text=True, timeout=120, env={**os.environ, **(env or {})})


# -- the rules


def test_urls_lose_their_credentials_and_keep_the_rest() -> None:
    assert redact_url("https://grafana:pw-1234@prom:9090/api") == f"https://grafana:{REDACTED}@prom:9090/api"
    assert redact_url(f"https://{HEAD_REPO_TOKEN}@github.com/a/b.git") == f"https://{REDACTED}@github.com/a/b.git"
    assert redact_url("ssh://git@github.com/a/b.git") == "ssh://git@github.com/a/b.git"  # a user name, not a token
    assert (redact_url("http://{address}:8080/healthz?token=abc123&verbose=1")
            == f"http://{{address}}:8080/healthz?token={REDACTED}&verbose=1")
    assert (redact_url("https://b.s3.amazonaws.com/k?versionId=7&X-Amz-Signature=f00d&X-Amz-Credential=AKIA")
            == f"https://b.s3.amazonaws.com/k?versionId=7&X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}")
    assert redact_url("http://prometheus:9090") == "http://prometheus:9090"


def test_host_text_is_redacted_flattened_and_bounded() -> None:
    shown = public_host_text("key AKIAABCDEFGHIJKLMNOP\npassword=hunter22 \x1b[2J\x1b[Hcommit 0: converged\n")
    assert shown == f"key {REDACTED} | password={REDACTED} ?[2J?[Hcommit 0: converged"
    long = "start " + "x" * 10_000 + " Full log: /var/log/scripts.log"
    bounded = public_host_text(long)
    assert len(bounded) <= HOST_TEXT_LIMIT
    assert bounded.startswith("start ") and bounded.endswith("Full log: /var/log/scripts.log")
    assert "characters cut" in bounded


def test_host_texts_are_remembered_only_when_short() -> None:
    """`public_host_text` remembers short texts (a batch repeats the same few) but never holds a long one: a host
    can report a message of any length, and a thousand of those kept would be gigabytes."""
    from contract.redact import _public_host_text

    _public_host_text.cache_clear()
    short = "token=abc Succeeded"
    assert public_host_text(short) == public_host_text(short) == f"token={REDACTED} Succeeded"
    assert _public_host_text.cache_info().hits == 1
    huge = "password=hunter22 " + "y" * (1 << 20)
    first = public_host_text(huge)
    assert first == public_host_text(huge) and first.startswith(f"password={REDACTED} ")
    assert _public_host_text.cache_info().currsize == 1  # only the short text


def test_a_secret_field_changed_or_added_shows_no_value() -> None:
    def desired(*files: tuple[str, str]):  # type: ignore[no-untyped-def]
        return load_files([ManifestFile(name, text.encode()) for name, text in files])

    changes = diff_manifests(desired(("apps.yaml", APPLICATION), ("web.yaml", BASE)),
                             desired(("apps.yaml", APPLICATION), ("web.yaml", HEAD), ("api.yaml", API)))
    fields = {(change.name, field.path): (field.before, field.after) for change in changes for field in change.fields}
    assert fields[("web", "trafficControl.loadBalancers.0.command.run")] == (HIDDEN_VALUE, HIDDEN_CHANGE)
    added = fields[("api", "trafficControl")][1]
    assert isinstance(added, dict)
    assert added["loadBalancers"][0]["command"] == {"name": "lb", "run": HIDDEN_VALUE, "timeout": "30s"}
    assert fields[("web", "healthCheck.url")] == (f"http://{{address}}:8080/healthz?token={REDACTED}",) * 2
    assert_no_plan_secret(json.dumps(list(fields.values())), "the field changes")


# -- reconcile plan, every output


@pytest.fixture
def plan_repo(tmp_path: Path) -> ConfigRepo:
    repo = ConfigRepo(tmp_path / "config")
    repo.write("manifests/apps.yaml", APPLICATION)
    repo.write("manifests/web.yaml", BASE)
    repo.commit("base")
    repo.repo.git.checkout("-b", "change")
    repo.write("manifests/web.yaml", HEAD)
    repo.write("manifests/api.yaml", API)
    repo.commit("new tokens, a gate, a second group")
    return repo


@pytest.mark.slow
def test_plan_shows_no_secret_in_text_markdown_or_json(tmp_path: Path, plan_repo: ConfigRepo) -> None:
    common = ("plan", "--repo", str(plan_repo.path), "--path", "manifests", "--offline", "--base", "main",
              "--head", "change", "--log-level", "warning")
    for output in ("text", "markdown", "json"):
        result = reconcile(*common, "--format", output, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert_no_plan_secret(result.stdout + result.stderr, f"plan --format {output}")
        assert REDACTED in result.stdout
    text = reconcile(*common, cwd=tmp_path).stdout
    assert f"trafficControl.loadBalancers.0.command.run: {HIDDEN_VALUE} -> {HIDDEN_CHANGE}" in text
    assert f"https://grafana:{REDACTED}@prometheus.example.com" in text
    markdown = reconcile(*common, "--format", "markdown", cwd=tmp_path).stdout
    assert f"| `trafficControl.loadBalancers.0.command.run` | `{HIDDEN_VALUE}` | `{HIDDEN_CHANGE}` |" in markdown
    plan = json.loads(reconcile(*common, "--format", "json", cwd=tmp_path).stdout)
    [rollout] = [r for r in plan["rollouts"] if r["group"] == "web/web"]
    assert rollout["revisionTo"]["git"]["repository"] == f"https://{REDACTED}@github.com/acme/web.git"
    assert rollout["analysis"][0]["address"] == f"https://grafana:{REDACTED}@prometheus.example.com"


@pytest.mark.slow
def test_saved_plan_and_stale_refusal_show_no_secret(tmp_path: Path, plan_repo: ConfigRepo) -> None:
    store_url = (tmp_path / "store").as_uri()
    # main applied once: the store records the group's revision, Git URL and all, which a saved plan fingerprints.
    applied = reconcile("--once", "--no-wait", "--repo", str(plan_repo.path), "--ref", "main", "--path", "manifests",
                        "--store", store_url, "--log-level", "warning", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert BASE_REPO_TOKEN in next((tmp_path / "store").rglob("web.json")).read_text()  # the store keeps it
    saved = tmp_path / "plan.json"
    result = reconcile("plan", "--repo", str(plan_repo.path), "--path", "manifests", "--store", store_url, "--base",
                       "main", "--head", "change", "--out", str(saved), "--log-level", "warning", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert_no_plan_secret(saved.read_text(), "the saved plan")

    # Only a secret changes after review: the plan is stale, and the refusal says so without the values.
    plan_repo.write("manifests/web.yaml", HEAD.replace(HEAD_LB_TOKEN, "lb-S3cret-later-0007"))
    plan_repo.commit("another token")
    stale = reconcile("--once", "--plan", str(saved), "--repo", str(plan_repo.path), "--ref", "change", "--path",
                      "manifests", "--store", store_url, "--log-level", "warning", cwd=tmp_path)
    assert stale.returncode == 6, stale.stderr
    assert "a value plans do not show changed (a field marked secret, or a URL's credentials)" in stale.stderr
    assert_no_plan_secret(stale.stdout + stale.stderr, "the stale plan's refusal")
    assert "lb-S3cret-later-0007" not in stale.stderr


# -- what hosts report: --once summary, status, history


FAKE_KEY = "AKIAABCDEFGHIJKLMNOP"
PASSWORD = "hunter22"
HOST_SECRETS = (FAKE_KEY, PASSWORD, "\x1b")


def assert_no_host_secret(text: str, where: str) -> None:
    for secret in HOST_SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}:\n{text}"


@pytest.mark.slow
def test_once_status_and_history_redact_what_a_host_reported(tmp_path: Path) -> None:
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(rollback=False))
    store_url = (tmp_path / "store").as_uri()
    store = open_store(store_url)
    agents = ScriptedAgents(store, ["web-1"])
    agents.register()
    env = {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "50ms", "FLEETSHIFT_RECONCILE_TIMEOUT": "30s",
           "FLEETSHIFT_LOGGING_LEVEL": "warning"}
    first = reconcile("--once", "--no-wait", *config.args(), "--store", store_url, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    command = agents.command("web-1")
    assert command is not None

    # What an agent publishes with `reportOutput.redact: false` (or a forger): secrets and terminal escapes.
    tail = f"connecting with {FAKE_KEY}\npassword={PASSWORD}\n"
    progress = CommandProgress(
        deployment_id=command.deployment_id, generation=command.generation, application=command.application,
        deployment_group=command.deployment_group, status=CommandStatus.FAILED, started_at=now(), ended_at=now(),
        message=(f"ValidateService failed: scripts/validate.sh exited with code 1. Last output: key {FAKE_KEY} | "
                 f"password={PASSWORD} | \x1b[2K\x1b[1Acommit 000000000000: converged"),
        events=[
            EventReport(name="ValidateService", status=EventStatus.FAILED, message=f"password={PASSWORD}",
                        log_tail=tail),
            EventReport(name="HealthCheck", status=EventStatus.FAILED,
                        message=f"GET http://admin:{PASSWORD}@10.0.0.1/healthz failed with {FAKE_KEY}"),
        ],
    )
    forged = HostStatus(host_id="web-1", heartbeat_at=now(), agent_version="test", heartbeat_interval_seconds=1,
                        command=progress)
    store.put(status_key("web-1"), forged.to_json())

    once = reconcile("--once", *config.args(), "--store", store_url, cwd=tmp_path, env=env)
    assert once.returncode == 4, once.stdout + once.stderr
    assert "web-1 failed: ValidateService failed: scripts/validate.sh exited with code 1." in once.stdout
    assert REDACTED in once.stdout
    assert_no_host_secret(once.stdout + once.stderr, "the --once summary")

    for command_line in (["status"], ["status", "--format", "json"], ["history", "web"],
                         ["history", "web", "--format", "json"]):
        shown = reconcile(*command_line, *config.args(), "--store", store_url, cwd=tmp_path, env=env)
        assert shown.returncode == 0, shown.stderr
        assert_no_host_secret(shown.stdout + shown.stderr, " ".join(command_line))
    status = reconcile("status", *config.args(), "--store", store_url, cwd=tmp_path, env=env).stdout
    assert f"health: HealthCheck Failed: GET http://admin:{REDACTED}@10.0.0.1/healthz failed with {REDACTED}" in status

    # The record the reconciler copied the host's message into is redacted too.
    for item in store.list("deployments/"):
        stored = store.get(item.key)
        assert stored is not None
        assert_no_host_secret(stored.data.decode(), item.key)


@pytest.mark.parametrize("run", ['"lbctl --token tok-NEWSECRET1"', "[lbctl, --token, 73919284]"])
def test_a_manifest_error_in_a_secret_field_does_not_quote_its_value(run: str) -> None:
    """`plan` prints a head's manifest errors in the pull request: an error in a secret field (a string where a
    list belongs, a number where text belongs) names the field but not what was written there."""
    text = f"""\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: web
spec:
  application: hello
  revision:
    git:
      repository: https://example.com/app.git
      commit: 0123456789abcdef0123456789abcdef01234567
  targets:
    hosts: [a]
  trafficControl:
    loadBalancers:
      - command:
          run: {run}
"""
    with pytest.raises(ManifestErrors) as raised:
        load_files([ManifestFile("web.yaml", text.encode())])
    messages = "\n".join(str(e) for e in raised.value.errors)
    assert "command.run" in messages and "value not shown: a secret field" in messages, messages
    assert "NEWSECRET1" not in messages and "73919284" not in messages
