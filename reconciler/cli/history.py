"""`reconcile history GROUP [--format json]`: a group's deployments, newest first.

Where it sits: the CLI layer; reads only. Deployments come from the store (the group record names them) and
are shown through the read model of `reconciler.cli.readmodel`, the same one `status` uses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from contract.durations import format_duration
from contract.exitcodes import ExitCode
from reconciler.cli.common import no_store, open_for_reading, read_known, resolve_group, short_commit
from reconciler.cli.readmodel import AnalysisView, DeploymentView
from reconciler.cli.status import read_analysis
from reconciler.plan.words import count
from reconciler.settings import DeploySettings
from reconciler.shell.observe import StoreReader


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    history = sub.add_parser(
        "history",
        parents=[parent],
        help="a group's deployments, newest first",
        description="List a group's deployments (up to reconcile.historyLimit), newest first: who started them, "
        "status, revision, config commit, timings, hosts and why they ended.",
    )
    history.add_argument("group", help="GROUP or APPLICATION/GROUP")
    history.add_argument("--format", choices=("text", "json"), default="text")
    history.set_defaults(func=cmd_history)


def cmd_history(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, missing = open_for_reading(settings)
    reader = StoreReader(store)
    known = read_known(settings, reader)
    key = resolve_group(args.group, known.groups, missing)
    state = known.snapshot.state.groups.get(key)
    ids: list[str] = list(state.history) if state else []
    if state is not None and state.deployment_in_flight and state.deployment_in_flight not in ids:
        ids.append(state.deployment_in_flight)
    deployments: list[DeploymentView] = []
    analyses: dict[str, AnalysisView] = {}
    group = known.desired.desired_groups().get(key) if known.desired is not None else None
    for deployment_id in reversed(ids):
        deployment = known.snapshot.state.deployments.get(deployment_id) or reader.deployment(deployment_id)
        if deployment is not None:
            deployments.append(DeploymentView.of(deployment))
            analysis = read_analysis(reader, deployment, known.desired, group)
            if analysis is not None:
                analyses[deployment_id] = analysis
    if args.format == "json":
        listed = [{**d.to_json(), "analysis": analyses[d.deployment_id].to_json() if d.deployment_id in analyses
                   else None} for d in deployments]
        print(json.dumps({"group": key, "deployments": listed}, indent=2))
        return ExitCode.OK
    if not deployments:
        print(f"{key}: no deployments yet" + (f" ({no_store(missing)})" if missing is not None else ""))
        return ExitCode.OK
    print_history(key, deployments, analyses)
    return ExitCode.OK


def print_history(key: str, deployments: list[DeploymentView],
                  analyses: Mapping[str, AnalysisView] | None = None) -> None:
    print(f"{key}: {count(len(deployments), 'deployment')}, newest first")
    print(f"  {'deployment':<34} {'creator':<9} {'status':<10} {'revision':<24} {'commit':<12} "
          f"{'started':<20} {'took':>7}  hosts")
    for d in deployments:
        took = format_duration(timedelta(seconds=round(d.seconds))) if d.seconds is not None else "-"
        started = d.created_at.isoformat()[:19].replace("T", " ")
        print(f"  {d.deployment_id:<34} {d.creator:<9} {d.status:<10} {d.revision.short():<24} "
              f"{short_commit(d.source_commit):<12} {started:<20} {took:>7}  {history_hosts(d)}")
        if d.rollback_of:
            print(f"      rollback of {d.rollback_of}")
        if d.error_code or d.error_message:
            print(f"      {d.error_code or ''}{': ' if d.error_code else ''}{d.error_message or ''}")
        if d.out_of_service:
            print(f"      {traffic_line(d.out_of_service)}")
        analysis = (analyses or {}).get(d.deployment_id)
        summary = analysis.summary() if analysis is not None else None
        if summary:
            print(f"      {summary}")


def traffic_line(out_of_service: dict[str, float]) -> str:
    """`out of rotation: 4 hosts, 1.2s each on average, longest 2.0s (host-3)`: what traffic control cost."""
    longest = max(out_of_service, key=lambda host: (out_of_service[host], host))
    average = sum(out_of_service.values()) / len(out_of_service)
    return (f"out of rotation: {count(len(out_of_service), 'host')}, {average:.1f}s each on average, longest "
            f"{out_of_service[longest]:.1f}s ({longest})")


def history_hosts(deployment: DeploymentView) -> str:
    """`2 ok, 1 failed of 3`, counting only the hosts the deployment was for. A rollback lists every host of
    the group but only deploys to the ones the failed deployment touched; the others are Skipped and are
    named as such, so "1 ok, 0 failed of 3" never makes a finished rollback look two hosts short."""
    hosts = deployment.hosts
    skipped = hosts["Skipped"]
    text = f"{hosts['Succeeded']} ok, {hosts['Failed']} failed of {deployment.total - skipped}"
    return text + (f" ({skipped} skipped)" if skipped else "")


__all__ = ["cmd_history", "history_hosts", "print_history", "register", "traffic_line"]
