"""What a reviewer is told about a group's rollout: its selector in words, and the warnings, most serious first."""

from __future__ import annotations

from contract.models import DeploymentStatus, Revision
from reconciler.core.simulate import PreviewDeployment, RolloutPreview
from reconciler.desired.manifests import DesiredGroup, TagFilter, TargetsSpec
from reconciler.plan.inputs import PlanOptions
from reconciler.plan.model import GroupRollout, PlanWarning, WarningCode
from reconciler.plan.words import count


def selector_text(targets: TargetsSpec) -> str:
    """CodeDeploy's tag-group semantics in words a reviewer can check against the inventory."""
    parts = []
    for tag_set in targets.tag_sets:
        alternatives = []
        for tag_filter in tag_set:
            if tag_filter.type == "KEY_ONLY":
                alternatives.append(f"{tag_filter.key}=*")
            elif tag_filter.type == "VALUE_ONLY":
                alternatives.append(f"*={tag_filter.value}")
            else:
                alternatives.append(f"{tag_filter.key}={tag_filter.value}")
        joined = " or ".join(alternatives)
        parts.append(f"({joined})" if len(alternatives) > 1 and len(targets.tag_sets) > 1 else joined)
    text = " and ".join(parts)
    aws = _aws_selector_text(targets)
    if aws:
        text = f"{text}; {aws}" if text else aws
    if targets.hosts:
        listed = "hosts " + ", ".join(sorted(targets.hosts))
        text = f"{text}; plus {listed}" if text else listed
    return text


def _aws_selector_text(targets: TargetsSpec) -> str:
    """`EC2 tags app=shop or canary=*; Auto Scaling web-asg in eu-west-1`; empty without EC2 targets."""
    parts = []
    groups = targets.ec2_tag_groups()
    if groups:
        words = [" or ".join(_filter_text(f) for f in group) for group in groups]
        if len(words) > 1:
            words = [f"({w})" if " or " in w else w for w in words]
        parts.append("EC2 tags " + " and ".join(words))
    if targets.auto_scaling_groups:
        parts.append("Auto Scaling " + ", ".join(targets.auto_scaling_groups))
    text = "; ".join(parts)
    return f"{text} in {targets.region}" if text and targets.region else text


def _filter_text(tag_filter: TagFilter) -> str:
    if tag_filter.type == "KEY_ONLY":
        return f"{tag_filter.key}=*"
    if tag_filter.type == "VALUE_ONLY":
        return f"*={tag_filter.value}"
    return f"{tag_filter.key}={tag_filter.value}"


def is_pinned(revision: Revision) -> bool:
    """A revision names fixed bytes: a Git commit SHA, an S3 version or ETag, or a sha256 of the bundle."""
    if revision.sha256 or revision.git is not None:
        return True
    return revision.s3 is not None and bool(revision.s3.version or revision.s3.e_tag)


#: A MISSING_HOSTS warning names at most this many instances (the JSON's `ec2.missing` lists them all).
MISSING_SHOWN = 10


def _has(number: int) -> str:
    return "has" if number == 1 else "have"


def review_warnings(
    rollout: GroupRollout,
    group: DesiredGroup,
    entry: PreviewDeployment | None,
    preview: RolloutPreview,
    *,
    revision_changed: bool,
    with_fleet: bool,
    options: PlanOptions,
) -> list[PlanWarning]:
    """The review warnings for one group's rollout, most serious first. `entry` is the engine's dry run of
    the deployment shown; `with_fleet` says whether hosts and engine decisions come from the store."""
    warnings: list[PlanWarning] = []

    def warn(code: WarningCode, message: str) -> None:
        warnings.append(PlanWarning(code=code, group=rollout.group, message=message))

    targets, action, in_flight = rollout.target_hosts, rollout.action, rollout.in_flight
    if with_fleet and targets == []:
        warn("NO_HOSTS", f"the target selector ({selector_text(group.targets)}) matches no registered host")
    if entry is not None and entry.status is DeploymentStatus.FAILED:
        warn("MINIMUM_HEALTHY_UNMET",
             f"even if every online host succeeds, this deployment fails: {entry.error_code}: {entry.reason}")
    ec2 = rollout.ec2
    if ec2 is not None and ec2.missing:
        listed = "; ".join(f"{m.instance_id} ({m.description})" for m in ec2.missing[:MISSING_SHOWN])
        more = f"; and {len(ec2.missing) - MISSING_SHOWN} more" if len(ec2.missing) > MISSING_SHOWN else ""
        warn("MISSING_HOSTS",
             f"{count(len(ec2.missing), 'EC2 instance')} the group selects {_has(len(ec2.missing))} no agent "
             f"registered (missing): {listed}{more}; a deployment counts each as a failed host when its turn comes")
    elif ec2 is not None and not ec2.read:
        warn("EC2_NOT_READ", f"EC2 membership not read ({ec2.error}): missing hosts are not known, the hosts shown "
                             f"are the registered agents that claim an instance")
    if revision_changed and action in ("deploy", "blocked") and not is_pinned(group.revision):
        warn("UNPINNED_REVISION",
             f"{group.revision.short()} is not pinned (no sha256, S3 version or eTag): the bytes deployed can "
             f"change without a manifest change, and a rollback may not restore what ran before")
    if in_flight is not None:
        supersede = (action == "deploy" and entry is not None and
                     in_flight.revision != entry.revision_to.short())
        then = ("applying this supersedes it: its remaining batches stop once its hosts in flight finish"
                if supersede else "this change lands while it runs")
        warn("IN_FLIGHT", f"deployment {in_flight.deployment_id} ({in_flight.revision}, {in_flight.status}) "
                          f"is in flight right now; {then}")
    host_count = len(targets) if targets is not None else len(group.targets.hosts)
    if not group.auto_rollback.enabled and host_count > options.rollback_warning_hosts:
        counted = "" if targets is not None else "at least "
        warn("ROLLBACK_DISABLED", f"automatic rollback is disabled on a group of {counted}{host_count} hosts "
                                  f"(more than {options.rollback_warning_hosts}): a failed deployment leaves "
                                  f"hosts on the failed revision")
    for blocked in preview.blocked if with_fleet else []:
        if blocked.code == "QUARANTINED":
            warn("QUARANTINED", blocked.reason)
        elif blocked.code == "SUSPENDED" and (revision_changed or entry is None):
            warn("SUSPENDED", blocked.reason + "; set `suspend: false` to let it start")
    return warnings
