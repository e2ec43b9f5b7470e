"""Reading the store into Observed/State: only changed objects are fetched, heartbeats alone do not count as
a change that needs a pass, and one unreadable document does not stop the fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract.keys import WARM_START_KEY, status_key
from contract.store import ObjectVersion, Store, StoredObject, open_store
from reconciler.settings import ReconcileSettings
from reconciler.shell.lease import WriteLease
from reconciler.shell.observe import StoreReader
from reconciler.shell.passes import PassRunner
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, settings_overrides


class CountingStore:
    """The real FileStore, counting the objects read (bodies, not listings)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.reads: list[str] = []

    def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
        self.reads.append(key)
        return self.inner.get(key, if_version_not=if_version_not)

    def put(self, key: str, data: bytes) -> str:
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self.inner.put_if_absent(key, data)

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        return self.inner.put_if_version(key, data, version)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> list[ObjectVersion]:
        return self.inner.list(prefix)


def test_a_second_snapshot_reads_only_what_changed(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    agents = ScriptedAgents(store, [f"h{i:03}" for i in range(40)])
    agents.register()
    counting = CountingStore(store)
    reader = StoreReader(counting)

    first = reader.snapshot()
    assert len(first.observed.registrations) == 40
    # Every registration and status, once, and (a store not known to be local) the warm-start cache, absent.
    assert sorted(counting.reads) == sorted([WARM_START_KEY, *(f"hosts/h{i:03}/{name}" for i in range(40)
                                                               for name in ("registration.json", "status.json"))])

    counting.reads.clear()
    reader.snapshot()
    assert counting.reads == []  # nothing changed: listings only

    agents.heartbeat()  # every agent reports
    store.put(status_key("h007"), store.get(status_key("h007")).data)  # type: ignore[union-attr]
    counting.reads.clear()
    again = reader.snapshot()
    assert sorted(set(counting.reads)) == sorted(status_key(h) for h in agents.hosts)
    assert "hosts/h000/registration.json" not in counting.reads
    assert again.observed.statuses["h001"].heartbeat_at > first.observed.statuses["h001"].heartbeat_at


def test_heartbeats_alone_do_not_trigger_a_pass_but_results_do(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    config.set_group(group_manifest())
    agents = ScriptedAgents(store, ["h1", "h2"])
    agents.register()
    reader = StoreReader(store)
    reader.snapshot()
    assert reader.poll_hosts() is False
    agents.heartbeat()
    assert reader.poll_hosts() is False

    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(store, duration=settings.lease_duration)
    assert lease.try_acquire()
    PassRunner(store, lease, settings, reader=reader).run_pass(config.desired())
    assert reader.poll_hosts() is False  # our own writes are not agent reports
    assert agents.answer() == ["h1", "h2"]
    assert reader.poll_hosts() is True
    assert reader.poll_hosts() is False

    ScriptedAgents(store, ["h3"]).register()  # a host joins
    assert reader.poll_hosts() is True


def test_our_own_writes_are_never_read_back(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    config.set_group(group_manifest())
    agents = ScriptedAgents(store, ["h1", "h2", "h3"])
    agents.register()
    counting = CountingStore(store)
    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(counting, duration=settings.lease_duration)
    assert lease.try_acquire()
    runner = PassRunner(counting, lease, settings)
    first = runner.run_pass(config.desired())
    assert first.wrote
    counting.reads.clear()
    runner.run_pass(config.desired())
    assert [key for key in counting.reads if not key.startswith("leases/")] == []


def test_an_unreadable_agent_document_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    agents = ScriptedAgents(store, ["good", "bad"])
    agents.register()
    store.put(status_key("bad"), b'{"schemaVersion": 1, "hostId": "bad", "heartbeatAt": "yesterday"}')
    snapshot = StoreReader(store).snapshot()
    assert set(snapshot.observed.statuses) == {"good"}
    assert set(snapshot.observed.registrations) == {"good", "bad"}


def test_oversized_and_deeply_nested_agent_documents_are_skipped_not_fatal(tmp_path: Path) -> None:
    """A hostile or broken agent must not stop every pass: a status over the read limit is never read into
    memory, and one nested past the parser's recursion limit is skipped like any unreadable document."""
    store = open_store(f"file://{tmp_path / 'store'}")
    agents = ScriptedAgents(store, ["good", "huge", "deep"])
    agents.register()
    store.put(status_key("huge"), b'{"schemaVersion": 1, "hostId": "huge", "x": "' + b"a" * (2 << 20) + b'"}')
    store.put(status_key("deep"), b"[" * 100_000 + b"]" * 100_000)
    snapshot = StoreReader(store).snapshot()
    assert set(snapshot.observed.statuses) == {"good"}
    assert set(snapshot.observed.registrations) == {"good", "huge", "deep"}


def test_host_id_conflicts_are_observed_for_status(tmp_path: Path) -> None:
    """Two installations on one host id show up as observed data: a registration and a status written by
    different installations, and the records agents leave when refused; resolved records and documents
    from agents older than installation ids do not."""
    from datetime import UTC, datetime

    from contract.keys import conflict_key, registration_key
    from contract.models import ConflictReason, HostConflict, HostRegistration, HostStatus
    from contract.store.docs import write_document
    from reconciler.shell.observe import identity_problems

    store = open_store(f"file://{tmp_path / 'store'}")
    now = datetime.now(UTC)

    def host(host_id: str, owner: str | None, writer: str | None) -> None:
        write_document(store, registration_key(host_id), HostRegistration(
            host_id=host_id, installation_id=owner, platform="linux", hostname=f"{host_id}-vm", agent_version="1",
            registered_at=now))
        write_document(store, status_key(host_id), HostStatus(
            host_id=host_id, installation_id=writer, heartbeat_at=now, agent_version="1"))

    def conflict(host_id: str, installation: str, reason: ConflictReason, resolved: bool = False) -> None:
        write_document(store, conflict_key(host_id, installation), HostConflict(
            host_id=host_id, installation_id=installation, hostname="clone-vm", reason=reason, detected_at=now,
            other_installation_id="a1", other_hostname="web-1-vm", message="...",
            resolved_at=now if resolved else None))

    host("web-1", "a1", "a1")
    conflict("web-1", "b2", ConflictReason.REFUSED)
    host("web-2", "c3", "d4")
    host("web-3", None, None)  # an agent older than installation ids
    host("web-4", "e5", None)
    conflict("web-4", "f6", ConflictReason.OVERWRITTEN, resolved=True)

    snapshot = StoreReader(store).snapshot()
    assert sorted(snapshot.observed.registrations) == ["web-1", "web-2", "web-3", "web-4"]
    assert [c.installation_id for c in snapshot.observed.conflicts["web-1"]] == ["b2"]
    assert "web-4" not in snapshot.observed.conflicts

    problems = identity_problems(snapshot.observed)
    assert [(p.host_id, p.kind) for p in problems] == [("web-1", "refused"), ("web-2", "mixed")]
    assert problems[0].message.startswith("installation b2 on clone-vm was refused because installation a1 on "
                                          "web-1-vm owns this host id; that machine gets no deployments")
    assert "registration by installation c3 on web-2-vm but status by installation d4" in problems[1].message
    assert problems[0].since == now


def test_a_cold_read_of_a_local_store_sees_what_listing_then_reading_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first snapshot of a process on a file store reads `hosts/` whole (`read_folders`: each agent's documents
    opened by name, no listing of its folder, no `stat`): the same registrations, statuses, conflicts, skipped
    documents and versions as the listing path that S3 and every later snapshot take; and the snapshot after it
    re-reads only what changed."""
    from contract.keys import conflict_key
    from contract.store.file import FileStore

    store = open_store(f"file://{tmp_path / 'store'}")
    agents = ScriptedAgents(store, [f"h{i:02}" for i in range(12)])
    agents.register()
    store.put(status_key("h03"), b"not json")
    store.put("hosts/h04/notes.txt", b"a stray file")
    store.put(conflict_key("h05", "other"), b'{"schemaVersion": 1}')
    whole_reads: list[str] = []
    real = FileStore.read_folders

    def counted(self: FileStore, prefix: str, *args: Any, **kwargs: Any) -> list[StoredObject]:
        whole_reads.append(prefix)
        return real(self, prefix, *args, **kwargs)

    monkeypatch.setattr(FileStore, "read_folders", counted)
    cold_reader = StoreReader(store)
    cold = cold_reader.snapshot()
    assert whole_reads == ["hosts/"]
    listing_reader = StoreReader(store)
    listing_reader._local = False  # the S3 way: list, then read every key listed
    listed = listing_reader.snapshot()
    assert whole_reads == ["hosts/"]
    assert cold == listed
    assert len(cold.observed.registrations) == 12 and "h03" not in cold.observed.statuses

    agents.heartbeat()
    again = cold_reader.snapshot()
    assert whole_reads == ["hosts/"]  # warm now: listings, and only the statuses that moved
    assert cold_reader.last_fetch_count == 12  # the twelve statuses; no registration, no conflict record
    assert "h03" in again.observed.statuses  # its agent wrote a good status over the bad one
    assert again.observed.statuses["h01"].heartbeat_at > cold.observed.statuses["h01"].heartbeat_at


def test_a_cold_read_never_loads_files_an_agent_left_beside_its_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who can write hosts/ can leave files there; the whole-prefix read keeps only the registration, the
    status and conflict records, by name, before reading: forty 1 MiB files beside a status cost nothing."""
    from contract.store.file import FileStore

    store = open_store(f"file://{tmp_path / 'store'}")
    ScriptedAgents(store, ["web-1"]).register()
    for n in range(40):
        store.put(f"hosts/web-1/junk-{n}.json", b"x" * (1 << 20))
    read: list[str] = []
    real = FileStore._read_open

    def counted(fd: int, path: str, key: str) -> StoredObject | None:
        read.append(key)
        return real(fd, path, key)

    monkeypatch.setattr(FileStore, "_read_open", staticmethod(counted))
    snapshot = StoreReader(store).snapshot()
    assert set(snapshot.observed.statuses) == {"web-1"}
    assert not [key for key in read if "junk" in key]
    assert {"hosts/web-1/registration.json", "hosts/web-1/status.json"} <= set(read)


def test_a_pass_freezes_what_its_cold_read_loaded_and_thaws_it_when_it_ends(tmp_path: Path) -> None:
    """A pass's first read of a local store moves the fleet out of the collector's sight (`gc.freeze`, so its
    full collections do not walk every document again) and the pass gives it back when it ends, whatever the end:
    nothing stays frozen, so nothing that dies later in a reference cycle is kept. A reader on its own (`status`,
    `plan`) never freezes."""
    import gc

    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    config.set_group(group_manifest())
    ScriptedAgents(store, ["h1", "h2"]).register()
    StoreReader(store).snapshot()
    assert gc.get_freeze_count() == 0

    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(store, duration=settings.lease_duration)
    assert lease.try_acquire()
    frozen_during: list[int] = []

    def look(_: object) -> None:
        frozen_during.append(gc.get_freeze_count())

    runner = PassRunner(store, lease, settings)
    runner.run_pass(config.desired(), before_decide=look)
    assert frozen_during[0] > 0 and gc.get_freeze_count() == 0

    def refuse(_: object) -> None:
        raise RuntimeError("a stale plan")

    cold = PassRunner(store, lease, settings)
    with pytest.raises(RuntimeError, match="stale plan"):
        cold.run_pass(config.desired(), before_decide=refuse)
    assert gc.get_freeze_count() == 0
