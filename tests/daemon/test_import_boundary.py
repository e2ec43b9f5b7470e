"""The agent must not need the reconciler's Git or file-watching code (docs/design.md, "Dependency boundary"):
a host runs `deploy-agent` without GitPython or watchfiles loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_agent_modules_load_neither_git_nor_watchfiles() -> None:
    probe = (
        "import json, sys\n"
        "import agent.cli.main, agent.daemon.loop, agent.settings\n"
        "import contract.store.file, contract.store.s3, contract.store.docs\n"
        "agent.cli.main.build_parser()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('git', 'watchfiles', 'reconciler'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(result.stdout) == []
