"""The agent must not need the reconciler's Git or file-watching code (docs/design.md, "Dependency boundary"):
a host runs `deploy-agent` without GitPython or watchfiles loaded. prometheus_client is loaded only when
agent.yaml asks for metrics (agent/metrics.py): a host that does not scrape its agent does not pay for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_LOADED = "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r})))\n"


def loaded_after(probe: str, roots: tuple[str, ...]) -> list[str]:
    """The modules under `roots` that a fresh interpreter has loaded after running `probe`."""
    code = "import json, sys\n" + probe + _LOADED.format(roots=roots)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded: list[str] = json.loads(result.stdout)
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
