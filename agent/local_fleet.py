"""Several agents on one machine: each a real `deploy-agent run` process with its own host id, deployment root and
host root (docs/design.md, "Several agents on one machine"). The demo, the end-to-end tests and the rollout
benchmark all start fleets this way; so can someone trying a rollout on a laptop.

Nothing here is used by an agent on a real host, where one agent runs as a service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LocalAgent:
    """One simulated host under `base`: `deployment-root/`, `root/` (where absolute appspec destinations land)
    and `agent.log`."""

    host_id: str
    base: Path
    tags: Mapping[str, str] = field(default_factory=dict)
    zone: str | None = None
    #: Where load balancers reach this host, and its EC2 instance id (agent.yaml `address`, `instanceId`).
    address: str | None = None
    instance_id: str | None = None
    #: Extra environment for the agent, which its hooks inherit (per-host ports, folders...).
    env: Mapping[str, str] = field(default_factory=dict)
    poll_interval: str = "200ms"
    process: subprocess.Popen[bytes] | None = None

    @property
    def root_dir(self) -> Path:
        return self.base / "deployment-root"

    @property
    def host_root(self) -> Path:
        return self.base / "root"

    @property
    def log(self) -> Path:
        return self.base / "agent.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, store_url: str, *, log_level: str | None = None) -> None:
        """Start `deploy-agent run` in its own session, so a Ctrl-C meant for the caller does not reach it
        and `stop` can signal the agent together with anything its hooks left running in its group."""
        self.host_root.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).parent / "deploy-agent"), "--log-format", "json"]
        if log_level:
            command += ["--log-level", log_level]
        command += [
            "run",
            "--host-id", self.host_id,
            "--store", store_url,
            "--root-dir", str(self.root_dir),
            "--host-root", str(self.host_root),
            "--poll-interval", self.poll_interval,
        ]
        for key, value in self.tags.items():
            command += ["--tag", f"{key}={value}"]
        if self.zone:
            command += ["--zone", self.zone]
        if self.address:
            command += ["--address", self.address]
        if self.instance_id:
            command += ["--instance-id", self.instance_id]
        # Simulated hosts never take the machine's own EC2 identity (one instance id and zone for all of them).
        environment = {**os.environ, "FLEETSHIFT_AGENT_EC2_METADATA": "disabled", **self.env}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=environment, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True,
            )

    def terminate(self) -> None:
        """SIGTERM: the agent finishes its current event, reports, and exits."""
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for the agent to exit; SIGKILL its process group if it does not in time."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        self.reap(timeout)


def stop_all(agents: list[LocalAgent], timeout: float = 10.0) -> None:
    """Signal every agent first, then wait, so a fleet stops in the time of its slowest agent."""
    for agent in agents:
        agent.terminate()
    for agent in agents:
        agent.reap(timeout)
