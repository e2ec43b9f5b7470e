"""Reading the store into the core's inputs: `Observed` (what agents report) and `State` (what the reconciler
wrote before), plus the version of every reconciler-owned document for the executor's compare-and-swap.

Where it sits: first step of every pass, after the manifests are loaded and before `reconcile()` decides.

Cost model: a pass lists `hosts/`, `groups/`, `deployments/`, `commands/`, `traffic/` and `events/fleet.json`
(keys and versions only, no bodies) and fetches only the objects whose version differs from the one cached from
the previous pass. On a quiet 10,000-host fleet a pass therefore moves a few listing pages, not 20,000
documents; after a heartbeat round it re-reads exactly the statuses that changed. Objects this process wrote
itself are put straight into the cache by the executor, so they are never read back. On a remote store (S3)
the listings run at once and the reads of every kind of document go out as one parallel batch, so a pass
waits for about two listing round trips and one batch of reads (issue 18). A local store is read without
threads, by its own batch read (`contract.store.bulk.get_many`: one marker check per batch, each file read at
its size); and a process's first snapshot of it reads `hosts/` whole (`read_folders`), opening each agent's
documents by name with no listing of its folder and no `stat`, which is what the first pass of every
`reconcile --once` and `plan` does.

Host identity: each agent installation stamps its registration and status with its `installationId`, and
an installation that could not use its host id (another owns it) leaves `hosts/<id>/conflicts/<installation>.json`.
Both are read here as observed data (`Observed.conflicts`, `identity_problems`) for `reconcile status`; no
decision depends on them.

A document an agent wrote that does not parse (a newer schema, a truncated hand edit) is logged once per
version and treated as absent: one bad host must not stop the fleet's reconciliation.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog

from contract.keys import (
    COMMANDS_PREFIX,
    CONFLICTS_FOLDER,
    DEPLOYMENTS_PREFIX,
    FLEET_EVENTS_KEY,
    GROUPS_PREFIX,
    HOSTS_PREFIX,
    REGISTRATION_NAME,
    STATUS_NAME,
    TRAFFIC_PREFIX,
    deployment_key,
)
from contract.models import (
    ConflictReason,
    Deployment,
    Document,
    FleetEventLog,
    GroupState,
    HostCommand,
    HostConflict,
    HostRegistration,
    HostStatus,
    HostTraffic,
    group_key,
)
from contract.store import ObjectVersion, Store, StoredObject
from contract.store.bulk import get_many, open_raw, read_folders
from contract.store.docs import DocumentInvalid, bulk_parsing, parse_document
from reconciler.core import Observed, State
from reconciler.core.traffic import waiting_step
from reconciler.settings import DEFAULT_WARM_START_INTERVAL
from reconciler.shell import warmstart

log = structlog.get_logger(__name__)

DocumentT = TypeVar("DocumentT", bound=Document)

#: What a pass lists besides `hosts/`: the reconciler's own records.
_RECORD_PREFIXES = (GROUPS_PREFIX, COMMANDS_PREFIX, TRAFFIC_PREFIX, FLEET_EVENTS_KEY, DEPLOYMENTS_PREFIX)


@dataclass(frozen=True)
class Snapshot:
    """One consistent-enough view of the store for one pass.

    `versions` holds the version of every reconciler-owned key that exists (groups, deployments, commands,
    traffic records);
    a key missing from it did not exist when read, so the executor creates it with `put_if_absent`.
    """

    observed: Observed
    state: State
    versions: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Entry(Generic[DocumentT]):
    version: str
    document: DocumentT | None


class _Table(Generic[DocumentT]):
    """Cached documents of one kind, keyed by store key, each with the version it was read at."""

    def __init__(self, model: type[DocumentT]) -> None:
        self.model = model
        self.entries: dict[str, _Entry[DocumentT]] = {}
        #: Versions of every listed key, including those not fetched (unreferenced deployments).
        self.listed: dict[str, str] = {}

    def parse(self, stored: StoredObject) -> DocumentT | None:
        """The document, or None (logged) when it cannot be read: too big, not JSON, too deep, another schema.
        One bad document written by somebody else must not stop every pass."""
        try:
            return parse_document(stored, self.model)
        except DocumentInvalid as exc:
            log.warning("observe.unreadable", key=stored.key, version=stored.version, error=str(exc))
            return None

    def documents(self) -> Iterable[tuple[str, DocumentT]]:
        for key, entry in self.entries.items():
            if entry.document is not None:
                yield key, entry.document


@dataclass(frozen=True)
class _Sync(Generic[DocumentT]):
    """One table to bring up to date with a listing (see `StoreReader._sync_all`)."""

    table: _Table[DocumentT]
    listed: Mapping[str, str]
    #: Only these keys are read (None: every key listed).
    wanted: set[str] | None = None


#: A table of the reconciler's own records.
_RecordTable = (
    _Table[GroupState] | _Table[Deployment] | _Table[HostCommand] | _Table[HostTraffic] | _Table[FleetEventLog]
)


class StoreReader:
    """Reads the store for passes, `status` and the watch loop, re-reading only what changed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: A store on this machine (`FileStore.local`): read serially, list one prefix after another.
        self._local = bool(getattr(store, "local", False))
        self._registrations: _Table[HostRegistration] = _Table(HostRegistration)
        self._statuses: _Table[HostStatus] = _Table(HostStatus)
        self._conflicts: _Table[HostConflict] = _Table(HostConflict)
        self._groups: _Table[GroupState] = _Table(GroupState)
        self._deployments: _Table[Deployment] = _Table(Deployment)
        self._commands: _Table[HostCommand] = _Table(HostCommand)
        self._traffic: _Table[HostTraffic] = _Table(HostTraffic)
        self._fleet_events: _Table[FleetEventLog] = _Table(FleetEventLog)
        #: The agents' documents under `hosts/`, and the reconciler's own records (whose versions a pass writes by).
        self._host_tables: tuple[_Table[Any], ...] = (self._conflicts, self._registrations, self._statuses)
        self._record_tables: tuple[_Table[Any], ...] = (
            self._groups, self._deployments, self._commands, self._traffic, self._fleet_events)
        #: Each host's `_fingerprint` as of the last snapshot or poll (None: not computed since the snapshot).
        self._host_fingerprints: dict[str, tuple[object, ...]] | None = {}
        #: How many objects the last `snapshot()` fetched (the rest came from the cache); for benchmarks.
        self.last_fetch_count = 0
        #: After a cold read of `hosts/`, move everything alive (the fleet just read, the modules) out of the
        #: collector's sight with `gc.freeze()`: each full collection of the pass would otherwise walk every
        #: document again, ~1 s each at 100,000 hosts (issue 18: 9.6-11.4 s -> 7.2-10 s, a whole `--once`). Only for a
        #: caller that calls `gc.unfreeze()` when its pass ends (`PassRunner`): frozen objects that die in a
        #: reference cycle are not collected until then.
        self.freeze_cold_reads = False
        #: Remote stores: the warm-start cache's entries (reconciler/shell/warmstart.py), loaded by this process's
        #: first snapshot and dropped after it.
        self._warm: dict[str, warmstart.Cached] = {}
        self._warm_loaded = False
        self._snapshots_taken = 0
        #: Set by the lease holder (`PassRunner`) before its first snapshot: from a remote store's cold read on, keep
        #: what a new cache would hold, as later reads and this process's own writes change it, for
        #: `save_warm_start` after the first pass and `refresh_warm_start` after the others.
        self.writes_warm_start = False
        #: The least time between two caches a `refresh_warm_start` writes (`reconcile.warmStartInterval`).
        self.warm_start_interval: timedelta = DEFAULT_WARM_START_INTERVAL
        #: What a new cache would hold, kept current (None: no cache is kept).
        self._keeper: warmstart.Keeper | None = None
        #: Cacheable documents the first snapshot took from the cache / had to fetch; for the log and benchmarks.
        self.warm_start_hits = 0
        self.warm_start_misses = 0
        #: True only while a remote store's first snapshot reads: what `_note_reads` counts as hits and misses.
        self._cold_remote_read = False

    # ----------------------------------------------------------------------------------------------
    # Fetching

    def _fetch(self, keys: list[str]) -> dict[str, StoredObject | None]:
        # The store's own batch read: the file store's at system-call speed, threads for S3's round trips.
        return get_many(self.store, keys)

    def _sync(self, table: _Table[DocumentT], listed: Mapping[str, str], wanted: set[str] | None = None) -> set[str]:
        """Bring `table` up to date with a listing; fetch only keys whose version changed (and, when `wanted`
        is given, only those keys). Returns the keys whose document changed."""
        return self._sync_all([_Sync(table, listed, wanted)])

    def _sync_all(self, syncs: list[_Sync[Any]]) -> set[str]:
        """`_sync` for several tables, with one read of every stale key of all of them: on S3 a pass then waits for
        one batch of parallel GETs, not one per kind of document."""
        stale: list[tuple[_Sync[Any], list[str]]] = []
        for sync in syncs:
            table = sync.table
            table.listed = dict(sync.listed)
            for gone in set(table.entries) - set(sync.listed):
                del table.entries[gone]
                self._forget(gone)
            stale.append((sync, [
                key
                for key, version in sync.listed.items()
                if (sync.wanted is None or key in sync.wanted)
                and (key not in table.entries or table.entries[key].version != version)
            ]))
        # What the warm-start cache holds at the very version listed is taken from it instead of read, and checked
        # as a read would be (a signed record's envelope against the keys trusted now).
        cached: list[StoredObject] = []
        if self._warm:
            for sync, keys in stale:
                for key in keys:
                    entry = self._warm.get(key)
                    if entry is not None and entry.version == sync.listed[key]:
                        cached.append(StoredObject(key, entry.data, entry.version))
        seeded: dict[str, StoredObject | None] = {stored.key: stored for stored in open_raw(self.store, cached)}
        fetched = self._fetch([key for _, keys in stale for key in keys if key not in seeded])
        self._note_reads(fetched, seeded)
        fetched.update(seeded)
        changed: set[str] = set()
        with bulk_parsing():
            for sync, keys in stale:
                table = sync.table
                for key in keys:
                    stored = fetched[key]
                    if stored is None:  # deleted between the listing and the read
                        table.entries.pop(key, None)
                        table.listed.pop(key, None)
                        changed.add(key)
                        continue
                    table.entries[key] = _Entry(stored.version, table.parse(stored))
                    table.listed[key] = stored.version
                    changed.add(key)
                self.last_fetch_count += len(keys)
        self.last_fetch_count -= len(seeded)
        return changed

    def _note_reads(self, fetched: Mapping[str, StoredObject | None], seeded: Mapping[str, StoredObject | None]
                    ) -> None:
        """During a remote store's first snapshot, count what the cache saved and what it would have saved; while a
        cache is kept, keep what was read (the bytes as the backend holds them, refused records included: used from
        the cache they are refused again, as a GET of them would be)."""
        if self._cold_remote_read:
            self.warm_start_hits += len(seeded)
            self.warm_start_misses += sum(
                1 for key, stored in fetched.items()
                if stored is not None and stored.oversize is None and warmstart.cacheable(key))
        if self._keeper is None:
            return
        for found in (fetched, seeded):
            for key, stored in found.items():
                self._keeper.read(key, stored)

    def _forget(self, key: str) -> None:
        """A document gone from the store: no cache entry for it."""
        if self._keeper is not None:
            self._keeper.forget(key)

    def _list(self, prefix: str) -> list[ObjectVersion]:
        return self.store.list(prefix)

    def _list_all(self, prefixes: Iterable[str]) -> dict[str, list[ObjectVersion]]:
        """Several listings; on a remote store all at once (each is at least a round trip, and S3 lists a big
        prefix in ranges at once too, see contract/store/s3.py)."""
        wanted = list(prefixes)
        if self._local or len(wanted) <= 1:
            return {prefix: self._list(prefix) for prefix in wanted}
        with ThreadPoolExecutor(max_workers=len(wanted), thread_name_prefix="observe-list") as pool:
            return dict(zip(wanted, pool.map(self._list, wanted), strict=True))

    # ----------------------------------------------------------------------------------------------
    # Hosts

    def _host_table(self, key: str) -> _Table[HostRegistration] | _Table[HostStatus] | _Table[HostConflict] | None:
        """The table an agent's document under `hosts/` belongs in, None for anything else there."""
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == CONFLICTS_FOLDER and parts[3].endswith(".json"):
            return self._conflicts  # shown by `status`, never a reason for a pass
        if len(parts) != 3:
            return None
        if parts[2] == REGISTRATION_NAME:
            return self._registrations
        if parts[2] == STATUS_NAME:
            return self._statuses
        return None

    def _sync_hosts(self, listing: list[ObjectVersion] | None = None) -> set[str]:
        listed: dict[_Table[Any], dict[str, str]] = {self._conflicts: {}, self._registrations: {}, self._statuses: {}}
        for item in self._list(HOSTS_PREFIX) if listing is None else listing:
            table = self._host_table(item.key)
            if table is not None:
                listed[table][item.key] = item.version
        changed = self._sync_all([_Sync(table, versions) for table, versions in listed.items()])
        return {key.split("/")[1] for key in changed if key.count("/") == 2}  # conflict records are deeper

    def _hosts_cold(self) -> bool:
        """Nothing of `hosts/` read yet, from a store on this machine: the first snapshot of `--once`, `plan` or
        `status`, which reads the whole prefix at once (`read_folders`) instead of listing it and then reading
        every key it listed. Not on S3, whose listings run at once with the others (`_list_all`)."""
        return self._local and not any(table.listed for table in self._host_tables)

    def _load_hosts(self) -> None:
        """Every agent document under `hosts/`, read whole (see `_hosts_cold`)."""
        # No `gc.collect()` before the `gc.freeze()` below: after the imports that walk costs ~20 ms of every `--once`
        # (issue 18), and what it would find dead is the imports' few cycles, which `run_pass`'s `gc.unfreeze()`
        # hands back to the collector at the end of the pass anyway.
        # Only what `_host_table` knows is read: anything else an agent leaves under hosts/ is never loaded. Each
        # key is classified once, as the walk meets it.
        tables: dict[str, _Table[Any]] = {}

        def keep(key: str) -> bool:
            table = self._host_table(key)
            if table is None:
                return False
            tables[key] = table
            return True

        # Called by `snapshot` only, which already reads with the collector paused (`bulk_parsing`).
        found = read_folders(self.store, HOSTS_PREFIX, (REGISTRATION_NAME, STATUS_NAME), (CONFLICTS_FOLDER,), keep=keep)
        for stored in found:
            table = tables[stored.key]
            table.entries[stored.key] = _Entry(stored.version, table.parse(stored))
            table.listed[stored.key] = stored.version
        self.last_fetch_count += len(found)
        if self.freeze_cold_reads:
            gc.freeze()  # see `freeze_cold_reads`

    def _observed(self) -> Observed:
        conflicts: dict[str, list[HostConflict]] = {}
        for _, doc in sorted(self._conflicts.documents(), key=lambda item: item[1].detected_at):
            if doc.resolved_at is None:
                conflicts.setdefault(doc.host_id, []).append(doc)
        return Observed(
            registrations={doc.host_id: doc for _, doc in self._registrations.documents()},
            statuses={doc.host_id: doc for _, doc in self._statuses.documents()},
            conflicts={host: tuple(found) for host, found in conflicts.items()},
        )

    @staticmethod
    def _fingerprint(registration: HostRegistration | None, status: HostStatus | None) -> tuple[object, ...]:
        """What about a host can change a decision. Heartbeat times are left out on purpose: a heartbeat
        round must not trigger a pass on a quiet fleet (liveness is re-judged by the periodic resync)."""
        reg = (tuple(sorted(registration.tags.items())), registration.zone) if registration else None
        if status is None:
            return (reg, None)
        command = status.command
        # The traffic step a command waits at: reaching BlockTraffic or AllowTraffic needs a pass at once.
        progress = None
        if command is not None:
            progress = (command.deployment_id, command.generation, command.status, waiting_step(command))
        installed = tuple(sorted((k, v.deployment_id) for k, v in status.installed.items()))
        return (reg, progress, installed)

    def _host_fingerprints_now(self) -> dict[str, tuple[object, ...]]:
        observed = self._observed()
        return {
            host: self._fingerprint(observed.registrations.get(host), observed.statuses.get(host))
            for host in observed.host_ids()
        }

    def poll_hosts(self) -> bool:
        """For `watch`: re-read changed agent documents; True when a change can matter to a decision (a
        command finished or started, a host joined, left or changed tags), False for heartbeats only."""
        if self._host_fingerprints is None:  # as of the last snapshot, whose documents the tables still hold
            self._host_fingerprints = self._host_fingerprints_now()
        self._sync_hosts()
        current = self._host_fingerprints_now()
        relevant = current != self._host_fingerprints
        self._host_fingerprints = current
        return relevant

    # ----------------------------------------------------------------------------------------------
    # The reconciler's own records

    def _sync_records(self, listings: Mapping[str, list[ObjectVersion]] | None = None) -> None:
        listed = dict(listings) if listings is not None else self._list_all(_RECORD_PREFIXES)
        groups: dict[str, str] = {}
        for item in listed[GROUPS_PREFIX]:
            if item.key.count("/") == 2 and item.key.endswith(".json"):
                groups[item.key] = item.version
        commands = {
            item.key: item.version
            for item in listed[COMMANDS_PREFIX]
            if item.key.count("/") == 1 and item.key.endswith(".json")
        }
        traffic = {
            item.key: item.version
            for item in listed[TRAFFIC_PREFIX]
            if item.key.count("/") == 1 and item.key.endswith(".json")
        }
        # Listed by its full key, so the notification cursors beside it under `events/` are not listed.
        fleet_events = {item.key: item.version for item in listed[FLEET_EVENTS_KEY] if item.key == FLEET_EVENTS_KEY}
        self._sync_all([
            _Sync(self._groups, groups),
            _Sync(self._commands, commands),
            _Sync(self._traffic, traffic),
            _Sync(self._fleet_events, fleet_events),
        ])

        deployments = {
            item.key: item.version
            for item in listed[DEPLOYMENTS_PREFIX]
            if item.key.count("/") == 1 and item.key.endswith(".json")
        }
        # Only the deployments a group still names are read: finished ones outside every history are kept
        # for people, not for decisions.
        wanted: set[str] = set()
        for _, group in self._groups.documents():
            if group.deployment_in_flight:
                wanted.add(deployment_key(group.deployment_in_flight))
            wanted.update(deployment_key(d) for d in group.history)
        self._sync(self._deployments, deployments, wanted)

    def _state(self) -> State:
        groups = {group_key(doc.application, doc.deployment_group): doc for _, doc in self._groups.documents()}
        wanted_ids = {
            deployment_id
            for group in groups.values()
            for deployment_id in (*group.history, *([group.deployment_in_flight] if group.deployment_in_flight else []))
        }
        deployments = {
            doc.deployment_id: doc for _, doc in self._deployments.documents() if doc.deployment_id in wanted_ids
        }
        commands = {doc.host_id: doc for _, doc in self._commands.documents()}
        traffic = {doc.host_id: doc for _, doc in self._traffic.documents()}
        fleet_events = next((doc for _, doc in self._fleet_events.documents()), None)
        unreadable = fleet_events is None and FLEET_EVENTS_KEY in self._fleet_events.listed
        return State(
            groups=groups, deployments=deployments, commands=commands, traffic=traffic, fleet_events=fleet_events,
            fleet_events_unreadable=unreadable,
        )

    def _versions(self) -> dict[str, str]:
        versions: dict[str, str] = {}
        for table in self._record_tables:
            versions.update(table.listed)
        return versions

    def records(self) -> State:
        """Only the reconciler's own records (groups, the deployments they name, commands, traffic steps, the fleet
        event log), re-reading what changed: what `reconcile events` needs, without reading every host."""
        self.last_fetch_count = 0
        self._sync_records()
        return self._state()

    def snapshot(self) -> Snapshot:
        """Everything a pass needs, re-reading only changed objects."""
        self.last_fetch_count = 0
        with bulk_parsing():  # listings and reads allocate what lives on: the collector would find nothing to free
            return self._snapshot()

    def _snapshot(self) -> Snapshot:
        snapshot = self._read_snapshot()
        # Only a first snapshot reads cold; one that failed (a store outage) leaves the cache's entries for the
        # retry, which uses those a listing still shows.
        self._snapshots_taken += 1
        self._warm = {}
        return snapshot

    def _read_snapshot(self) -> Snapshot:
        if self._hosts_cold():
            self._load_hosts()
            self._sync_records(self._list_all(_RECORD_PREFIXES))
        elif self._remote_cold():
            self._read_remote_cold()
        else:
            listings = self._list_all((HOSTS_PREFIX, *_RECORD_PREFIXES))
            self._sync_hosts(listings[HOSTS_PREFIX])
            self._sync_records(listings)
        # What `poll_hosts` compares against, computed there on first use: `--once` never polls, and a
        # fingerprint of each of 10,000 hosts costs a tenth of a second.
        self._host_fingerprints = None
        return Snapshot(observed=self._observed(), state=self._state(), versions=self._versions())

    def _read_remote_cold(self) -> None:
        """A remote store's first read: the warm-start cache is read beside the listings (one more request in the
        same round trip), then stands in for every document it holds unchanged (`_sync_all`)."""
        if self.writes_warm_start:
            self._keeper = warmstart.Keeper(self.warm_start_interval)
        if self._warm_loaded:  # by a first snapshot that failed
            listings = self._list_all((HOSTS_PREFIX, *_RECORD_PREFIXES))
        else:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe-warm-start") as pool:
                warm = pool.submit(warmstart.load, self.store)
                listings = self._list_all((HOSTS_PREFIX, *_RECORD_PREFIXES))
                self._warm = warm.result()
            self._warm_loaded = True
        self._cold_remote_read = True
        try:
            self._sync_hosts(listings[HOSTS_PREFIX])
            self._sync_records(listings)
        finally:
            self._cold_remote_read = False
        # The cold read is accounted for by its hits and misses; from here on, what changes is counted.
        if self._keeper is not None:
            self._keeper.changes.clear()
        log.info("warm_start.read", from_cache=self.warm_start_hits, fetched=self.warm_start_misses)

    def _remote_cold(self) -> bool:
        """Nothing read yet from a remote store (not even by `poll_hosts` or `records`): the one read the warm-start
        cache is for, and the only one whose documents a new cache is made of."""
        return not self._local and not self._snapshots_taken and not any(
            table.listed for table in (*self._host_tables, *self._record_tables))

    def save_warm_start(self, *, written_at: datetime) -> bool:
        """After the lease holder's first pass: leave a new warm-start cache when the first snapshot fetched, and the
        pass wrote, enough cacheable documents to make one worth its PUT (`warmstart.should_write`). True when
        written. Not a decision, so not under the lease's check: every entry is checked against a listing when used,
        whoever wrote it."""
        if self._keeper is None:
            return False
        saved = self._keeper.save_first(self.store, self._listed_version, hits=self.warm_start_hits,
                                        misses=self.warm_start_misses, written_at=written_at)
        return self._saved(saved)

    def refresh_warm_start(self, *, written_at: datetime) -> bool:
        """After each later pass of the lease holder (a `watch`, or a `--once` that runs long): a new cache once
        more than `REWRITE_MIN` and `REWRITE_SHARE` of its documents changed since the last one (by rollouts:
        commands, deployments, group records; by agents: registrations), at most once per
        `warm_start_interval`. So a `plan` or `--once` beside a `watch` that has run for days starts from what
        the fleet is now, give or take the last interval and a twentieth of it, not from the `watch`'s start."""
        if self._keeper is None:
            return False
        return self._saved(self._keeper.refresh(self.store, self._listed_version, written_at=written_at))

    def _saved(self, saved: warmstart.Saved | None) -> bool:
        if saved is warmstart.Saved.REFUSED:
            # No permission on `cache/`, or more than its readers read: trying again every interval would spend the
            # same work for nothing, and keeping the documents' bytes would cost memory for nothing.
            log.warning("warm_start.given_up", reason="the cache cannot be written; none is kept until a restart")
            self.discard_warm_start()
        return saved is warmstart.Saved.WRITTEN

    def _listed_version(self, key: str) -> str | None:
        table = self._table_for(key)
        return table.listed.get(key) if table is not None else None

    def discard_warm_start(self) -> None:
        """Stop keeping a cache and let go of what it held, for good: its write was refused (`_saved`). (A `watch`
        that loses the lease drops its whole reader instead, and keeps a cache again from its next lead's read.)"""
        self._keeper = None

    # ----------------------------------------------------------------------------------------------
    # Kept in step by the executor and the operator commands

    def record_write(self, key: str, version: str, document: Document) -> None:
        """A document this process just wrote: cache it so the next snapshot does not read it back."""
        table = self._table_for(key)
        if table is None:
            return
        table.entries[key] = _Entry(version, document)  # type: ignore[arg-type]
        table.listed[key] = version
        if self._keeper is not None:
            self._keeper.wrote(key, version, document)

    def record_delete(self, key: str) -> None:
        table = self._table_for(key)
        if table is not None:
            table.entries.pop(key, None)
            table.listed.pop(key, None)
        self._forget(key)

    def _table_for(self, key: str) -> _RecordTable | None:
        if key.startswith(GROUPS_PREFIX):
            return self._groups
        if key.startswith(DEPLOYMENTS_PREFIX):
            return self._deployments
        if key.startswith(COMMANDS_PREFIX):
            return self._commands
        if key.startswith(TRAFFIC_PREFIX):
            return self._traffic
        if key == FLEET_EVENTS_KEY:
            return self._fleet_events
        return None

    def deployment(self, deployment_id: str) -> Deployment | None:
        """One deployment by id (for `history` and `status`), from the cache when it is current."""
        key = deployment_key(deployment_id)
        entry = self._deployments.entries.get(key)
        if entry is not None and self._deployments.listed.get(key) == entry.version:
            return entry.document
        stored = self.store.get(key)
        if stored is None:
            return None
        document = self._deployments.parse(stored)
        self._deployments.entries[key] = _Entry(stored.version, document)
        self._deployments.listed[key] = stored.version
        return document


@dataclass(frozen=True)
class IdentityProblem:
    """One host id that two agent installations claim, for `reconcile status` to warn about."""

    host_id: str
    #: "refused": an installation could not start with this host id; "overwritten": one was running and
    #: stopped when another took the host id over; "mixed": the registration and the status were written by
    #: different installations (two agents writing at once, or a takeover in progress).
    kind: str
    #: One line for people, naming both installations and the fix.
    message: str
    since: datetime | None = None


def identity_problems(observed: Observed) -> list[IdentityProblem]:
    """Host ids claimed by more than one agent installation, from the agents' own documents. Pure: reads only
    `observed`. A registration or status without an installation id (an agent older than installation ids)
    is never reported as mixed."""
    problems: list[IdentityProblem] = []
    for host_id in sorted(observed.host_ids() | set(observed.conflicts)):
        registration = observed.registrations.get(host_id)
        status = observed.statuses.get(host_id)
        owner = registration.installation_id if registration is not None else None
        writer = status.installation_id if status is not None else None
        if owner is not None and writer is not None and owner != writer:
            where = f" on {registration.hostname}" if registration is not None else ""
            problems.append(IdentityProblem(
                host_id, "mixed",
                f"registration by installation {owner}{where} but status by installation {writer}: two agents "
                "use this host id; give each machine its own hostId in agent.yaml",
                status.heartbeat_at if status is not None else None,
            ))
        for conflict in observed.conflicts.get(host_id, ()):
            other = conflict.other_installation_id or "an agent older than installation ids"
            other_host = f" on {conflict.other_hostname}" if conflict.other_hostname else ""
            verb = "was refused" if conflict.reason == ConflictReason.REFUSED else "stopped: taken over"
            problems.append(IdentityProblem(
                host_id, conflict.reason.value,
                f"installation {conflict.installation_id} on {conflict.hostname} {verb} because installation "
                f"{other}{other_host} owns this host id; that machine gets no deployments. Give it its own hostId "
                f"in agent.yaml (this record is marked resolved when it owns a host id here again; delete "
                f"hosts/{host_id}/conflicts/{conflict.installation_id}.json once fixed otherwise)",
                conflict.detected_at,
            ))
    return problems
