"""Typed access to the store: documents in and out, each with the version it was read at.

Where it sits: between the raw blob `Store` and both sides' code. The agent reads its command and writes its
registration and status through here; the reconciler reads statuses and writes its own documents with
compare-and-swap. Putting the parsing here means a document that does not fit its model fails the same way,
with the same message, wherever it is read.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from contract.store.base import Store, StoredObject, StoreError, read_limit
from contract.store.bulk import get_many
from contract.vocabulary import SCHEMA_VERSION

if TYPE_CHECKING:
    from contract.models import Document
    from contract.wirebase import WireDocument

#: A document of either implementation: the reconciler's pydantic models (contract/models.py) or the agent's
#: msgspec records (contract/wire.py). Neither library is imported here, so the agent never loads pydantic
#: through this module, nor the reconciler msgspec.
DocumentT = TypeVar("DocumentT", bound="Document | WireDocument")


class DocumentInvalid(StoreError):
    """An object in the store does not parse as the document its key promises (a newer schema, a hand edit
    gone wrong, a partial upload by a foreign tool). Not retryable: the same bytes will fail again."""

    def __init__(self, key: str, message: str, *, version: str | None = None) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.version = version


class DocumentRefused(DocumentInvalid):
    """A document of a signed key whose signature does not hold (docs/trust.md): not signed, signed by a key
    not trusted, altered, or moved from another key or store. Readers treat it like an unreadable document,
    except that nothing in it, not even its generation, is believed."""

    def __init__(self, key: str, reason: str, *, version: str | None = None) -> None:
        super().__init__(key, f"refused: {reason}", version=version)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Versioned(Generic[DocumentT]):
    """A document and the store version it was read (or written) at, for compare-and-swap."""

    document: DocumentT
    version: str


def parse_document(stored: StoredObject, model: type[DocumentT]) -> DocumentT:
    """Validate one stored object; the error names the key, the field, and what to do about a newer schema.

    Every way a document can be unreadable ends as `DocumentInvalid`, never as another exception: too big to
    read (`StoredObject.oversize`, see `contract.store.base.read_limit`), not JSON, nested too deep, or not
    the model. A process must not crash, again at every start, on one bad document written by somebody else."""
    if stored.refused is not None:
        raise DocumentRefused(stored.key, stored.refused, version=stored.version)
    if stored.oversize is not None:
        raise DocumentInvalid(
            stored.key,
            f"{stored.oversize} bytes, more than the {read_limit(stored.key)} bytes a {model.__name__} may have: "
            "not read",
            version=stored.version,
        )
    validator = getattr(model, "__pydantic_validator__", None)
    try:
        if validator is not None:
            # The model's own validator, called without keyword arguments: what `model_validate_json` calls, minus
            # its wrapper and the six keyword arguments it passes through to pydantic-core. A cold read parses two
            # documents per host; 20,000 of them took 103 ms, now 94 (issue 18).
            document: DocumentT = validator.validate_json(stored.data)
        else:
            document = cast("DocumentT", model.model_validate_json(stored.data))
        return document
    except (RecursionError, MemoryError, ValueError) as exc:
        problem = _problem(exc)
        if problem is not None:
            raise _invalid(stored, model, *problem) from None
        raise DocumentInvalid(
            stored.key, f"not a valid {model.__name__}: {type(exc).__name__}", version=stored.version
        ) from None


def _problem(exc: BaseException) -> tuple[str, str, int] | None:
    """Where a document does not fit its model, what is wrong there, and how many problems there are in all; None
    for an exception that is not a validation error. Both libraries are already loaded when their error is raised,
    so importing them here costs nothing."""
    if type(exc).__module__.startswith("pydantic"):
        from pydantic_core import ValidationError

        if isinstance(exc, ValidationError):
            errors = exc.errors()
            if not errors:
                return "(document)", "does not fit", 1
            where = ".".join(str(part) for part in errors[0]["loc"]) or "(document)"
            return where, errors[0]["msg"], exc.error_count()
    if type(exc).__module__.startswith("msgspec"):
        import msgspec

        if isinstance(exc, msgspec.DecodeError):
            message, _, path = str(exc).partition(" - at `$")
            where = path.rstrip("`").lstrip(".").replace("[", ".").replace("]", "") or "(document)"
            return where, message, 1
    return None


def _invalid(stored: StoredObject, model: type[Any], where: str, message: str, count: int) -> DocumentInvalid:
    """The message for a document that does not fit its model."""
    newer = _newer_schema(stored.data)
    if newer is not None:
        return DocumentInvalid(
            stored.key,
            f"written with schemaVersion {newer}, but this fleetshift reads up to {SCHEMA_VERSION}: "
            "upgrade this side",
            version=stored.version,
        )
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return DocumentInvalid(
        stored.key, f"not a valid {model.__name__}: {where}: {message}{more}", version=stored.version
    )


def _newer_schema(data: bytes) -> int | None:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
        return None
    value = raw.get("schemaVersion") if isinstance(raw, dict) else None
    return value if isinstance(value, int) and value > SCHEMA_VERSION else None


@contextmanager
def bulk_parsing() -> Iterator[None]:
    """CPython's cyclic garbage collector paused while many documents are parsed at once.

    Why: parsing a status allocates hundreds of small objects that all stay alive, so the collector runs again and
    again and finds nothing to free; on a cold read of 10,000 statuses it was most of the time (profiled in issue
    18). Documents hold no reference cycles, so nothing is lost by collecting once afterwards, as CPython does
    on its own when it is enabled again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_document(store: Store, key: str, model: type[DocumentT]) -> Versioned[DocumentT] | None:
    stored = store.get(key)
    if stored is None:
        return None
    return Versioned(parse_document(stored, model), stored.version)


def read_if_changed(
    store: Store, key: str, model: type[DocumentT], known: Versioned[DocumentT] | None
) -> Versioned[DocumentT] | None:
    """Poll one key: with a known version, a conditional read, so an unchanged document moves no bytes and
    `known` itself comes back. None when the key is absent."""
    stored = store.get(key, if_version_not=known.version if known is not None else None)
    if stored is None:
        return None
    if known is not None and stored.version == known.version:
        return known
    return Versioned(parse_document(stored, model), stored.version)


def write_document(store: Store, key: str, document: Document | WireDocument) -> str:
    """Unconditional write, for keys with a single writer (an agent's own registration and status)."""
    return store.put(key, document.to_json())


def create_document(store: Store, key: str, document: Document | WireDocument) -> str:
    """Create-only; raises PreconditionFailed if someone created the key first."""
    return store.put_if_absent(key, document.to_json())


def replace_document(store: Store, key: str, document: Document | WireDocument, version: str) -> str:
    """Compare-and-swap; raises PreconditionFailed if the key changed since `version` was read."""
    return store.put_if_version(key, document.to_json(), version)


@dataclass
class DocumentCache(Generic[DocumentT]):
    """Every document under a prefix, kept current by listing with versions and fetching only what changed.

    `refresh()` is the fleet-scale read: on a quiet fleet it costs one listing; after a heartbeat round it
    fetches exactly the objects whose version moved. Objects that do not parse are kept out of `documents`
    and reported in `invalid` (one bad host must not hide the others).
    """

    store: Store
    prefix: str
    model: type[DocumentT]
    documents: dict[str, Versioned[DocumentT]] = field(default_factory=dict)
    invalid: dict[str, DocumentInvalid] = field(default_factory=dict)
    #: Keys fetched by the last `refresh()` (for benchmarks and logs).
    last_fetched: int = 0

    def refresh(self, *, suffix: str = "", workers: int = 1) -> RefreshResult:
        """List, then fetch what changed; with `workers` > 1 the fetches run in threads (S3 round trips)."""
        listed = {item.key: item.version for item in self.store.list(self.prefix) if item.key.endswith(suffix)}
        removed = [key for key in self.documents if key not in listed]
        for key in removed:
            del self.documents[key]
        for key in [key for key in self.invalid if key not in listed]:
            del self.invalid[key]
        changed = [key for key, version in listed.items() if self._known_version(key) != version]
        self.last_fetched = 0
        updated: list[str] = []
        found = get_many(self.store, changed, workers=workers)
        fetched = [found[key] for key in changed]
        with bulk_parsing():
            for key, stored in zip(changed, fetched, strict=True):
                self.last_fetched += 1
                if stored is None:
                    self.documents.pop(key, None)
                    removed.append(key)
                    continue
                try:
                    self.documents[key] = Versioned(parse_document(stored, self.model), stored.version)
                    self.invalid.pop(key, None)
                except DocumentInvalid as exc:
                    self.documents.pop(key, None)
                    self.invalid[key] = exc
                updated.append(key)
        return RefreshResult(updated=updated, removed=removed)

    def _known_version(self, key: str) -> str | None:
        known = self.documents.get(key)
        if known is not None:
            return known.version
        bad = self.invalid.get(key)
        return bad.version if bad is not None else None

    def latest(self) -> Mapping[str, DocumentT]:
        return {key: versioned.document for key, versioned in self.documents.items()}


@dataclass(frozen=True)
class RefreshResult:
    updated: list[str]
    removed: list[str]
