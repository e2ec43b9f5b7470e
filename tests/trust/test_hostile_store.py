"""The proof of issue "trust chain", store side: somebody who can write the store but does not hold the
reconciler's key cannot make an agent run anything, and the fleet keeps deploying around them.

On both stores (a file:// folder, and S3 over moto's server), with real agents and `reconcile --once` signing with
a key from `reconcile keys generate`. The attacker writes straight into the backend, bypassing the signing layer,
the way anyone with the bucket's or folder's write permission could:

- a forged command (unsigned), one signed by the attacker's own key, a genuine command altered after signing,
  a genuine command of another host moved onto this host's key, a command genuinely signed for another store,
  and a genuine but older command put back (a replay);
- every one of them would run hooks of a bundle whose deployment ids start with `evil-` (or re-run an old one).

The hooks' own log is the witness: no host runs a hook of any of them, each refusal shows in that host's status
with its reason, and deployments made by the reconciler in the same fleet, during and after the attacks, succeed.
A control host that pins no key runs the same forged command: the attack is real, the signature is what stops it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.keys import command_key, status_key
from contract.models import HostCommand, HostStatus, LocalLocation, Revision
from contract.signing import Signer
from contract.store import Store, open_store
from contract.store.sealed import seal_store, store_audience
from tests.chaos.world import Host, make_bundle
from tests.conftest import S3Server
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import BIN, ROOT

pytestmark = pytest.mark.slow

PROTECTED = ["host-1", "host-2", "host-3"]
CONTROL = "host-4"  # pins no key (it is in the group too, and its genuine commands run like the others')

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: hello
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: web
spec:
  application: hello
  revision:
    local:
      path: {path}
      bundleType: directory
  targets:
    tagSets:
      - - key: app
          value: hello
  deploymentConfig: CodeDeployDefault.AllAtOnce
"""
ROLLBACK = """\
  autoRollback:
    enabled: true
    events: [DEPLOYMENT_FAILURE]
"""


@dataclass
class Fleet:
    tmp: Path
    url: str
    raw: Store  # the backend itself: what an attacker with write access has
    env: dict[str, str]
    key_file: Path
    signer: Signer
    hosts: dict[str, Host]
    config: ConfigRepo
    bundles: dict[str, Path]

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSHIFT_")}
        env.update(self.env, FLEETSHIFT_SIGNING_KEY_FILE=str(self.key_file), FLEETSHIFT_RECONCILE_POLL_INTERVAL="100ms",
                   FLEETSHIFT_RECONCILE_TIMEOUT="60s", FLEETSHIFT_LOGGING_FORMAT="json")
        return subprocess.run(
            [str(BIN / "reconcile"), "--repo", str(self.config.path), "--ref", "main", "--path", "manifests",
             "--store", self.url, *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env,
        )

    def deploy(self, version: str) -> None:
        self.config.write("manifests/hello.yaml", MANIFESTS.format(path=self.bundles[version]))
        self.config.commit(f"deploy {version}")
        result = self.reconcile("--once")
        assert result.returncode == 0, f"deploying {version}: exit {result.returncode}\n{result.stdout}{result.stderr}"

    def status(self, host_id: str) -> HostStatus:
        stored = self.raw.get(status_key(host_id))
        assert stored is not None, f"{host_id} has no status"
        return HostStatus.model_validate_json(stored.data)

    def envelope(self, host_id: str) -> bytes:
        stored = self.raw.get(command_key(host_id))
        assert stored is not None
        return stored.data

    def generation(self, host_id: str) -> int:
        payload = json.loads(base64.b64decode(json.loads(self.envelope(host_id))["payload"]))
        return int(payload["generation"])

    def evil_command(self, host_id: str, generation: int, name: str) -> HostCommand:
        return HostCommand(
            host_id=host_id, generation=generation, deployment_id=f"evil-{name}", application="hello",
            deployment_group="web", deployment_group_id="dg-web",
            revision=Revision(local=LocalLocation(path=str(self.bundles["evil"]), bundle_type="directory")),
            created_at=datetime.now(UTC),
        )

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                logs = {h: host.agent_log.read_text()[-3000:] for h, host in self.hosts.items()
                        if host.agent_log.exists()}
                raise AssertionError(f"timed out waiting for {what}; agent logs: {logs}")
            time.sleep(0.05)

    def refusals(self, host_id: str) -> list[str]:
        return [r.reason for r in self.status(host_id).refusals]

    def evil_runs(self, host_id: str) -> list[tuple[str, str]]:
        return [run for run in self.hosts[host_id].hook_runs() if run[1].startswith("evil")]


def _fleet(tmp: Path, url: str, env: dict[str, str], raw_url: str | None = None) -> Iterator[Fleet]:
    key_file = tmp / "signing.pem"
    generated = subprocess.run([str(BIN / "reconcile"), "keys", "generate", "--out", str(key_file)],
                               capture_output=True, text=True, check=True, cwd=tmp)
    public = next(line.removeprefix("public key:").strip() for line in generated.stdout.splitlines()
                  if line.startswith("public key:"))
    signer = Signer.load(key_file.read_bytes(), str(key_file))
    assert public == signer.public.text
    bundles = {version: make_bundle(tmp / "bundles" / version, version) for version in ("v1", "v2", "v3", "evil")}
    bundles["broken"] = make_bundle(tmp / "bundles" / "broken", "broken", failing="ValidateService")
    hosts = {}
    for host_id in [*PROTECTED, CONTROL]:
        host_env = dict(env)
        if host_id != CONTROL:
            host_env["FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS"] = public
        hosts[host_id] = Host(host_id, tmp / host_id, url, env=host_env)
    fleet = Fleet(tmp, url, open_store(raw_url or url), env, key_file, signer, hosts, ConfigRepo(tmp / "config"),
                  bundles)
    try:
        for host in hosts.values():
            host.start()
        fleet.wait(lambda: all(fleet.raw.get(status_key(h)) is not None for h in hosts), "agents registered")
        yield fleet
    finally:
        for host in hosts.values():
            host.stop()


@pytest.fixture(params=["file", "s3"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param == "file":
        yield from _fleet(tmp_path, f"file://{tmp_path / 'store'}", {})
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"hostile-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    server.client().create_bucket(Bucket=bucket)
    yield from _fleet(tmp_path, f"s3://{bucket}/fleet", server.env(),
                      raw_url=f"s3://{bucket}/fleet?endpoint={server.endpoint_url}")


def test_a_store_writer_without_the_key_runs_nothing_and_deployments_go_on(fleet: Fleet) -> None:
    fleet.deploy("v1")
    assert all(fleet.status(h).verifies_signatures for h in PROTECTED)
    assert not fleet.status(CONTROL).verifies_signatures
    genuine = {h: fleet.envelope(h) for h in PROTECTED}
    generation = {h: fleet.generation(h) for h in PROTECTED}
    audience = store_audience(fleet.raw)

    # 1. Forged: unsigned, with a generation far ahead, so that nothing but the signature stands in its way.
    fleet.raw.put(command_key("host-1"), fleet.evil_command("host-1", generation["host-1"] + 50, "unsigned").to_json())
    # 2. Signed, by the attacker's own key.
    attacker = Signer.generate("attacker")
    forged = fleet.evil_command("host-2", generation["host-2"] + 50, "own-key").to_json()
    fleet.raw.put(command_key("host-2"), attacker.sign(audience=audience, key=command_key("host-2"), payload=forged))
    # 3. Genuine, altered after signing: the revision swapped for the attacker's bundle, the signature kept.
    envelope = json.loads(genuine["host-3"])
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload.update(deploymentId="evil-altered", generation=payload["generation"] + 50,
                   revision={"local": {"path": str(fleet.bundles["evil"]), "bundleType": "directory"}})
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    fleet.raw.put(command_key("host-3"), json.dumps(envelope).encode())
    # 4. The control host, which pins no key, runs the unsigned forgery: the attack itself works.
    control = fleet.evil_command(CONTROL, fleet.generation(CONTROL) + 50, "control")
    fleet.raw.put(command_key(CONTROL), control.to_json())

    fleet.wait(lambda: fleet.evil_runs(CONTROL), "the unprotected control host to run the forged command")
    fleet.wait(lambda: all(fleet.refusals(h) for h in PROTECTED), "a refusal reported by every protected host")
    assert fleet.refusals("host-1") == ["not signed"]
    assert "does not trust" in fleet.refusals("host-2")[0] and attacker.public.key_id in fleet.refusals("host-2")[0]
    assert "altered after signing" in fleet.refusals("host-3")[0]

    # The reconciler reads the forged commands as absent and deploys v2 over them: the fleet is not stuck.
    fleet.deploy("v2")
    generation = {h: fleet.generation(h) for h in PROTECTED}

    # 5. Moved: host-1's genuine command onto host-2's key.  6. Signed with the real key, for another store.
    # 7. Replayed: host-3's genuine v1 command put back after it ran v2.
    fleet.raw.put(command_key("host-2"), fleet.envelope("host-1"))
    other_store = fleet.evil_command("host-1", generation["host-1"] + 50, "other-store").to_json()
    fleet.raw.put(command_key("host-1"), fleet.signer.sign(audience="s3://staging-bucket/fleet/",
                                                           key=command_key("host-1"), payload=other_store))
    fleet.raw.put(command_key("host-3"), genuine["host-3"])
    fleet.wait(lambda: all(len(fleet.refusals(h)) == 2 for h in PROTECTED), "the second round of refusals")
    assert "signed for the store s3://staging-bucket/fleet/" in fleet.refusals("host-1")[1]
    assert "signed for commands/host-1.json, not commands/host-2.json" in fleet.refusals("host-2")[1]
    assert fleet.refusals("host-3")[1].startswith(f"replayed: generation {generation['host-3'] - 1} ")

    fleet.deploy("v3")
    assert fleet.status(CONTROL).refused_total == 0
    for host_id in PROTECTED:
        assert fleet.evil_runs(host_id) == [], f"{host_id} ran a forged command"
        status = fleet.status(host_id)
        assert status.refused_total == 2
        assert {revision.revision.local.path for revision in status.installed.values()  # type: ignore[union-attr]
                } == {str(fleet.bundles["v3"])}
        deployments = {deployment for _, deployment in fleet.hosts[host_id].hook_runs()}
        assert len(deployments) == 3, f"{host_id} ran {deployments}: the three genuine deployments only"
    shown = fleet.reconcile("status", "web")
    assert shown.returncode == 0, shown.stderr
    assert "refused 2 commands" in shown.stdout, shown.stdout

    # 8. The confused deputy: the group record altered so that its last good revision is the attacker's bundle,
    # then a revision that fails everywhere. Rolling back to "the last good revision" must not mean signing a
    # command for the attacker's bundle: the altered record is read as no record at all.
    group_key = "groups/hello/web.json"
    envelope = json.loads(fleet.raw.get(group_key).data)  # type: ignore[union-attr]
    record = json.loads(base64.b64decode(envelope["payload"]))
    record["effectiveRevision"] = {"local": {"path": str(fleet.bundles["evil"]), "bundleType": "directory"}}
    envelope["payload"] = base64.b64encode(json.dumps(record).encode()).decode()
    fleet.raw.put(group_key, json.dumps(envelope).encode())
    fleet.config.write("manifests/hello.yaml", MANIFESTS.format(path=fleet.bundles["broken"]) + ROLLBACK)
    fleet.config.commit("deploy a broken revision, with automatic rollback")
    failed = fleet.reconcile("--once")
    # No trusted record, so no known last good revision: the failure is not rolled back (exit 4), and above all
    # not rolled back to the revision the altered record names.
    assert failed.returncode == 4, failed.stdout + failed.stderr
    assert "no rollback: the group has no" in failed.stdout, failed.stdout
    for host_id in [*PROTECTED, CONTROL]:
        rolled_back = [run for run in fleet.evil_runs(host_id) if run[1] != "evil-control"]
        assert rolled_back == [], f"{host_id} was rolled back to the attacker's bundle"
        assert all(revision.revision.local.path != str(fleet.bundles["evil"])  # type: ignore[union-attr]
                   for revision in fleet.status(host_id).installed.values())


def _restart_trusting(fleet: Fleet, *keys: str) -> None:
    for host_id in PROTECTED:
        host = fleet.hosts[host_id]
        host.stop()
        host.env["FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS"] = "\n".join(keys)
        host.start()
    fleet.wait(lambda: all(fleet.status(h).installation_id for h in PROTECTED), "agents restarted")


@pytest.mark.parametrize("fleet", ["file"], indirect=True)
def test_the_key_rotates_without_downtime_and_the_old_key_is_refused_afterwards(fleet: Fleet) -> None:
    fleet.deploy("v1")
    old = fleet.signer
    new_file = fleet.tmp / "signing-new.pem"
    subprocess.run([str(BIN / "reconcile"), "keys", "generate", "--out", str(new_file)], check=True,
                   capture_output=True)
    new = Signer.load(new_file.read_bytes(), str(new_file))

    # 1. Agents trust both keys.  2. The reconciler signs with the new one and still accepts the old one's records.
    _restart_trusting(fleet, old.public.text, new.public.text)
    fleet.key_file, fleet.signer = new_file, new
    settings = fleet.tmp / "deploy.yaml"
    settings.write_text(f"signing:\n  trustedKeys:\n    - {old.public.text}\n")
    fleet.config.write("manifests/hello.yaml", MANIFESTS.format(path=fleet.bundles["v2"]))
    fleet.config.commit("deploy v2")
    result = fleet.reconcile("--config", str(settings), "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(fleet.envelope("host-1"))["signatures"][0]["keyId"] == new.public.key_id

    # 3. Re-sign what the old key signed (group record, deployments, idle hosts' commands).
    resealed = fleet.reconcile("--config", str(settings), "keys", "reseal")
    assert resealed.returncode == 0, resealed.stdout + resealed.stderr
    assert "resealed" in resealed.stdout and "with " + new.public.key_id in resealed.stdout
    for prefix in ("commands/", "groups/", "deployments/"):
        for entry in fleet.raw.list(prefix):
            stored = fleet.raw.get(entry.key)
            assert stored is not None
            assert json.loads(stored.data)["signatures"][0]["keyId"] == new.public.key_id, entry.key

    # 4. The old key is dropped everywhere; deployments go on, and a command signed with the old key is refused.
    _restart_trusting(fleet, new.public.text)
    fleet.deploy("v3")
    audience = store_audience(fleet.raw)
    stale = fleet.evil_command("host-1", fleet.generation("host-1") + 50, "old-key").to_json()
    fleet.raw.put(command_key("host-1"), old.sign(audience=audience, key=command_key("host-1"), payload=stale))
    fleet.wait(lambda: fleet.refusals("host-1"), "host-1 to refuse the old key's command")
    assert "does not trust" in fleet.refusals("host-1")[0] and old.public.key_id in fleet.refusals("host-1")[0]
    assert all(fleet.evil_runs(h) == [] for h in PROTECTED)


#: The same group, selecting hosts by role instead of app.
MEMBERSHIP = MANIFESTS.replace("key: app\n          value: hello", "key: role\n          value: web")


def test_a_registration_rewritten_into_another_group_runs_nothing(tmp_path: Path) -> None:
    """Registrations are written by agents and not signed. Rewriting db-1's tags in the store puts it in the web
    group as the reconciler sees it, and the reconciler signs the web deployment for it: db-1 checks the group's
    targets in the command against its own settings, refuses, runs nothing, and reports the command failed."""
    url = f"file://{tmp_path / 'store'}"
    key_file = tmp_path / "signing.pem"
    signer = Signer.generate()
    key_file.write_bytes(signer.private_pem())
    bundle = make_bundle(tmp_path / "bundles" / "v1", "v1")
    hosts = {}
    for host_id, role in (("web-1", "web"), ("db-1", "db")):
        env = {"FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS": signer.public.text,
               "FLEETSHIFT_AGENT_TAGS": f"role={role}"}
        hosts[host_id] = Host(host_id, tmp_path / host_id, url, env=env)
    fleet = Fleet(tmp_path, url, open_store(url), {}, key_file, signer, hosts, ConfigRepo(tmp_path / "config"),
                  {"v1": bundle})
    try:
        for host in hosts.values():
            host.start()
        fleet.wait(lambda: all(fleet.raw.get(status_key(h)) is not None for h in hosts), "agents registered")
        registration_key = "hosts/db-1/registration.json"
        registration = json.loads(fleet.raw.get(registration_key).data)  # type: ignore[union-attr]
        assert registration["tags"]["role"] == "db"
        registration["tags"]["role"] = "web"
        fleet.raw.put(registration_key, json.dumps(registration).encode())

        fleet.config.write("manifests/hello.yaml", MEMBERSHIP.format(path=bundle))
        fleet.config.commit("deploy v1 to the web hosts")
        result = fleet.reconcile("--once")
        # AllAtOnce tolerates any failure (minimum healthy 0): the deployment succeeds on web-1, db-1 failed.
        assert result.returncode == 0, result.stdout + result.stderr
        sealed = seal_store(open_store(url))
        group = json.loads(sealed.get("groups/hello/web.json").data)  # type: ignore[union-attr]
        deployment = json.loads(sealed.get(f"deployments/{group['history'][-1]}.json").data)  # type: ignore[union-attr]
        assert deployment["hosts"]["db-1"]["status"] == "Failed"
        assert "refused by the agent" in deployment["hosts"]["db-1"]["message"], deployment["hosts"]["db-1"]
        assert hosts["db-1"].hook_runs() == [], "db-1 ran the web group's hooks"
        assert [event for event, _ in hosts["web-1"].hook_runs()][-1] == "ValidateService"
        assert "not in deployment group web" in fleet.refusals("db-1")[0]
    finally:
        for host in hosts.values():
            host.stop()
