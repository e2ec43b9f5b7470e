"""The shell's EC2 membership reads: once per set of targets per 15 s, an error kept as an unknown membership and
logged, the hosts of a deployment in flight looked up by id, and the `--once` summary's warnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.core import Ec2Instance, Ec2Membership, Observed
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired, TargetsSpec
from reconciler.desired.sources import ManifestFile
from reconciler.shell.fleet import FleetShell

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _desired(*targets: str) -> Desired:
    docs = ["apiVersion: deploy/v1\nkind: Application\nmetadata: {name: shop}\n"]
    for n, target in enumerate(targets):
        docs.append(f"""apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: g{n}}}
spec:
  application: shop
  revision: {{local: {{path: b.zip, bundleType: zip}}}}
  targets: {target}
""")
    return load_files([ManifestFile("m.yaml", "---\n".join(docs).encode())], commit="c1")


class FakeReader:
    def __init__(self, region: str | None) -> None:
        self.region = region
        self.reads: list[TargetsSpec] = []
        self.error: str | None = None

    def read(self, targets: TargetsSpec, now: datetime) -> Ec2Membership:
        self.reads.append(targets)
        return Ec2Membership(read_at=now, instances=(Ec2Instance("i-1", "running"),), error=self.error)

    def look_up(self, read: Ec2Membership, ids: Any) -> Ec2Membership:
        return read

    def close(self) -> None:
        pass


def test_reads_are_shared_by_equal_targets_and_kept_15_seconds() -> None:
    now = [T0]
    readers: list[FakeReader] = []

    def factory(region: str | None) -> Any:
        readers.append(FakeReader(region))
        return readers[-1]

    shell = FleetShell(clock=lambda: now[0], reader=factory)
    desired = _desired("{autoScalingGroups: [a]}", "{autoScalingGroups: [a]}", "{hosts: [h]}",
                       "{autoScalingGroups: [b], region: eu-west-1}")
    observed = shell.observe(desired, Observed())
    assert sorted(observed.ec2) == ["shop/g0", "shop/g1", "shop/g3"]
    assert sorted(r.region or "-" for r in readers) == ["-", "eu-west-1"]
    assert sum(len(r.reads) for r in readers) == 2
    now[0] = T0 + timedelta(seconds=10)
    shell.observe(desired, Observed())
    assert sum(len(r.reads) for r in readers) == 2
    now[0] = T0 + timedelta(seconds=16)
    shell.observe(desired, Observed())
    assert sum(len(r.reads) for r in readers) == 4


def test_groups_without_ec2_targets_cost_nothing() -> None:
    shell = FleetShell(clock=lambda: T0, reader=lambda region: (_ for _ in ()).throw(AssertionError("read")))
    observed = Observed()
    assert shell.observe(_desired("{hosts: [h]}"), observed) is observed
