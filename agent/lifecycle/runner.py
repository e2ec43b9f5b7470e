"""The lifecycle runner: one `HostCommand` in, lifecycle events run in CodeDeploy's order, one outcome out.

The daemon (agent/daemon/loop.py) calls `LifecycleRunner.run` for each new command and forwards every event
report to the store; `deploy-agent local` calls it with a command it builds from the command line.

Order and semantics follow the reference agent (reference 2.1-2.2, 3.2): BeforeBlockTraffic,
AfterBlockTraffic and ApplicationStop run the scripts of the group's last successful install (nothing on a
first deployment) with the new deployment's environment; DownloadBundle fetches and unpacks; Install
copies files; the other hooks run the new revision's scripts; the first failure skips the rest.

What this runner does differently, and why:

- **The new revision is checked before anything runs.** When the command includes DownloadBundle, the
  bundle is fetched, unpacked and checked (the whole appspec, hook names, scripts, runas users, the install
  plan and its conflicts) *before the first event*, so a broken bundle no longer stops the running
  application (ApplicationStop) or removes the previous revision's files before failing. Events are still
  reported in CodeDeploy's order; DownloadBundle's report carries the times the fetch really ran. If the
  check fails, DownloadBundle is reported Failed and the events before it Skipped.
- Problems that a hook could still fix before they matter (a file in the way under DISALLOW, a user that
  BeforeInstall creates) only fail early when no script runs before the point of use; otherwise they are
  checked again at that point, which keeps existing bundles that clean up in BeforeInstall working.
- Install is all or nothing (agent/lifecycle/transaction.py).

Where things live: this module is the entry point and its settings; one command's run is
agent/lifecycle/command_run.py; the checks before anything runs are agent/lifecycle/revision_check.py.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.lifecycle.layout import DeploymentRoot
from agent.limits import ExtractLimits, FetchLimits
from contract.clock import utc_now
from contract.wire import EventReport, HostCommand, InstalledRevision

if TYPE_CHECKING:
    from agent.lifecycle.reports import CommandOutcome
    from agent.lifecycle.traffic_wait import TrafficGate


@dataclass(frozen=True)
class RunnerSettings:
    root_dir: Path  # deployment root (like /opt/codedeploy-agent/deployment-root)
    host_root: Path | None = None  # prefix for absolute appspec destinations; None = "/"
    max_revisions: int = 5
    #: Bytes of a hook's output kept for event reports (0: none) and whether secrets are redacted from what
    #: leaves the host (agent.yaml `reportOutput`; docs/agent.md, "What hosts publish").
    report_tail_bytes: int = 2048
    report_redact: bool = True
    kill_grace_seconds: float = 10.0  # SIGTERM -> SIGKILL escalation for timed-out hooks
    runas_allowed: bool = True
    #: Caps on unpacked bundles (entries, bytes): a zip bomb fails DownloadBundle instead of filling the disk.
    extract_limits: ExtractLimits = field(default_factory=ExtractLimits)
    #: Bounds on fetching (agent/fetch/bounds.py): the budget when a command has no `timeout_seconds`
    #: (3600 s), the download size cap, the stall rule, how often progress is reported.
    fetch_limits: FetchLimits = field(default_factory=FetchLimits)




def new_local_deployment_id() -> str:
    """`d-` and nine characters, like CodeDeploy's ids, with the `-local` suffix codedeploy-local uses."""
    alphabet = string.ascii_uppercase + string.digits
    return "d-" + "".join(secrets.choice(alphabet) for _ in range(9)) + "-local"


class LifecycleRunner:
    """Runs commands one at a time against one deployment root. Not thread-safe: one runner per agent."""

    def __init__(self, settings: RunnerSettings, *, now: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.layout = DeploymentRoot(settings.root_dir)
        #: The clock for event times, install records and retention order; tests pass a fake one.
        self.now: Callable[[], datetime] = now or utc_now

    def run(
        self,
        command: HostCommand,
        on_event: Callable[[EventReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        appspec_filename: str | None = None,
        on_child: Callable[[int | None, str], None] | None = None,
        traffic_gate: TrafficGate | None = None,
    ) -> CommandOutcome:
        """Run every event of `command` in order and report each state change through `on_event`.

        `should_stop` is polled between events and, during the fetch and check before the first event, every
        fraction of a second (a stuck fetch ends at once). `on_child(pgid, what)` is told each child process
        group (a hook, git) right after it starts and `(None, what)` once it is gone. `traffic_gate` waits for
        the reconciler at BlockTraffic and AllowTraffic (None: those steps do nothing, as in `deploy-agent local`)."""
        # The engine (appspec, hooks, install, health check) is imported on the first command, not at start: an
        # idle agent does not keep it in memory (issue 18).
        from agent.lifecycle.command_run import CommandRun

        run = CommandRun(self, command, on_event, should_stop, appspec_filename, on_child=on_child,
                         traffic_gate=traffic_gate)
        return run.execute()

    def last_successful(self, application: str, deployment_group: str) -> InstalledRevision | None:
        """The last deployment of this group that succeeded end to end on this host (None if none did)."""
        return self.layout.find_installed(application, deployment_group)

    def recover_interrupted(self) -> list[str]:
        """Undo every Install a crash cut off, so the previous revisions are back in place. For the daemon
        to call once at start-up; `run` also does it for its own group. Returns the group ids recovered."""
        recovered: list[str] = []
        if not self.layout.instructions.is_dir():
            return recovered
        journals = sorted(self.layout.instructions.glob("*-install-journal"))
        if journals:  # the transaction code is loaded only when there is something to undo
            from agent.lifecycle.transaction import recover_interrupted_install

            for journal in journals:
                group_id = journal.name.removesuffix("-install-journal")
                if recover_interrupted_install(self.layout, group_id):
                    recovered.append(group_id)
        return recovered


#: The runner's API (the checks agent/cli/local.py uses live in revision_check.py).
__all__ = ["LifecycleRunner", "RunnerSettings", "new_local_deployment_id"]
