"""The `.fleetshift-store` marker: what makes a folder a `file://` store, and how a store notices it vanished.

Who creates the store, and why a vanished folder is an outage, not an empty fleet: a store is a folder with
a marker file, `DIR/.fleetshift-store` (`{"kind": "fleetshift-store", "storeId": ..., "schemaVersion": 1}`),
written once, create-only, and never rewritten.

- A writer (`open_store(url)`, the default: `deploy-agent run`, `reconcile --once`, `reconcile watch`) opening a
  folder without a marker creates the store (writes the marker) only when the folder does not exist or holds
  nothing but this backend's dot files. A folder holding `hosts/`, `commands/`, `deployments/`, `groups/` or
  `leases/` is a store written by a fleetshift from before the marker: the writer adopts it by writing the
  marker, once, and logs `store.adopted`. Any other folder is refused (`StoreError`): it is not a store.
- Readers (`open_store(url, create=False)`: `reconcile status`, `history`, `plan`, the operator commands)
  never write the marker: a missing or empty folder is "no store there yet" (`missing_folder()` in
  `file.py`), reads of it are empty and writes raise `StoreMissing`; an unmarked store from an earlier
  version is read as it is.
- Once a store object has seen the marker, every operation checks it is still there (one `stat`, after a
  read, before and after a write), and a missing marker or folder is `StoreUnavailable`: the folder was
  renamed away or the network share under it was unmounted, and callers wait it out as an outage. Without
  this a vanished folder read as a fleet with no hosts and the next write re-created it as an empty store.
  Nothing is ever created above the store folder while it is open: writes make sub-folders only.

Where it sits: `FileStore` (file.py) owns one `StoreMarker` and asks it on open (`open`), after every read
(`check`) and around every write (`writable`).
"""

from __future__ import annotations

import json
import os
import uuid
import weakref
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import structlog

from contract.atomic import fsync_dir, write_atomic
from contract.store.base import StoreError, StoreMissing, StoreUnavailable
from contract.store.oserrors import translate

# The events (store.created, store.adopted) keep the logger they had when this lived in file.py.
log = structlog.get_logger("contract.store.file")

#: The file that makes a folder a store (see the module docstring).
MARKER = ".fleetshift-store"
MARKER_KIND = "fleetshift-store"
MARKER_SCHEMA_VERSION = 1
#: Top-level folders a store written before the marker existed has (the key prefixes of contract/keys.py).
_STORE_FOLDERS = frozenset({"hosts", "commands", "deployments", "groups", "leases"})
_MARKER_MAX_BYTES = 4096


def _marker_id(path: Path, data: bytes) -> str:
    """The store id in a marker file; StoreError when it is not one this fleetshift can use."""
    try:
        raw = json.loads(data) if len(data) <= _MARKER_MAX_BYTES else None
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict) or raw.get("kind") != MARKER_KIND or not isinstance(raw.get("storeId"), str):
        raise StoreError(f"{path} is not a fleetshift store marker; move it away if this folder is not a store")
    version = raw.get("schemaVersion")
    if not isinstance(version, int) or version > MARKER_SCHEMA_VERSION:
        raise StoreError(f"the store at {path.parent} was made by a newer fleetshift (marker schemaVersion "
                         f"{version!r}; this one knows {MARKER_SCHEMA_VERSION}): upgrade this side")
    return str(raw["storeId"])


def _make_dirs(folder: Path) -> None:
    """mkdir -p, fsyncing each parent whose entries changed so the new folders survive a power cut."""
    if folder.is_dir():
        return
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for created in reversed(missing):
        try:
            os.mkdir(created)
        except FileExistsError:
            continue
        with suppress(OSError):
            fsync_dir(created.parent)


class StoreMarker:
    """The marker of one store folder, as one store object has seen it."""

    def __init__(self, root: Path, *, create: bool, temp_prefix: str, on_replaced: Callable[[], None]) -> None:
        """`create=True` (writers) creates the store or adopts one from before the marker; `create=False`
        (readers) never writes the marker. `on_replaced`, a method of the owning store, is called when the
        marker turns out to be another file than before (the same store, restored or remounted). It is held
        weakly, so the store is still freed (and its lock files closed) as soon as nothing refers to it."""
        self.root = root
        self.create = create
        self._temp_prefix = temp_prefix
        self._on_replaced = weakref.WeakMethod(on_replaced)
        #: The id in the store's marker, once this object has seen it (None: a reader of an unmarked folder).
        self.store_id: str | None = None
        self._ident: tuple[int, int] | None = None

    def open(self) -> None:
        """Load the marker; for a writer, create the store or adopt one from before the marker first."""
        state = self.probe()
        if state == "marked":
            self.load()
            return
        if not self.create:
            return  # a reader: it never makes a folder a store
        if state == "foreign":
            raise StoreError(
                f"{self.root} is not a fleetshift store: it has no {MARKER} marker and holds other files; point "
                "the store URL at a new or empty folder (or at the store you meant)"
            )
        if state == "missing":
            try:
                _make_dirs(self.root)
            except OSError as exc:
                raise translate(exc, "create the store folder", self.root) from exc
        payload = json.dumps({
            "kind": MARKER_KIND,
            "storeId": uuid.uuid4().hex,
            "schemaVersion": MARKER_SCHEMA_VERSION,
            "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "adopted": state == "legacy",
        }, indent=2).encode() + b"\n"
        # Create-only (a hard link): of two writers starting on an empty folder, one marker wins and both use it.
        wrote = write_atomic(
            self.root / MARKER, payload, create_only=True, mode=0o644, prefix=self._temp_prefix, suffix=""
        )
        self.load()
        if wrote and state == "legacy":
            log.warning("store.adopted", folder=str(self.root), store_id=self.store_id,
                        reason=f"a store written before {MARKER} markers existed: marked it as a store, once")
        elif wrote:
            log.info("store.created", folder=str(self.root), store_id=self.store_id)

    def probe(self) -> str:
        """What the folder holds now: "marked" (a store), "missing", "empty" (nothing but dot files),
        "legacy" (a store from before the marker) or "foreign" (something else)."""
        try:
            names = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        if MARKER in names:
            return "marked"
        visible = {name for name in names if not name.startswith(".")}
        if not visible:
            return "empty"
        return "legacy" if visible & _STORE_FOLDERS else "foreign"

    def load(self) -> None:
        """Read the marker: its store id must be the one this object saw before, if any."""
        path = self.root / MARKER
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read(_MARKER_MAX_BYTES + 1)
        store_id = _marker_id(path, data)
        if self.store_id is not None and store_id != self.store_id:
            raise StoreUnavailable(
                f"the folder {self.root} now holds another store ({store_id}; this process opened {self.store_id}): "
                "restart this process to use it"
            )
        if self._ident is not None and self._ident != (info.st_dev, info.st_ino):
            on_replaced = self._on_replaced()
            if on_replaced is not None:
                on_replaced()
        self.store_id = store_id
        self._ident = (info.st_dev, info.st_ino)

    def check(self) -> bool:
        """Is the store still there? True when it is marked; False for a reader of an unmarked folder (it may
        have been created or adopted since: then it is marked from now on). A store this object saw marked
        whose marker is gone raises StoreUnavailable: the folder was moved away or its share unmounted, and
        reading it as empty would show a fleet with no hosts."""
        path = self.root / MARKER
        try:
            if self._ident is None:
                try:
                    self.load()
                except (FileNotFoundError, NotADirectoryError):
                    return False
                return True
            info = os.stat(path)
            if (info.st_dev, info.st_ino) != self._ident:
                self.load()
        except (FileNotFoundError, NotADirectoryError):
            raise StoreUnavailable(
                f"the store at {self.root} is gone: its {MARKER} marker is missing (the folder was moved or "
                "deleted, or the share it is on is not mounted); waiting for it to come back"
            ) from None
        except OSError as exc:
            raise translate(exc, "find the store marker in", self.root) from exc
        return True

    def writable(self) -> None:
        """Before a write: the store is there (StoreUnavailable if it vanished), or, for a reader of an
        unmarked folder, it is a store from before the marker (StoreMissing otherwise)."""
        if not self.check() and self.probe() != "legacy":
            raise StoreMissing(f"no store at {self.root}: it was opened read-only, and only the agent "
                               "and the reconciler's apply path create it")
