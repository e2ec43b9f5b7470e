"""The README's first command, end to end: real agents behind a real HAProxy under load, a real Prometheus, real Git
repos, rollouts, a failure on a hook and a rollback, a fix, then a revision only its metrics show to be bad, caught
by the canary's error-rate gate and rolled back; no request fails except the 500s that revision served."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contract.signing import unwrap
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


def commit_of(app_repo: Path, version: str) -> str:
    """The app repo's commit of `version` (fleetlab.fleet.make_app_repo writes "hello vN" or "hello vN: ...")."""
    found = subprocess.run(["git", "log", "-E", "--format=%H", f"--grep=^hello {version}(:|$)"],
                           cwd=app_repo, capture_output=True, text=True, check=True).stdout.split()
    assert len(found) == 1, (version, found)
    return found[0]


def store_doc(workdir: Path, key: str) -> dict[str, Any]:
    # The demo signs its records (docs/trust.md): read what is inside the envelope.
    return json.loads(unwrap((workdir / "store" / key).read_bytes()))  # type: ignore[no-any-return]


@pytest.mark.slow
def test_demo_rolls_out_fails_on_the_canary_and_rolls_back(tmp_path: Path) -> None:
    require_tool("haproxy", "haproxy")
    require_tool("prometheus", "prometheus")
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--hosts", "4", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    output = result.stdout + result.stderr
    # On failure, the demo's own summary (which check failed: exit codes, failed requests, events, metrics)
    # and the end of the logs.
    summary = result.stdout[result.stdout.rfind("Summary"):][:3000]
    assert result.returncode == 0, f"{summary}\n...\n{result.stderr[-3000:]}"
    assert "the canary batch failed on host-1" in output
    # The CI log says why, from the agent's own report: event, script, exit code, and the service's traceback.
    assert "host-1 failed: ValidateService failed: scripts/validate.sh exited with code 1" in output
    assert "FileExistsError" in output
    assert re.search(r"rollout v3: [0-9.]+s, exit code 3,", output)
    assert "v3 is quarantined" in output and "QUARANTINED" in output
    # The gate came with v2 and passed on the good canaries (v2, v4): their measurements are shown.
    assert len(re.findall(r"gate error-rate at batch-0, measurement [12]: .* Successful", output)) == 4
    # v5: caught by the error-rate gate on the canary, with the measured value, in --once's summary and in status.
    assert re.search(r"rollout v5: [0-9.]+s, exit code 3,", output)
    assert "ANALYSIS_FAILED" in output
    assert "gate error-rate after the canary batch failed" in output
    measured = [float(v) for v in re.findall(r"error-rate = ([0-9.]+), not result < 0\.05", output)]
    assert measured and all(0.1 < value < 0.3 for value in measured), measured
    assert "v5 is quarantined" in output
    # The load through HAProxy: no request failed in v2 to v4; in v5, only 500s, and those the canary served.
    for version in ("v2", "v3", "v4"):
        assert re.search(rf"rollout {version}: .*, [0-9,]+ requests served, 0 failed$", output, re.M), version
    v5 = re.search(r"rollout v5: .*, [0-9,]+ requests served, ([0-9,]+) failed \(([0-9,]+) answered 500\)$",
                   output, re.M)
    assert v5 is not None, output[-3000:]
    failed_500 = int(v5.group(1).replace(",", ""))
    assert failed_500 > 0 and v5.group(2) == v5.group(1)
    assert (f"{v5.group(1)} requests answered 500 by the canary while v5 was measured; "
            "0 dropped connections or other failed requests") in output
    # The services' own counters (through Prometheus) put every 500 on the canary.
    assert re.search(r"Prometheus saw 500s on host-1 only \([0-9,]+ on host-1 at its last scrape", output)

    app_repo = workdir / "app-repo"
    v4, v5_commit = commit_of(app_repo, "v4"), commit_of(app_repo, "v5")
    group = store_doc(workdir, "groups/hello/hello-demo.json")
    assert group["effectiveRevision"]["git"]["commit"] == v4
    assert group["desiredRevision"]["git"]["commit"] == v5_commit
    # v3's quarantine ended with v4 (a new desired revision); v5 is the one quarantined now.
    assert [q["revision"]["git"]["commit"] for q in group["quarantined"]] == [v5_commit]
    failed = store_doc(workdir, f"deployments/{group['quarantined'][0]['deploymentId']}.json")
    assert failed["errorCode"] == "ANALYSIS_FAILED", failed
    # Only the canary ever got v5: no other host has a command generation for it.
    assert failed["batches"] == [["host-1"]]
    assert all(state.get("generation") is None for host, state in failed["hosts"].items() if host != "host-1")
    rollback = store_doc(workdir, f"deployments/{group['history'][-1]}.json")
    assert rollback["creator"] == "rollback" and rollback["status"] == "Succeeded"
    for index in range(1, 5):
        status = json.loads((workdir / "store" / "hosts" / f"host-{index}" / "status.json").read_text())
        installed = status["installed"]["hello/hello-demo"]["revision"]["git"]["commit"]
        assert installed == v4, f"host-{index} runs {installed}, expected v4 (the fix, and v5's rollback target)"
        # Every host has v4 (the services were stopped when the demo ended, so read the files).
        version = (workdir / f"host-{index}" / "root" / "srv" / "hello" / "VERSION").read_text().strip()
        assert version == "4"
        events = {e["name"]: e for e in status["command"]["events"]}
        assert events["AllowTraffic"]["status"] == "Succeeded", events["AllowTraffic"]
    # The forged command: refused by host-2 for want of a signature, reported in its status, never run.
    assert "1 forged command written into the store, refused by host-2: not signed" in output
    host2 = json.loads((workdir / "store" / "hosts" / "host-2" / "status.json").read_text())
    assert host2["refusedTotal"] == 1 and host2["verifiesSignatures"] is True
    assert "forged-1" not in (workdir / "host-2" / "agent.log").read_text()  # never received, never started
    # The event stream, followed live for the whole demo: each event once, the story's failures and the refusal in it.
    streamed = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    assert len({e["id"] for e in streamed}) == len(streamed)
    kinds = [e["type"] for e in streamed]
    assert kinds.count("deployment.failed") == 2 and kinds.count("rollback.succeeded") == 2
    assert kinds.count("command.refused") == 1 and kinds.count("revision.quarantined") == 2
    assert [e["host"] for e in streamed if e["type"] == "host.failed"] == ["host-1"]  # v3's hook, on the canary
    assert kinds.count("gate.failed") == 1 and kinds.count("gate.passed") == 4
    assert "events: " in output and "2 deployment.failed, 2 rollback.succeeded, 1 command.refused" in output
    # The demo's webhook notification got every event of the stream once, each with a valid HMAC signature.
    assert "the webhook got each once: True" in output
    n = len(streamed)
    assert re.search(rf"delivered {n} events \({n} distinct ids, every signature valid: True\); "
                     r"the same events as the stream: True", output)
    assert re.search(r"ERROR +fleet +command.refused +host-2 refused commands/host-2.json", output)
    # fleetshift's own metrics, as the real Prometheus scraped them from `reconcile watch` and the agents.
    hosts = re.search(r"hosts of hello-demo by state: .*on_effective_revision=(\d+), online=(\d+)", output)
    assert hosts is not None and hosts.group(1) == hosts.group(2) != "0", output[-3000:]
    assert "quarantined revisions: hello-demo=1" in output
    agent_commands = re.search(r"commands the agents ran, by outcome: Failed=(\d+), Succeeded=(\d+)", output)
    assert agent_commands is not None and agent_commands.group(1) == "1", output[-3000:]
    assert "commands refused: host-2=1" in output
    # The demo stops what it started: no agent nor Prometheus keeps running.
    leftover = subprocess.run(["pgrep", "-f", "--", f"file://{workdir}/store"], capture_output=True, check=False)
    assert leftover.returncode == 1, leftover.stdout
    prometheus = subprocess.run(["pgrep", "-f", "--", f"{workdir}/prometheus"], capture_output=True, check=False)
    assert prometheus.returncode == 1, prometheus.stdout
