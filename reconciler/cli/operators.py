"""`reconcile retry`, `stop` and `forget`: the operator's writes to a group's record.

Where it sits: the CLI layer, writing `groups/<app>/<group>.json` (and, for `forget`, deleting deployments)
by compare-and-swap. They take the write lease when it is free; when a reconciler (`watch`) holds it they
still write, by compare-and-swap, because that reconciler's own writes to the same document are conditional
too: a pass that decided from the document before the operator's change fails its write and decides again,
so the change is never lost and never half-applied. The next pass of whoever holds the lease acts on it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from contract.clock import utc_now
from contract.exitcodes import ExitCode
from contract.keys import deployment_key, group_state_key
from contract.models import GroupState, StopRequest
from contract.store import PreconditionFailed, Store
from contract.store.docs import DocumentInvalid, parse_document
from reconciler.cli.common import (
    Known,
    UnknownGroup,
    read_known,
    require_store,
    resolve_group,
    short_commit,
    split_group_key,
)
from reconciler.errors import ReconcilerError
from reconciler.plan.words import count
from reconciler.settings import DeploySettings
from reconciler.shell.lease import WriteLease, read_lease
from reconciler.shell.observe import StoreReader
from reconciler.shell.signing import open_fleet_store

log = structlog.get_logger(__name__)

CAS_ATTEMPTS = 10


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    retry = sub.add_parser(
        "retry",
        parents=[parent],
        help="clear a group's quarantined revisions so the next pass deploys again",
        description="A revision whose deployment failed is quarantined: passes do not deploy it again until "
        "the manifests change. `retry` clears the quarantine so the next pass retries the same revision.",
    )
    retry.add_argument("group", help="GROUP or APPLICATION/GROUP")
    retry.set_defaults(func=cmd_retry)

    stop = sub.add_parser(
        "stop",
        parents=[parent],
        help="stop a group's deployment in flight (optionally rolling back)",
        description="Ask the reconciler to stop the group's deployment in flight: no new batch is dispatched, "
        "hosts already running finish, the deployment ends Stopped and its revision is quarantined. With "
        "--rollback the hosts it touched go back to the last good revision.",
    )
    stop.add_argument("group", help="GROUP or APPLICATION/GROUP")
    stop.add_argument("--rollback", action="store_true", help="roll back the hosts the deployment touched")
    stop.set_defaults(func=cmd_stop)

    forget = sub.add_parser(
        "forget",
        parents=[parent],
        help="delete the records of a group removed from the manifests",
        description="A group removed from the manifests keeps its records (shown as removed by `status`) and "
        "nothing is uninstalled from its hosts. `forget` deletes the group's record and its deployments. "
        "Refused while the group is still in the manifests or has a deployment in flight.",
    )
    forget.add_argument("group", help="GROUP or APPLICATION/GROUP")
    forget.set_defaults(func=cmd_forget)


@contextmanager
def operator_lease(store: Store, settings: DeploySettings) -> Iterator[str | None]:
    """Take the lease if it is free; yields the holder of the lease when another reconciler has it."""
    lease = WriteLease(store, duration=settings.reconcile.lease_duration)
    if lease.try_acquire():
        try:
            yield None
        finally:
            lease.release()
        return
    other = read_lease(store)
    yield other.holder if other else "another reconciler"


def update_group(store: Store, key: str, change: Callable[[GroupState], GroupState | None]) -> GroupState | None:
    """Read-modify-write of one group document by compare-and-swap, retried when a pass wrote in between.
    `change` returns None to leave the document as it is."""
    application, name = split_group_key(key)
    store_key = group_state_key(application, name)
    for _ in range(CAS_ATTEMPTS):
        stored = store.get(store_key)
        if stored is None:
            raise UnknownGroup(f"{key}: no record in the store yet (no pass has seen this group)")
        try:
            current = parse_document(stored, GroupState)
        except DocumentInvalid as exc:
            # A forged (refused) or damaged record: nothing to act on, and nothing of it is believed.
            raise ReconcilerError(f"{key}: the group record cannot be used ({exc}); the next pass replaces it"
                                  ) from None
        updated = change(current)
        if updated is None:
            return current
        try:
            store.put_if_version(store_key, updated.to_json(), stored.version)
            return updated
        except PreconditionFailed:
            log.debug("operator.retry_cas", group=key)
            continue
    raise ReconcilerError(f"{key}: the group record kept changing; try again")


def _open_for_writing(settings: DeploySettings, what: str, group: str) -> tuple[Store, Known, str]:
    """The existing store (never created), what it and the manifests know, and the group key `group` names."""
    store = open_fleet_store(settings, create=False)
    require_store(store, what)
    known = read_known(settings, StoreReader(store))
    return store, known, resolve_group(group, known.groups)


def _who_acts(holder: str | None) -> str:
    if holder is None:
        return "the next `reconcile --once` or `reconcile watch` acts on it"
    return f"the running reconciler ({holder}) acts on it at its next pass"


def cmd_retry(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, _, key = _open_for_writing(settings, "retry", args.group)
    cleared: list[str] = []

    def clear(group: GroupState) -> GroupState | None:
        cleared[:] = [q.revision.short() for q in group.quarantined]
        if not group.quarantined:
            return None
        return group.model_copy(update={"quarantined": [], "updated_at": utc_now()})

    with operator_lease(store, settings) as holder:
        update_group(store, key, clear)
    if not cleared:
        print(f"{key}: nothing is quarantined")
        return ExitCode.OK
    print(f"{key}: cleared the quarantine of {', '.join(cleared)}; {_who_acts(holder)} and deploys again")
    return ExitCode.OK


def cmd_stop(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, _, key = _open_for_writing(settings, "stop", args.group)
    stopping: list[str] = []

    def request(group: GroupState) -> GroupState | None:
        if group.deployment_in_flight is None:
            return None
        stopping[:] = [group.deployment_in_flight]
        stop_request = StopRequest(rollback=args.rollback, requested_at=utc_now(),
                                   deployment_id=group.deployment_in_flight)
        return group.model_copy(update={"stop_request": stop_request, "updated_at": utc_now()})

    with operator_lease(store, settings) as holder:
        update_group(store, key, request)
    if not stopping:
        print(f"reconcile: {key}: no deployment in flight to stop", file=sys.stderr)
        return ExitCode.INVALID
    rollback = " and roll back" if args.rollback else ""
    print(f"{key}: asked to stop{rollback} {stopping[0]}; {_who_acts(holder)} (hosts already running finish "
          f"first)")
    return ExitCode.OK


def cmd_forget(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, known, key = _open_for_writing(settings, "forget", args.group)
    state = known.snapshot.state.groups.get(key)
    if state is None:
        raise UnknownGroup(f"{key}: no record in the store to forget")
    desired = known.desired
    if desired is not None and key in desired.desired_groups():
        raise ReconcilerError(
            f"{key} is still in the manifests at {short_commit(desired.commit)}; remove it from the config repo first"
        )
    if desired is None and not state.removed:
        raise ReconcilerError(f"{key}: the manifests could not be read and the group is not marked removed; "
                              f"refusing to forget it")
    if state.deployment_in_flight:
        raise ReconcilerError(f"{key}: deployment {state.deployment_in_flight} is in flight; "
                              f"`reconcile stop {key}` and wait for it to end first")
    application, name = split_group_key(key)
    with operator_lease(store, settings) as holder:
        # Deployments first, the group last: a crash in between leaves a group whose history names deleted
        # deployments, which passes and `status` already tolerate; the reverse would leave orphans forever.
        for deployment_id in state.history:
            store.delete(deployment_key(deployment_id))
        store.delete(group_state_key(application, name))
    note = f" (reconciler {holder} is running; removed groups need no action from it)" if holder else ""
    print(f"{key}: forgot the group record and {count(len(state.history), 'deployment')}; nothing was uninstalled "
          f"from its hosts{note}")
    return ExitCode.OK


__all__ = ["CAS_ATTEMPTS", "cmd_forget", "cmd_retry", "cmd_stop", "operator_lease", "register", "update_group"]
