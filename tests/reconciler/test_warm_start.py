"""The warm-start cache (reconciler/shell/warmstart.py), on S3 over real HTTP (moto's server behind a counting
proxy): a later process's first snapshot takes unchanged documents from it instead of GETting them, a changed
document is read all the same, and a cache that is broken, forged or cannot be written costs only speed."""

from __future__ import annotations

import gzip
import json
import secrets
import signal
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contract.keys import WARM_START_KEY, command_key, group_state_key, registration_key, status_key
from contract.models import GroupState, HostCommand, HostRegistration
from contract.signing import Signer, Trust
from contract.store import Store, open_store
from contract.store.base import SMALL_DOCUMENT_LIMIT, AccessDenied, StoredObject, StoreUnavailable
from contract.store.bulk import open_raw, stored_form
from contract.store.sealed import seal_store
from reconciler.cli.main import main
from reconciler.settings import DEFAULT_WARM_START_INTERVAL, ReconcileSettings
from reconciler.shell import warmstart
from reconciler.shell.lease import WriteLease
from reconciler.shell.observe import StoreReader
from reconciler.shell.passes import PassRunner
from tests.conftest import S3Server
from tests.reconciler.fleet import (
    Config,
    ScriptedAgents,
    answering,
    group_manifest,
    local_revision,
    settings_overrides,
)
from tests.reconciler.procs import Reconciler, wait_for
from tests.store.conftest import s3_url
from tests.store.s3proxy import S3Proxy, running_proxy

HOSTS = 60  # more than `warmstart.REWRITE_MIN` documents of each kind, so a cold read leaves a cache

# ------------------------------------------------------------------------------------------------
# The format, alone


def _entries(count: int = 3) -> dict[str, warmstart.Cached]:
    return {registration_key(f"h{i}"): warmstart.Cached(f'"etag-{i}"', b'{"hostId": "h%d"}' % i)
            for i in range(count)}


def test_a_cache_round_trips_and_is_gzip_json_lines_people_can_read() -> None:
    entries = _entries()
    data = warmstart.encode(entries, written_at=datetime(2026, 11, 28, tzinfo=UTC))
    assert warmstart.decode(data) == entries
    header, *lines = gzip.decompress(data).decode().splitlines()
    assert json.loads(header)["format"] == warmstart.FORMAT and json.loads(header)["writtenAt"].startswith("2026-11-28")
    assert [json.loads(line)[0] for line in lines] == sorted(entries)


def test_a_cache_never_stands_in_for_a_status_the_event_log_or_a_document_too_big_to_read() -> None:
    """A store writer could put any key in a cache: only `cacheable` ones are taken from it, and only at sizes a
    GET would read."""
    entries = {**_entries(1), status_key("h0"): warmstart.Cached('"e"', b"{}"),
               "events/fleet.json": warmstart.Cached('"e"', b"{}"),
               command_key("big"): warmstart.Cached('"e"', b" " * (SMALL_DOCUMENT_LIMIT + 1))}
    assert set(warmstart.decode(warmstart.encode(entries, written_at=datetime.now(UTC)))) == {registration_key("h0")}
    assert warmstart.cacheable(command_key("h0")) and warmstart.cacheable("hosts/h0/conflicts/i-1.json")
    assert not warmstart.cacheable("hosts/h0/notes.json") and not warmstart.cacheable(WARM_START_KEY)


_HEADER = b'{"format": 1, "writtenAt": "2026-11-28T00:00:00+00:00"}\n'


@pytest.mark.parametrize(("data", "reason"), [
    (b"not gzip", "not gzip data"),
    (warmstart.encode(_entries(), written_at=datetime.now(UTC))[:-12], "truncated"),
    (gzip.compress(_HEADER + b'["hosts/h0/registration.json", "v"'), "truncated"),
    (gzip.compress(b"[1, 2\n"), "header that is not JSON"),
    (gzip.compress(b'{"format": 99}\n'), "format 99"),
    (gzip.compress(_HEADER + b'["k", "v"]\n'), "an entry that is not"),
    (gzip.compress(_HEADER + b'["k", "v", \n'), "an entry that is not JSON"),
    (gzip.compress(_HEADER + b'["hosts/h0/registration.json", "v", "\\ud800"]\n'), "not text"),
    (gzip.compress(b""), "empty"),
    (b"", "empty"),
    (gzip.compress(_HEADER) + b"x", "data after the end"),
    (gzip.compress(_HEADER) + gzip.compress(_HEADER), "data after the end"),
], ids=["not-gzip", "cut-gzip", "cut-line", "header-not-json", "other-format", "bad-entry", "entry-not-json",
        "lone-surrogate", "empty-gzip", "no-bytes", "trailing-byte", "two-members"])
def test_a_broken_cache_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(warmstart.WarmStartInvalid, match=reason):
        warmstart.decode(data)


def test_data_after_a_big_cache_is_refused_not_looped_on() -> None:
    """More than a piece (1 MiB) decompressed, then bytes after the gzip stream: they stay in `unconsumed_tail`,
    which a loop waiting for an empty tail never saw empty."""
    entries = {registration_key(f"h{i:05d}"): warmstart.Cached(f'"{i}"', secrets.token_hex(300).encode())
               for i in range(4000)}
    data = warmstart.encode(entries, written_at=datetime.now(UTC))
    assert len(warmstart.decode(data)) == 4000
    for tail in (b"x", data):
        with pytest.raises(warmstart.WarmStartInvalid, match="data after the end"):
            warmstart.decode(data + tail)


def test_one_huge_line_is_refused_after_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line joined piece by piece, not re-joined at every piece (that was quadratic: 43 s for 250 MiB)."""
    line = _HEADER + b'["hosts/h0/registration.json", "v", "' + b"a" * (96 * 1024 * 1024)
    started = time.process_time()
    with pytest.raises(warmstart.WarmStartInvalid, match="a line longer than"):
        warmstart.decode(gzip.compress(line, compresslevel=1))
    assert time.process_time() - started < 20  # seconds; linear work here is well under one


def test_a_cache_that_decompresses_past_the_bound_is_refused_without_holding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(warmstart, "MAX_UNCOMPRESSED", 3 * 1024 * 1024)
    bomb = gzip.compress(_HEADER + b" " * (64 * 1024 * 1024))  # 64 MiB of spaces: 64 KB compressed
    tracemalloc.start()
    try:
        with pytest.raises(warmstart.WarmStartInvalid, match="more than 3145728 bytes"):
            warmstart.decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # pieces of 1 MiB, never the whole


def test_a_new_cache_is_written_only_when_the_old_one_missed_enough() -> None:
    assert warmstart.should_write(0, warmstart.REWRITE_MIN + 1)
    assert not warmstart.should_write(0, warmstart.REWRITE_MIN)  # a small fleet reads fast without one
    assert not warmstart.should_write(20_000, 52)  # one deployment's commands since: read them, keep the cache
    assert warmstart.should_write(20_000, 1_200)


# ------------------------------------------------------------------------------------------------
# On S3


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[S3Proxy]:
    with running_proxy(s3_server.endpoint_url) as running:
        yield running


@pytest.fixture
def store_url(s3_server: S3Server, proxy: S3Proxy) -> str:
    bucket = f"warm-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    return s3_url(s3_server, bucket, endpoint=proxy.endpoint_url)


def _gets(proxy: S3Proxy) -> list[str]:
    return [exchange.path.split("?")[0] for exchange in proxy.exchanges if exchange.method == "GET"
            and "list-type" not in exchange.path]


def _puts(proxy: S3Proxy) -> list[str]:
    return [exchange.path for exchange in proxy.exchanges if exchange.method == "PUT"]


def _once(config: Config, store_url: str, agents: ScriptedAgents) -> int:
    with answering(agents):
        return main([*config.args(), "--store", store_url, "--once"])


def test_the_next_once_reads_only_statuses_and_what_changed(
    store_url: str, proxy: S3Proxy, tmp_path: object, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert isinstance(tmp_path, Path)
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_POLL_INTERVAL", "20ms")
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT", "60s")
    monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")
    store = open_store(store_url)
    hosts = [f"h{i:02d}" for i in range(HOSTS)]
    agents = ScriptedAgents(store, hosts)
    agents.register()
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1), config="CodeDeployDefault.AllAtOnce"), message="v1")
    # Rolls out. Its first pass read 60 registrations and wrote 60 commands: a cache of both.
    assert _once(config, store_url, agents) == 0
    assert store.get(WARM_START_KEY) is not None
    proxy.clear()
    # Converged (no agent answers: their polls would be counted). Only the group record and the deployment changed
    # since (by the rollout's later passes): read, and not worth a new cache.
    assert main([*config.args(), "--store", store_url, "--once"]) == 0
    assert not [path for path in _puts(proxy) if WARM_START_KEY in path]
    assert not [path for path in _gets(proxy) if path.endswith("/registration.json") or "/commands/" in path]
    changed_since = sorted(path.split("/store/")[1] for path in _gets(proxy)
                           if "/deployments/" in path or "/groups/" in path)
    assert [path.split("/")[0] for path in changed_since] == ["deployments", "groups"]
    capsys.readouterr()
    assert main([*config.args(), "--store", store_url, "status", "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)

    agents.heartbeat()  # every status rewritten, as by the time of the next CI run
    proxy.clear()
    capsys.readouterr()
    # Converged: no agent needs to answer (their polls would be counted too).
    assert main([*config.args(), "--store", store_url, "--once"]) == 0
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    gets = _gets(proxy)
    assert not [path for path in gets if path.endswith("/registration.json") or "/commands/" in path], gets
    assert sorted(path.split("/store/")[1] for path in gets
                  if "/deployments/" in path or "/groups/" in path) == changed_since
    assert sum(path.endswith("/status.json") for path in gets) == HOSTS  # what churns is read as always
    assert sum(path.endswith("/" + WARM_START_KEY) for path in gets) == 1
    assert not [path for path in _puts(proxy) if WARM_START_KEY in path]  # nothing new to cache
    (read,) = [entry for entry in logs if entry["event"] == "warm_start.read"]
    assert read["fetched"] == 2 and read["from_cache"] >= 2 * HOSTS

    capsys.readouterr()
    assert main([*config.args(), "--store", store_url, "status", "--format", "json"]) == 0
    after = json.loads(capsys.readouterr().out)
    store.delete(WARM_START_KEY)  # the same question answered by reading every document
    assert main([*config.args(), "--store", store_url, "status", "--format", "json"]) == 0
    assert after["groups"] == json.loads(capsys.readouterr().out)["groups"]
    assert [group["state"] for group in before["groups"]] == ["converged"]


@pytest.fixture
def fleet(store_url: str) -> tuple[Store, list[str]]:
    """60 hosts' registrations and statuses, and a cache of them left by a first reader."""
    store = open_store(store_url)
    hosts = [f"h{i:02d}" for i in range(HOSTS)]
    ScriptedAgents(store, hosts).register()
    first = StoreReader(store)
    first.writes_warm_start = True
    first.snapshot()
    assert first.save_warm_start(written_at=datetime.now(UTC))
    return store, hosts


def test_a_document_changed_since_the_cache_is_read_not_taken_from_it(fleet: tuple[Store, list[str]],
                                                                     proxy: S3Proxy) -> None:
    store, hosts = fleet
    changed = HostRegistration(host_id=hosts[7], tags={"app": "hello", "rack": "r9"}, platform="linux",
                               hostname=hosts[7], agent_version="test", registered_at=datetime.now(UTC))
    store.put(registration_key(hosts[7]), changed.to_json())
    proxy.clear()
    reader = StoreReader(store)
    snapshot = reader.snapshot()
    assert snapshot.observed.registrations[hosts[7]].tags == {"app": "hello", "rack": "r9"}
    assert snapshot.observed.registrations[hosts[8]].tags == {"app": "hello"}  # from the cache
    assert [path for path in _gets(proxy) if path.endswith("/registration.json")] == [
        path for path in _gets(proxy) if f"/{registration_key(hosts[7])}" in path]
    assert (reader.warm_start_hits, reader.warm_start_misses) == (HOSTS - 1, 1)


def test_a_deleted_document_is_not_resurrected_by_the_cache(fleet: tuple[Store, list[str]]) -> None:
    store, hosts = fleet
    store.delete(registration_key(hosts[3]))
    snapshot = StoreReader(store).snapshot()
    assert hosts[3] not in snapshot.observed.registrations and len(snapshot.observed.registrations) == HOSTS - 1


@pytest.mark.parametrize("damage", ["truncated", "not a cache"])
def test_a_broken_cache_is_ignored_and_everything_read(fleet: tuple[Store, list[str]], damage: str) -> None:
    store, _ = fleet
    stored = store.get(WARM_START_KEY)
    assert stored is not None
    store.put(WARM_START_KEY, stored.data[: len(stored.data) // 2] if damage == "truncated" else b"{}")
    reader = StoreReader(store)
    with capture_logs() as logs:
        snapshot = reader.snapshot()
    assert len(snapshot.observed.registrations) == HOSTS
    assert (reader.warm_start_hits, reader.warm_start_misses) == (0, HOSTS)
    assert [entry["event"] for entry in logs if entry["event"].startswith("warm_start.")] == [
        "warm_start.ignored", "warm_start.read"]


def test_with_signing_only_a_cache_the_reconciler_sealed_is_used(store_url: str) -> None:
    """A store writer without the key cannot make the reconciler take a document from a cache: a plain or
    foreign-signed one is refused like a forged command would be."""
    raw = open_store(store_url)
    hosts = [f"h{i:02d}" for i in range(HOSTS)]
    ScriptedAgents(raw, hosts).register()
    signer = Signer.generate("reconciler")
    sealed = seal_store(raw, signer=signer, trust=Trust([signer.public]))
    writer = StoreReader(sealed)
    writer.writes_warm_start = True
    writer.snapshot()
    assert writer.save_warm_start(written_at=datetime.now(UTC))
    stored = raw.get(WARM_START_KEY)
    assert stored is not None and stored.data.startswith(b'{"fleetshiftSigned"')

    reader = StoreReader(sealed)
    reader.snapshot()
    assert reader.warm_start_hits == HOSTS

    # The same entries with a forged registration, written by someone without the reconciler's key.
    entries = warmstart.decode(sealed.get(WARM_START_KEY).data)  # type: ignore[union-attr]
    victim = registration_key(hosts[0])
    forged = json.loads(entries[victim].data)
    forged["tags"] = {"app": "forged"}
    entries[victim] = warmstart.Cached(entries[victim].version, json.dumps(forged).encode())
    for forger in (raw, seal_store(raw, signer=Signer.generate("attacker"))):
        forger.put(WARM_START_KEY, warmstart.encode(entries, written_at=datetime.now(UTC)))
        reader = StoreReader(sealed)
        with capture_logs() as logs:
            snapshot = reader.snapshot()
        assert snapshot.observed.registrations[hosts[0]].tags == {"app": "hello"}
        assert (reader.warm_start_hits, reader.warm_start_misses) == (0, HOSTS)
        (ignored,) = [entry for entry in logs if entry["event"] == "warm_start.ignored"]
        assert "not signed" in ignored["reason"] or "does not trust" in ignored["reason"], ignored


class _NoCacheWrites:
    """The S3 store as a reconciler sees it when its IAM policy has no `cache/` (a policy from before the cache)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> str:
        if key.startswith("cache/"):
            raise AccessDenied(f"Access Denied (AccessDenied) writing {key}")
        return self.inner.put(key, data)


def test_a_cache_that_cannot_be_written_is_logged_and_costs_nothing_else(store_url: str) -> None:
    store = open_store(store_url)
    ScriptedAgents(store, [f"h{i:02d}" for i in range(HOSTS)]).register()
    reader = StoreReader(_NoCacheWrites(store))  # type: ignore[arg-type]
    reader.writes_warm_start = True
    reader.snapshot()
    with capture_logs() as logs:
        assert not reader.save_warm_start(written_at=datetime.now(UTC))
    warning, given_up = logs
    assert warning["event"] == "warm_start.not_written" and "AccessDenied" in warning["error"]
    assert given_up["event"] == "warm_start.given_up"
    assert store.get(WARM_START_KEY) is None
    # Refused for good: not tried again every interval, and nothing kept for it.
    for host in range(HOSTS):
        reader.record_write(command_key(f"h{host:02d}"), f'"v{host}"', _command(f"h{host:02d}"))
    with capture_logs() as logs:
        assert not reader.refresh_warm_start(written_at=datetime.now(UTC) + 10 * DEFAULT_WARM_START_INTERVAL)
    assert logs == []


class _OutageOnCacheWrites(_NoCacheWrites):
    """The S3 store with its next cache write answered by an outage (throttling), as S3 may answer any PUT."""

    outages = 1

    def put(self, key: str, data: bytes) -> str:
        if key.startswith("cache/") and self.outages:
            self.outages -= 1
            raise StoreUnavailable("SlowDown: please reduce your request rate")
        return self.inner.put(key, data)


def _command(host: str) -> HostCommand:
    from tests.trust.test_signing import host_command

    return host_command(host)


def test_a_cache_write_an_outage_refused_is_tried_again_an_interval_later(store_url: str) -> None:
    store = open_store(store_url)
    ScriptedAgents(store, [f"h{i:02d}" for i in range(HOSTS)]).register()
    flaky = _OutageOnCacheWrites(store)
    reader = StoreReader(flaky)  # type: ignore[arg-type]
    reader.writes_warm_start = True
    reader.snapshot()
    started = datetime.now(UTC)
    with capture_logs() as logs:
        assert not reader.save_warm_start(written_at=started)
    assert [entry["event"] for entry in logs] == ["warm_start.not_written"]
    assert not reader.refresh_warm_start(written_at=started + DEFAULT_WARM_START_INTERVAL / 2)  # not yet
    assert reader.refresh_warm_start(written_at=started + DEFAULT_WARM_START_INTERVAL)
    assert len(warmstart.decode(store.get(WARM_START_KEY).data)) == HOSTS  # type: ignore[union-attr]


def test_what_a_first_pass_wrote_counts_toward_a_refresh_when_the_cache_read_served(
    fleet: tuple[Store, list[str]]
) -> None:
    """A `watch` restarted onto a store whose cache holds everything: its first pass reads nothing new but writes a
    whole batch of commands. Not worth a PUT then (the run may end at once), but the next refresh has them."""
    store, hosts = fleet
    reader = StoreReader(store)
    reader.writes_warm_start = True
    reader.snapshot()
    assert (reader.warm_start_hits, reader.warm_start_misses) == (HOSTS, 0)
    for host in hosts:
        command = _command(host)
        reader.record_write(command_key(host), store.put(command_key(host), command.to_json()), command)
    started = datetime.now(UTC)
    assert reader.save_warm_start(written_at=started)  # 60 written of 120: worth it at once
    cached = warmstart.decode(store.get(WARM_START_KEY).data)  # type: ignore[union-attr]
    assert {key for key in cached if key.startswith("commands/")} == {command_key(host) for host in hosts}
    assert {key: cached[key].data for key in cached if key.startswith("commands/")} == {
        command_key(host): store.get(command_key(host)).data for host in hosts}  # type: ignore[union-attr]

    # A bigger fleet, where one batch is under the share: not written after the first pass, written by a refresh.
    first = StoreReader(store)
    first.writes_warm_start = True
    first.snapshot()
    for host in hosts[:HOSTS // 2 + 21]:  # 51 changed: over REWRITE_MIN, and with the 120 cached over 5 %
        command = _command(host).model_copy(update={"generation": 9})
        first.record_write(command_key(host), store.put(command_key(host), command.to_json()), command)
    first.warm_start_hits *= 20  # as if the cache had held 20 times as many documents
    assert not first.save_warm_start(written_at=started)
    assert first.refresh_warm_start(written_at=started + DEFAULT_WARM_START_INTERVAL)
    cached = warmstart.decode(store.get(WARM_START_KEY).data)  # type: ignore[union-attr]
    assert all(cached[command_key(host)].data == store.get(command_key(host)).data  # type: ignore[union-attr]
               for host in hosts)


def test_a_file_store_neither_reads_nor_writes_one(tmp_path: object) -> None:
    assert isinstance(tmp_path, Path)
    store = open_store(f"file://{tmp_path}/store")
    ScriptedAgents(store, [f"h{i:02d}" for i in range(HOSTS)]).register()
    reader = StoreReader(store)
    reader.writes_warm_start = True
    reader.snapshot()
    assert not reader.save_warm_start(written_at=datetime.now(UTC))
    assert store.get(WARM_START_KEY) is None


def test_a_key_taken_out_of_trust_stops_counting_for_cached_records_too(store_url: str) -> None:
    """The cache keeps signed records as stored (envelopes) and each is checked when used: after a key rotation
    (docs/trust.md), records only the old key signed are refused from the cache exactly as they are from the
    store, though the cache itself was sealed with the new key during the overlap."""
    from tests.trust.test_signing import host_command

    raw = open_store(store_url)
    hosts = [f"h{i:02d}" for i in range(HOSTS)]
    ScriptedAgents(raw, hosts).register()
    old, new = Signer.generate("old"), Signer.generate("new")
    writer = seal_store(raw, signer=old, trust=Trust([old.public]))
    for host in hosts:
        writer.put(command_key(host), host_command(host).to_json())

    overlap = StoreReader(seal_store(raw, signer=new, trust=Trust([new.public, old.public])))
    overlap.writes_warm_start = True
    assert len(overlap.snapshot().state.commands) == HOSTS
    assert overlap.save_warm_start(written_at=datetime.now(UTC))

    after = seal_store(raw, signer=new, trust=Trust([new.public]))
    without_cache = StoreReader(_NoCacheReads(after))  # type: ignore[arg-type]
    assert without_cache.snapshot().state.commands == {}
    reader = StoreReader(after)
    with capture_logs() as logs:
        snapshot = reader.snapshot()
    assert reader.warm_start_hits == 2 * HOSTS  # the commands were taken from the cache...
    assert snapshot.state.commands == {}  # ...and refused there, as from the store
    assert len(snapshot.observed.registrations) == HOSTS
    assert sum(entry["event"] == "observe.unreadable" for entry in logs) == HOSTS


class _NoCacheReads(_NoCacheWrites):
    def get(self, key: str, *, if_version_not: str | None = None) -> object:
        return None if key.startswith("cache/") else self.inner.get(key, if_version_not=if_version_not)


def test_a_reader_logs_what_the_cache_saved_once_and_a_file_store_never(store_url: str, tmp_path: object) -> None:
    assert isinstance(tmp_path, Path)
    for url in (store_url, f"file://{tmp_path}/store"):
        store = open_store(url)
        ScriptedAgents(store, ["h1", "h2"]).register()
        agents = ScriptedAgents(store, ["h1", "h2"])
        agents.register()
        reader = StoreReader(store)
        with capture_logs() as logs:
            reader.snapshot()
            agents.heartbeat()
            store.put(registration_key("h1"), store.get(registration_key("h2")).data)  # type: ignore[union-attr]
            reader.snapshot()  # reads a status and a registration again: not the first read, not counted
        read = [entry for entry in logs if entry["event"].startswith("warm_start.")]
        assert read == ([{"event": "warm_start.read", "from_cache": 0, "fetched": 2, "log_level": "info"}]
                        if url == store_url else [])
        assert (reader.warm_start_hits, reader.warm_start_misses) == ((0, 2) if url == store_url else (0, 0))


def test_a_reader_that_polled_hosts_first_neither_uses_nor_leaves_a_cache(fleet: tuple[Store, list[str]]) -> None:
    """`watch` polls hosts before its first pass when the manifests are broken: hosts then are not read cold, and
    a cache made of that first pass would lack them."""
    store, _ = fleet
    reader = StoreReader(store)
    reader.writes_warm_start = True
    reader.poll_hosts()
    reader.snapshot()
    assert (reader.warm_start_hits, reader.warm_start_misses) == (0, 0)
    assert not reader.save_warm_start(written_at=datetime.now(UTC))


class _FailsOneListing(_NoCacheWrites):
    """The S3 store with one listing answered by an outage, reads checked as the store checks them."""

    failed = False

    def list(self, prefix: str) -> object:
        if prefix == "commands/" and not self.failed:
            self.failed = True
            raise StoreUnavailable("SlowDown: please reduce your request rate")
        return self.inner.list(prefix)

    def put(self, key: str, data: bytes) -> str:
        return self.inner.put(key, data)

    def open_raw(self, objects: list[StoredObject]) -> list[StoredObject]:
        return open_raw(self.inner, objects)


def test_a_first_snapshot_that_failed_leaves_the_cache_to_its_retry(fleet: tuple[Store, list[str]]) -> None:
    store, _ = fleet
    reader = StoreReader(_FailsOneListing(store))  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        reader.snapshot()
    snapshot = reader.snapshot()
    assert len(snapshot.observed.registrations) == HOSTS
    assert (reader.warm_start_hits, reader.warm_start_misses) == (HOSTS, 0)


def test_a_reader_that_discarded_its_cache_never_writes_one(fleet: tuple[Store, list[str]]) -> None:
    """`discard_warm_start`, which a refused write ends in: nothing is kept, so nothing is written again."""
    store, _ = fleet
    store.delete(WARM_START_KEY)
    reader = StoreReader(store)
    reader.writes_warm_start = True
    reader.snapshot()
    reader.discard_warm_start()
    assert not reader.save_warm_start(written_at=datetime.now(UTC))
    assert not reader.refresh_warm_start(written_at=datetime.now(UTC) + timedelta(hours=1))
    assert store.get(WARM_START_KEY) is None


def _lead(store: Store) -> WriteLease:
    lease = WriteLease(store, duration=timedelta(seconds=30))
    assert lease.try_acquire()
    return lease


def _fleet_at_v1(
    store_url: str, proxy: S3Proxy, s3_server: S3Server, folder: Path
) -> tuple[Store, ScriptedAgents, Config]:
    """`HOSTS` registered agents, and a config repo that deploys v1 to them all at once. The agents go to S3
    directly: only the reconciler's requests pass the proxy and are counted."""
    hosts = [f"h{i:02d}" for i in range(HOSTS)]
    agents = ScriptedAgents(open_store(store_url.replace(proxy.endpoint_url, s3_server.endpoint_url)), hosts)
    agents.register()
    config = Config(folder / "config")
    config.set_group(group_manifest(revision=local_revision(1), config="CodeDeployDefault.AllAtOnce"), message="v1")
    return open_store(store_url), agents, config


def test_a_watch_refreshes_the_cache_with_what_its_rollouts_wrote(
    store_url: str, proxy: S3Proxy, s3_server: S3Server, tmp_path: object
) -> None:
    """A `watch` that has driven rollouts for days must not leave `plan` and `--once` a cache of the fleet as it was
    when it started: its later passes keep what they read and wrote, and rewrite the cache once enough of it
    changed, at most once per `reconcile.warmStartInterval`. Its own writes go in as stored, without a GET of them."""
    assert isinstance(tmp_path, Path)
    store, agents, config = _fleet_at_v1(store_url, proxy, s3_server, tmp_path)
    settings = ReconcileSettings.model_validate(settings_overrides())
    clock = [datetime.now(UTC)]
    runner = PassRunner(store, _lead(store), settings, clock=lambda: clock[0])
    runner.run_pass(config.desired())  # the cold read: registrations; its writes: the 60 commands
    first = warmstart.decode(store.get(WARM_START_KEY).data)  # type: ignore[union-attr]

    # v2 rolls out over later passes. Within the interval nothing is rewritten however much changed...
    config.set_group(group_manifest(revision=local_revision(2), config="CodeDeployDefault.AllAtOnce"), message="v2")
    proxy.clear()
    for _ in range(20):
        clock[0] += timedelta(seconds=1)
        agents.answer()
        outcome = runner.run_pass(config.desired())
        if not outcome.in_flight:
            break
    assert not outcome.in_flight
    assert not [path for path in _puts(proxy) if WARM_START_KEY in path]
    assert not [path for path in _gets(proxy) if "/commands/" in path or "/deployments/" in path
                or "/groups/" in path]  # its own writes, never read back

    # ...and the first pass after it leaves one of the fleet as it is now.
    clock[0] += DEFAULT_WARM_START_INTERVAL
    runner.run_pass(config.desired())
    refreshed = warmstart.decode(store.get(WARM_START_KEY).data)  # type: ignore[union-attr]
    listed = {item.key: item.version for prefix in ("commands/", "deployments/", "groups/")
              for item in store.list(prefix)}
    assert {key: refreshed[key].version for key in listed} == listed
    assert all(first[key].version != refreshed[key].version for key in listed if key.startswith("commands/"))
    assert {key: entry.data for key, entry in refreshed.items()} == {
        key: store.get(key).data for key in refreshed}  # type: ignore[union-attr]

    # A new process (a plan in a pull request) reads only the statuses, the lease and the cache.
    agents.heartbeat()
    proxy.clear()
    reader = StoreReader(store)
    reader.snapshot()
    assert (reader.warm_start_hits, reader.warm_start_misses) == (len(refreshed), 0)
    assert not [path for path in _gets(proxy) if not path.endswith(("/status.json", "/" + WARM_START_KEY))]

    # Nothing changed since: nothing is rewritten, whatever the time.
    proxy.clear()
    clock[0] += 10 * DEFAULT_WARM_START_INTERVAL
    runner.run_pass(config.desired())
    assert not [path for path in _puts(proxy) if WARM_START_KEY in path]


def test_with_signing_the_cache_holds_a_watchs_own_writes_as_stored(store_url: str, tmp_path: object) -> None:
    """The envelope of a record the reconciler signed is worked out again for the cache, not read back: the same
    bytes as stored (Ed25519 and the HMAC are deterministic), so a reader trusting the key takes them."""
    assert isinstance(tmp_path, Path)
    signer = Signer.generate()
    trust = Trust([signer.public])
    raw = open_store(store_url)
    sealed = seal_store(raw, signer=signer, trust=trust)
    hosts = [f"h{i:02d}" for i in range(HOSTS)]
    ScriptedAgents(raw, hosts).register()
    from tests.trust.test_signing import host_command

    command = host_command("h00").to_json()
    sealed.put(command_key("h00"), command)
    stored = raw.get(command_key("h00"))
    assert stored is not None and stored_form(sealed, command_key("h00"), command) == stored.data
    assert stored_form(_NoCacheWrites(sealed), command_key("h00"), command) is None  # a wrapper that does not say

    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1), config="CodeDeployDefault.AllAtOnce"), message="v1")
    settings = ReconcileSettings.model_validate(settings_overrides())
    PassRunner(sealed, _lead(raw), settings).run_pass(config.desired())  # writes 60 signed commands
    reader = StoreReader(seal_store(raw, trust=trust))
    snapshot = reader.snapshot()
    assert len(snapshot.state.commands) == HOSTS
    assert reader.warm_start_misses == 0 and reader.warm_start_hits >= 2 * HOSTS


def test_a_cache_too_big_for_its_readers_is_not_written(fleet: tuple[Store, list[str]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = fleet
    store.delete(WARM_START_KEY)
    monkeypatch.setattr(warmstart, "read_limit", lambda key: 4096)
    reader = StoreReader(store)
    reader.writes_warm_start = True
    reader.snapshot()
    with capture_logs() as logs:
        assert not reader.save_warm_start(written_at=datetime.now(UTC))
    assert [entry["event"] for entry in logs] == ["warm_start.not_written", "warm_start.given_up"]
    assert "bigger" in logs[0]["error"]
    assert store.get(WARM_START_KEY) is None
    # It would only grow: not tried again.
    assert not reader.refresh_warm_start(written_at=datetime.now(UTC) + 10 * DEFAULT_WARM_START_INTERVAL)


def test_open_raw_reopens_what_a_wrapper_already_opened_and_vouches_for_nothing_unknown(store_url: str) -> None:
    from contract.store.bulk import get_many

    signer = Signer.generate("reconciler")
    sealed = seal_store(open_store(store_url), signer=signer, trust=Trust([signer.public]))
    from tests.trust.test_signing import host_command

    sealed.put(command_key("h1"), host_command("h1").to_json())
    read = get_many(sealed, [command_key("h1")])[command_key("h1")]
    assert read is not None and read.raw is not None and read.refused is None
    (again,) = open_raw(sealed, [read])
    assert again == read  # the envelope checked again, not the payload taken for one
    assert open_raw(_NoCacheWrites(sealed), [read]) == []  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_watch_process_refreshes_the_cache_and_reads_anew_after_losing_its_lease(
    store_url: str, proxy: S3Proxy, s3_server: S3Server, tmp_path: object
) -> None:
    """The refresh through a real `reconcile watch` on S3, with `reconcile.warmStartInterval` at 1s: a rollout it
    drives leaves a cache of the fleet as it is after it. Once its lease was taken from it (frozen past the lease's
    expiry, as a paused VM is), the process lets go of what it had read; when it wins the lease back it reads the
    store anew, as a restart would, from the cache it finds there, and keeps the cache fresh again from that read,
    never from the view it had before others wrote."""
    assert isinstance(tmp_path, Path)
    store, agents, config = _fleet_at_v1(store_url, proxy, s3_server, tmp_path)
    env = {
        "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "50ms",
        # A refresh follows a pass: the resync's passes come after the last of a rollout that ended within 1s.
        "FLEETSHIFT_RECONCILE_RESYNC_INTERVAL": "1s",
        "FLEETSHIFT_RECONCILE_LEASE_DURATION": "3s",
        "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "1h",
        "FLEETSHIFT_RECONCILE_WARM_START_INTERVAL": "1s",
    }

    def deployed(version: int) -> bool:
        stored = store.get(group_state_key("hello", "web"))
        state = GroupState.model_validate_json(stored.data) if stored else None
        revision = state.effective_revision if state else None
        return revision is not None and revision.short() == f"bundles/v{version}.zip"

    def commands_cached() -> bool:
        """The cache holds every host's command as it is now: the last rollout's, which nothing rewrites after it.
        (The deployment and group records its last passes rewrote may be older there: fewer than a twentieth.)"""
        stored = store.get(WARM_START_KEY)
        if stored is None:
            return False
        cached = warmstart.decode(stored.data)
        listed = {item.key: item.version for item in store.list("commands/")}
        return len(listed) == HOSTS and {key: cached[key].version for key in listed if key in cached} == listed

    watch = Reconciler([*config.args(), "--store", store_url, "watch"], tmp_path / "watch.log", env)
    try:
        with answering(agents):
            watch.wait_event("lease.acquired", timeout=30)
            wait_for(lambda: deployed(1), 60, "v1 rolled out")
            written = len(watch.events("warm_start.written"))
            assert written >= 1  # the first pass: its cold read fetched the 60 registrations

            config.set_group(group_manifest(revision=local_revision(2), config="CodeDeployDefault.AllAtOnce"),
                             message="v2")
            wait_for(lambda: deployed(2), 60, "v2 rolled out")
            # Its 60 new commands are more than a twentieth of the cache: rewritten within about a second.
            wait_for(commands_cached, 30, "a cache holding v2's commands")
            assert len(watch.events("warm_start.written")) > written
            fresh = StoreReader(store)  # a `plan` now: registrations and commands from the cache
            fresh.snapshot()
            assert fresh.warm_start_hits >= 2 * HOSTS
            assert fresh.warm_start_misses <= warmstart.REWRITE_SHARE * fresh.warm_start_hits

            # Frozen past its lease's expiry; another holder takes the lease, then lets go of it.
            watch.signal(signal.SIGSTOP)
            try:
                taker = WriteLease(store, duration=timedelta(seconds=3))
                wait_for(taker.try_acquire, 30, "the frozen watch's lease to expire", every=0.2)
            finally:
                watch.signal(signal.SIGCONT)
            watch.wait_event("watch.lease_lost", timeout=30)
            lost_at = len(watch.events())
            taker.release()
            wait_for(lambda: len(watch.events("lease.acquired")) >= 2, 30, "the watch to win the lease back")

            config.set_group(group_manifest(revision=local_revision(3), config="CodeDeployDefault.AllAtOnce"),
                             message="v3")
            wait_for(lambda: deployed(3), 60, "v3 rolled out by the same process")
            wait_for(commands_cached, 30, "a cache holding v3's commands")
        after = watch.events()[lost_at:]
        assert [event for event in after if event.get("event") == "action.applied"]  # it did lead the v3 rollout
        reread = [event for event in after if event.get("event") == "warm_start.read"]
        assert len(reread) == 1 and reread[0]["from_cache"] >= 2 * HOSTS  # read anew, from the cache it had left
        assert [event for event in after if event.get("event") == "warm_start.written"]
    finally:
        watch.stop()
