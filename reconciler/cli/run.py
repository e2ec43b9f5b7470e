"""`reconcile --once` and `reconcile watch`: the commands that run passes and write to the store.

Where it sits: the CLI layer over the shell. `--once` loads the manifests (invalid ones fail before anything is
written), takes the write lease, runs `reconciler.shell.settle.run_until_settled` with progress from
`reconciler.cli.progress`, and prints the verdict and summary lines; `watch` hands the same progress to
`reconciler.shell.watch.Watcher`. Every function returns an exit code from `reconciler.exitcodes`.

Metrics (docs/metrics.md, `reconciler.shell.metrics`): `watch --metrics-address` serves `/metrics` from the start
(an address it cannot listen on is exit 1 before anything else happens); `--once --metrics-textfile` writes a
node-exporter textfile after every pass and at the end, `--metrics-push-url` pushes to a Pushgateway at the end,
whatever the run came to, and neither can change the exit code.

Notifications (docs/notifications.md, `reconciler.notify`): both commands hand every pass to a `Notifier`, which
delivers in the background under the lease. `--once` then waits up to `--notify-timeout` (30s) for what its passes
recorded to go out, renewing the lease meanwhile, and says how many events are left if any (the next run sends
them: the cursors are in the store); the exit code is the rollout's, whatever the notifications did.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from contract.durations import parse_duration
from contract.exitcodes import ExitCode
from contract.redact import redact_url
from contract.signals import stop_on_signals
from contract.store import StoreError
from reconciler.cli.common import short_commit, source
from reconciler.cli.progress import progress_for
from reconciler.cli.verified import applied_config, verified_commit
from reconciler.desired.loader import load_git
from reconciler.desired.manifests import Desired
from reconciler.desired.policy import check_revision_policy
from reconciler.desired.verify import CommitVerifier
from reconciler.errors import ReconcilerError, SettingsError
from reconciler.notify.deliver import Notifier
from reconciler.plan.words import count
from reconciler.settings import DeploySettings
from reconciler.shell.lease import LeaseHeld, LeaseLost, StopWriting, WriteLease
from reconciler.shell.observe import Snapshot
from reconciler.shell.passes import MeteredPassRunner, PassOutcome, PassRunner
from reconciler.shell.settle import STORE_RETRY_WINDOW, RunResult, run_until_settled
from reconciler.shell.signing import open_fleet_store

if TYPE_CHECKING:  # loaded when metrics are on: prometheus_client is ~30 ms of every run (issue 18)
    from reconciler.shell.metrics import ReconcilerMetrics

log = structlog.get_logger(__name__)


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """`reconcile watch` (`--once` is a flag of the top-level parser, see `reconciler.cli.main`)."""
    watch = sub.add_parser(
        "watch",
        parents=[parent],
        help="run continuously: react to commits and agent reports until SIGTERM",
        description="Reconcile continuously: a commit to the config repo starts a pass at once (a local checkout "
        "is watched; a remote URL is fetched every reconcile.fetchInterval), agent reports trigger passes, and "
        "a full pass runs every reconcile.resyncInterval. A second watcher waits as a standby for the write "
        "lease. SIGTERM or Ctrl-C finishes the current pass, releases the lease and exits 0.",
    )
    watch.add_argument("--metrics-address", default=argparse.SUPPRESS, metavar="HOST:PORT",
                       help="serve Prometheus metrics on http://HOST:PORT/metrics (docs/metrics.md); "
                       "overrides metrics.address")
    watch.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace, settings: DeploySettings) -> int:
    from reconciler.shell.metrics import MetricsServeError
    from reconciler.shell.watch import Watcher

    store = open_fleet_store(settings)
    metrics = server = None
    if settings.metrics.address is not None:
        metrics = new_metrics(settings)
        store = metrics.instrument(store)
        try:
            server = metrics.serve(settings.metrics.address)
        except MetricsServeError as exc:
            print(f"reconcile: {exc} (--metrics-address or metrics.address)", file=sys.stderr)
            return ExitCode.INVALID
    try:
        with stop_on_signals() as stop, progress_for(settings.logging, title="reconcile watch") as progress:
            return Watcher(store, settings, stop=stop, progress=progress, metrics=metrics).run()
    finally:
        if server is not None:
            server.close()


def new_metrics(settings: DeploySettings) -> ReconcilerMetrics:
    """The reconciler's metrics for these settings: liveness judged as the passes judge it, committer times read
    from the config repository the passes read."""
    from reconciler.shell.metrics import ReconcilerMetrics, commit_times

    return ReconcilerMetrics(heartbeat_timeout=settings.reconcile.heartbeat_timeout,
                             host_series=settings.metrics.host_series,
                             commit_time=commit_times(settings.repository.url))


class OnceMetrics:
    """`reconcile --once` with `--metrics-textfile` or `--metrics-push-url`: the textfile after every pass and at
    the end, the push at the end. Neither ever changes the run's exit code: a failure is a warning (a CI job must
    not fail because a Pushgateway is down)."""

    def __init__(self, metrics: ReconcilerMetrics, textfile: Path | None, push_url: str | None) -> None:
        self.metrics = metrics
        self.textfile = textfile
        self.push_url = push_url

    @classmethod
    def of(cls, settings: DeploySettings) -> OnceMetrics | None:
        """None without a textfile or push URL. A textfile whose folder does not exist is a user mistake found
        before anything runs (SettingsError, exit 1), not a warning after every pass."""
        textfile, push_url = settings.metrics.textfile, settings.metrics.push_url
        if textfile is None and push_url is None:
            return None
        if textfile is not None and not textfile.parent.is_dir():
            raise SettingsError(f"metrics textfile {textfile}: the folder {textfile.parent} does not exist; create "
                                "it or name another file (--metrics-textfile or metrics.textfile)")
        return cls(new_metrics(settings), textfile, push_url)

    def after_pass(self, outcome: PassOutcome) -> None:
        self.metrics.on_pass(outcome)
        self._write()

    def finish(self) -> None:
        self._write()
        if self.push_url is not None:
            try:
                self.metrics.push(self.push_url)
            except OSError as exc:
                log.warning("metrics.push_failed", url=redact_url(self.push_url), error=str(exc) or type(exc).__name__)
            else:
                from reconciler.shell.metrics import PUSH_JOB

                log.info("metrics.pushed", url=redact_url(self.push_url), job=PUSH_JOB)

    def _write(self) -> None:
        if self.textfile is None:
            return
        try:
            self.metrics.write_textfile(self.textfile)
        except OSError as exc:
            log.warning("metrics.textfile_failed", path=str(self.textfile), error=str(exc))


# --------------------------------------------------------------------------------------------------
# reconcile --once


def run_once(args: argparse.Namespace, settings: DeploySettings) -> int:
    """`reconcile --once [--timeout D] [--no-wait] [--plan plan.json] [--notify-timeout D]`."""
    started = time.monotonic()
    try:
        notify_timeout = parse_duration(getattr(args, "notify_timeout", None) or NOTIFY_TIMEOUT)
    except ValueError as exc:
        print(f"reconcile: --notify-timeout: {exc}", file=sys.stderr)
        return ExitCode.INVALID
    once_metrics = OnceMetrics.of(settings)
    try:
        return _run_once(args, settings, started, once_metrics, notify_timeout)
    finally:
        if once_metrics is not None:
            once_metrics.finish()


def _run_once(args: argparse.Namespace, settings: DeploySettings, started: float,
              once_metrics: OnceMetrics | None, notify_timeout: timedelta) -> int:
    plan_path: Path | None = getattr(args, "plan", None)
    if plan_path is not None:
        from reconciler.plan.engine import load_saved_plan

        # Read the plan first so a damaged file fails before anything else. The manifests still come from the
        # configured ref (the branch tip after the merge), not the plan's commit: verify_saved_plan compares
        # them by meaning, so a PR merged after this plan was made is refused instead of silently undone.
        load_saved_plan(plan_path)
    # A commit that repository.verify refuses exits 9 before its manifests are even read (docs/trust.md); the
    # manifests are then read from exactly that commit, whatever the ref says by now.
    verified = verified_commit(settings)
    desired = load_git(source(settings, verified.commit), fetch=False)  # invalid manifests raise before any write
    # So do revisions that deploy.yaml's policy refuses (docs/trust.md, "Pinned revisions").
    check_revision_policy(desired, require_immutable_revisions=settings.policy.require_immutable_revisions)
    log.info("once.loaded", commit=desired.commit, groups=len(desired.groups))
    result = _run_under_lease(args, settings, desired, plan_path, started, verifier=verified.verifier,
                              once_metrics=once_metrics, notify_timeout=notify_timeout)
    if isinstance(result, int):
        return result
    elapsed = time.monotonic() - started
    print(f"commit {short_commit(desired.commit)}: {_verdict(result)}; {count(result.passes, 'pass', 'passes')} in "
          f"{elapsed:.1f}s (exit {result.exit_code})")
    for line in result.lines:
        print(f"  {line}")
    return result.exit_code


def _run_under_lease(args: argparse.Namespace, settings: DeploySettings, desired: Desired, plan_path: Path | None,
                     started: float, *, verifier: CommitVerifier, once_metrics: OnceMetrics | None,
                     notify_timeout: timedelta) -> RunResult | int:
    """Take the write lease, run passes until settled, release it. An exit code when the run could not
    happen (interrupted while waiting, the lease held or lost, a stale plan)."""
    metrics = once_metrics.metrics if once_metrics is not None else None
    store = open_fleet_store(settings)
    if metrics is not None:
        store = metrics.instrument(store)
    reconcile_settings = settings.reconcile
    timeout = reconcile_settings.timeout
    lease = WriteLease(store, duration=reconcile_settings.lease_duration)
    if metrics is not None:
        metrics.watch_lease(lease)
    with stop_on_signals() as stop:
        try:
            # Store outages while taking the lease are waited out like those during passes (same window).
            if not lease.acquire(wait=min(reconcile_settings.lease_duration, timeout), stop=stop,
                                 store_outage=min(STORE_RETRY_WINDOW, timeout)):
                print("reconcile: interrupted while waiting for the write lease", file=sys.stderr)
                return ExitCode.TERMINATED
        except LeaseHeld as exc:
            print(f"reconcile: {exc}", file=sys.stderr)
            return ExitCode.LEASE_HELD
        try:
            remaining = timeout - timedelta(seconds=time.monotonic() - started)
            runner = MeteredPassRunner(store, lease, reconcile_settings,
                                       applied_config=applied_config(settings, store, verifier), metrics=metrics)
            notifier = Notifier(store, may_deliver=lambda: lease.held,
                                on_result=metrics.count_notification if metrics is not None else None)
            try:
                result = _settle(runner, desired, args=args, settings=settings, plan_path=plan_path,
                                 timeout=max(remaining, timedelta(0)), stop=stop, once_metrics=once_metrics,
                                 notifier=notifier)
                return _with_notifications(result, notifier, notify_timeout, lease, stop)
            finally:
                runner.close()  # never raises (each shell's error is logged)
                notifier.close()
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


def _settle(runner: PassRunner, desired: Desired, *, args: argparse.Namespace, settings: DeploySettings,
            plan_path: Path | None, timeout: timedelta, stop: threading.Event,
            once_metrics: OnceMetrics | None, notifier: Notifier) -> RunResult:
    verify = _plan_verifier(plan_path, desired) if plan_path is not None else None
    with progress_for(settings.logging) as progress:

        def on_pass(outcome: PassOutcome) -> None:
            progress.on_pass(outcome)
            notifier.on_pass(outcome)
            if once_metrics is not None:
                once_metrics.after_pass(outcome)

        return run_until_settled(
            runner,
            desired,
            timeout=timeout,
            no_wait=bool(getattr(args, "no_wait", False)),
            on_pass=on_pass,
            before_first_decide=verify,
            stop=stop,
        )


#: How long `--once` waits for its notifications after the last pass, unless `--notify-timeout` says otherwise.
NOTIFY_TIMEOUT = "30s"


def _with_notifications(result: RunResult, notifier: Notifier, timeout: timedelta, lease: WriteLease,
                        stop: threading.Event) -> RunResult:
    """`result`, after waiting up to `timeout` for the notifications of its passes (still holding the lease, so
    still allowed to deliver); with a summary line when some are left. Never changes the exit code."""
    if stop.is_set():
        return result

    def keep_lease() -> None:
        if stop.is_set():
            raise StopWriting("stopping: no further notifications")
        lease.ensure()

    try:
        drained = notifier.drain(timeout, tick=keep_lease)
    except (LeaseLost, StopWriting, StoreError) as exc:
        log.warning("once.notifications_interrupted", error=str(exc))
        return result
    if drained.done:
        return result
    left = ", ".join(f"{name}: {n}" if n else f"{name}: a request in flight"
                     for name, n in sorted(drained.left.items()))
    log.warning("once.notifications_left", events=drained.total, notifications=sorted(drained.left),
                waited=timeout.total_seconds())
    line = (f"notifications: {count(drained.total, 'event')} not sent within --notify-timeout "
            f"({left}); the next run sends them")
    return dataclasses.replace(result, lines=[*result.lines, line])


def _verdict(result: RunResult) -> str:
    """The first word of the summary line: what the run came to."""
    if result.exit_code in (ExitCode.FAILED_ROLLED_BACK, ExitCode.FAILED) and not result.ran and result.held:
        # Nothing failed in this run: an earlier failure's quarantine holds the desired revision back. Saying
        # "failed, rolled back" would send people looking for a rollout that never happened.
        groups = ", ".join(result.held)
        return (f"nothing deployed: the desired revision of {groups} is quarantined after an earlier failure "
                f"(`reconcile retry GROUP` deploys it again)")
    verdicts = {
        int(ExitCode.OK): "converged" if not (result.last and result.last.in_flight) else "applied one pass",
        int(ExitCode.FAILED_ROLLED_BACK): "failed, rolled back",
        int(ExitCode.FAILED): "failed",
        int(ExitCode.TIMED_OUT): "timed out",
    }
    return verdicts.get(result.exit_code, "stopped")


def _plan_verifier(plan_path: Path, desired: Desired) -> Callable[[Snapshot], None]:
    from reconciler.plan.engine import verify_saved_plan

    def verify(snapshot: Snapshot) -> None:
        verify_saved_plan(plan_path, desired, snapshot.observed, snapshot.state)

    return verify


__all__ = ["OnceMetrics", "cmd_watch", "new_metrics", "register", "run_once"]
