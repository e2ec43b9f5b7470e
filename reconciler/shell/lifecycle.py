"""The shell's side of Auto Scaling launch lifecycle hooks (issue 16): before each decision, hand the core the
instances held in Pending:Wait for each group's hook (`Observed.launches`, from this pass's EC2 read); after the
pass's writes, make the calls the core decided (`CompleteLifecycleAction`, `RecordLifecycleHeartbeat` actions).

Where it sits: `PassRunner.run_pass` calls `observe` right after `FleetShell.observe` (the Auto Scaling lifecycle
states come with the membership read: `DescribeAutoScalingGroups`, no extra read) and `perform` after the executor
applied the pass's writes without a conflict, under the lease. The only AWS writes the reconciler makes:
`autoscaling:CompleteLifecycleAction` and `autoscaling:RecordLifecycleActionHeartbeat`.

Memory, in this process only, none in the store (docs/aws-fleet.md, "Auto Scaling lifecycle hooks", has the table):
- the lifecycle actions completed, so the next few passes (whose EC2 read may be up to 15 s old and still say
  Pending:Wait) do not complete them again. Lost in a crash: the next process completes once more, and AWS answers
  `ValidationError: No active Lifecycle Action found with instance ID ...`, which counts as done;
- the last heartbeat recorded on each, from which the next is timed. Lost in a crash: the next one is due at once
  (an extra heartbeat is harmless: it only resets the hook's heartbeat timeout);
- when an instance was first seen held, standing in for its launch time when EC2 did not give one.
Any other failure of a call is logged (`lifecycle.call_failed`, AWS's words) and leaves the decision to the next
pass: an AWS error never ends a pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import structlog

from contract.aws import classify, failure_words
from reconciler.core import Action, CompleteLifecycleAction, Observed, RecordLifecycleHeartbeat
from reconciler.core.lifecycle import held_launches
from reconciler.core.observed import HeldLaunch
from reconciler.desired.manifests import Desired

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
TOTAL_ATTEMPTS = 3
#: What AWS answers a lifecycle action that is no longer pending (completed already, by us before a crash or by
#: the hook's own timeout): the call's purpose is met, or cannot be any more.
NO_ACTIVE_ACTION = "No active Lifecycle Action"

#: (Auto Scaling group, instance id, hook): one lifecycle action.
CallKey = tuple[str, str, str]
ClientFactory = Callable[[str | None], Any]


def autoscaling_client(region: str | None) -> Any:
    """A boto3 Auto Scaling client with the reader's timeouts and retries (reconciler/fleet/ec2.py)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )
    session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
    return session.client("autoscaling", config=config)


@dataclasses.dataclass(frozen=True)
class CallOutcome:
    """One lifecycle call and how it ended: `done` (AWS accepted it, or there was no active action any more) or not
    (`error` in AWS's words: it is decided again next pass)."""

    action: CompleteLifecycleAction | RecordLifecycleHeartbeat
    done: bool
    error: str | None = None
    already: bool = False


class LaunchShell:
    """Held instances for the core, and the lifecycle calls it decides, with Auto Scaling clients per region."""

    def __init__(self, *, clock: Callable[[], datetime], client: ClientFactory = autoscaling_client) -> None:
        self._clock = clock
        self._client_factory = client
        self._clients: dict[str | None, Any] = {}
        self._completed: dict[CallKey, datetime] = {}
        self._heartbeats: dict[CallKey, datetime] = {}
        self._first_seen: dict[str, datetime] = {}

    def observe(self, desired: Desired, observed: Observed) -> Observed:
        """`observed` with `launches` filled for every group with `spec.autoScaling` whose EC2 read is complete."""
        launches: dict[str, tuple[HeldLaunch, ...]] = {}
        pending: set[CallKey] = set()
        now = self._clock()
        for key, group in desired.desired_groups().items():
            if group.auto_scaling is None:
                continue
            read = observed.ec2.get(key)
            if read is None or not read.known:
                continue
            hook = group.auto_scaling.lifecycle_hook
            for instance in read.instances:
                if instance.lifecycle_state == "Pending:Wait" and instance.auto_scaling_group is not None:
                    pending.add((instance.auto_scaling_group, instance.instance_id, hook))
                    self._first_seen.setdefault(instance.instance_id, now)
            held = held_launches(
                group, read, first_seen=self._first_seen, heartbeats=self._heartbeats, completed=self._completed
            )
            if held:
                launches[key] = held
        self._forget(pending)
        if not launches and not observed.launches:
            return observed
        return dataclasses.replace(observed, launches=launches)

    def _forget(self, pending: set[CallKey]) -> None:
        """Drop what concerns instances no read lists in Pending:Wait any more (or whose group's read failed: then
        at worst one completion is repeated and answered "No active Lifecycle Action")."""
        for memory in (self._completed, self._heartbeats):
            for call_key in [k for k in memory if k not in pending]:
                del memory[call_key]
        instances = {instance_id for _, instance_id, _ in pending}
        for instance_id in [i for i in self._first_seen if i not in instances]:
            del self._first_seen[instance_id]

    def perform(self, actions: Iterable[Action], *, before_call: Callable[[], None] | None = None) -> list[CallOutcome]:
        """Make the lifecycle calls among `actions`, in order. `before_call` runs before each (the lease check)."""
        outcomes: list[CallOutcome] = []
        for action in actions:
            if not isinstance(action, CompleteLifecycleAction | RecordLifecycleHeartbeat):
                continue
            if before_call is not None:
                before_call()
            outcomes.append(self._call(action))
        return outcomes

    def _call(self, action: CompleteLifecycleAction | RecordLifecycleHeartbeat) -> CallOutcome:
        call_key = (action.auto_scaling_group, action.instance_id, action.lifecycle_hook)
        arguments = {
            "LifecycleHookName": action.lifecycle_hook,
            "AutoScalingGroupName": action.auto_scaling_group,
            "InstanceId": action.instance_id,
        }
        complete = isinstance(action, CompleteLifecycleAction)
        name = "CompleteLifecycleAction" if complete else "RecordLifecycleActionHeartbeat"
        try:
            client = self._client(action.region)
            if isinstance(action, CompleteLifecycleAction):
                client.complete_lifecycle_action(LifecycleActionResult=action.result, **arguments)
            else:
                client.record_lifecycle_action_heartbeat(**arguments)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            words, gone = failure
            if gone:
                # Completed already (by us before a crash, or by the hook's own timeout): nothing left to do.
                self._completed[call_key] = self._clock()
                log.info("lifecycle.no_active_action", call=name, group=action.group, instance=action.instance_id,
                         hook=action.lifecycle_hook, answer=words)
                return CallOutcome(action, done=True, already=True)
            log.warning("lifecycle.call_failed", call=name, group=action.group, instance=action.instance_id,
                        hook=action.lifecycle_hook, error=words)
            return CallOutcome(action, done=False, error=f"autoscaling {name}: {words}")
        if isinstance(action, CompleteLifecycleAction):
            self._completed[call_key] = self._clock()
            log.info("lifecycle.completed", group=action.group, instance=action.instance_id, host=action.host,
                     hook=action.lifecycle_hook, result=action.result, reason=action.reason)
        else:
            self._heartbeats[call_key] = self._clock()
            log.info("lifecycle.heartbeat", group=action.group, instance=action.instance_id,
                     hook=action.lifecycle_hook, reason=action.reason)
        return CallOutcome(action, done=True)

    def _client(self, region: str | None) -> Any:
        client = self._clients.get(region)
        if client is None:
            client = self._clients[region] = self._client_factory(region)
        return client

    def close(self) -> None:
        for client in self._clients.values():
            if hasattr(client, "close"):
                client.close()
        self._clients.clear()


def _failure(exc: BaseException) -> tuple[str, bool] | None:
    """AWS's words for a failed call, and whether it says the lifecycle action is no longer active; None for what
    is not an AWS failure at all (a bug of ours), which is raised."""
    if isinstance(exc, ValueError) and classify(exc) is None:
        return f"invalid endpoint or parameter: {exc}", False  # botocore refuses a malformed endpoint with ValueError
    failure = classify(exc)
    if failure is None:
        # No region or an unknown profile: botocore's own words, whatever its exception class.
        module = type(exc).__module__
        if module.startswith(("botocore", "boto3")):
            return f"{type(exc).__name__}: {exc}", False
        return None
    gone = failure.code == "ValidationError" and NO_ACTIVE_ACTION in failure.message
    return failure_words(exc), gone


__all__ = ["NO_ACTIVE_ACTION", "CallOutcome", "LaunchShell", "autoscaling_client"]
