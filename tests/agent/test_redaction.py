"""Secrets in hook output stay on the host: the report's log tail, the failure paragraph, the script logs, and
end to end the store (`status.json`, `deployments/<id>.json`) and the `reconcile --once` summary (the CI log).
docs/agent.md, "What hosts publish"."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.lifecycle.scriptlog import ScriptLog
from agent.local_fleet import LocalAgent
from contract.redact import REDACTED, Redactor, secret_name
from contract.store import open_store
from tests.agent.conftest import Bundle, Sandbox, make_sandbox, statuses
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import Reconciler, wait_for

ENV_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9EXAMPLE"  # 40 characters, like an AWS secret access key
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
KEY_BODY = "MIIEowIBAAKCAQEAq8GvVZ1DRYsecretkeybody0123456789"
URL_PASSWORD = "hunter2hunter2"

#: A hook that prints what people really print by mistake, then fails.
LEAKY_HOOK = f"""\
echo "starting with secret $AWS_SECRET_ACCESS_KEY"
echo "key id {ACCESS_KEY_ID} in use"
echo "-----BEGIN RSA PRIVATE KEY-----"
echo "{KEY_BODY}"
echo "-----END RSA PRIVATE KEY-----"
echo "cloning https://deploy:{URL_PASSWORD}@git.example.com/app.git" >&2
echo "database is down" >&2
exit 3
"""
SECRETS = (ENV_SECRET, ACCESS_KEY_ID, KEY_BODY, URL_PASSWORD)


def assert_no_secret(text: str | None, where: str) -> None:
    for secret in SECRETS:
        assert secret not in (text or ""), f"{secret} leaked into {where}: {text}"


# -- the rules


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", True), ("GITHUB_TOKEN", True), ("DB_PASSWORD", True), ("MYSQL_PASSWD", True),
        ("STRIPE_API_KEY", True), ("APIKEY", True), ("AWS_ACCESS_KEY_ID", True), ("SSH_KEY_PASSPHRASE", True),
        ("HOME", False), ("PATH", False), ("BUNDLE_KEY", False), ("KEYTIMEOUT", False), ("MONKEYS", False),
        ("SSL_KEY_FILE", False), ("AWS_SHARED_CREDENTIALS_FILE", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert secret_name(name) is secret


def test_patterns_and_values() -> None:
    redactor = Redactor({"AWS_SECRET_ACCESS_KEY": ENV_SECRET, "ENABLE_TOKEN": "1", "SOME_SECRET": "true",
                         "HOME": "/home/app"})
    cases = {
        f"secret {ENV_SECRET}!": f"secret {REDACTED}!",
        f"id {ACCESS_KEY_ID} and ASIAABCDEFGHIJKLMNOP": f"id {REDACTED} and {REDACTED}",
        "aws_secret_access_key = abcdefghijABCDEFGHIJ0123456789/+abcdefgh": f"aws_secret_access_key = {REDACTED}",
        "curl -H 'Authorization: Bearer eyJhbGciOi.x.y' https://api": f"curl -H 'Authorization: {REDACTED}' https://api",
        "got bearer abc123== back": f"got bearer {REDACTED} back",
        f"https://deploy:{URL_PASSWORD}@git.example.com/a": f"https://deploy:{REDACTED}@git.example.com/a",
        'password=s3cret user=bob': f"password={REDACTED} user=bob",
        '{"db_password": "s3cret", "user": "bob"}': f'{{"db_password": {REDACTED}, "user": "bob"}}',
        # Short and boolean values are not hunted for: every `1` and `true` would go.
        "retries: 1, verbose: true, home /home/app": "retries: 1, verbose: true, home /home/app",
        "token expired; the key was rotated": "token expired; the key was rotated",
        "-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY----- ok": f"{REDACTED} ok",
    }
    for line, expected in cases.items():
        assert redactor.text(line) == expected, line
    assert Redactor({"X_TOKEN": ENV_SECRET}, enabled=False).text(ENV_SECRET) == ENV_SECRET


def test_private_key_blocks_become_one_line_and_learned_values_count(tmp_path: Path) -> None:
    log = ScriptLog(tmp_path / "s.log", tmp_path / "all.log", "d-X", 2048, environment={})
    log.learn({"HOOK_TOKEN": "abcdef123456"})
    for line in ["before", "key: -----BEGIN OPENSSH PRIVATE KEY-----", KEY_BODY, KEY_BODY,
                 "-----END OPENSSH PRIVATE KEY-----", "token abcdef123456 used", "after"]:
        log.output("stdout", line)
    log.output("stderr", KEY_BODY)  # another stream is not inside the block
    assert log.tail() == (f"[stdout]before\n[stdout]key: {REDACTED}\n[stdout]token {REDACTED} used\n"
                          f"[stdout]after\n[stderr]{KEY_BODY}\n")
    log.close()


def test_tail_bytes_counts_bytes_and_zero_keeps_nothing(tmp_path: Path) -> None:
    log = ScriptLog(tmp_path / "s.log", tmp_path / "all.log", "d-X", 10)
    log.output("stdout", "ééééééé")  # 2 bytes each
    tail = log.tail()
    assert tail is not None and len(tail.encode()) <= 10 and tail.endswith("éé\n")
    off = ScriptLog(tmp_path / "o.log", tmp_path / "all.log", "d-Y", 0)
    off.output("stdout", "anything")
    off.note("a remark")
    assert off.tail() is None
    off.flush()
    assert "anything" in (tmp_path / "o.log").read_text()  # the host's own log keeps everything
    log.close()
    off.close()


# -- a real hook, through the lifecycle runner


def leaky_bundle(make_bundle: Callable[[], Bundle]) -> Bundle:
    bundle = make_bundle()
    bundle.appspec("""
        version: 0.0
        os: linux
        hooks:
          AfterInstall:
            - location: leak.sh
    """)
    bundle.script("leak.sh", LEAKY_HOOK)
    return bundle


def test_a_failing_hook_publishes_no_secret(
    sandbox: Sandbox, make_bundle: Callable[[], Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    outcome = sandbox.deploy(leaky_bundle(make_bundle))
    assert statuses(outcome)["AfterInstall"] == "Failed"
    report = next(r for r in outcome.events if r.name == "AfterInstall")
    assert_no_secret(report.log_tail, "the log tail")
    assert_no_secret(report.message, "the event's message")
    assert_no_secret(outcome.message, "the failure paragraph")
    assert report.log_tail == (
        f"[stdout]starting with secret {REDACTED}\n[stdout]key id {REDACTED} in use\n[stdout]{REDACTED}\n"
        f"[stderr]cloning https://deploy:{REDACTED}@git.example.com/app.git\n[stderr]database is down\n"
        "[agent]leak.sh exited with code 3\n"
    )
    assert outcome.message is not None and "database is down" in outcome.message
    assert outcome.log_path is not None
    scripts_log = outcome.log_path.read_text()
    assert_no_secret(scripts_log, "scripts.log")
    assert "database is down" in scripts_log
    for shared in (sandbox.root / "deployment-logs").glob("*"):
        assert_no_secret(shared.read_text(), str(shared))


def test_tail_bytes_zero_publishes_no_output(tmp_path: Path, make_bundle: Callable[[], Bundle]) -> None:
    sandbox = make_sandbox(tmp_path, report_tail_bytes=0)
    outcome = sandbox.deploy(leaky_bundle(make_bundle))
    assert statuses(outcome)["AfterInstall"] == "Failed"
    assert all(report.log_tail is None for report in outcome.events)
    assert outcome.message is not None
    assert outcome.message.startswith("AfterInstall failed: leak.sh exited with code 3. Full log: ")
    assert "database is down" not in outcome.message


# -- end to end: a real agent, the store, `reconcile --once`

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: leaky
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: leaky-web
spec:
  application: leaky
  revision:
    git:
      repository: {repository}
      commit: {commit}
  targets:
    tagSets:
      - - key: app
          value: leaky
  deploymentConfig: CodeDeployDefault.OneAtATime
"""

APPSPEC = """\
version: 0.0
os: linux
hooks:
  ValidateService:
    - location: scripts/leak.sh
"""


@pytest.mark.slow
def test_reconcile_once_and_the_store_carry_no_secret(tmp_path: Path) -> None:
    app = ConfigRepo(tmp_path / "app-repo")
    app.write("appspec.yml", APPSPEC)
    app.write("scripts/leak.sh", "#!/bin/bash\n" + LEAKY_HOOK)
    (app.path / "scripts" / "leak.sh").chmod(0o755)
    commit = app.commit("leaky app")
    config = ConfigRepo(tmp_path / "config-repo")
    config.write("manifests/leaky.yaml", MANIFESTS.format(repository=app.path, commit=commit))
    config.commit("deploy")
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    agent = LocalAgent("leaky-1", tmp_path / "leaky-1", tags={"app": "leaky"},
                       env={"AWS_SECRET_ACCESS_KEY": ENV_SECRET, "FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": "200ms"})
    agent.start(store_url)
    try:
        wait_for(lambda: store.get("hosts/leaky-1/status.json") is not None, 30, "the agent to report")
        reconciler = Reconciler(
            ["--repo", str(config.path), "--ref", "main", "--path", "manifests", "--store", store_url, "--once"],
            tmp_path / "reconcile.log",
            {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "100ms", "FLEETSHIFT_RECONCILE_TIMEOUT": "90s"},
        )
        try:
            code = reconciler.wait(timeout=120)
            out = reconciler.process.stdout.read().decode() if reconciler.process.stdout else ""
        finally:
            reconciler.stop()
    finally:
        agent.stop()
    assert code == 4, out  # failed, nothing to roll back to
    assert "leaky-1 failed: ValidateService failed: scripts/leak.sh exited with code 3." in out, out
    assert "database is down" in out and REDACTED in out
    assert_no_secret(out, "the reconcile --once summary")
    assert_no_secret((tmp_path / "reconcile.log").read_text(), "the reconciler's log")
    status = store.get("hosts/leaky-1/status.json")
    assert status is not None
    assert_no_secret(status.data.decode(), "status.json")
    assert REDACTED in status.data.decode()
    deployments = [item.key for item in store.list("deployments/")]
    assert deployments
    for key in deployments:
        stored = store.get(key)
        assert stored is not None
        assert_no_secret(stored.data.decode(), key)
    assert REDACTED in json.dumps([store.get(key).data.decode() for key in deployments])  # type: ignore[union-attr]
    assert_no_secret(agent.log.read_text(), "the agent's log")
    for log in agent.root_dir.rglob("*.log*"):
        assert_no_secret(log.read_text(), str(log))
    assert sys.executable  # the agent ran from this interpreter's environment (LocalAgent)
