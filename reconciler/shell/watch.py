"""`reconcile watch`: a long-running reconciler that reacts to commits and to agent reports.

Where it sits: the same passes as `reconcile --once` (`reconciler.shell.passes`), driven by triggers instead of a
fixed loop:

- a new commit on the configured ref: on a local checkout, `watchfiles` watches the repository's `.git`
  folder and reacts only to `HEAD`, `packed-refs` and `refs/**` (a commit or a fetch moves a ref; an editor
  saving a file in the working tree does not). For a remote URL the mirror is fetched every `fetchInterval`.
  A commit is noticed within tens of milliseconds and a pass starts at once;
- an agent report: the host documents are polled by version every `pollInterval` (listing only; a changed
  status is read, and only a change that can matter to a decision, a command started or finished, a host
  joined or changed tags, triggers a pass; heartbeats alone do not);
- while anything is in flight, a pass every `pollInterval` (host timeouts, bakes ending);
- a full resync every `resyncInterval` whatever happens (liveness is judged from heartbeat ages).

Manifests are loaded once per new commit. An invalid commit (or one that breaks deploy.yaml's `policy`) is logged
with every error and not applied; the watcher keeps reconciling the last valid commit (rollouts in flight go on)
until a valid one arrives. That holds for hostile commits too (control characters, alias bombs, absurd nesting,
unbuildable scalars): the loader and `contract.yamlmarks` turn every failure to read a commit into located manifest
errors, and anything that still escapes them is refused the same way here (`watch.manifests_unreadable`), never a
crash and restart loop.

A commit that `repository.verify` refuses (docs/trust.md, "Verified commits") is treated the same way: logged
once (`watch.commit_unverified`: the commit, its signer, git's reason, the policy), never loaded, and the last
verified commit stays in force until a commit that passes arrives. The check runs before the manifests are read
and again under the lease before the commit's first pass writes (`reconciler.shell.applied`); refused there
(another reconciler applied a commit it does not descend from), the watcher stops applying it and waits for the
next commit.

Only the lease holder writes: a second `watch` waits as a standby until the lease is free (or expires),
then takes over.

With metrics on (`--metrics-address`, docs/metrics.md), every pass is handed to `ReconcilerMetrics` after the
progress display, and passes that raise are counted by the runner (`MeteredPassRunner`); a standby exports
`fleetshift_lease_held 0` and no pass time, which is how a dashboard tells the two apart.

Notifications (docs/notifications.md): every pass goes to a `reconciler.notify.Notifier` too, which delivers in
its own threads while this process holds the lease (a standby runs no passes and sends nothing) and is closed on
the way out without waiting for a provider: what it had not sent, the next holder sends from the cursors.

Stopping (SIGTERM, SIGINT) is prompt whatever the loop is doing, and exits 0 after releasing the lease:

- the signal sets the stop event and wakes the loop through `contract.signals` (a relay thread, never
  from the handler, which must take no lock);
- an in-flight `git fetch`/`git clone` of a remote repository is killed (`reconciler.desired.gitmirror`: SIGTERM,
  then SIGKILL after `GIT_TERM_GRACE_SECONDS`), so a hung network never delays the stop; the same kill
  bounds every fetch to `FETCH_TIMEOUT_SECONDS` (a clone to `CLONE_TIMEOUT_SECONDS`) while running;
- a pass in progress finishes the action it is writing and applies no further one (`WriteLease.
  stop_writing_on`); any prefix of a pass is safe to leave, as after a crash.

So the time from SIGTERM to exit is bounded by `GIT_TERM_GRACE_SECONDS` plus one action's writes (or one
store snapshot read, if the signal lands during one) plus the lease release: about a second on a local store,
a few store round trips on S3.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from contract.exitcodes import ExitCode
from contract.signals import relay_stop_signals
from contract.store import Store, StoreError
from reconciler.desired.gitmirror import Interrupted, sync_mirror
from reconciler.desired.loader import load_git
from reconciler.desired.manifests import Desired
from reconciler.desired.policy import check_revision_policy
from reconciler.desired.sources import GitSource, open_repository, resolve_commit
from reconciler.desired.verify import CommitVerifier, UnverifiedCommit
from reconciler.errors import ManifestErrors, SettingsError, SourceError
from reconciler.notify.deliver import Notifier
from reconciler.settings import DeploySettings
from reconciler.shell.applied import AppliedConfigLedger
from reconciler.shell.executor import WriteConflict
from reconciler.shell.lease import LeaseLost, StopWriting, WriteLease
from reconciler.shell.metrics import MeteredPassRunner, ReconcilerMetrics
from reconciler.shell.observe import StoreReader
from reconciler.shell.passes import WAKE_FLOOR_SECONDS, PassListener, PassOutcome, PassRunner
from reconciler.shell.signing import require_signed_record

log = structlog.get_logger(__name__)

#: How long the watcher batches filesystem events of one git operation (a commit touches several refs).
WATCH_STEP_MS = 20
WATCH_DEBOUNCE_MS = 200
#: The watcher's idle tick; its first tick also tells that the inotify watch is in place.
WATCH_TICK_MS = 200
READY_WAIT_SECONDS = 10.0

def local_git_dirs(repository: str) -> list[Path] | None:
    """The folders holding refs of a local checkout (its git dir, plus the common dir of a worktree), or None
    when `repository` is a remote URL."""
    local = Path(repository).expanduser()
    if not local.exists():
        return None
    repo = open_repository(repository, fetch=False)
    dirs = [Path(repo.git_dir).resolve()]
    common = Path(getattr(repo, "common_dir", repo.git_dir)).resolve()
    if common not in dirs:
        dirs.append(common)
    return dirs


def is_ref_change(path: str, git_dirs: list[Path]) -> bool:
    """True for files whose change means a ref moved: HEAD, packed-refs, refs/** (lock files excluded)."""
    candidate = Path(path)
    if candidate.name.endswith(".lock"):
        return False
    for git_dir in git_dirs:
        try:
            relative = candidate.resolve().relative_to(git_dir)
        except ValueError:
            continue
        parts = relative.parts
        if not parts:
            return False
        return parts[0] == "refs" or relative.as_posix() in ("HEAD", "packed-refs")
    return False


class RefWatcher:
    """Background thread turning ref changes of a local checkout into wake-ups of the watch loop."""

    def __init__(self, git_dirs: list[Path], wake: threading.Event, stop: threading.Event) -> None:
        self.git_dirs = git_dirs
        self.changed = threading.Event()
        self._wake = wake
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="ref-watcher", daemon=True)
        self.ready = threading.Event()
        #: Set when watching is impossible here (no inotify, a permission problem): the loop then checks the
        #: ref on every poll tick instead, a few milliseconds each.
        self.failed = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import watchfiles

        def relevant(_change: Any, path: str) -> bool:
            return is_ref_change(path, self.git_dirs)

        try:
            for changes in watchfiles.watch(
                *self.git_dirs,
                watch_filter=relevant,
                debounce=WATCH_DEBOUNCE_MS,
                step=WATCH_STEP_MS,
                stop_event=self._stop,
                rust_timeout=WATCH_TICK_MS,
                yield_on_timeout=True,
                raise_interrupt=False,
            ):
                if not self.ready.is_set():
                    self.ready.set()
                    log.debug("watch.ref_watcher_ready", dirs=[str(d) for d in self.git_dirs])
                if changes:
                    log.debug("watch.refs_changed", paths=sorted(p for _, p in changes)[:5])
                    self.changed.set()
                    self._wake.set()
        except Exception as exc:  # the watcher is an accelerator: fall back to polling the ref, never crash
            log.warning("watch.ref_watcher_failed", error=str(exc))
            self.failed.set()
        finally:
            self.ready.set()


@dataclass
class _Due:
    """Monotonic times at which the loop has something to do."""

    resync: float
    poll: float
    fetch: float


class Watcher:
    """The `reconcile watch` loop. `run()` returns when `stop` is set."""

    def __init__(
        self,
        store: Store,
        settings: DeploySettings,
        *,
        stop: threading.Event,
        progress: PassListener | None = None,
        lease: WriteLease | None = None,
        metrics: ReconcilerMetrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.stop = stop
        self.progress = progress
        #: Told about every pass after `progress`, and counts the passes that raise (docs/metrics.md).
        self.metrics = metrics
        self.lease = lease or WriteLease(store, duration=settings.reconcile.lease_duration)
        self.lease.stop_writing_on(stop)
        if metrics is not None:
            metrics.watch_lease(self.lease)
        self.source = GitSource(settings.repository.url, settings.repository.ref, settings.repository.path)
        # Unusable signers (a missing file, keys gpg cannot import) are a settings error here, at start-up.
        require_signed_record(settings)
        self.applied_config = AppliedConfigLedger(store, CommitVerifier(settings.repository.verify),
                                                  repository=self.source.repository, ref=self.source.ref)
        #: Passes run by runners before the current one (`_fresh_runner`).
        self.earlier_passes = 0
        self.runner = self._fresh_runner(first_number=1)
        #: Delivers what the passes record, in the background, only while this process holds the lease.
        self.notifier = Notifier(store, may_deliver=lambda: self.lease.held,
                                 on_result=metrics.count_notification if metrics is not None else None)
        self.desired: Desired | None = None
        self.invalid_commit: str | None = None
        self.wake = threading.Event()
        self.ref_watcher: RefWatcher | None = None
        self.last: PassOutcome | None = None
        #: A remote URL (fetched into a mirror) rather than a local checkout (watched); set by `run()`.
        self.remote = False

    @property
    def reader(self) -> StoreReader:
        """The current runner's reader: its snapshots, and the cheap polls between passes."""
        return self.runner.reader

    def _fresh_runner(self, *, first_number: int) -> PassRunner:
        """A reader and a runner that know nothing of the store yet: at start, and after the lease was lost. A
        standby keeps none of the fleet's documents (it may wait for hours), and the next lead reads the store anew,
        as a restart would: from the warm-start cache whoever led meanwhile left, keeping one again from there
        (warmstart.py). What the lost lead had read is no view to lead from anyway: others wrote meanwhile."""
        return MeteredPassRunner(self.store, self.lease, self.settings.reconcile, reader=StoreReader(self.store),
                                 applied_config=self.applied_config, metrics=self.metrics,
                                 first_number=first_number)

    # ----------------------------------------------------------------------------------------------
    # Desired state

    def _refresh_desired(self, *, fetch: bool) -> bool:
        """Load the manifests if the ref moved (fetching a remote first when `fetch`). True when a new valid
        commit was loaded. Raises Interrupted when stopped during the fetch."""
        if fetch and self.remote:
            sync_mirror(self.source.repository, stop=self.stop)
        commit = resolve_commit(self.source.repository, self.source.ref, fetch=False)
        current = self.desired.commit if self.desired else None
        if commit in (current, self.invalid_commit):
            return False
        if not self._verified(commit, current):
            return False
        try:
            desired = load_git(GitSource(self.source.repository, commit, self.source.path), fetch=False)
            check_revision_policy(
                desired, require_immutable_revisions=self.settings.policy.require_immutable_revisions)
        except ManifestErrors as exc:
            self.invalid_commit = commit
            log.error(
                "watch.manifests_invalid",
                commit=commit,
                errors=[str(e) for e in exc.errors],
                applying=current,
            )
            return False
        except (SourceError, Interrupted):
            raise
        except Exception as exc:
            # The loader turns every failure to read a commit into ManifestErrors; should one still escape,
            # this commit is refused like an invalid one instead of stopping the watcher (and, under systemd,
            # every restart of it on the same commit).
            self.invalid_commit = commit
            log.error("watch.manifests_unreadable", commit=commit, error=f"{type(exc).__name__}: {exc}",
                      applying=current)
            return False
        self.invalid_commit = None
        self.desired = desired
        log.info("watch.commit", commit=commit, previous=current)
        return True

    def _verified(self, commit: str, current: str | None) -> bool:
        """`repository.verify` lets `commit` be loaded. A refusal is logged once per commit (the commit is then
        `invalid_commit`); a check that could not be made (the signers file gone, the store away) is logged and
        made again at the next trigger."""
        try:
            self.applied_config.check(commit)
        except UnverifiedCommit as exc:
            self._refused(exc, commit, applying=current)
            return False
        except SettingsError as exc:
            log.error("watch.verify_failed", commit=commit, error=str(exc), applying=current)
            return False
        except StoreError as exc:
            if not exc.retryable:
                raise
            log.warning("watch.verify_postponed", commit=commit, error=str(exc), applying=current)
            return False
        return True

    def _refused(self, exc: UnverifiedCommit, commit: str, *, applying: str | None) -> None:
        self.invalid_commit = commit
        log.error("watch.commit_unverified", commit=commit, refused=exc.commit, signer=exc.signer, reason=exc.reason,
                  policy=exc.policy, applying=applying, message=str(exc))

    # ----------------------------------------------------------------------------------------------

    def _pass(self, reason: str) -> None:
        if self.desired is None:
            return
        log.debug("watch.pass", reason=reason)
        try:
            outcome = self.runner.run_pass(self.desired)
        except UnverifiedCommit as exc:
            # Checked again under the lease and refused now: the record of applied commits changed since it was
            # loaded (another reconciler applied one it does not descend from). Nothing of this pass was written.
            assert self.desired.commit is not None
            self._refused(exc, self.desired.commit, applying=None)
            self.desired = None
            return
        except SettingsError as exc:
            log.error("watch.verify_failed", commit=self.desired.commit, error=str(exc))
            return
        self.last = outcome
        if self.progress is not None:
            self.progress.on_pass(outcome)
        self.notifier.on_pass(outcome)
        if self.metrics is not None:
            self.metrics.on_pass(outcome)

    def _in_flight(self) -> bool:
        return self.last is not None and (
            bool(self.last.in_flight) or bool(self.last.waiting) or self.last.conflict is not None
        )

    def run(self) -> int:
        with relay_stop_signals(self.stop, self.wake):
            return self._run()

    def _run(self) -> int:
        git_dirs = local_git_dirs(self.source.repository)
        self.remote = remote = git_dirs is None
        try:
            self._refresh_desired(fetch=True)
        except Interrupted:
            log.info("watch.stopped", passes=0)
            return ExitCode.OK
        if git_dirs is not None:
            self.ref_watcher = RefWatcher(git_dirs, self.wake, self.stop)
            self.ref_watcher.start()
            # Announce "started" only once commits can be noticed (the watcher's first tick), so a commit
            # made right after start-up is never left to the resync.
            self.ref_watcher.ready.wait(READY_WAIT_SECONDS)
        log.info(
            "watch.started",
            repository=self.source.repository,
            ref=self.source.ref,
            store=self.store.url,
            mode="fetch" if remote else "watch-refs",
            holder=self.lease.holder,
        )
        try:
            while not self.stop.is_set():
                try:
                    if not self.lease.acquire(wait=None, stop=self.stop):
                        break
                    self._lead(remote=remote)
                except (StopWriting, Interrupted):
                    break
                except LeaseLost as exc:
                    log.error("watch.lease_lost", error=str(exc))
                    self._stand_by()
                except StoreError as exc:
                    if not exc.retryable:
                        raise
                    # The store is away (network, throttling): keep waiting; a standby must not exit for it.
                    log.warning("watch.store_unavailable", error=str(exc))
                    self.stop.wait(self.settings.reconcile.poll_interval.total_seconds())
        finally:
            self.runner.close()  # never raises (each shell's error is logged)
            try:
                self.notifier.close()
            finally:
                self.lease.release()
                self.wake.set()
            log.info("watch.stopped", passes=self.earlier_passes + self.runner.passes)
        return ExitCode.OK

    def _stand_by(self) -> None:
        """After losing the lease: keep nothing of the fleet and no connection to its providers until leading
        again. The runner is closed (its load balancer, gate and AWS clients) and replaced by one that has read
        nothing, and every listener drops its last view; pass numbers go on from where they were."""
        self.last = None
        lost = self.runner
        self.runner = self._fresh_runner(first_number=self.earlier_passes + lost.passes + 1)
        self.earlier_passes += lost.passes
        lost.close()
        listeners: tuple[PassListener | Notifier | None, ...] = (self.notifier, self.progress, self.metrics)
        for listener in listeners:
            if listener is None:
                continue
            try:
                listener.forget_view()
            except Exception:  # a display that fails to redraw must not end the watch: it is a standby now
                log.warning("watch.forget_view_failed", listener=type(listener).__name__, exc_info=True)

    def _lead(self, *, remote: bool) -> None:
        """Holding the lease: react to triggers until stopped or the lease is lost."""
        rc = self.settings.reconcile
        now = time.monotonic()
        due = _Due(resync=now, poll=now + rc.poll_interval.total_seconds(),
                   fetch=now + rc.fetch_interval.total_seconds())
        failing_since: float | None = None
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                reasons = self._triggers(now, due, remote=remote)
                if reasons:
                    self._pass(", ".join(reasons))
                    due.resync = time.monotonic() + rc.resync_interval.total_seconds()
                    if self._in_flight() and self.last is not None and self.last.conflict is not None:
                        continue
                self.lease.ensure()
                failing_since = None
            except SourceError as exc:
                log.error("watch.source_failed", error=str(exc))
            except WriteConflict as exc:  # pragma: no cover - run_pass records conflicts itself
                log.info("watch.conflict", key=exc.key)
                continue
            except StoreError as exc:
                if not exc.retryable:
                    raise
                failing_since = failing_since or now
                log.warning("watch.store_unavailable", error=str(exc),
                            failing_for=round(now - failing_since, 1))
            self._sleep_until_due(due, remote=remote)

    def _triggers(self, now: float, due: _Due, *, remote: bool) -> list[str]:
        """Why a pass is due now (empty: none is): a new commit, the resync, work in flight, an agent
        report, a bake that ended. Moves `due.fetch` and `due.poll` on when they have come."""
        reasons: list[str] = []
        if self.ref_watcher is not None and self.ref_watcher.changed.is_set():
            self.ref_watcher.changed.clear()
            if self._refresh_desired(fetch=False):
                reasons.append("commit")
        if remote and now >= due.fetch:
            due.fetch = now + self.settings.reconcile.fetch_interval.total_seconds()
            if self._refresh_desired(fetch=True):
                reasons.append("commit")
        if now >= due.resync:
            # The ref watcher is an accelerator; the resync re-checks the ref in case it missed one.
            if not remote and self._refresh_desired(fetch=False):
                reasons.append("commit")
            reasons.append("resync")
        if now >= due.poll:
            due.poll = now + self.settings.reconcile.poll_interval.total_seconds()
            if (not remote and (self.ref_watcher is None or self.ref_watcher.failed.is_set())
                    and self._refresh_desired(fetch=False)):
                reasons.append("commit")
            if self._in_flight():
                reasons.append("in flight")
            elif self.reader.poll_hosts():
                reasons.append("agent report")
        wake_at = self.last.wake_at() if self.last else None
        if wake_at is not None and self.runner.clock() >= wake_at:
            reasons.append("bake ended")
        return reasons

    def _sleep_until_due(self, due: _Due, *, remote: bool) -> None:
        """Sleep until the earliest thing that is due (a resync, a poll, a fetch, the lease's renewal, the end
        of a bake), or a wake-up (a ref moved, a signal)."""
        targets = [due.resync, due.poll]
        if remote:
            targets.append(due.fetch)
        renew = self.lease.renew_due()
        if renew is not None:
            targets.append(time.monotonic() + max(0.0, (renew - self.runner.clock()).total_seconds()))
        wake_at = self.last.wake_at() if self.last else None
        if wake_at is not None:
            seconds = (wake_at - self.runner.clock()).total_seconds()
            targets.append(time.monotonic() + max(WAKE_FLOOR_SECONDS, seconds))
        pause = max(0.0, min(targets) - time.monotonic())
        if self.wake.wait(pause):
            self.wake.clear()


def run_watch(store: Store, settings: DeploySettings, *, stop: threading.Event,
              progress: PassListener | None, metrics: ReconcilerMetrics | None = None) -> int:
    return Watcher(store, settings, stop=stop, progress=progress, metrics=metrics).run()


__all__ = ["RefWatcher", "Watcher", "is_ref_change", "local_git_dirs", "run_watch"]
