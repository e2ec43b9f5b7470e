"""`reconcile status [GROUP] [--format json]`: desired vs effective revision, deployment in flight, quarantine
and hosts, per group.

Where it sits: the CLI layer. Reads only: the store's records (`StoreReader`), the manifests when they can be
read (a broken config repo must not hide the store's records) and, for groups whose targets name EC2 or Auto
Scaling, the instances AWS lists for them (`read_memberships`, the reader every pass uses: missing hosts, flagged
agents, or the read's error in AWS's words; issue 16). Builds the typed read model of `reconciler.cli.readmodel`,
prints it as text here or as JSON through its `to_json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contract.clock import utc_now
from contract.durations import format_duration
from contract.exitcodes import ExitCode
from contract.keys import analysis_key
from contract.models import Deployment, DeploymentAnalysis, GroupState, HostTraffic, Revision
from contract.store import Store, StoreError
from contract.store.docs import DocumentInvalid, read_document
from reconciler.cli.common import Known, no_store, open_for_reading, read_known, resolve_group, short_commit
from reconciler.cli.readmodel import (
    AnalysisView,
    DeploymentView,
    Ec2View,
    GroupView,
    HostView,
    LeaseStatus,
    NotificationView,
    QuarantineView,
    StatusReport,
    analysis_view,
    ec2_view,
    health_check_of,
    host_conflicts,
    last_command,
    short,
    shown,
)
from reconciler.core import MembershipIndex, is_online
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.core.phase import group_phase
from reconciler.desired.manifests import Desired, DesiredGroup
from reconciler.notify.health import read_health
from reconciler.plan.words import count
from reconciler.settings import DeploySettings
from reconciler.shell.fleet import read_memberships
from reconciler.shell.lease import read_lease
from reconciler.shell.observe import StoreReader
from reconciler.shell.traffic import TrafficShell

#: Text output lists at most this many hosts per group; JSON lists them all.
HOSTS_SHOWN = 20


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
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


def cmd_status(args: argparse.Namespace, settings: DeploySettings) -> int:
    """Exit 0, or 1 when a GROUP is unknown or the manifests could not be read. In the latter case the
    store's records are still printed (that is when an operator needs them most), but the desired revisions
    are unknown, so a script must not take the output for a complete answer."""
    try:
        return _status(args, settings)
    finally:
        gc.unfreeze()


def _status(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, missing = open_for_reading(settings)
    reader = StoreReader(store)
    # The fleet read once and kept to the end: out of the collector's sight meanwhile (`cmd_status` hands it back),
    # or every collection the report triggers walks it again (~0.14 s of a 10,000-host status, issue 18).
    reader.freeze_cold_reads = True
    now = utc_now()
    context = StatusContext(with_ec2(read_known(settings, reader), now), reader, now,
                            settings.reconcile.heartbeat_timeout)
    context.traffic = TrafficShell()
    keys = sorted(context.known.groups)
    if args.group is not None:
        keys = [resolve_group(args.group, context.known.groups, missing)]
    lease = read_lease(store)
    report = StatusReport(
        store=settings.store,
        host_conflicts=host_conflicts(context.known.snapshot.observed),
        store_missing=no_store(missing) if missing is not None else None,
        commit=context.known.desired.commit if context.known.desired else None,
        manifests_problem=context.known.problem,
        lease=LeaseStatus.of(lease, context.now) if lease else None,
        groups=tuple(group_status(key, context) for key in keys),
        notifications=notification_views(store, context) if args.group is None else (),
    )
    problem = context.known.problem
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_status(report, context.now)
    if problem and args.format == "json":
        # The text view says it in its header; JSON readers get it in `manifestsProblem` and here for people.
        print(f"reconcile: the manifests could not be read: {problem}; the groups listed are the store's "
              f"records, their desired revisions are unknown", file=sys.stderr)
    return ExitCode.INVALID if problem else ExitCode.OK


def notification_views(store: Store, context: StatusContext) -> tuple[NotificationView, ...]:
    """Every notification's health; one that cannot be read is shown as such, never fails `status`."""
    known = context.known
    return tuple(NotificationView.of(h) for h in read_health(store, known.desired, known.snapshot.state))


def with_ec2(known: Known, now: datetime) -> Known:
    """`known` with the EC2 membership of every group whose targets name EC2 or Auto Scaling, read once as a pass
    reads it (credentials and region from the AWS chain or the group's `region`). A read that fails is kept as
    an unknown membership in AWS's words, which `status` shows as a warning: it never fails the command."""
    desired = known.desired
    if desired is None or not any(group.targets.uses_aws for group in desired.desired_groups().values()):
        return known
    snapshot = known.snapshot
    observed = read_memberships(desired, snapshot.observed, now, snapshot.state)
    return dataclasses.replace(known, snapshot=dataclasses.replace(snapshot, observed=observed))


# --------------------------------------------------------------------------------------------------
# The read model of one group


@dataclass
class StatusContext:
    """What every group's status is computed from: the records and manifests, read once."""

    known: Known
    reader: StoreReader
    now: datetime
    heartbeat_timeout: timedelta
    #: Reads the load balancers of groups with traffic control (None: not shown, e.g. in tests of the text).
    traffic: TrafficShell | None = None
    _index: MembershipIndex | None = field(default=None, repr=False)

    def traffic_of(self, key: str, hosts: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
        """The group's load balancer names and, per member, where they have it now, in a few words."""
        group = self.desired_groups.get(key)
        desired = self.known.desired
        if self.traffic is None or group is None or group.traffic is None or desired is None:
            return (), {}
        observed = self.known.snapshot.observed
        read = self.traffic.observe_all(desired, observed, {key: hosts}).get(key, {})
        names = tuple(b.name for b in self.traffic.balancers(key, group.traffic))
        return names, {host: traffic_words(found) for host, found in read.items()}

    @property
    def desired_groups(self) -> Mapping[str, DesiredGroup]:
        return self.known.desired.desired_groups() if self.known.desired else {}

    def deployment(self, deployment_id: str, *, running: bool = False) -> DeploymentView | None:
        """A deployment from the snapshot, or read from the store (older history is not in the snapshot).
        `running`: with what each busy host's agent reports running (for the deployment in flight)."""
        snapshot = self.known.snapshot
        deployment = snapshot.state.deployments.get(deployment_id) or self.reader.deployment(deployment_id)
        if deployment is None:
            return None
        return DeploymentView.of(deployment, snapshot.observed if running else None)

    def analysis(self, key: str, deployment_id: str) -> AnalysisView | None:
        """What the gates of a deployment measured (`analysis/<id>.json`), or None when it has no record (no
        gates, or none measured yet). A record that cannot be read is shown as such."""
        deployment = self.known.snapshot.state.deployments.get(deployment_id) or self.reader.deployment(deployment_id)
        if deployment is None:
            return None
        return read_analysis(self.reader, deployment, self.known.desired, self.desired_groups.get(key))

    @property
    def index(self) -> MembershipIndex:
        if self._index is None:
            self._index = MembershipIndex(self.known.snapshot.observed)
        return self._index

    def members(self, key: str) -> list[str]:
        """The group's hosts: by the core's membership rule while it is in the manifests (with its EC2 members,
        missing hosts included, when EC2 was read); for a removed group, the hosts that still have something of
        it installed or were in its last deployment."""
        observed = self.known.snapshot.observed
        group = self.desired_groups.get(key)
        if group is not None:
            return sorted(self.index.members(group.targets, group.key))
        found = {h for h, status in observed.statuses.items() if key in status.installed}
        state = self.known.snapshot.state.groups.get(key)
        if state is not None and state.history:
            last = self.known.snapshot.state.deployments.get(state.history[-1])
            if last is not None:
                found.update(last.hosts)
        return sorted(found)


def read_analysis(
    reader: StoreReader, deployment: Deployment, desired: Desired | None, group: DesiredGroup | None
) -> AnalysisView | None:
    """`analysis/<id>.json` of a deployment as `status` and `history` show it: None when there is none (no gates,
    or nothing measured or read yet); a record that cannot be read says so instead of passing for "nothing"."""
    try:
        record = read_document(reader.store, analysis_key(deployment.deployment_id), DeploymentAnalysis)
    except (DocumentInvalid, StoreError) as exc:
        return AnalysisView(deployment.deployment_id, (), None, problem=str(exc))
    if record is None:
        return None
    return analysis_view(deployment, record.document, desired, group)


def _gated_deployment(
    context: StatusContext, state: GroupState | None, in_flight: DeploymentView | None
) -> str | None:
    """Whose gates `status` shows: the deployment in flight, or else the latest user deployment. Rollbacks and
    catch-ups are never gated, so after a gate stopped a revision the rollback that followed would otherwise hide
    the measured value that stopped it."""
    if in_flight is not None:
        return in_flight.deployment_id
    for deployment_id in reversed(state.history if state is not None else []):
        deployment = context.deployment(deployment_id)
        if deployment is not None and deployment.creator == "user":
            return deployment_id
    return None


def traffic_words(observations: tuple[TargetObservation, ...]) -> str:
    """One load balancer: its state; several: each, in manifest order."""
    words = []
    for found in observations:
        text = found.state.value
        if found.state is TargetState.DRAINING and found.sessions is not None:
            text += f" ({found.sessions} sessions)"
        if found.error:
            text += f": {found.error}"
        words.append(text)
    return ", ".join(words)


def _traffic_step(record: HostTraffic | None, key: str, now: datetime) -> str | None:
    if record is None or record.group != key:
        return None
    repair = " (repair)" if record.repair else ""
    when = ago(record.ended_at or record.started_at, now)
    message = f": {shown(record.message)}" if record.message else ""
    return f"{record.step}{repair} {record.state.value} {when}{message}"


def _host_view(host_id: str, key: str, target: Revision | None, effective: Revision | None,
               context: StatusContext, *, traffic: str | None = None, missing: str | None = None) -> HostView:
    observed = context.known.snapshot.observed
    status = observed.statuses.get(host_id)
    registration = observed.registrations.get(host_id)
    installed = status.installed.get(key) if status else None
    identity = installed.revision.identity() if installed is not None else None
    return HostView(
        host=host_id,
        registered=registration is not None,
        online=is_online(observed, host_id, now=context.now, heartbeat_timeout=context.heartbeat_timeout),
        heartbeat_at=status.heartbeat_at if status else None,
        zone=registration.zone if registration else None,
        installed=installed.revision if installed else None,
        up_to_date=identity is not None and target is not None and identity == target.identity(),
        on_effective=identity is not None and effective is not None and identity == effective.identity(),
        last_command=last_command(observed, host_id, key),
        traffic=traffic,
        traffic_step=_traffic_step(context.known.snapshot.state.traffic.get(host_id), key, context.now),
        health_check=health_check_of(observed, host_id, key),
        refused_total=status.refused_total if status else 0,
        last_refusal=shown(status.refusals[-1].reason) if status and status.refusals else None,
        verifies_signatures=status.verifies_signatures if status else None,
        missing=missing,
    )


def group_status(key: str, context: StatusContext) -> GroupView:
    """Everything `status` says about one group."""
    state = context.known.snapshot.state.groups.get(key)
    manifest = context.desired_groups.get(key)
    desired = context.known.desired
    desired_revision = manifest.revision if manifest else (state.desired_revision if state else None)
    effective = state.effective_revision if state else None
    in_flight = None
    if state is not None and state.deployment_in_flight:
        in_flight = context.deployment(state.deployment_in_flight, running=True)
    quarantined = state.quarantined if state else []
    phase = group_phase(state, manifest, in_flight_creator=in_flight.creator if in_flight else None,
                        desired_known=desired is not None)
    target = desired_revision if phase != "removed" and desired is not None else effective
    members = context.members(key)
    load_balancers, traffic = context.traffic_of(key, members)
    gated_id = _gated_deployment(context, state, in_flight)
    ec2 = ec2_view(manifest, context.known.snapshot.observed, context.index) if manifest is not None else None
    missing = {m.instance_id: m.description for m in ec2.missing} if ec2 is not None else {}
    return GroupView(
        group=key,
        state=phase,
        desired_known=desired is not None,
        desired_revision=desired_revision,
        desired_commit=desired.commit if manifest and desired else (state.desired_commit if state else None),
        effective_revision=effective,
        effective_commit=state.effective_commit if state else None,
        deployment_config=manifest.config.name if manifest else None,
        config_description=manifest.config.describe() if manifest else None,
        in_flight=in_flight,
        last_deployment=context.deployment(state.history[-1]) if state is not None and state.history else None,
        quarantined=tuple(QuarantineView.of(q) for q in quarantined),
        stop_request=state.stop_request if state else None,
        hosts=tuple(_host_view(h, key, target, effective, context, traffic=traffic.get(h), missing=missing.get(h))
                    for h in members),
        updated_at=state.updated_at if state else None,
        load_balancers=load_balancers,
        analysis=context.analysis(key, gated_id) if gated_id is not None else None,
        ec2=ec2,
    )


# --------------------------------------------------------------------------------------------------
# Text


def ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    return f"{format_duration(timedelta(seconds=seconds))} ago"


def counts_text(deployment: DeploymentView) -> str:
    hosts = deployment.hosts
    total = deployment.total - hosts["Skipped"]
    return (f"batch {deployment.batches}: {hosts['Succeeded']}/{total} done, {hosts['Failed']} failed, "
            f"{hosts['InProgress']} in flight, {hosts['Pending']} pending")


def print_status(report: StatusReport, now: datetime) -> None:
    header = f"store {report.store}, manifests at {short_commit(report.commit)}"
    if report.lease and report.lease.active:
        header += f", reconciler {report.lease.holder} holds the lease"
    else:
        header += ", no reconciler running"
    print(header)
    for conflict in report.host_conflicts:
        print(f"WARNING: host {conflict.host}: {conflict.message}")
    if report.store_missing:
        print(f"{report.store_missing} (check --store if it should have been)")
    if report.manifests_problem:
        print(f"error: the manifests could not be read: {report.manifests_problem}; showing the store's "
              f"records only, desired revisions unknown")
    if not report.groups:
        print("no deployment groups yet")
    for group in report.groups:
        print()
        _print_group(group, now)
    if report.notifications:
        print()
        print("notifications")
        for notification in report.notifications:
            print(f"  {notification_line(notification, now)}")


def notification_line(view: NotificationView, now: datetime) -> str:
    """`oncall  slack  ok: 12 delivered, last 2m ago` or `... FAILING: retrying, 3 given up; last error ...`."""
    parts = [f"{view.delivered} delivered" + (f", last {ago(view.last_delivered_at, now)}"
                                              if view.last_delivered_at else "")]
    if view.failed:
        parts.append(f"{view.failed} given up")
    if view.pending:
        parts.append(f"{view.pending} pending")
    if view.retrying:
        parts.append("retrying")
    state = "ok" if view.healthy else "FAILING"
    if not view.configured:
        state = "removed from the manifests"
    line = f"{view.name:<24} {view.provider:<13} {state}: " + ", ".join(parts)
    if view.unreadable:
        line += f"; cursor unreadable: {view.unreadable}"
    elif view.last_error and not view.healthy:
        line += f"; last error {ago(view.last_error_at, now)}: {view.last_error}"
    return line


def _print_group(group: GroupView, now: datetime) -> None:
    print(f"{group.group}  {group.state.upper()}")
    if group.desired_known:
        print(f"  desired      {short(group.desired_revision)}  (config commit {short_commit(group.desired_commit)})")
    else:
        recorded = (f" (last recorded by a pass: {group.desired_revision.short()}, config commit "
                    f"{short_commit(group.desired_commit)})" if group.desired_revision else "")
        print(f"  desired      unknown: the manifests could not be read{recorded}")
    print(f"  effective    {short(group.effective_revision)}  (config commit {short_commit(group.effective_commit)})")
    if group.deployment_config:
        print(f"  config       {group.deployment_config}: {group.config_description}")
    flight = group.in_flight
    if flight:
        creator = f" ({flight.creator})" if flight.creator != "user" else ""
        print(f"  in flight    {flight.deployment_id}{creator} {flight.status}, {counts_text(flight)}")
        for busy in flight.running:
            print(f"                 {busy.host}: {busy.event or 'dispatched'}")
    if group.stop_request:
        rollback = " with rollback" if group.stop_request.rollback else ""
        print(f"  stop         requested{rollback}")
    last = group.last_deployment
    if last and (not flight or last.deployment_id != flight.deployment_id):
        error = f" [{last.error_code}]" if last.error_code else ""
        print(f"  last         {last.deployment_id} {last.status}{error}, ended {ago(last.ended_at, now)}")
    for held in group.quarantined:
        print(f"  quarantined  {held.revision.short()} after {held.deployment_id}: {held.reason}")
    for balancer in group.load_balancers:
        print(f"  traffic      {balancer}")
    if group.analysis is not None:
        _print_analysis(group.analysis, now)
    if group.ec2 is not None:
        _print_ec2(group.ec2)
    _print_hosts(group)


def _print_ec2(ec2: Ec2View) -> None:
    """What EC2 lists for the group: how many instances, which have no agent, which agents claim an instance it
    does not list; or why it could not be read."""
    region = f" in {ec2.region}" if ec2.region else ""
    if ec2.error is not None:
        print(f"  WARNING: EC2 membership unknown{region} ({ec2.error}); the hosts below are the registered agents "
              f"that claim an instance, missing hosts are not known")
    else:
        missing = f", {len(ec2.missing)} missing (no agent registered)" if ec2.missing else ", none missing"
        print(f"  ec2          {count(ec2.expected, 'instance')} expected{region}{missing}")
        for host in ec2.missing[:HOSTS_SHOWN]:
            print(f"    {host.instance_id:<20} missing: no agent registered (EC2: {host.description}); a deployment "
                  f"counts it as a failed host")
        if len(ec2.missing) > HOSTS_SHOWN:
            print(f"    ... and {len(ec2.missing) - HOSTS_SHOWN} more missing (--format json lists every one)")
    for flagged in ec2.flagged:
        print(f"  WARNING: agent {flagged.host} {flagged.reason}")


def _print_analysis(analysis: AnalysisView, now: datetime) -> None:
    """Each gate's run at the current (or last) checkpoint, then the last alarm read."""
    if analysis.problem:
        print(f"  gates        {analysis.deployment_id}: the analysis record could not be read: {analysis.problem}")
    for gate in analysis.gates:
        print(f"  gate         {gate.text()}")
    alarms = analysis.alarms
    if alarms is not None:
        names = f" {', '.join(alarms.alarms)}" if alarms.alarms else ""
        watched = f" (watching {', '.join(alarms.watched)})" if alarms.watched and alarms.state == "OK" else ""
        message = f": {alarms.message}" if alarms.state != "OK" else ""
        print(f"  alarms       {alarms.state}{names}{watched}, checked {ago(alarms.checked_at, now)}{message}")


def _print_hosts(group: GroupView) -> None:
    hosts = group.hosts
    online = sum(1 for h in hosts if h.online)
    current = sum(1 for h in hosts if h.up_to_date)
    last_good = sum(1 for h in hosts if h.on_effective and not h.up_to_date)
    against = "desired" if group.state != "removed" and group.desired_known else "effective"
    counts = f"{online} online, {current} on the {against} revision" + (
        f", {last_good} on the last good one" if last_good else "")
    print(f"  hosts        {len(hosts)} ({counts})")
    for host in hosts[:HOSTS_SHOWN]:
        installed = host.installed.short() if host.installed else "nothing installed"
        liveness = "online" if host.online else ("offline" if host.registered else "never registered")
        if host.missing is not None:
            liveness = "missing"
        note = ""
        if host.last_command:
            event = f" ({host.last_command.event})" if host.last_command.event else ""
            note = f"  last {host.last_command.deployment_id} {host.last_command.status}{event}"
        if host.up_to_date:
            mark = "current"
        elif host.on_effective:
            mark = "last good"
        else:
            mark = "outdated" if host.installed else "-"
        traffic = f"  [{host.traffic}]" if host.traffic else ""
        print(f"    {host.host:<20} {liveness:<16} {installed:<28} {mark}{traffic}{note}")
        if host.traffic_step and not host.traffic_step.startswith("AllowTraffic Succeeded"):
            print(f"      traffic: {host.traffic_step}")
        if host.health_check is not None:
            print(f"      health: {host.health_check.text()}")
        if host.refused_total:
            print(f"      WARNING: refused {count(host.refused_total, 'command')} since its agent started (somebody "
                  f"without the signing key wrote the store); last: {host.last_refusal}")
    unverified = [h.host for h in hosts if h.verifies_signatures is False]
    if unverified and len(unverified) < len(hosts):
        names = ", ".join(unverified[:5]) + (f" and {len(unverified) - 5} more" if len(unverified) > 5 else "")
        print(f"    note: {names} check no signatures (agent.yaml commandSigning): they run whatever the store says")
    if len(hosts) > HOSTS_SHOWN:
        print(f"    ... and {len(hosts) - HOSTS_SHOWN} more (--format json lists every host)")


__all__ = [
    "HOSTS_SHOWN",
    "StatusContext",
    "cmd_status",
    "group_status",
    "print_status",
    "read_analysis",
    "register",
    "with_ec2",
]
