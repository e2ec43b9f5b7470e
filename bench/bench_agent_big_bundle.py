"""A big zip bundle deployed whole by the agent, against the physical floor: `unzip` + `cp -a` of the same tree.

A 10,000-file, ~100 MB bundle (100 folders of 100 files, text-like content) as a zip, its appspec installing
`app/` to `/srv/app` with no hooks. Each round, alternating:

- `first`: a whole deployment (DownloadBundle, Install and the empty hook events, through
  `LifecycleRunner.run`) into a fresh deployment root and host root; the floor is `unzip -q` into a fresh
  folder plus `cp -a` of the unpacked `app/` to the destination;
- `redeploy`: a second deployment of the same bundle into the same group, which first removes the previous
  revision's 10,000 files (steady state); the floor adds `rm -rf` of the installed tree before its `cp -a`.

Medians of wall time and of CPU time (this process and its children) are printed, and their ratios. Issue 18
asks for the whole deployment at most 0.9x codedeploy-local's time; that ratio is measured outside the
project, this one against the tools every host has.

    .venv/bin/python bench/bench_agent_big_bundle.py [--rounds 5] [--files 10000] [--megabytes 100] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.lifecycle.runner import LifecycleRunner, RunnerSettings
from contract.logs import configure_logging
from contract.vocabulary import DEFAULT_EVENTS
from contract.wire import HostCommand, LocalLocation, Revision

APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /srv/app\n"


def make_bundle(scratch: Path, files: int, total_bytes: int) -> Path:
    """The tree under `scratch/src`, zipped (deflated) to `scratch/bundle.zip`."""
    source = scratch / "src"
    per_file = total_bytes // files
    folders = max(1, files // 100)
    for index in range(files):
        folder = source / "app" / f"dir{index % folders:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        raw = os.urandom(per_file * 3 // 4)
        (folder / f"file{index:05d}.txt").write_bytes(base64.b64encode(raw)[:per_file])
    (source / "appspec.yml").write_text(APPSPEC)
    bundle = scratch / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            archive.write(path, path.relative_to(source).as_posix())
    return bundle


class Deployer:
    """One deployment root and host root; `deploy()` runs the next deployment of the bundle into one group."""

    def __init__(self, base: Path, bundle: Path) -> None:
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.runner = LifecycleRunner(RunnerSettings(root_dir=base / "root", host_root=base / "host"))
        self.revision = Revision(local=LocalLocation(path=str(bundle), bundle_type="zip"))
        self.generation = 0

    def deploy(self) -> None:
        self.generation += 1
        command = HostCommand(
            host_id="bench", generation=self.generation, deployment_id=f"d-BIG{self.generation:06d}",
            application="bench", deployment_group="bench", deployment_group_id="dg-bench",
            revision=self.revision, events=list(DEFAULT_EVENTS), created_at=datetime.now(UTC),
        )
        outcome = self.runner.run(command)
        if outcome.status != "Succeeded":
            raise SystemExit(f"the deployment failed: {outcome.message}")


def floor(bundle: Path, base: Path, *, remove_installed: bool) -> None:
    """What any deployment of this bundle must do at least: unpack it, (remove the old tree,) copy it in place."""
    unpacked = base / f"unpacked-{time.monotonic_ns()}"
    destination = base / "host" / "srv"
    subprocess.run(["unzip", "-q", str(bundle), "-d", str(unpacked)], check=True)
    if remove_installed:
        subprocess.run(["rm", "-rf", str(destination / "app")], check=True)
    destination.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(unpacked / "app"), str(destination / "app")], check=True)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(action: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `action`."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    action()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="scratch folder (default: /dev/shm, tmpfs, so the disk does not dominate)")
    options = parser.parse_args()
    if shutil.which("unzip") is None:
        raise SystemExit("unzip is not installed (apt-get install unzip): it is the floor this bench measures")
    configure_logging("warning")
    results: dict[str, list[tuple[float, float]]] = {
        "first_agent": [], "first_floor": [], "redeploy_agent": [], "redeploy_floor": []}
    with tempfile.TemporaryDirectory(prefix="bench-big-bundle-", dir=options.dir) as scratch_text:
        scratch = Path(scratch_text)
        bundle = make_bundle(scratch, options.files, options.megabytes << 20)
        for _ in range(options.rounds):
            # Setting up and clearing each side's folders is not timed.
            deployer = Deployer(scratch / "agent", bundle)
            results["first_agent"].append(timed(deployer.deploy))
            floor_base = scratch / "floor"
            shutil.rmtree(floor_base, ignore_errors=True)
            floor_base.mkdir()
            results["first_floor"].append(timed(lambda base=floor_base: floor(bundle, base, remove_installed=False)))
            results["redeploy_agent"].append(timed(deployer.deploy))
            results["redeploy_floor"].append(timed(lambda base=floor_base: floor(bundle, base, remove_installed=True)))
        size = sum(p.stat().st_size for p in (scratch / "src").rglob("*") if p.is_file())
        print(f"big_bundle_files: {options.files} files")
        print(f"big_bundle_size: {size / 1e6:.1f} MB")
        print(f"big_bundle_zip_size: {bundle.stat().st_size / 1e6:.1f} MB")
    for phase in ("first", "redeploy"):
        agent, physical = results[f"{phase}_agent"], results[f"{phase}_floor"]
        agent_wall = statistics.median(wall for wall, _ in agent)
        floor_wall = statistics.median(wall for wall, _ in physical)
        agent_cpu = statistics.median(cpu for _, cpu in agent)
        floor_cpu = statistics.median(cpu for _, cpu in physical)
        print(f"big_bundle_{phase}_agent: {agent_wall * 1000:.0f} ms")
        print(f"big_bundle_{phase}_unzip_cp: {floor_wall * 1000:.0f} ms")
        print(f"big_bundle_{phase}_ratio: {agent_wall / floor_wall:.2f} x")
        print(f"big_bundle_{phase}_agent_cpu: {agent_cpu * 1000:.0f} ms")
        print(f"big_bundle_{phase}_unzip_cp_cpu: {floor_cpu * 1000:.0f} ms")
        print(f"big_bundle_{phase}_cpu_ratio: {agent_cpu / floor_cpu:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
