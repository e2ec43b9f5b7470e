"""The agent must not need the reconciler's Git or file-watching code (docs/design.md, "Dependency boundary"):
starting `deploy-agent` loads neither GitPython nor watchfiles. watchfiles is loaded later, and only by an agent
on a file store, to watch its own command key (agent/daemon/command_watch.py); an agent on S3 never loads it.
prometheus_client is loaded only when agent.yaml asks for metrics (agent/metrics.py): a host that does not
scrape its agent does not pay for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# One string, written at once: with two arguments, print writes the separator on its own, and a thread's log line
# could come between "loaded:" and the list.
_LOADED = "print('\\nloaded: ' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r})))\n"


def loaded_after(probe: str, roots: tuple[str, ...]) -> list[str]:
    """The modules under `roots` that a fresh interpreter has loaded after running `probe`."""
    code = "import json, sys\n" + probe + _LOADED.format(roots=roots)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    # A log line of a thread (which may lack its newline) can come before it, and one of a thread stopping as the
    # interpreter exits (the command watch's) after it: the JSON is read up to its own end.
    loaded: list[str] = json.JSONDecoder().raw_decode(result.stdout.rsplit("\nloaded:", 1)[1].lstrip())[0]
    return loaded


@pytest.mark.slow
def test_agent_modules_load_neither_git_nor_watchfiles() -> None:
    probe = (
        "import agent.cli.main, agent.daemon.loop, agent.daemon.cli, agent.metrics, agent.settings\n"
        "import contract.store.file, contract.store.s3, contract.store.docs\n"
        "agent.cli.main.build_parser()\n"
    )
    assert loaded_after(probe, ("git", "watchfiles", "reconciler", "prometheus_client")) == []


@pytest.mark.slow
def test_an_idle_agent_does_not_load_the_bundle_code() -> None:
    """Issue 18: what `deploy-agent run` imports to start (the runner with its limits included) leaves the fetch and
    unpack code, and `tarfile` with it, to the first command that needs a bundle."""
    probe = (
        "import agent.cli.main, agent.daemon.loop, agent.daemon.cli, agent.metrics, agent.settings\n"
        "import contract.store.file, contract.store.docs\n"
        "from agent.daemon.cli import make_runner\n"
        "agent.cli.main.build_parser()\n"
    )
    loaded = loaded_after(probe, ("agent", "tarfile"))
    assert "agent.lifecycle.runner" in loaded and "agent.limits" in loaded  # the runner and its limits: loaded
    assert not [name for name in loaded if name.startswith(("agent.fetch", "tarfile"))]


@pytest.mark.slow
def test_prometheus_client_is_loaded_only_when_metrics_are_configured(tmp_path: Path) -> None:
    """The same start-up path (`open_metrics`) with and without `metrics` in agent.yaml."""
    textfile = tmp_path / "agent.prom"
    start = (
        "from agent.metrics import open_metrics\n"
        "from agent.settings import load_settings\n"
        "settings = load_settings(None, environ={{'FLEETSHIFT_AGENT_METRICS_TEXTFILE': {textfile!r}}})\n"
        "open_metrics(settings, version='test').close()\n"
    )
    assert loaded_after(start.format(textfile=""), ("prometheus_client",)) == []
    assert not textfile.exists()
    assert "prometheus_client" in loaded_after(start.format(textfile=str(textfile)), ("prometheus_client",))
    assert textfile.read_text().startswith("# HELP fleetshift_agent_info")


@pytest.mark.slow
def test_an_idle_agent_loads_no_engine_rich_or_cryptography(tmp_path: Path) -> None:
    """What an agent with nothing to do keeps in memory (issue 18: 45 MiB each): a real `deploy-agent run --once`
    on a file store with no command loads neither the deployment engine (imported on the first command), nor
    rich (structlog draws tracebacks with it, the agent logs JSON), nor cryptography (no trusted keys), nor boto3
    (not an S3 store), nor http.client and ssl (~1.4 MiB: only the instance metadata client uses them, and this
    agent is not asked to look for EC2), nor pydantic (~14 MiB with what it brings: the agent's settings, state and
    records are msgspec structs, contract/wirebase.py), even with an agent.yaml to validate."""
    config = tmp_path / "agent.yaml"
    config.write_text("tags: {app: hello}\npollInterval: 5s\nreportOutput: {tailBytes: 512}\nlogging: {format: json}\n")
    probe = (
        "import contextlib, io, os\n"
        "os.environ['FLEETSHIFT_AGENT_EC2_METADATA'] = 'disabled'\n"
        "from agent.cli.main import main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        f"    code = main(['run', '--once', '--host-id', 'idle-1', '--store', 'file://{tmp_path}/store',\n"
        f"                 '--root-dir', '{tmp_path}/root', '--config', '{config}'])\n"
        "assert code == 0, code\n"
    )
    roots = ("rich", "pygments", "cryptography", "boto3", "botocore", "http", "ssl", "pydantic", "pydantic_core",
             "agent")
    loaded = loaded_after(probe, roots)
    assert "agent.daemon.loop" in loaded  # the probe really ran the agent
    assert (tmp_path / "store" / "hosts" / "idle-1" / "status.json").is_file()
    heavy = [name for name in loaded if name.split(".")[0] != "agent"]
    engine = [name for name in loaded if name.startswith(("agent.lifecycle.command_run", "agent.lifecycle.install",
                                                          "agent.lifecycle.hooks", "agent.lifecycle.appspec"))]
    assert heavy == [] and engine == []


@pytest.mark.slow
def test_watchfiles_is_loaded_only_to_watch_a_file_stores_command_key(tmp_path: Path) -> None:
    probe = (
        "import threading, time\n"
        "from agent.daemon.command_watch import watch_for\n"
        "from contract.store import open_store\n"
        "stop = threading.Event()\n"
        "assert watch_for(open_store('s3://bucket/fleet?endpoint=http://127.0.0.1:9'), 'web-1', stop) is None\n"
        "assert 'watchfiles' not in sys.modules\n"
        "{file_store}"
        "stop.set()\n"
    )
    assert loaded_after(probe.format(file_store=""), ("watchfiles",)) == []
    on_file = (
        f"watch = watch_for(open_store('file://{tmp_path}/store'), 'web-1', stop)\n"
        # In place after watchfiles' first empty round (RUST_TIMEOUT_MS, 5 s); on a loaded machine it can take longer.
        "assert watch is not None and watch.watching.wait(30)\n"
    )
    assert "watchfiles" in loaded_after(probe.format(file_store=on_file), ("watchfiles",))
