"""The warm-start cache: a process's first snapshot of a remote store reads only what changed since the last one.

Why (issue 18): every `reconcile --once` in CI, every `reconcile plan` in a pull request and every restarted
`watch` begins cold, and on S3 a cold snapshot GETs every document: about 31,000 at 10,000 hosts, each ~0.5 ms of
this process's CPU (contract/store/s3wire.py) under one GIL, ~17 s in all. Most of them had not changed since the
last process read them: registrations (written when an agent starts), commands, traffic records, deployments and
group records (written when something happens), conflict records. Only the statuses churn: every agent rewrites
its own at each heartbeat (5 minutes by default), so a CI run finds them all new and they are not cached.

What: `cache/warm-start.json.gz` (`contract.keys.WARM_START_KEY`), one gzip-compressed JSON document holding, for
each of those documents, its key, the version its listing showed and its bytes as read (after any signature
check). The lease holder writes it after its first pass when that pass's cold read fetched more than
`REWRITE_MIN` of them and more than `REWRITE_SHARE` of all (so not on every run: it is ~1.5 MB at 10,000 hosts,
one PUT). The next process's first snapshot loads it beside its listings and takes an entry in place of a GET
only where the listing shows the very same version (an S3 ETag changes with every write); everything else is
read as before. So the cache may be missing, old, deleted or unreadable at any time: a stale entry costs one GET,
never a wrong document, and a cache that cannot be used costs what a cold read cost before it existed.

Trust: with signing configured it is sealed like the records it stands in for (`cache/` is one of
`contract.store.sealed.SEALED_PREFIXES`): an entry for a command is only used from a cache that carries the
reconciler's signature, as the command itself did. A cache that fails the check is ignored (logged) and every
document is read and checked one by one. Without signing it is trusted as much as any record is.

Crash safety: one PUT, which S3 applies whole or not at all, so a kill -9 before, during or after it leaves the
previous cache or the new one, either usable; a store without atomic writes that left it truncated gets it
ignored. Nothing else waits on it: a failed write is logged and the run goes on.

Local stores (`file://`) neither read nor write it: reading a file costs less than finding its entry would.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

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
from contract.store import Store, StoreError

log = structlog.get_logger(__name__)

FORMAT = 1
#: A cold read is followed by a new cache when it fetched more than this many cacheable documents...
REWRITE_MIN = 50
#: ...and more than this share of them: after one 50-host deployment the next run reads those 52 documents
#: (commands, deployment, group record) rather than rewrite a cache of 20,000.
REWRITE_SHARE = 0.05
#: The most a cache may decompress to (a store writer's gzip bomb must not take the reconciler to gigabytes):
#: ten times what 100,000 hosts need.
MAX_UNCOMPRESSED = 1024 * 1024 * 1024
#: Fast and still about a tenth of the JSON: the write is at most once per process.
_COMPRESS_LEVEL = 1


class WarmStartInvalid(ValueError):
    """A cache that cannot be used, with the reason."""


@dataclass(frozen=True, slots=True)
class Cached:
    """One document's bytes as read, and the version they were read at."""

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
    """The cache's bytes. Documents that are not UTF-8 text (none of ours) are left out: they are read as before."""
    listed: list[list[str]] = []
    for key in sorted(entries):
        entry = entries[key]
        try:
            listed.append([key, entry.version, entry.data.decode()])
        except UnicodeDecodeError:
            continue
    document = {"format": FORMAT, "writtenAt": written_at.isoformat(), "entries": listed}
    compressor = zlib.compressobj(_COMPRESS_LEVEL, wbits=31)  # 31: the gzip format, so `zcat` shows it
    return compressor.compress(json.dumps(document, separators=(",", ":")).encode()) + compressor.flush()


def decode(data: bytes) -> dict[str, Cached]:
    """The entries of a cache; `WarmStartInvalid` when it is not one this version can use. Entries for keys that
    are not `cacheable` are dropped: a cache must never stand in for a status."""
    decompressor = zlib.decompressobj(wbits=31)
    try:
        text = decompressor.decompress(data, MAX_UNCOMPRESSED)
    except zlib.error as exc:
        raise WarmStartInvalid(f"not gzip data ({exc})") from None
    if decompressor.unconsumed_tail:
        raise WarmStartInvalid(f"it decompresses to more than {MAX_UNCOMPRESSED} bytes")
    if not decompressor.eof:
        raise WarmStartInvalid("truncated")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WarmStartInvalid(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        shown = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise WarmStartInvalid(f"format {shown!r}, this version reads {FORMAT}")
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise WarmStartInvalid("no list of entries")
    found: dict[str, Cached] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(part, str) for part in entry)):
            raise WarmStartInvalid("an entry that is not [key, version, document]")
        key, version, body = entry
        if cacheable(key):
            found[key] = Cached(version, body.encode())
    return found


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
    log.warning("warm_start.ignored", key=WARM_START_KEY, version=stored.version, reason=problem)
    return {}


def save(store: Store, entries: Mapping[str, Cached], *, written_at: datetime) -> bool:
    """Write a new cache; a failure (no permission on `cache/`, an outage) is logged and costs only the next
    cold read's speed. True when written."""
    data = encode(entries, written_at=written_at)
    try:
        store.put(WARM_START_KEY, data)
    except StoreError as exc:
        log.warning("warm_start.not_written", key=WARM_START_KEY, error=str(exc))
        return False
    log.info("warm_start.written", key=WARM_START_KEY, documents=len(entries), bytes=len(data))
    return True


__all__ = ["Cached", "WarmStartInvalid", "cacheable", "decode", "encode", "load", "save", "should_write"]
