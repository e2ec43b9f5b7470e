"""How each notification is doing, read from its cursor: the data `reconcile status` shows.

One `NotificationHealth` per notification of the manifests (and per cursor left by one no longer in them):
last delivery, last error with its time and the provider's words, totals delivered / given up / retried, the
head event waiting for its next attempt, and how many events are still to send when the records are at hand.
Reading only: one listing and one small document per notification.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contract.store import Store
from contract.store.docs import DocumentInvalid, read_document
from reconciler.core.state import State
from reconciler.desired.manifests import Desired
from reconciler.notify.cursor import NOTIFICATIONS_PREFIX, NotificationCursor, cursor_key
from reconciler.notify.feed import pending_events


@dataclass(frozen=True)
class NotificationHealth:
    name: str
    #: The manifest's provider field (from the manifest, else from the cursor).
    provider: str
    #: Whether the current manifests have this notification (False: a cursor left by a removed one).
    configured: bool
    #: None until the reconciler first ran with this notification.
    cursor: NotificationCursor | None
    #: Why the cursor could not be read, when it could not.
    unreadable: str | None = None
    #: Events still to send, when `read_health` was given the records (None: not computed).
    pending: int | None = None

    @property
    def delivered(self) -> int:
        return self.cursor.delivered_total if self.cursor else 0

    @property
    def failed(self) -> int:
        """Events given up (after their last attempt, or refused outright)."""
        return self.cursor.failed_total if self.cursor else 0

    @property
    def last_delivered_at(self) -> datetime | None:
        return self.cursor.last_delivered_at if self.cursor else None

    @property
    def last_error(self) -> str | None:
        return self.cursor.last_error if self.cursor else None

    @property
    def last_error_at(self) -> datetime | None:
        return self.cursor.last_error_at if self.cursor else None

    @property
    def retrying(self) -> bool:
        """The head event failed and waits for its next attempt."""
        return self.cursor is not None and self.cursor.head is not None

    @property
    def healthy(self) -> bool:
        """Nothing waiting on a retry, and the last thing that happened was not an error."""
        if self.unreadable is not None or self.retrying:
            return False
        cursor = self.cursor
        if cursor is None or cursor.last_error_at is None:
            return True
        return cursor.last_delivered_at is not None and cursor.last_delivered_at > cursor.last_error_at


def read_health(store: Store, desired: Desired | None = None, state: State | None = None) -> list[NotificationHealth]:
    """Every notification's health, by name. With `desired`, the manifests' notifications are listed even before
    their first run; with `state` too (the records `status` has read), `pending` is counted."""
    configured = dict(desired.notifications) if desired is not None else {}
    names = set(configured)
    for item in store.list(NOTIFICATIONS_PREFIX):
        if item.key.endswith(".json"):
            names.add(item.key[len(NOTIFICATIONS_PREFIX):].removesuffix(".json"))
    found: list[NotificationHealth] = []
    for name in sorted(names):
        manifest = configured.get(name)
        cursor: NotificationCursor | None = None
        unreadable: str | None = None
        try:
            versioned = read_document(store, cursor_key(name), NotificationCursor)
            cursor = versioned.document if versioned is not None else None
        except DocumentInvalid as exc:
            unreadable = str(exc)
        provider = manifest.spec.provider if manifest is not None else (cursor.provider if cursor else "?")
        pending = None
        if manifest is not None and cursor is not None and state is not None:
            pending = len(pending_events(manifest.spec, cursor, state))
        found.append(NotificationHealth(name=name, provider=provider, configured=manifest is not None,
                                        cursor=cursor, unreadable=unreadable, pending=pending))
    return found


__all__ = ["NotificationHealth", "read_health"]
