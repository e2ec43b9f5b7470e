"""Real agents against a stuck fetch and a killed agent's hooks: SIGTERM during a Git fetch that never answers
exits within reportTimeout, a newer command (a rollback) takes over a host stuck fetching, and a hook left
running by kill -9 of the agent is killed at the next start before the command is reported FailedAfterRestart."""

from __future__ import annotations

import os
import signal
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.vocabulary import CommandStatus, EventStatus, LifecycleErrorCode
from contract.wire import GitLocation, HostStatus, Revision
from tests.daemon.agentproc import AgentHost, make_bundle, make_command, stop_agent, wait_for
from tests.daemon.conftest import HostFactory

pytestmark = pytest.mark.slow

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def silent_git() -> Iterator[str]:
    """A git:// server that accepts connections and never answers."""
    closing = threading.Event()

    class Hold(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            closing.wait(120)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hold)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"git://127.0.0.1:{server.server_address[1]}/app.git"
    closing.set()
    server.shutdown()
    server.server_close()


def stuck_command(host: AgentHost, generation: int, url: str) -> None:
    command = make_command(host.host_id, generation, host.base)
    host.send(command.model_copy(update={"revision": Revision(git=GitLocation(repository=url, commit=COMMIT))}))


def fetching(host: AgentHost, generation: int) -> HostStatus | None:
    status = host.status()
    if status is None or status.command is None or status.command.generation != generation:
        return None
    download = next(e for e in status.command.events if e.name == "DownloadBundle")
    return status if download.status == EventStatus.PENDING and "Git repository" in (download.message or "") else None


def test_sigterm_during_a_stuck_fetch_exits_within_report_timeout(file_host: HostFactory, silent_git: str) -> None:
    host = file_host()
    agent = host.start()
    try:
        stuck_command(host, 1, silent_git)
        status = wait_for(lambda: fetching(host, 1), "the fetch in progress, shown in the report", process=agent)
        assert status.command is not None
        assert all(e.status == EventStatus.PENDING for e in status.command.events)
        time.sleep(0.5)
    finally:
        started = time.monotonic()
        code = stop_agent(agent, timeout=20)
    elapsed = time.monotonic() - started
    assert code == 0 and elapsed < 10.0, elapsed  # reportTimeout: 10 s
    final = host.status()
    assert final is not None and final.command is not None and final.command.status == CommandStatus.FAILED
    download = next(e for e in final.command.events if e.name == "DownloadBundle")
    assert download.status == EventStatus.FAILED and "interrupted after" in (download.message or "")
    assert silent_git in (download.message or "")


def test_a_rollback_takes_over_a_host_stuck_fetching(file_host: HostFactory, silent_git: str, tmp_path: Path) -> None:
    host = file_host()
    agent = host.start()
    try:
        stuck_command(host, 1, silent_git)
        wait_for(lambda: fetching(host, 1), "the stuck fetch", process=agent)
        started = time.monotonic()
        host.send(make_command(host.host_id, 2, make_bundle(tmp_path / "good")))

        def done() -> HostStatus | None:
            status = host.status()
            command = status.command if status is not None else None
            return status if command is not None and command.generation == 2 and command.status != \
                CommandStatus.IN_PROGRESS else None

        final = wait_for(done, "the rollback's result", process=agent, timeout=30)
        assert final.command is not None and final.command.status == CommandStatus.SUCCEEDED
        assert time.monotonic() - started < 15
        assert (host.host_root / "srv/app/index.html").exists()
        superseded = host.log_events("command.finished")[0]
        assert superseded["generation"] == 1 and "superseded by command generation 2" in superseded["message"]
    finally:
        assert stop_agent(agent) == 0


def test_a_hook_left_running_by_kill_9_is_killed_at_restart(file_host: HostFactory, tmp_path: Path) -> None:
    host = file_host(gated=True)
    agent = host.start()
    try:
        host.send(make_command(host.host_id, 1, make_bundle(tmp_path / "v1")))
        pid_file = host.pids / "BeforeInstall"
        wait_for(pid_file.exists, "BeforeInstall running", process=agent)
        time.sleep(0.3)  # the state file records the hook's group right after it starts
        hook = int(pid_file.read_text().strip())
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    os.killpg(hook, 0)  # the hook outlived the agent
    result = host.once()
    assert result.returncode == 4, result.stderr
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.killpg(hook, 0)
            time.sleep(0.02)
    status = host.status()
    assert status is not None and status.command is not None
    before_install = next(e for e in status.command.events if e.name == "BeforeInstall")
    assert before_install.error_code == LifecycleErrorCode.FAILED_AFTER_RESTART
    assert host.hook_runs() == ["BeforeInstall d-000000001"]
