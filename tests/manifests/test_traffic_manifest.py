"""`spec.trafficControl` as a user meets it: through the real CLIs, as processes, never a traceback.

A mistake in a load balancer's description is found before anything runs: `reconcile validate` (and every
command that loads the manifests) names the file, line, column and field, and exits 1 with nothing applied.
Found later, the same mistake would surface as a failed BlockTraffic on the first host of a rollout, or worse,
as a host taken out of one load balancer and not the other. The appspec side has its own rule, checked by
`deploy-agent validate`: scripts go on the steps around BlockTraffic and AllowTraffic, never on them. And a
pull request that adds trafficControl must show, in `reconcile plan`, which load balancers hosts will leave and
how long a batch may wait for them to drain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.exitcodes import ExitCode
from contract.keys import registration_key
from contract.models import HostRegistration
from contract.store import open_store
from tests.gitrepo import ConfigRepo
from tests.plan.scenarios import BASE_FILES, WEB, WEB_A, WEB_B, fleet_of_shop

BIN = Path(sys.executable).parent

APPLICATION = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: hello
"""

GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: web
spec:
  application: hello
  revision:
    git:
      repository: https://git.example.com/hello.git
      commit: 3f2c9e1b7d5a4c8e9f0a1b2c3d4e5f6a7b8c9d0e
  targets:
    tagSets:
      - - key: app
          value: hello
  deploymentConfig: CodeDeployDefault.OneAtATime
"""

ARN = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/hello-tg/6d0ecf831eec9f09"


def reconcile(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "reconcile"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def manifests(tmp_path: Path, traffic: str) -> Path:
    """A manifests folder: the application and one group whose spec ends with `traffic` (indented 2 spaces)."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "application.yaml").write_text(APPLICATION)
    (folder / "web.yaml").write_text(GROUP + traffic)
    return folder


def where(text: str, needle: str, *, after: str = "") -> str:
    """`line:column` of `needle` in `text` (1-based), searching from the first `after`: where an error must point."""
    start = text.index(after) if after else 0
    offset = text.index(needle, start)
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"{line}:{column}"


# -- valid: each provider, and all of them together ----------------------------------------------------------

HAPROXY = """\
      - haproxy:
          runtimeApi: unix:/run/haproxy/admin.sock
          backend: web
"""
HAPROXY_TCP = """\
      - haproxy:
          runtimeApi: tcp:lb1.internal:9999
          backend: web
          servers: {web-7: web7}
"""
TARGET_GROUP_BY_NAME = """\
      - targetGroup:
          name: hello-tg
          region: eu-west-1
          port: 8080
"""
TARGET_GROUP_BY_ARN = f"""\
      - targetGroup:
          arn: {ARN}
"""
COMMAND = """\
      - command:
          run: [/usr/local/bin/lbctl, --pool, web]
          timeout: 30s
          name: lbctl
"""
VALID = {
    "haproxy-unix": HAPROXY,
    "haproxy-tcp-servers": HAPROXY_TCP,
    "target-group-name": TARGET_GROUP_BY_NAME,
    "target-group-arn": TARGET_GROUP_BY_ARN,
    "command": COMMAND,
    "all-together": HAPROXY + TARGET_GROUP_BY_NAME + COMMAND,
}


@pytest.mark.parametrize("case", sorted(VALID))
def test_each_provider_loads(tmp_path: Path, case: str) -> None:
    traffic = "  trafficControl:\n    drainTimeout: 30s\n    healthyTimeout: 10m\n    loadBalancers:\n" + VALID[case]
    result = reconcile("validate", str(manifests(tmp_path, traffic)), cwd=tmp_path)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "valid: 1 application(s), 1 deployment group(s)" in result.stdout
    assert result.stderr == ""


def test_defaults_apply_when_only_load_balancers_are_given(tmp_path: Path) -> None:
    """drainTimeout and healthyTimeout are optional: 300s (ELBv2's default deregistration delay) and 1h
    (CodeDeploy's wait for a healthy instance); `reconcile plan` shows both."""
    repo = ConfigRepo(tmp_path / "config")
    repo.write("manifests/application.yaml", APPLICATION)
    repo.write("manifests/web.yaml", GROUP)
    repo.commit("base")
    repo.repo.git.checkout("-b", "change")
    repo.write("manifests/web.yaml", GROUP.replace("3f2c9e1b", "8a01d2f4") + "  trafficControl:\n"
               "    loadBalancers:\n" + HAPROXY)
    repo.commit("traffic control, defaults")
    result = reconcile("plan", "--repo", str(repo.path), "--path", "manifests", "--offline", "--log-level",
                       "warning", cwd=tmp_path)
    assert result.returncode == ExitCode.CHANGES, result.stderr
    assert ("traffic: hosts leave before they deploy, drain up to 5m, and must be healthy within 1h of coming "
            "back") in result.stdout, result.stdout


# -- every mistake: located, named, exit 1 -------------------------------------------------------------------

TG = "  trafficControl:\n    loadBalancers:\n      - targetGroup:\n"

#: case -> (the trafficControl block, the text the error points at, the field, the message).
INVALID: dict[str, tuple[str, str, str, str]] = {
    "no-load-balancers": (
        "  trafficControl:\n    drainTimeout: 30s\n",
        "trafficControl", "spec.trafficControl.loadBalancers", "required field is missing",
    ),
    "empty-load-balancers": (
        "  trafficControl:\n    loadBalancers: []\n",
        "loadBalancers", "spec.trafficControl.loadBalancers", "needs at least 1 item (got 0)",
    ),
    "two-providers": (
        "  trafficControl:\n    loadBalancers:\n      - command: {run: [lbctl]}\n"
        "        haproxy: {runtimeApi: 'unix:/x.sock', backend: web}\n",
        "command", "spec.trafficControl.loadBalancers.0",
        "a load balancer needs exactly one of haproxy, targetGroup or command (found: haproxy, command)",
    ),
    "no-provider": (
        "  trafficControl:\n    loadBalancers:\n      - {}\n",
        "{}", "spec.trafficControl.loadBalancers.0",
        "a load balancer needs exactly one of haproxy, targetGroup or command (found: none)",
    ),
    "runtime-api-without-scheme": (
        "  trafficControl:\n    loadBalancers:\n      - haproxy:\n          runtimeApi: /run/haproxy/admin.sock\n"
        "          backend: web\n",
        "haproxy", "spec.trafficControl.loadBalancers.0.haproxy",
        "runtimeApi must start with unix: (a socket path) or tcp: (host:port)",
    ),
    "target-group-name-and-arn": (
        f"{TG}          name: hello-tg\n          arn: {ARN}\n",
        "targetGroup", "spec.trafficControl.loadBalancers.0.targetGroup",
        "a target group needs exactly one of name or arn",
    ),
    "target-group-neither": (
        "  trafficControl:\n    loadBalancers:\n      - targetGroup:\n          region: eu-west-1\n",
        "targetGroup", "spec.trafficControl.loadBalancers.0.targetGroup",
        "a target group needs exactly one of name or arn",
    ),
    "port-too-high": (
        f"{TG}          name: hello-tg\n          port: 70000\n",
        "port", "spec.trafficControl.loadBalancers.0.targetGroup.port",
        "less than or equal to 65535 (got 70000)",
    ),
    "port-zero": (
        "  trafficControl:\n    loadBalancers:\n      - targetGroup: {name: hello-tg, port: 0}\n",
        "port", "spec.trafficControl.loadBalancers.0.targetGroup.port",
        "greater than or equal to 1 (got 0)",
    ),
    "command-empty-run": (
        "  trafficControl:\n    loadBalancers:\n      - command:\n          run: []\n",
        "run", "spec.trafficControl.loadBalancers.0.command.run", "needs at least 1 item (got 0)",
    ),
    "command-empty-program": (
        "  trafficControl:\n    loadBalancers:\n      - command:\n          run: ['']\n",
        "''", "spec.trafficControl.loadBalancers.0.command.run.0", "String should have at least 1 character",
    ),
    "bare-number-drain-timeout": (
        "  trafficControl:\n    drainTimeout: 30\n    loadBalancers:\n" + HAPROXY,
        "drainTimeout", "spec.trafficControl.drainTimeout",
        "expected a duration string such as 90s, 5m or 1h",
    ),
    "misspelled-drain-timeout": (
        "  trafficControl:\n    drainTimout: 30s\n    loadBalancers:\n" + HAPROXY,
        "drainTimout", "spec.trafficControl.drainTimout", "unknown field; did you mean `drainTimeout`?",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_each_mistake_is_located_and_named(tmp_path: Path, case: str) -> None:
    traffic, points_at, field, message = INVALID[case]
    folder = manifests(tmp_path, traffic)
    text = (folder / "web.yaml").read_text()

    result = reconcile("validate", str(folder), cwd=tmp_path)

    assert result.returncode == ExitCode.INVALID, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "1 error(s); nothing was applied.", lines
    [error] = lines[:-1]
    prefix = f"web.yaml:{where(text, points_at, after='trafficControl')}: DeploymentGroup/web: {field}: "
    assert error.startswith(prefix), (error, prefix)
    assert message in error, error

    as_json = reconcile("validate", str(folder), "--format", "json", cwd=tmp_path)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == ExitCode.INVALID and report["valid"] is False
    assert [(e["file"], e["field"]) for e in report["errors"]] == [("web.yaml", field)]


def test_every_mistake_at_once_is_reported_and_a_reconciler_applies_nothing(tmp_path: Path) -> None:
    """All the mistakes in one group, run by `reconcile --once` against a real store: every error in one
    round, exit 1, and not one document written (no deployment, no group record, no command)."""
    listed = [case for case in INVALID if INVALID[case][2].startswith("spec.trafficControl.loadBalancers.0")]
    blocks = [INVALID[case][0].split("    loadBalancers:\n", 1)[-1] for case in listed]
    traffic = "  trafficControl:\n    drainTimout: 30s\n    drainTimeout: 30\n    loadBalancers:\n" + "".join(blocks)
    repo = ConfigRepo(tmp_path / "config")
    repo.write("manifests/application.yaml", APPLICATION)
    repo.write("manifests/web.yaml", GROUP + traffic)
    repo.commit("traffic control, every mistake")
    store = tmp_path / "store"
    store.mkdir()

    result = reconcile("--once", "--repo", str(repo.path), "--ref", "main", "--path", "manifests", "--store",
                       f"file://{store}", "--log-format", "json", cwd=tmp_path)

    assert result.returncode == ExitCode.INVALID, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("web.yaml:")]
    fields = [line.split(": ")[2] for line in errors]
    assert fields == ["spec.trafficControl.drainTimout", "spec.trafficControl.drainTimeout",
                      *[INVALID[case][2].replace(".0", f".{n}", 1) for n, case in enumerate(listed)]], errors
    assert f"{len(errors)} error(s); nothing was applied." in result.stderr
    written = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert written == [], written


# -- the appspec: no scripts on the traffic steps themselves ---------------------------------------------------

APPSPEC = """\
version: 0.0
os: linux
hooks:
  {hook}:
    - location: scripts/hook.sh
"""


def deploy_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "deploy-agent"), *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize(("step", "instead"), [("BlockTraffic", "BeforeBlockTraffic or AfterBlockTraffic"),
                                               ("AllowTraffic", "BeforeAllowTraffic or AfterAllowTraffic")])
def test_an_appspec_with_scripts_on_a_traffic_step_is_refused(tmp_path: Path, step: str, instead: str) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "scripts").mkdir(parents=True)
    (bundle / "scripts" / "hook.sh").write_text("#!/bin/sh\nexit 0\n")
    (bundle / "appspec.yml").write_text(APPSPEC.format(hook=step))

    result = deploy_agent("validate", str(bundle))

    assert result.returncode == ExitCode.INVALID, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    said = result.stdout + result.stderr
    assert f"appspec.yml:4: hooks.{step}: {step} is the load balancer step itself; scripts cannot be attached to it" \
        f" (use {instead})" in said, said
    as_json = deploy_agent("validate", str(bundle), "--format", "json")
    assert json.loads(as_json.stdout)["errors"] == [{
        "where": "appspec.yml:4", "field": f"hooks.{step}",
        "message": f"{step} is the load balancer step itself; scripts cannot be attached to it (use {instead})",
    }]


@pytest.mark.parametrize("hook", ["BeforeBlockTraffic", "AfterBlockTraffic", "BeforeAllowTraffic",
                                  "AfterAllowTraffic"])
def test_the_steps_around_them_take_scripts(tmp_path: Path, hook: str) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "scripts").mkdir(parents=True)
    (bundle / "scripts" / "hook.sh").write_text("#!/bin/sh\nexit 0\n")
    (bundle / "appspec.yml").write_text(APPSPEC.format(hook=hook))
    result = deploy_agent("validate", str(bundle))
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr


# -- the plan of a pull request that adds trafficControl ------------------------------------------------------

TRAFFIC = """\
  trafficControl:
    drainTimeout: 40s
    healthyTimeout: 2m
    loadBalancers:
      - targetGroup: {name: shop-web-tg, region: eu-west-1, port: 8080}
      - haproxy: {runtimeApi: "unix:/run/haproxy/admin.sock", backend: web, servers: {web-2: web2}}
"""


def _shop(tmp_path: Path, web_after: str) -> tuple[ConfigRepo, str]:
    """The plan tests' shop (tests/plan/scenarios.py) with a store whose web hosts registered instance ids
    (web-1..3) or an address (web-4), and a branch `change` with web.yaml as `web_after`."""
    repo = ConfigRepo(tmp_path / "config")
    for path, content in BASE_FILES.items():
        repo.write(path, content)
    repo.commit("base")
    repo.repo.git.checkout("-b", "change")
    repo.write("manifests/web.yaml", web_after)
    repo.commit("change")
    folder = tmp_path / "store"
    folder.mkdir()
    store = open_store(f"file://{folder}")
    fleet_of_shop(store, datetime.now(UTC))
    for n in range(1, 5):
        key = registration_key(f"web-{n}")
        found = store.get(key)
        assert found is not None
        registration = HostRegistration.model_validate_json(found.data)
        update = {"instance_id": f"i-0000000000000000{n}"} if n < 4 else {"address": "10.0.1.4"}
        store.put(key, registration.model_copy(update=update).to_json())
    return repo, f"file://{folder}"


def plan(tmp_path: Path, repo: ConfigRepo, store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return reconcile("plan", "--repo", str(repo.path), "--path", "manifests", "--store", store, "--log-level",
                     "warning", *args, cwd=tmp_path)


@pytest.mark.slow
def test_plan_shows_the_load_balancers_each_hosts_target_and_the_drain_bound(tmp_path: Path) -> None:
    repo, store = _shop(tmp_path, WEB.replace(WEB_A, WEB_B) + TRAFFIC)

    result = plan(tmp_path, repo, store)

    assert result.returncode == ExitCode.CHANGES, result.stderr
    traffic = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("traffic:")]
    assert traffic[0].startswith("traffic: target group shop-web-tg: i-00000000000000001:8080 (web-1), "
                                 "i-00000000000000002:8080 (web-2), i-00000000000000003:8080 (web-3), "
                                 "10.0.1.4:8080 (web-4), web-5 (no instanceId or address registered)"), traffic
    assert traffic[1].startswith("traffic: haproxy backend web (unix:/run/haproxy/admin.sock): web/web-1, "
                                 "web/web2, web/web-3"), traffic
    assert traffic[2] == ("traffic: hosts leave before they deploy, drain up to 40s, and must be healthy within 2m "
                          "of coming back")
    assert len(traffic) == 3
    estimate = next(line for line in result.stdout.splitlines() if line.strip().startswith("estimate:"))
    assert "waits up to 40s for its hosts to drain (drainTimeout)" in estimate, estimate

    as_json = plan(tmp_path, repo, store, "--format", "json")
    [rollout] = json.loads(as_json.stdout)["rollouts"]
    assert rollout["group"] == "shop/web"
    assert [line.split(":")[0] for line in rollout["traffic"]] == ["target group shop-web-tg",
                                                                  "haproxy backend web (unix",
                                                                  "hosts leave before they deploy, drain up to 40s, "
                                                                  "and must be healthy within 2m of coming back"]


def test_plan_of_trafficcontrol_alone_shows_the_change_and_starts_nothing(tmp_path: Path) -> None:
    """Adding trafficControl without a new revision deploys nothing: the next deployment is the first to take
    hosts out, and the plan says the group changed, with the drain bound, and that nothing starts. It shows the
    targets the next deployment will move, so a host that cannot be mapped is seen before the merge."""
    repo, store = _shop(tmp_path, WEB + TRAFFIC)
    result = plan(tmp_path, repo, store)
    assert result.returncode == ExitCode.CHANGES, result.stderr
    assert "trafficControl: (none) -> {loadBalancers: [{targetGroup: {name: shop-web-tg" in result.stdout
    assert "drainTimeout: 40s" in result.stdout
    assert "0 deployments would start" in result.stdout
    assert ("shop/web: no deployment: traffic control changed; the revision is unchanged, so no deployment starts"
            in result.stdout)
    assert "web-5 (no instanceId or address registered)" in result.stdout
