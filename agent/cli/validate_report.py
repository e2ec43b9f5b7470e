"""How `deploy-agent validate` (agent/cli/local.py) shows what it found: the hooks in the order they run, the
install plan with its conflicts, and the problems, as text or as JSON (`--format json`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.errors import Problem
from agent.lifecycle.install import iter_plan_lines
from agent.lifecycle.revision_check import RevisionCheck, uses_new_revision
from contract.vocabulary import PREVIOUS_REVISION_EVENTS


@dataclass
class Findings:
    """What `deploy-agent validate` found about one bundle or appspec file."""

    path: Path
    events: list[str]
    check: RevisionCheck | None = None
    errors: list[Problem] = field(default_factory=list)
    #: Deferred problems that a script running earlier may fix.
    maybe: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    host_root: Path | None = None
    appspec_only: bool = False


def _show(findings: Findings, target: Path) -> str:
    """A destination as the host will see it: relative to --host-root, if one was given."""
    host_root = findings.host_root
    if host_root is not None and (target == host_root or host_root in target.parents):
        return "/" + target.relative_to(host_root).as_posix()
    return str(target)


def report(out: TextIO, output_format: str, findings: Findings) -> None:
    if output_format == "json":
        _report_json(out, findings)
    else:
        _print_hooks(out, findings)
        _print_plan(out, findings)
        _print_problems(out, findings)


def _report_json(out: TextIO, findings: Findings) -> None:
    check, events = findings.check, findings.events
    document: dict[str, Any] = {
        "path": str(findings.path),
        "valid": not findings.errors,
        "errors": [_problem_json(p) for p in findings.errors],
        "mayFail": [_problem_json(p) for p in findings.maybe],
        "warnings": [_problem_json(p) for p in findings.warnings],
    }
    spec = check.spec if check else None
    if spec is not None:
        document["hooks"] = [
            {"event": event, "scripts": [s.location for s in spec.scripts_for(event)],
             "revision": "new" if uses_new_revision(events, index) else "previous"}
            for index, event in enumerate(events) if spec.scripts_for(event)
        ]
    plan = check.plan if check else None
    if plan is not None and check is not None:
        document["fileExistsBehavior"] = check.behavior.value
        document["install"] = list(iter_plan_lines(plan, lambda target: _show(findings, target)))
        document["conflicts"] = [_show(findings, p) for p in plan.conflicts]
    json.dump(document, out, indent=2)
    out.write("\n")


def _print_hooks(out: TextIO, findings: Findings) -> None:
    spec = findings.check.spec if findings.check else None
    if spec is None:
        return
    events, appspec_only = findings.events, findings.appspec_only
    _say(out, f"{findings.path}: {spec.filename} version 0.0, os linux")
    _say(out, "Hooks, in the order they run:")
    any_hook = False
    for index, event in enumerate(events):
        scripts = spec.scripts_for(event)
        if not scripts:
            continue
        any_hook = True
        origin = "" if appspec_only or uses_new_revision(events, index) else (
            "  (runs the last installed revision's copy of these)"
        )
        if event in PREVIOUS_REVISION_EVENTS and appspec_only:
            origin = "  (the next deployment after this one runs these)"
        listed = ", ".join(
            f"{s.location} ({s.timeout} s{', as ' + s.runas if s.runas else ''})" for s in scripts
        )
        _say(out, f"  {event:<19} {listed}{origin}")
    if not any_hook:
        _say(out, "  (none)")


def _print_plan(out: TextIO, findings: Findings) -> None:
    check = findings.check
    plan = check.plan if check else None
    if plan is None or check is None:
        return
    _say(out, f"Install plan (file_exists_behavior {check.behavior.value}):")
    lines = list(iter_plan_lines(plan, lambda target: _show(findings, target)))
    for line in lines or ["(nothing to install)"]:
        _say(out, f"  {line}")
    if plan.conflicts:
        _say(out, f"Files already on this host at {len(plan.conflicts)} destination(s), not installed by this "
             "deployment group:")
        for target in plan.conflicts:
            _say(out, f"  {_show(findings, target)}")
        _say(out, "  DISALLOW: the deployment fails   OVERWRITE: they are replaced (and removed by the next "
             "deployment)   RETAIN: they are kept as they are")


def _print_problems(out: TextIO, findings: Findings) -> None:
    if findings.appspec_only:
        _say(out, "Checked the appspec only; validate the whole bundle to check scripts, sources and the "
             "install plan.")
    for problem in findings.warnings:
        _say(out, f"warning: {problem}")
    for problem in findings.maybe:
        _say(out, f"may fail: {problem} (a script that runs earlier may fix this)")
    for problem in findings.errors:
        _say(out, f"error: {problem}")
    errors = findings.errors
    _say(out, "valid" if not errors else f"invalid: {len(errors)} problem(s)")


#: Characters that would move the cursor, recolour the terminal, break a line or reorder text (bidi
#: overrides) if an appspec's names were printed as they are; shown as escapes instead.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _say(out: TextIO, text: str) -> None:
    """One line of the text report, with every unprintable character of the bundle's names escaped."""
    print(_UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text), file=out)


def _problem_json(problem: Problem) -> dict[str, str | None]:
    return {"where": problem.where, "field": problem.field, "message": problem.message}
