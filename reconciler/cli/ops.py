"""`reconcile --once`, `watch`, `status`, `history`, `retry`, `stop`, `forget`: the operator's commands.

Where it sits: the CLI layer over passes (`reconciler.shell.passes`), the lease, the store reader and the watch
loop. `reconciler.cli.main` builds the top-level parser and calls `register()` to add these sub-commands and
`run_once()` for `reconcile --once`; every function here returns an exit code from `reconciler.exitcodes`.
This is the only place (with `reconciler.cli.progress`) that prints.

Operator writes (`retry`, `stop`, `forget`) change `groups/<app>/<group>.json` by compare-and-swap. They take
the write lease when it is free; when a reconciler (`watch`) holds it they still write, by compare-and-swap,
because that reconciler's own writes to the same document are conditional too: a pass that decided from the
document before the operator's change fails its write and decides again, so the change is never lost and
never half-applied. The next pass of whoever holds the lease acts on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from contract.durations import format_duration
from contract.keys import deployment_key, group_state_key
from contract.models import (
    CommandStatus,
    Deployment,
    GroupState,
    HostDeploymentStatus,
    Revision,
    StopRequest,
)
from contract.signals import stop_on_signals
from contract.store import PreconditionFailed, Store, open_store
from contract.store.file import missing_folder
from reconciler.cli.progress import current_event, progress_for
from reconciler.core import Observed, is_online
from reconciler.desired.loader import GitSource, load_git
from reconciler.desired.manifests import Desired, DesiredGroup
from reconciler.errors import ManifestErrors, ReconcilerError, SourceError
from reconciler.exitcodes import ExitCode
from reconciler.plan.render import count
from reconciler.settings import DeploySettings
from reconciler.shell.lease import LeaseHeld, LeaseLost, WriteLease, read_lease, utc_now
from reconciler.shell.observe import Snapshot, StoreReader, identity_problems
from reconciler.shell.passes import PassRunner, run_until_settled

log = structlog.get_logger(__name__)

#: Text output lists at most this many hosts per group; JSON lists them all.
HOSTS_SHOWN = 20
CAS_ATTEMPTS = 10


class UnknownGroup(ReconcilerError):
    """A GROUP argument that names no deployment group (exit 1)."""


# --------------------------------------------------------------------------------------------------
# Registration


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    watch = sub.add_parser(
        "watch",
        parents=[parent],
        help="run continuously: react to commits and agent reports until SIGTERM",
        description="Reconcile continuously: a commit to the config repo starts a pass at once (a local checkout "
        "is watched; a remote URL is fetched every reconcile.fetchInterval), agent reports trigger passes, and "
        "a full pass runs every reconcile.resyncInterval. A second watcher waits as a standby for the write "
        "lease. SIGTERM or Ctrl-C finishes the current pass, releases the lease and exits 0.",
    )
    watch.set_defaults(func=cmd_watch)

    status = sub.add_parser(
        "status",
        parents=[parent],
        help="desired vs effective revision, deployment in flight, quarantine and hosts, per group",
        description="Show every deployment group (or one): desired and effective revision, the deployment in "
        "flight with batch progress, quarantined revisions, hosts and their state. Groups removed from the "
        "manifests are shown as removed. Reads only (a file:// store that does not exist yet is reported, not "
        "created); exit 0, or 1 for an unknown group or when the manifests could not be read (the store's "
        "records are still shown, desired revisions unknown).",
    )
    status.add_argument("group", nargs="?", default=None, help="GROUP or APPLICATION/GROUP (default: all)")
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd_status)

    history = sub.add_parser(
        "history",
        parents=[parent],
        help="a group's deployments, newest first",
        description="List a group's deployments (up to reconcile.historyLimit), newest first: who started them, "
        "status, revision, config commit, timings, hosts and why they ended.",
    )
    history.add_argument("group", help="GROUP or APPLICATION/GROUP")
    history.add_argument("--format", choices=("text", "json"), default="text")
    history.set_defaults(func=cmd_history)

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


# --------------------------------------------------------------------------------------------------
# Helpers


def _source(settings: DeploySettings, ref: str | None = None) -> GitSource:
    repository = settings.repository
    return GitSource(repository.url, ref or repository.ref, repository.path)


def _open_for_reading(settings: DeploySettings) -> tuple[Store, Path | None]:
    """The store for a command that must not create it (everything but `--once` and `watch`), and the folder
    of a `file://` store that does not exist yet (nothing has been deployed there, or the path is wrong)."""
    store = open_store(settings.store, create=False)
    return store, missing_folder(store)


def _no_store(folder: Path) -> str:
    return f"no store at {folder} yet: nothing has been deployed there"


def _require_store(store: Store, what: str) -> None:
    """Operator writes act on records a pass wrote: against a store that does not exist there is nothing to
    act on, and creating an empty store at a possibly mistyped path would only hide the mistake."""
    folder = missing_folder(store)
    if folder is not None:
        raise ReconcilerError(f"{_no_store(folder)}, so there is nothing to {what} (check --store or `store:` in "
                              f"deploy.yaml)")


def _try_desired(settings: DeploySettings) -> tuple[Desired | None, str | None]:
    """Manifests for read-only commands: a broken config repo must not hide the store's records."""
    try:
        return load_git(_source(settings)), None
    except ManifestErrors as exc:
        return None, f"the manifests at {settings.repository.ref} are invalid ({count(len(exc.errors), 'error')})"
    except SourceError as exc:
        return None, str(exc)


def resolve_group(name: str, known: set[str], missing_store: Path | None = None) -> str:
    """`APP/GROUP` or a bare `GROUP` (unique across applications) -> the group key. `missing_store`: the
    folder of a store that does not exist yet, named in the error because it is the likelier mistake."""
    if name in known:
        return name
    matches = sorted(key for key in known if key.split("/", 1)[-1] == name)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UnknownGroup(f"{name!r} names several groups ({', '.join(matches)}); write APPLICATION/GROUP")
    listing = ", ".join(sorted(known)) or "none yet"
    store_note = f"; {_no_store(missing_store)}" if missing_store is not None else ""
    raise UnknownGroup(f"no deployment group named {name!r} (known: {listing}){store_note}")


def _short(revision: Revision | None) -> str:
    return revision.short() if revision is not None else "-"


def _commit(commit: str | None) -> str:
    return commit[:12] if commit else "-"


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    return f"{format_duration(timedelta(seconds=seconds))} ago"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _revision_json(revision: Revision | None) -> dict[str, Any] | None:
    if revision is None:
        return None
    return {"short": revision.short(), "identity": revision.identity(),
            **revision.model_dump(mode="json", by_alias=True, exclude_none=True)}


# --------------------------------------------------------------------------------------------------
# reconcile --once


def run_once(args: argparse.Namespace, settings: DeploySettings) -> int:
    """`reconcile --once [--timeout D] [--no-wait] [--plan plan.json]`."""
    started = time.monotonic()
    plan_path: Path | None = getattr(args, "plan", None)
    if plan_path is not None:
        from reconciler.plan.engine import load_saved_plan

        # Read the plan first so a damaged file fails before anything else. The manifests still come from the
        # configured ref (the branch tip after the merge), not the plan's commit: verify_saved_plan compares
        # them by meaning, so a PR merged after this plan was made is refused instead of silently undone.
        load_saved_plan(plan_path)
    desired = load_git(_source(settings, None))  # invalid manifests raise before anything is written
    log.info("once.loaded", commit=desired.commit, groups=len(desired.groups))
    store = open_store(settings.store)
    reconcile_settings = settings.reconcile
    timeout = reconcile_settings.timeout
    lease = WriteLease(store, duration=reconcile_settings.lease_duration)
    with stop_on_signals() as stop:
        try:
            if not lease.acquire(wait=min(reconcile_settings.lease_duration, timeout), stop=stop):
                print("reconcile: interrupted while waiting for the write lease", file=sys.stderr)
                return 128 + 15
        except LeaseHeld as exc:
            print(f"reconcile: {exc}", file=sys.stderr)
            return ExitCode.LEASE_HELD
        try:
            runner = PassRunner(store, lease, reconcile_settings)
            verify = _plan_verifier(plan_path, desired) if plan_path is not None else None
            remaining = timeout - timedelta(seconds=time.monotonic() - started)
            with progress_for(settings.logging) as progress:
                result = run_until_settled(
                    runner,
                    desired,
                    timeout=max(remaining, timedelta(0)),
                    no_wait=bool(getattr(args, "no_wait", False)),
                    on_pass=progress.on_pass,
                    before_first_decide=verify,
                    stop=stop,
                )
        except LeaseLost as exc:
            print(f"reconcile: {exc}", file=sys.stderr)
            return ExitCode.LEASE_HELD
        except ReconcilerError as exc:
            from reconciler.plan.engine import StalePlanError

            if isinstance(exc, StalePlanError):
                print(f"reconcile: {exc}", file=sys.stderr)
                return ExitCode.STALE_PLAN
            raise
        finally:
            lease.release()
    elapsed = time.monotonic() - started
    verdict = {
        ExitCode.OK: "converged" if not (result.last and result.last.in_flight) else "applied one pass",
        ExitCode.FAILED_ROLLED_BACK: "failed, rolled back",
        ExitCode.FAILED: "failed",
        ExitCode.TIMED_OUT: "timed out",
    }.get(result.exit_code, "stopped")  # type: ignore[call-overload]
    if result.exit_code in (ExitCode.FAILED_ROLLED_BACK, ExitCode.FAILED) and not result.ran and result.held:
        # Nothing failed in this run: an earlier failure's quarantine holds the desired revision back. Saying
        # "failed, rolled back" would send people looking for a rollout that never happened.
        groups = ", ".join(result.held)
        verdict = (f"nothing deployed: the desired revision of {groups} is quarantined after an earlier failure "
                   f"(`reconcile retry GROUP` deploys it again)")
    print(f"commit {_commit(desired.commit)}: {verdict}; {count(result.passes, 'pass', 'passes')} in "
          f"{elapsed:.1f}s (exit {result.exit_code})")
    for line in result.lines:
        print(f"  {line}")
    return result.exit_code


def _plan_verifier(plan_path: Path, desired: Desired) -> Callable[[Snapshot], None]:
    from reconciler.plan.engine import verify_saved_plan

    def verify(snapshot: Snapshot) -> None:
        verify_saved_plan(plan_path, desired, snapshot.observed, snapshot.state)

    return verify


# --------------------------------------------------------------------------------------------------
# reconcile watch


def cmd_watch(args: argparse.Namespace, settings: DeploySettings) -> int:
    from reconciler.shell.watch import Watcher

    store = open_store(settings.store)
    with stop_on_signals() as stop, progress_for(settings.logging, title="reconcile watch") as progress:
        return Watcher(store, settings, stop=stop, progress=progress).run()


# --------------------------------------------------------------------------------------------------
# reconcile status


@dataclass(frozen=True)
class _Context:
    snapshot: Snapshot
    desired: Desired | None
    desired_groups: Mapping[str, DesiredGroup]
    problem: str | None
    now: datetime
    heartbeat_timeout: timedelta

    @property
    def known(self) -> set[str]:
        return set(self.snapshot.state.groups) | set(self.desired_groups)


def _context(settings: DeploySettings, reader: StoreReader) -> _Context:
    desired, problem = _try_desired(settings)
    return _Context(
        snapshot=reader.snapshot(),
        desired=desired,
        desired_groups=desired.desired_groups() if desired else {},
        problem=problem,
        now=utc_now(),
        heartbeat_timeout=settings.reconcile.heartbeat_timeout,
    )


def _members(key: str, context: _Context) -> list[str]:
    observed = context.snapshot.observed
    group = context.desired_groups.get(key)
    if group is not None:
        hosts = {h for h in observed.host_ids() if group.targets.matches(h, dict(observed.tags(h)))}
        return sorted(hosts | set(group.targets.hosts))
    # A removed group: the hosts that still have something of it installed or were in its last deployment.
    found = {h for h, status in observed.statuses.items() if key in status.installed}
    state = context.snapshot.state.groups.get(key)
    if state is not None and state.history:
        last = context.snapshot.state.deployments.get(state.history[-1])
        if last is not None:
            found.update(last.hosts)
    return sorted(found)


def _host_json(host_id: str, key: str, target: Revision | None, effective: Revision | None,
               context: _Context) -> dict[str, Any]:
    observed = context.snapshot.observed
    status = observed.statuses.get(host_id)
    registration = observed.registrations.get(host_id)
    installed = status.installed.get(key) if status else None
    command = status.command if status else None
    last: dict[str, Any] | None = None
    if command is not None and command.deployment_group == key.split("/", 1)[1]:
        last = {
            "deploymentId": command.deployment_id,
            "status": str(command.status),
            "event": current_event(observed, host_id, command.deployment_id)
            if command.status is CommandStatus.IN_PROGRESS else None,
        }
    identity = installed.revision.identity() if installed is not None else None
    up_to_date = identity is not None and target is not None and identity == target.identity()
    on_effective = identity is not None and effective is not None and identity == effective.identity()
    return {
        "host": host_id,
        "registered": registration is not None,
        "online": is_online(observed, host_id, now=context.now, heartbeat_timeout=context.heartbeat_timeout),
        "heartbeatAt": _iso(status.heartbeat_at) if status else None,
        "zone": registration.zone if registration else None,
        "installed": _revision_json(installed.revision) if installed else None,
        "upToDate": up_to_date,
        "onEffective": on_effective,
        "lastCommand": last,
    }


def _deployment_json(deployment: Deployment, observed: Observed | None = None) -> dict[str, Any]:
    counts = {status.value: 0 for status in HostDeploymentStatus}
    for host in deployment.hosts.values():
        counts[host.status.value] += 1
    running = []
    if observed is not None:
        for host_id, host in sorted(deployment.hosts.items()):
            if host.status is HostDeploymentStatus.IN_PROGRESS:
                running.append({"host": host_id,
                                "event": current_event(observed, host_id, deployment.deployment_id)})
    ended = deployment.ended_at
    return {
        "deploymentId": deployment.deployment_id,
        "creator": deployment.creator,
        "rollbackOf": deployment.rollback_of,
        "status": str(deployment.status),
        "revision": _revision_json(deployment.revision),
        "sourceCommit": deployment.source_commit,
        "deploymentConfig": deployment.deployment_config,
        "batches": len(deployment.batches),
        "hosts": counts,
        "total": len(deployment.hosts),
        "running": running,
        "createdAt": _iso(deployment.created_at),
        "endedAt": _iso(ended),
        "seconds": round((ended - deployment.created_at).total_seconds(), 1) if ended else None,
        "errorCode": deployment.error_code,
        "errorMessage": deployment.error_message,
    }


def group_status(key: str, context: _Context, reader: StoreReader) -> dict[str, Any]:
    """Everything `status` says about one group, as JSON-ready data (the text view renders this)."""
    state = context.snapshot.state.groups.get(key)
    manifest = context.desired_groups.get(key)
    observed = context.snapshot.observed
    desired_revision = manifest.revision if manifest else (state.desired_revision if state else None)
    effective = state.effective_revision if state else None
    in_flight = None
    if state is not None and state.deployment_in_flight:
        deployment = context.snapshot.state.deployments.get(state.deployment_in_flight) or reader.deployment(
            state.deployment_in_flight)
        if deployment is not None:
            in_flight = _deployment_json(deployment, observed)
    quarantined = [
        {"revision": _revision_json(q.revision), "sourceCommit": q.source_commit, "deploymentId": q.deployment_id,
         "reason": q.reason, "since": _iso(q.since)}
        for q in (state.quarantined if state else [])
    ]
    desired_id = desired_revision.identity() if desired_revision else None
    held = any(q.revision.identity() == desired_id for q in (state.quarantined if state else []))
    # When the manifests could not be read, a group missing from them is not "removed": nobody knows. Only the
    # store's own word (a pass marked it removed) or what is in flight can be said.
    desired_known = context.desired is not None
    if manifest is None and not desired_known:
        phase = "unknown"
        if state is not None and state.removed:
            phase = "removed"
        elif in_flight is not None:
            phase = "rolling back" if in_flight["creator"] == "rollback" else "deploying"
            if state is not None and state.stop_request is not None:
                phase = "stopping"
    elif manifest is None:
        phase = "removed"
    elif state is None:
        phase = "new"
    elif in_flight is not None:
        phase = "rolling back" if in_flight["creator"] == "rollback" else "deploying"
        if state.stop_request is not None:
            phase = "stopping"
    elif held:
        phase = "quarantined"
    elif manifest.suspend:
        phase = "suspended"
    elif effective is not None and desired_id == effective.identity():
        phase = "converged"
    else:
        phase = "pending"
    target = desired_revision if phase != "removed" and desired_known else effective
    hosts = [_host_json(h, key, target, effective, context) for h in _members(key, context)]
    last = None
    if state is not None and state.history:
        deployment = context.snapshot.state.deployments.get(state.history[-1]) or reader.deployment(state.history[-1])
        if deployment is not None:
            last = _deployment_json(deployment)
    return {
        "group": key,
        "state": phase,
        #: False when the manifests could not be read: desiredRevision is then the one a pass last recorded.
        "desiredKnown": desired_known,
        "desiredRevision": _revision_json(desired_revision),
        "desiredCommit": (context.desired.commit if manifest and context.desired else
                          (state.desired_commit if state else None)),
        "effectiveRevision": _revision_json(effective),
        "effectiveCommit": state.effective_commit if state else None,
        "deploymentConfig": manifest.config.name if manifest else None,
        "configDescription": manifest.config.describe() if manifest else None,
        "inFlight": in_flight,
        "lastDeployment": last,
        "quarantined": quarantined,
        "stopRequest": state.stop_request.model_dump(mode="json", by_alias=True, exclude_none=True)
        if state and state.stop_request else None,
        "hosts": hosts,
        "updatedAt": _iso(state.updated_at) if state else None,
    }


def cmd_status(args: argparse.Namespace, settings: DeploySettings) -> int:
    """Exit 0, or 1 when a GROUP is unknown or the manifests could not be read. In the latter case the
    store's records are still printed (that is when an operator needs them most), but the desired revisions
    are unknown, so a script must not take the output for a complete answer."""
    store, missing = _open_for_reading(settings)
    reader = StoreReader(store)
    context = _context(settings, reader)
    keys = sorted(context.known)
    if args.group is not None:
        keys = [resolve_group(args.group, context.known, missing)]
    lease = read_lease(store)
    report = {
        "store": settings.store,
        "hostConflicts": host_conflicts(context.snapshot.observed),
        "storeMissing": _no_store(missing) if missing is not None else None,
        "commit": context.desired.commit if context.desired else None,
        "manifestsProblem": context.problem,
        "lease": {"holder": lease.holder, "expiresAt": _iso(lease.expires_at),
                  "active": lease.active(context.now)} if lease else None,
        "groups": [group_status(key, context, reader) for key in keys],
    }
    code = ExitCode.INVALID if context.problem else ExitCode.OK
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_status(report, context.now)
    if context.problem and args.format == "json":
        # The text view says it in its header; JSON readers get it in `manifestsProblem` and here for people.
        print(f"reconcile: the manifests could not be read: {context.problem}; the groups listed are the store's "
              f"records, their desired revisions are unknown", file=sys.stderr)
    return code


def host_conflicts(observed: Observed) -> list[dict[str, Any]]:
    """Hosts whose id two agent installations claim, for a WARNING line each (`observe.identity_problems`).

    The agent that loses such a fight exits without writing the host's registration or status, so its
    conflict record is the only trace: without this warning a machine that is silently never deployed to
    looks like a healthy host."""
    return [{"host": problem.host_id, "kind": problem.kind, "since": _iso(problem.since),
             "message": problem.message}
            for problem in identity_problems(observed)]


def _counts_text(deployment: Mapping[str, Any]) -> str:
    hosts = deployment["hosts"]
    total = deployment["total"] - hosts["Skipped"]
    return (f"batch {deployment['batches']}: {hosts['Succeeded']}/{total} done, {hosts['Failed']} failed, "
            f"{hosts['InProgress']} in flight, {hosts['Pending']} pending")


def _print_status(report: Mapping[str, Any], now: datetime) -> None:
    lease = report["lease"]
    header = f"store {report['store']}, manifests at {_commit(report['commit'])}"
    if lease and lease["active"]:
        header += f", reconciler {lease['holder']} holds the lease"
    else:
        header += ", no reconciler running"
    print(header)
    for conflict in report["hostConflicts"]:
        print(f"WARNING: host {conflict['host']}: {conflict['message']}")
    if report["storeMissing"]:
        print(f"{report['storeMissing']} (check --store if it should have been)")
    if report["manifestsProblem"]:
        print(f"error: the manifests could not be read: {report['manifestsProblem']}; showing the store's "
              f"records only, desired revisions unknown")
    if not report["groups"]:
        print("no deployment groups yet")
    for group in report["groups"]:
        print()
        print(f"{group['group']}  {group['state'].upper()}")
        desired = group["desiredRevision"]
        effective = group["effectiveRevision"]
        if group["desiredKnown"]:
            print(f"  desired      {desired['short'] if desired else '-'}  (config commit "
                  f"{_commit(group['desiredCommit'])})")
        else:
            recorded = (f" (last recorded by a pass: {desired['short']}, config commit "
                        f"{_commit(group['desiredCommit'])})" if desired else "")
            print(f"  desired      unknown: the manifests could not be read{recorded}")
        print(f"  effective    {effective['short'] if effective else '-'}  (config commit "
              f"{_commit(group['effectiveCommit'])})")
        if group["deploymentConfig"]:
            print(f"  config       {group['deploymentConfig']}: {group['configDescription']}")
        flight = group["inFlight"]
        if flight:
            creator = f" ({flight['creator']})" if flight["creator"] != "user" else ""
            print(f"  in flight    {flight['deploymentId']}{creator} {flight['status']}, {_counts_text(flight)}")
            for busy in flight["running"]:
                print(f"                 {busy['host']}: {busy['event'] or 'dispatched'}")
        if group["stopRequest"]:
            rollback = " with rollback" if group["stopRequest"].get("rollback") else ""
            print(f"  stop         requested{rollback}")
        last = group["lastDeployment"]
        if last and (not flight or last["deploymentId"] != flight["deploymentId"]):
            error = f" [{last['errorCode']}]" if last["errorCode"] else ""
            print(f"  last         {last['deploymentId']} {last['status']}{error}, ended "
                  f"{_ago(datetime.fromisoformat(last['endedAt']) if last['endedAt'] else None, now)}")
        for held in group["quarantined"]:
            print(f"  quarantined  {held['revision']['short']} after {held['deploymentId']}: {held['reason']}")
        hosts = group["hosts"]
        online = sum(1 for h in hosts if h["online"])
        current = sum(1 for h in hosts if h["upToDate"])
        last_good = sum(1 for h in hosts if h["onEffective"] and not h["upToDate"])
        against = "desired" if group["state"] != "removed" and group["desiredKnown"] else "effective"
        counts = f"{online} online, {current} on the {against} revision" + (
            f", {last_good} on the last good one" if last_good else "")
        print(f"  hosts        {len(hosts)} ({counts})")
        for host in hosts[:HOSTS_SHOWN]:
            installed = host["installed"]["short"] if host["installed"] else "nothing installed"
            liveness = "online" if host["online"] else ("offline" if host["registered"] else "never registered")
            last_command = host["lastCommand"]
            note = ""
            if last_command:
                event = f" ({last_command['event']})" if last_command["event"] else ""
                note = f"  last {last_command['deploymentId']} {last_command['status']}{event}"
            if host["upToDate"]:
                mark = "current"
            elif host["onEffective"]:
                mark = "last good"
            else:
                mark = "outdated" if host["installed"] else "-"
            print(f"    {host['host']:<20} {liveness:<16} {installed:<28} {mark}{note}")
        if len(hosts) > HOSTS_SHOWN:
            print(f"    ... and {len(hosts) - HOSTS_SHOWN} more (--format json lists every host)")


# --------------------------------------------------------------------------------------------------
# reconcile history


def cmd_history(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, missing = _open_for_reading(settings)
    reader = StoreReader(store)
    snapshot = reader.snapshot()
    desired, _ = _try_desired(settings)
    known = set(snapshot.state.groups) | (set(desired.desired_groups()) if desired else set())
    key = resolve_group(args.group, known, missing)
    state = snapshot.state.groups.get(key)
    ids: list[str] = list(state.history) if state else []
    if state is not None and state.deployment_in_flight and state.deployment_in_flight not in ids:
        ids.append(state.deployment_in_flight)
    deployments = []
    for deployment_id in reversed(ids):
        deployment = snapshot.state.deployments.get(deployment_id) or reader.deployment(deployment_id)
        if deployment is not None:
            deployments.append(_deployment_json(deployment))
    if args.format == "json":
        print(json.dumps({"group": key, "deployments": deployments}, indent=2))
        return ExitCode.OK
    if not deployments:
        print(f"{key}: no deployments yet" + (f" ({_no_store(missing)})" if missing is not None else ""))
        return ExitCode.OK
    print(f"{key}: {count(len(deployments), 'deployment')}, newest first")
    print(f"  {'deployment':<34} {'creator':<9} {'status':<10} {'revision':<24} {'commit':<12} "
          f"{'started':<20} {'took':>7}  hosts")
    for d in deployments:
        took = format_duration(timedelta(seconds=round(d["seconds"]))) if d["seconds"] is not None else "-"
        started = d["createdAt"][:19].replace("T", " ")
        print(f"  {d['deploymentId']:<34} {d['creator']:<9} {d['status']:<10} {d['revision']['short']:<24} "
              f"{_commit(d['sourceCommit']):<12} {started:<20} {took:>7}  {_history_hosts(d)}")
        if d["rollbackOf"]:
            print(f"      rollback of {d['rollbackOf']}")
        if d["errorCode"] or d["errorMessage"]:
            print(f"      {d['errorCode'] or ''}{': ' if d['errorCode'] else ''}{d['errorMessage'] or ''}")
    return ExitCode.OK


def _history_hosts(deployment: Mapping[str, Any]) -> str:
    """`2 ok, 1 failed of 3`, counting only the hosts the deployment was for. A rollback lists every host of
    the group but only deploys to the ones the failed deployment touched; the others are Skipped and are
    named as such, so "1 ok, 0 failed of 3" never makes a finished rollback look two hosts short."""
    hosts = deployment["hosts"]
    skipped = hosts["Skipped"]
    text = f"{hosts['Succeeded']} ok, {hosts['Failed']} failed of {deployment['total'] - skipped}"
    return text + (f" ({skipped} skipped)" if skipped else "")


# --------------------------------------------------------------------------------------------------
# Operator writes: retry, stop, forget


@contextmanager
def _operator_lease(store: Store, settings: DeploySettings) -> Iterator[str | None]:
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


def _update_group(store: Store, key: str, change: Callable[[GroupState], GroupState | None]) -> GroupState | None:
    """Read-modify-write of one group document by compare-and-swap, retried when a pass wrote in between.
    `change` returns None to leave the document as it is."""
    application, name = key.split("/", 1)
    store_key = group_state_key(application, name)
    for _ in range(CAS_ATTEMPTS):
        stored = store.get(store_key)
        if stored is None:
            raise UnknownGroup(f"{key}: no record in the store yet (no pass has seen this group)")
        current = GroupState.model_validate_json(stored.data)
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


def _known_for_write(settings: DeploySettings, reader: StoreReader) -> tuple[set[str], Desired | None, Snapshot]:
    snapshot = reader.snapshot()
    desired, _ = _try_desired(settings)
    known = set(snapshot.state.groups) | (set(desired.desired_groups()) if desired else set())
    return known, desired, snapshot


def _who_acts(holder: str | None) -> str:
    if holder is None:
        return "the next `reconcile --once` or `reconcile watch` acts on it"
    return f"the running reconciler ({holder}) acts on it at its next pass"


def cmd_retry(args: argparse.Namespace, settings: DeploySettings) -> int:
    store = open_store(settings.store, create=False)
    _require_store(store, "retry")
    known, _, _ = _known_for_write(settings, StoreReader(store))
    key = resolve_group(args.group, known)
    cleared: list[str] = []

    def clear(group: GroupState) -> GroupState | None:
        cleared[:] = [q.revision.short() for q in group.quarantined]
        if not group.quarantined:
            return None
        return group.model_copy(update={"quarantined": [], "updated_at": utc_now()})

    with _operator_lease(store, settings) as holder:
        _update_group(store, key, clear)
    if not cleared:
        print(f"{key}: nothing is quarantined")
        return ExitCode.OK
    print(f"{key}: cleared the quarantine of {', '.join(cleared)}; {_who_acts(holder)} and deploys again")
    return ExitCode.OK


def cmd_stop(args: argparse.Namespace, settings: DeploySettings) -> int:
    store = open_store(settings.store, create=False)
    _require_store(store, "stop")
    known, _, _ = _known_for_write(settings, StoreReader(store))
    key = resolve_group(args.group, known)
    stopping: list[str] = []

    def request(group: GroupState) -> GroupState | None:
        if group.deployment_in_flight is None:
            return None
        stopping[:] = [group.deployment_in_flight]
        stop_request = StopRequest(rollback=args.rollback, requested_at=utc_now(),
                                   deployment_id=group.deployment_in_flight)
        return group.model_copy(update={"stop_request": stop_request, "updated_at": utc_now()})

    with _operator_lease(store, settings) as holder:
        _update_group(store, key, request)
    if not stopping:
        print(f"reconcile: {key}: no deployment in flight to stop", file=sys.stderr)
        return ExitCode.INVALID
    rollback = " and roll back" if args.rollback else ""
    print(f"{key}: asked to stop{rollback} {stopping[0]}; {_who_acts(holder)} (hosts already running finish "
          f"first)")
    return ExitCode.OK


def cmd_forget(args: argparse.Namespace, settings: DeploySettings) -> int:
    store = open_store(settings.store, create=False)
    _require_store(store, "forget")
    reader = StoreReader(store)
    known, desired, snapshot = _known_for_write(settings, reader)
    key = resolve_group(args.group, known)
    state = snapshot.state.groups.get(key)
    if state is None:
        raise UnknownGroup(f"{key}: no record in the store to forget")
    if desired is not None and key in desired.desired_groups():
        raise ReconcilerError(
            f"{key} is still in the manifests at {_commit(desired.commit)}; remove it from the config repo first"
        )
    if desired is None and not state.removed:
        raise ReconcilerError(f"{key}: the manifests could not be read and the group is not marked removed; "
                              f"refusing to forget it")
    if state.deployment_in_flight:
        raise ReconcilerError(f"{key}: deployment {state.deployment_in_flight} is in flight; "
                              f"`reconcile stop {key}` and wait for it to end first")
    application, name = key.split("/", 1)
    with _operator_lease(store, settings) as holder:
        # Deployments first, the group last: a crash in between leaves a group whose history names deleted
        # deployments, which passes and `status` already tolerate; the reverse would leave orphans forever.
        for deployment_id in state.history:
            store.delete(deployment_key(deployment_id))
        store.delete(group_state_key(application, name))
    note = f" (reconciler {holder} is running; removed groups need no action from it)" if holder else ""
    print(f"{key}: forgot the group record and {count(len(state.history), 'deployment')}; nothing was uninstalled "
          f"from its hosts{note}")
    return ExitCode.OK


__all__ = [
    "UnknownGroup",
    "cmd_forget",
    "cmd_history",
    "cmd_retry",
    "cmd_status",
    "cmd_stop",
    "cmd_watch",
    "group_status",
    "register",
    "resolve_group",
    "run_once",
]
