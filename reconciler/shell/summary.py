"""What a `reconcile --once` run ended with: the exit code and the lines a person reads at the end.

Where it sits: `reconciler.shell.settle` records every pass in a `RunLedger` and, once nothing is in flight,
asks `summarize` for the verdict; the CLI prints the lines. Nothing here prints or reads the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from contract.exitcodes import ExitCode
from contract.models import Deployment, DeploymentStatus, GroupState, HostDeploymentStatus, QuarantinedRevision
from contract.redact import public_host_text
from reconciler.core import Blocked, FinishDeployment, MarkGroupRemoved, MembershipIndex, StartRollback
from reconciler.shell.passes import PassOutcome

FAILED_STATUSES = frozenset({DeploymentStatus.FAILED, DeploymentStatus.STOPPED})
FAILED_HOSTS_SHOWN = 5


@dataclass
class RunLedger:
    """What ended during a run, across passes, to decide the exit code and the summary."""

    finished: dict[str, FinishDeployment] = field(default_factory=dict)
    #: Triggering deployment id -> the rollback deployment started for it.
    rollbacks: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def record(self, outcome: PassOutcome) -> None:
        for action in outcome.applied.actions:
            if isinstance(action, MarkGroupRemoved):
                self.removed.append(action.group)
            elif isinstance(action, FinishDeployment):
                self.finished[action.deployment_id] = action
            elif isinstance(action, StartRollback):
                self.rollbacks[action.rollback_of] = action.deployment_id


@dataclass
class _Verdict:
    """The summary being written, and whether it found failures that were (or were not) rolled back."""

    lines: list[str] = field(default_factory=list)
    rolled_back: bool = False
    unrecovered: bool = False


def _rolled_back(deployment_id: str, ledger: RunLedger, deployments: Mapping[str, Deployment]) -> str | None:
    """The id of a successful rollback of `deployment_id`, from this run or the records."""
    rollback_id = ledger.rollbacks.get(deployment_id)
    if rollback_id is not None:
        finish = ledger.finished.get(rollback_id)
        if finish is not None and finish.status is DeploymentStatus.SUCCEEDED:
            return rollback_id
        return None
    for deployment in deployments.values():
        if deployment.rollback_of == deployment_id and deployment.status is DeploymentStatus.SUCCEEDED:
            return deployment.deployment_id
    return None


def _failed_hosts(deployment: Deployment) -> list[str]:
    """Why each host failed (event, script, exit code, last output), straight from the agent's report, so a
    CI log says what went wrong without anyone opening the store."""
    failed = [(host, state) for host, state in sorted(deployment.hosts.items())
              if state.status is HostDeploymentStatus.FAILED]
    # Redacted and bounded again: a record written by an older reconciler, or by hand, was not (docs/trust.md).
    lines = [f"  {host} failed: {public_host_text(state.message) if state.message else 'no details reported'}"
             for host, state in failed[:FAILED_HOSTS_SHOWN]]
    if len(failed) > FAILED_HOSTS_SHOWN:
        more = len(failed) - FAILED_HOSTS_SHOWN
        hosts = "host" if more == 1 else "hosts"
        lines.append(f"  ... and {more} more failed {hosts}: reconcile status shows them all")
    return lines


def _partial(deployment: Deployment) -> str:
    """For a success with failed hosts (fewer than the minimum healthy hosts allowed, so CodeDeploy counts it
    successful too): how many, and that they are not on the revision. Empty when every host succeeded."""
    failed = sum(1 for state in deployment.hosts.values() if state.status is HostDeploymentStatus.FAILED)
    if not failed:
        return ""
    deployed = sum(1 for state in deployment.hosts.values() if state.status is not HostDeploymentStatus.SKIPPED)
    hosts = "host" if deployed == 1 else "hosts"
    return (f", but {failed} of {deployed} {hosts} failed and did not get it (within the minimum healthy hosts); "
            "see docs/reconciler.md \"After a partial success\" to bring them up to date")


def _report_finish(verdict: _Verdict, finish: FinishDeployment, ledger: RunLedger,
                   deployments: Mapping[str, Deployment]) -> None:
    """The line(s) for one deployment that ended during the run."""
    deployment = finish.deployment
    deployment_id = finish.deployment_id
    if finish.status is DeploymentStatus.SUCCEEDED:
        what = "rollback" if deployment.creator == "rollback" else "deployment"
        line = f"{finish.group}: {what} {deployment_id} of {finish.revision.short()} succeeded"
        verdict.lines.append(line + _partial(deployment))
        verdict.lines.extend(_failed_hosts(deployment))
        return
    if finish.status is DeploymentStatus.SUPERSEDED:
        verdict.lines.append(f"{finish.group}: deployment {deployment_id} superseded by a newer commit")
        return
    if finish.status not in FAILED_STATUSES:
        return
    code = f" [{finish.error_code}]" if finish.error_code else ""
    verb = "failed" if finish.status is DeploymentStatus.FAILED else "was stopped"
    if deployment.creator == "rollback":
        verdict.unrecovered = True
        verdict.lines.append(f"{finish.group}: rollback {deployment_id} {verb}{code}: {finish.reason}")
    else:
        head = f"{finish.group}: deployment {deployment_id} of {finish.revision.short()} {verb}{code}: {finish.reason}"
        rollback = _rolled_back(deployment_id, ledger, deployments)
        if rollback is not None:
            verdict.rolled_back = True
            verdict.lines.append(f"{head}; rolled back by {rollback}")
        else:
            verdict.unrecovered = True
            verdict.lines.append(f"{head}; not rolled back")
    verdict.lines.extend(_failed_hosts(deployment))


def _held_back_by(group: GroupState | None) -> QuarantinedRevision | None:
    """The quarantine entry that keeps the group's desired revision from being deployed, if any."""
    if group is None or group.desired_revision is None:
        return None
    wanted = group.desired_revision.identity()
    matching = [q for q in group.quarantined if q.revision.identity() == wanted]
    return matching[-1] if matching else None


def _report_quarantined(verdict: _Verdict, blocked: Blocked, last: PassOutcome, ledger: RunLedger,
                        deployments: Mapping[str, Deployment]) -> None:
    """A group not deployed because its desired revision failed earlier; counts as that failure's outcome."""
    held = _held_back_by(last.state_after.groups.get(blocked.group))
    earlier = held.deployment_id if held else blocked.deployment_id
    if earlier is not None and earlier in ledger.finished:
        return  # already reported with the deployment that ended
    recovered = earlier is not None and _rolled_back(earlier, ledger, deployments) is not None
    verdict.rolled_back = verdict.rolled_back or recovered
    verdict.unrecovered = verdict.unrecovered or not recovered
    verdict.lines.append(
        f"{blocked.group}: not deployed: {blocked.reason}. Fix the manifests, or run "
        f"`reconcile retry {blocked.group}` to try the same revision again"
    )


def summarize(ledger: RunLedger, last: PassOutcome | None) -> tuple[int, list[str]]:
    """Exit code and summary lines of a run that ended with nothing in flight.

    - 0: every deployment that ended succeeded (or was superseded) and no group is held back.
    - 3: a deployment failed or was stopped and a rollback to the last good revision succeeded; also when a
      group's desired revision is quarantined from an earlier run whose failure was rolled back (the fleet
      does not run what the manifests say).
    - 4: a failure with no successful rollback (rollback disabled, or the rollback failed too).
    """
    verdict = _Verdict()
    deployments = dict(last.state_after.deployments) if last else {}
    for finish in ledger.finished.values():
        _report_finish(verdict, finish, ledger, deployments)
    for removed in ledger.removed:
        verdict.lines.append(f"{removed}: removed from the manifests; nothing was uninstalled, its records are kept "
                             f"(`reconcile forget {removed}` deletes them)")
    if last is not None:
        for blocked in last.blocked:
            if blocked.code == "QUARANTINED":
                _report_quarantined(verdict, blocked, last, ledger, deployments)
        verdict.lines.extend(f"{blocked.group}: {blocked.code}: {blocked.reason}"
                             for blocked in last.blocked if blocked.code != "QUARANTINED")
    warnings = aws_membership_lines(last) if last is not None else []
    if verdict.unrecovered:
        return ExitCode.FAILED, verdict.lines + warnings
    if verdict.rolled_back:
        return ExitCode.FAILED_ROLLED_BACK, verdict.lines + warnings
    return ExitCode.OK, (verdict.lines or ["converged: every deployment group runs its desired revision"]) + warnings


def aws_membership_lines(last: PassOutcome) -> list[str]:
    """Warnings about EC2 membership from the last pass's read (issue 16): groups whose instances could not be
    listed (this run deployed to the registered agents only), and expected instances with no agent (missing)."""
    observed = last.snapshot.observed
    if not observed.ec2:
        return []  # no group reads EC2: no index of every registered host to build (issue 18)
    index = MembershipIndex(observed)
    lines: list[str] = []
    for key, read in sorted(observed.ec2.items()):
        if read.error is not None:
            lines.append(f"{key}: WARNING: EC2 membership unknown ({read.error}); this run went on with the "
                         "registered agents only, and missing hosts are not known")
            continue
        missing = sorted(i.instance_id for i in read.instances
                         if i.expected and index.host_for(i.instance_id) not in observed.registrations)
        if missing:
            shown = ", ".join(missing[:FAILED_HOSTS_SHOWN]) + (
                f" and {len(missing) - FAILED_HOSTS_SHOWN} more" if len(missing) > FAILED_HOSTS_SHOWN else "")
            lines.append(f"{key}: WARNING: {len(missing)} missing host(s): EC2 instance(s) with no agent registered "
                         f"({shown}); a deployment counts each as a failed host")
    return lines


def timed_out_lines(ledger: RunLedger, last: PassOutcome) -> list[str]:
    """The summary of a run cut off by `--timeout`: what ended, then what is still in flight or waiting."""
    _, lines = summarize(ledger, None)
    lines = [line for line in lines if not line.startswith("converged")]
    for group, deployment_id in sorted(last.in_flight.items()):
        deployment = last.state_after.deployments.get(deployment_id)
        counts = ""
        if deployment is not None:
            done = sum(1 for h in deployment.hosts.values() if h.status == "Succeeded")
            total = len(deployment.hosts)
            counts = f" ({done} of {total} {'host' if total == 1 else 'hosts'} done)"
        lines.append(f"{group}: {deployment_id} still in flight{counts}")
    for blocked in last.waiting:
        lines.append(f"{blocked.group}: {blocked.reason}")
    lines.insert(0, "the timeout passed with work in flight; deployments keep their state, re-run to continue")
    return lines


__all__ = ["FAILED_STATUSES", "RunLedger", "aws_membership_lines", "summarize", "timed_out_lines"]
