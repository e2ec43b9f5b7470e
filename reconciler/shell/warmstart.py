"""The warm-start cache: a process's first snapshot of a remote store reads only what changed since the last one.

Why (issue 18): every `reconcile --once` in CI, every `reconcile plan` in a pull request and every restarted
`watch` begins cold, and on S3 a cold snapshot GETs every document: about 31,000 at 10,000 hosts, each ~0.5 ms of
this process's CPU (contract/store/s3wire.py) under one GIL, ~17 s in all. Most of them had not changed since the
last process read them: registrations (written when an agent starts), commands, traffic records, deployments and
group records (written when something happens), conflict records. Only the statuses churn: every agent rewrites
its own at each heartbeat (5 minutes by default), so a CI run finds them all new and they are not cached.

What: `cache/warm-start.json.gz` (`contract.keys.WARM_START_KEY`), gzip-compressed JSON lines: a header, then
for each of those documents its key, the version it was read at and its bytes as the backend holds them (a
signed record's envelope, not its payload). The lease holder writes it after its first pass when that pass's
cold read fetched (and the pass wrote) more than `REWRITE_MIN` of them and more than `REWRITE_SHARE` of all (so
not on every run: it is ~1 MB at 10,000 hosts unsigned, one PUT), and after a later pass (a `watch`, a long
`--once`) once as many changed since, at most every `reconcile.warmStartInterval` (`StoreReader.refresh_warm_start`).
The next process's first snapshot loads it beside its listings and
takes an entry in place of a GET only where the listing shows the very same version; everything else is read as
before. An S3 ETag is a digest of the object's bytes (or, for an encrypted object, new at every write), so the
same ETag means the same bytes a GET would return. So the cache may be missing, old, deleted or unreadable at
any time: a stale entry costs one GET, never a wrong document, and a cache that cannot be used costs what a cold
read cost before it existed.

Trust: every entry goes through the same checks a GET's answer would (`contract.store.bulk.open_raw`): a signed
record's envelope is verified against the keys trusted now, so a key taken out of `trustedKeys` stops counting
for cached records as it does for stored ones. The cache itself is sealed too (`cache/` is one of
`contract.store.sealed.SEALED_PREFIXES`): one that fails the check is ignored (logged) and every document read.

Crash safety: one PUT, which S3 applies whole or not at all, so a kill -9 before, during or after it leaves the
previous cache or the new one, either usable; a store without atomic writes that left it truncated gets it
ignored. Nothing else waits on it: a failed write is logged and the run goes on.

Local stores (`file://`) neither read nor write it: reading a file costs less than finding its entry would.
"""

from __future__ import annotations

import enum
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from contract.keys import (
    COMMANDS_PREFIX,
    CONFLICTS_FOLDER,
    DEPLOYMENTS_PREFIX,
    GROUPS_PREFIX,
    HOSTS_PREFIX,
    REGISTRATION_NAME,
    TRAFFIC_PREFIX,
    WARM_START_KEY,
)
from contract.models import Document
from contract.store import Store, StoreError
from contract.store.base import LARGE_DOCUMENT_LIMIT, StoredObject, read_limit
from contract.store.bulk import stored_form

log = structlog.get_logger(__name__)

FORMAT = 1
#: A cold read is followed by a new cache when it fetched more than this many cacheable documents...
REWRITE_MIN = 50
#: ...and more than this share of them: after one 50-host deployment the next run reads those 52 documents
#: (commands, deployment, group record) rather than rewrite a cache of 20,000.
REWRITE_SHARE = 0.05
#: The most a cache may decompress to, so that a store writer's gzip bomb costs a log line and a bounded amount
#: of work: well above what the 32 MiB read limit of `cache/` lets a real cache hold (~100,000 hosts). Read a
#: piece at a time, so the process holds the entries, not the text as well.
MAX_UNCOMPRESSED = 256 * 1024 * 1024
_PIECE = 1024 * 1024
#: The longest line a cache may hold: an entry for the biggest document a GET reads (a deployment or group
#: record, `LARGE_DOCUMENT_LIMIT`), escaped as JSON text, with its key and version.
_MAX_LINE = 2 * LARGE_DOCUMENT_LIMIT + 64 * 1024
#: Fast and still about a tenth of the JSON: a `watch` writes it at most every `reconcile.warmStartInterval`.
_COMPRESS_LEVEL = 1


class WarmStartInvalid(ValueError):
    """A cache that cannot be used, with the reason."""


@dataclass(frozen=True, slots=True)
class Cached:
    """One document's bytes as the backend holds them, and the version they were read at."""

    version: str
    data: bytes


def cacheable(key: str) -> bool:
    """Documents that seldom change once written: everything a snapshot reads but the agents' statuses (rewritten
    at every heartbeat) and the fleet event log (rewritten by most passes)."""
    if key.startswith(HOSTS_PREFIX):
        parts = key.split("/")
        return (len(parts) == 3 and parts[2] == REGISTRATION_NAME) or (
            len(parts) == 4 and parts[2] == CONFLICTS_FOLDER
        )
    return key.startswith((COMMANDS_PREFIX, TRAFFIC_PREFIX, DEPLOYMENTS_PREFIX, GROUPS_PREFIX))


def should_write(hits: int, misses: int) -> bool:
    """Whether a cold read that took `hits` cacheable documents from the cache and fetched `misses` should leave
    a new one (see `REWRITE_MIN`, `REWRITE_SHARE`)."""
    return misses > REWRITE_MIN and misses > REWRITE_SHARE * (hits + misses)


def encode(entries: Mapping[str, Cached], *, written_at: datetime) -> bytes:
    """The cache's bytes, compressed a line at a time (a 100,000-host cache is never one string in memory).
    Documents that are not UTF-8 text (none of ours) are left out: they are read as before."""
    compressor = zlib.compressobj(_COMPRESS_LEVEL, wbits=31)  # 31: the gzip format, so `zcat` shows it
    header = {"format": FORMAT, "writtenAt": written_at.isoformat()}
    parts = [compressor.compress(json.dumps(header, separators=(",", ":")).encode() + b"\n")]
    for key in sorted(entries):
        entry = entries[key]
        try:
            line = json.dumps([key, entry.version, entry.data.decode()], separators=(",", ":"))
        except UnicodeDecodeError:
            continue
        parts.append(compressor.compress(line.encode() + b"\n"))
    parts.append(compressor.flush())
    return b"".join(parts)


def decode(data: bytes) -> dict[str, Cached]:
    """The entries of a cache; `WarmStartInvalid` when it is not one this version can use. Decompressed a piece
    at a time, within `MAX_UNCOMPRESSED` in all and `_MAX_LINE` a line, so a bomb or a huge line is refused
    after at most that much work. Entries for keys that are not `cacheable` are dropped (a cache must never stand
    in for a status), and so are documents bigger than their key's read limit (a GET would not read them)."""
    decompressor = zlib.decompressobj(wbits=31)
    found: dict[str, Cached] = {}
    header: dict[str, object] | None = None
    pending: list[bytes] = []  # the pieces of a line not ended yet
    pending_size = total = 0
    tail = data
    while not decompressor.eof:
        if not tail:
            raise WarmStartInvalid("truncated" if total else "empty")
        try:
            piece = decompressor.decompress(tail, _PIECE)
        except zlib.error as exc:
            raise WarmStartInvalid(f"not gzip data ({exc})") from None
        tail = decompressor.unconsumed_tail
        total += len(piece)
        if total > MAX_UNCOMPRESSED:
            raise WarmStartInvalid(f"it decompresses to more than {MAX_UNCOMPRESSED} bytes")
        start = 0
        while (end := piece.find(b"\n", start)) >= 0:
            line = b"".join([*pending, piece[start:end]]) if pending else piece[start:end]
            pending, pending_size = [], 0
            if header is None:
                header = _header(line)
            else:
                _entry(line, found)
            start = end + 1
        if start < len(piece):
            pending.append(piece[start:])
            pending_size += len(piece) - start
            if pending_size > _MAX_LINE:
                raise WarmStartInvalid(f"a line longer than {_MAX_LINE} bytes")
    if tail or decompressor.unused_data:
        raise WarmStartInvalid("data after the end of its gzip stream")
    if pending or header is None:
        raise WarmStartInvalid("truncated" if header is not None else "empty")
    return found


def _header(line: bytes) -> dict[str, object]:
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise WarmStartInvalid(f"a header that is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        shown = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise WarmStartInvalid(f"format {shown!r}, this version reads {FORMAT}")
    return header


def _entry(line: bytes, found: dict[str, Cached]) -> None:
    try:
        entry = json.loads(line)
    except ValueError as exc:
        raise WarmStartInvalid(f"an entry that is not JSON ({exc})") from None
    if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(part, str) for part in entry)):
        raise WarmStartInvalid("an entry that is not [key, version, document]")
    key, version, body = entry
    if not cacheable(key):
        return
    try:
        data = body.encode()
    except UnicodeEncodeError:  # a lone surrogate: JSON can say it, UTF-8 cannot
        raise WarmStartInvalid(f"an entry for {key} that is not text") from None
    if len(data) <= read_limit(key):
        found[key] = Cached(version, data)


def load(store: Store) -> dict[str, Cached]:
    """The cache's entries, or none (logged, unless there is no cache yet) when it cannot be used: every document
    is then read, as without a cache."""
    try:
        stored = store.get(WARM_START_KEY)
    except StoreError as exc:
        log.warning("warm_start.unreadable", key=WARM_START_KEY, error=str(exc))
        return {}
    if stored is None:
        return {}
    problem: str | None = None
    if stored.refused is not None:
        problem = f"its signature does not hold: {stored.refused}"
    elif stored.oversize is not None:
        problem = f"it is {stored.oversize} bytes, more than a cache may be"
    else:
        try:
            return decode(stored.data)
        except WarmStartInvalid as exc:
            problem = str(exc)
        except (ValueError, TypeError, RecursionError) as exc:  # a shape `decode` did not foresee: still a hint
            problem = f"{type(exc).__name__}: {exc}"
    log.warning("warm_start.ignored", key=WARM_START_KEY, version=stored.version, reason=problem)
    return {}


class Saved(enum.Enum):
    """How a `save` ended."""

    WRITTEN = "written"
    #: Not written this time (an outage, throttling): worth trying again later.
    FAILED = "failed"
    #: Not written and never will be by this process: no permission on `cache/`, or too big for its readers.
    REFUSED = "refused"


def save(store: Store, entries: Mapping[str, Cached], *, written_at: datetime) -> Saved:
    """Write a new cache; a failure (no permission on `cache/`, an outage) is logged and costs only the next
    cold read's speed."""
    data = encode(entries, written_at=written_at)
    # Signed, it is stored base64-encoded in an envelope: a cache too big for a reader to read is not written.
    stored_size = len(data) * 4 // 3 + 4096
    if stored_size > read_limit(WARM_START_KEY):
        log.warning("warm_start.not_written", key=WARM_START_KEY, documents=len(entries), bytes=len(data),
                    error=f"bigger than the {read_limit(WARM_START_KEY)} bytes a reader reads of it")
        return Saved.REFUSED
    try:
        store.put(WARM_START_KEY, data)
    except StoreError as exc:
        log.warning("warm_start.not_written", key=WARM_START_KEY, error=str(exc))
        return Saved.FAILED if exc.retryable else Saved.REFUSED
    log.info("warm_start.written", key=WARM_START_KEY, documents=len(entries), bytes=len(data))
    return Saved.WRITTEN


class Keeper:
    """What a new cache would hold, kept current by the lease holder's reads and writes (`StoreReader`), and when
    it is worth writing: after the first pass when the cold read and that pass fetched and wrote enough, after a
    later one when enough changed since, at most once per `interval`."""

    def __init__(self, interval: timedelta) -> None:
        #: The least time between two caches written by `refresh` (`reconcile.warmStartInterval`).
        self.interval = interval
        #: The cacheable documents read, as the backend holds them.
        self.kept: dict[str, Cached] = {}
        #: The cacheable documents this process wrote since the last cache: key -> (version, document). Their stored
        #: bytes are worked out when a cache is written (`contract.store.bulk.stored_form`), then kept in `kept`.
        self.written: dict[str, tuple[str, Document]] = {}
        #: Keys read, written or gone since the last cache was written (or the cold read ended).
        self.changes: set[str] = set()
        #: When a cache was last written or tried: a refresh waits an interval from it.
        self.saved_at: datetime | None = None
        #: The last write worth making failed (an outage): the next refresh makes it, however little changed since.
        self.unsaved = False

    def read(self, key: str, stored: StoredObject | None) -> None:
        """A document a snapshot read (None: gone between its listing and the read)."""
        if not cacheable(key):
            return
        if stored is None or stored.oversize is not None:
            self.forget(key)
            return
        self.written.pop(key, None)
        self.kept[key] = Cached(stored.version, stored.raw if stored.raw is not None else stored.data)
        self.changes.add(key)

    def wrote(self, key: str, version: str, document: Document) -> None:
        """A document this process wrote, at the version its PUT answered."""
        if cacheable(key):
            self.kept.pop(key, None)
            self.written[key] = (version, document)
            self.changes.add(key)

    def forget(self, key: str) -> None:
        """A document gone from the store (or too big to read): no entry for it."""
        if self.kept.pop(key, None) is not None or self.written.pop(key, None) is not None:
            self.changes.add(key)

    def save_first(self, store: Store, listed: Callable[[str], str | None], *, hits: int, misses: int,
                   written_at: datetime) -> Saved | None:
        """After the first pass: `save` when the cold read's `misses` and what the pass wrote are worth it against
        its `hits`; None when not (what the pass wrote then counts toward a refresh)."""
        self.saved_at = written_at
        if not should_write(hits, misses + len(self.changes)):
            return None
        return self._save(store, listed, written_at)

    def refresh(self, store: Store, listed: Callable[[str], str | None], *, written_at: datetime) -> Saved | None:
        """After a later pass: `save` when an interval has passed and enough changed (or the last write worth
        making failed); None when not."""
        if self.saved_at is not None and written_at - self.saved_at < self.interval:
            return None
        changed = len(self.changes)
        if not should_write(max(0, len(self.kept) + len(self.written) - changed), changed) and not self.unsaved:
            return None
        return self._save(store, listed, written_at)

    def _save(self, store: Store, listed: Callable[[str], str | None], written_at: datetime) -> Saved:
        # This process's own writes as the backend holds them: worked out once, then kept like what was read. Only
        # where the listing still shows the version written.
        for key, (version, document) in self.written.items():
            form = stored_form(store, key, document.to_json())
            if form is not None and listed(key) == version:
                self.kept[key] = Cached(version, form)
        self.written.clear()
        self.saved_at = written_at
        saved = save(store, self.kept, written_at=written_at)
        self.unsaved = saved is not Saved.WRITTEN  # tried again an interval later
        if saved is Saved.WRITTEN:
            self.changes.clear()
        return saved


__all__ = [
    "Cached", "Keeper", "Saved", "WarmStartInvalid", "cacheable", "decode", "encode", "load", "save", "should_write",
]
