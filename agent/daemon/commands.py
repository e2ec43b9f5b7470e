"""Reading this host's command, `commands/<host>.json`, by conditional reads: an unchanged command moves no
body. The agent's main thread polls it (`read`); while a command runs its reporter thread watches the same
key for a newer one (`newer`)."""

from __future__ import annotations

from dataclasses import dataclass

from contract.keys import command_key
from contract.store import Store, StoreError
from contract.store.docs import DocumentInvalid, DocumentRefused, Versioned, parse_document
from contract.wire import HostCommand


@dataclass(frozen=True)
class CommandRead:
    #: The command in the store, or None (no command, or one that does not parse).
    command: HostCommand | None
    #: True when this version of the key was not seen before.
    fresh: bool
    #: A fresh version that does not parse: its bytes and why.
    unreadable: tuple[bytes, str] | None = None
    #: The store version of `command`.
    version: str | None = None
    #: A fresh version whose signature does not hold (docs/trust.md): its store version and why. Nothing in
    #: it is read, not even its generation.
    refused: tuple[str, str] | None = None


class CommandReader:
    def __init__(self, store: Store, host_id: str) -> None:
        self.store = store
        self.key = command_key(host_id)
        self._seen: Versioned[HostCommand] | None = None
        #: The version of a command that did not parse: not read again until it changes.
        self._rejected: str | None = None

    def read(self) -> CommandRead:
        """The command now in the store (main thread). Raises StoreError."""
        known = self._seen.version if self._seen is not None else self._rejected
        stored = self.store.get(self.key, if_version_not=known)
        if stored is None:
            self._seen = None
            self._rejected = None
            return CommandRead(None, fresh=False)
        fresh = stored.version != known
        if fresh:
            try:
                self._seen = Versioned(parse_document(stored, HostCommand), stored.version)
                self._rejected = None
            except DocumentRefused as exc:
                self._seen = None
                self._rejected = stored.version
                return CommandRead(None, fresh=True, refused=(stored.version, exc.reason))
            except DocumentInvalid as exc:
                self._seen = None
                self._rejected = stored.version
                return CommandRead(None, fresh=True, unreadable=(stored.data, str(exc)))
        if self._seen is None:
            return CommandRead(None, fresh)
        return CommandRead(self._seen.document, fresh, version=self._seen.version)

    def newer(self) -> HostCommand | None:
        """A command written since the last `read` (reporter thread), or None; store errors count as none:
        outages are reported by the poll loop and the status writes, this is only a watch."""
        seen = self._seen
        try:
            stored = self.store.get(self.key, if_version_not=seen.version if seen else None)
        except StoreError:
            return None
        if stored is None or (seen is not None and stored.version == seen.version):
            return None
        try:
            return parse_document(stored, HostCommand)
        except DocumentInvalid:
            return None
