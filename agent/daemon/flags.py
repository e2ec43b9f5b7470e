"""The flags of `deploy-agent run`, and nothing else: imported by the command-line parser
(agent/cli/parser.py) without loading the daemon, so `deploy-agent --help` stays fast (issue 18). What the flags
mean is applied in agent/daemon/cli.py (`settings_from_args`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `run` and its flags to `subparsers`; the caller sets the function it runs."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the agent: poll the store for this host's commands, deploy them, report",
        description=(
            "Poll the store for this host's command, run it through the lifecycle hooks, and report each "
            "event. Settings: --config FILE (default /etc/fleetshift/agent.yaml if present) < "
            "FLEETSHIFT_AGENT_* variables < flags. On EC2 the instance metadata (IMDSv2) fills in the zone, "
            "instance id, address, region and tags left unset (ec2.metadata in agent.yaml). Exit codes: 0 ok, "
            "1 invalid settings, instance metadata required but unavailable, metrics address or textfile "
            "unusable, or host id in use by another installation, 4 the command "
            "failed (--once), 8 store unavailable (--once)."
        ),
    )
    parser.add_argument("--config", type=Path, help="agent.yaml (see agent.yaml.example)")
    parser.add_argument("--once", action="store_true",
                        help="process whatever command is pending, report it, and exit (for cron and tests)")
    parser.add_argument("--host-id", help="this host's id in the store (default: the host name; auto: the EC2 "
                        "instance id on EC2, the host name elsewhere)")
    parser.add_argument("--store", help="file:///path/to/dir or s3://bucket/prefix[?endpoint=URL]")
    parser.add_argument("--root-dir", type=Path, help="deployment root (bundles, logs, the agent's state)")
    parser.add_argument("--host-root", type=Path,
                        help="prefix for absolute appspec destinations (/srv/app -> HOST_ROOT/srv/app)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="a tag deployment groups can select on (repeatable; adds to the file's tags)")
    parser.add_argument("--zone", help="availability zone, for zone-by-zone rollouts")
    parser.add_argument("--address", help="where load balancers reach this host (IP or DNS name)")
    parser.add_argument("--instance-id", help="this host's EC2 instance id, for instance target groups")
    parser.add_argument("--ec2-metadata", choices=("auto", "required", "disabled"),
                        help="ask the EC2 instance metadata service (IMDSv2) who this host is: auto (on EC2), "
                        "required (refuse to start without it), disabled")
    parser.add_argument("--poll-interval", help="idle command poll interval, e.g. 5s")
    parser.add_argument("--heartbeat-interval", help="idle heartbeat interval, e.g. 60s")
    parser.add_argument("--take-over", action="store_true",
                        help="take this host id over from another agent installation even though its heartbeat "
                        "is fresh (a replaced machine you know is gone); a live one stops at its next write")
    return parser
