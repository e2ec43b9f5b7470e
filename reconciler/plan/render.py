"""How a `Plan` looks: text for a terminal (here), Markdown for a pull-request comment (`markdown.py`), JSON
for bots (here).

Each renderer is a pure function of the plan model (plus layout knobs), returning a string; the CLI decides
where it goes and whether colour is on. Values are shortened the way reviewers read them (`describe.py`); the
JSON keeps every value whole.
"""

from __future__ import annotations

import io
import json

from reconciler.plan.describe import (
    CHANGE_SYMBOL,
    batch_label,
    batch_then,
    detail_lines,
    fleet_line,
    host_list,
    ref_text,
    rollout_summary,
    show,
    summary_sentence,
)
from reconciler.plan.markdown import COMMENT_MARKER, GITHUB_COMMENT_LIMIT, render_markdown
from reconciler.plan.model import GroupRollout, Plan
from reconciler.plan.words import count

__all__ = [  # re-exported for the CLI: `count` (its commands say numbers with it), the Markdown renderer
    "COMMENT_MARKER",
    "GITHUB_COMMENT_LIMIT",
    "count",
    "render_json",
    "render_markdown",
    "render_text",
]

_STYLE = {"added": "green", "changed": "yellow", "removed": "red"}



class _Lines:
    """A rich console writing into a string, one styled line at a time. rich is imported here, for the text
    format only: a JSON or Markdown plan does not pay the ~12 ms of importing it (issue 18)."""

    def __init__(self, *, color: bool, width: int) -> None:
        from rich.console import Console

        self.out = io.StringIO()
        self.console = Console(file=self.out, width=width, force_terminal=color,
                               color_system="standard" if color else None, highlight=False, emoji=False,
                               markup=False, no_color=not color)

    def line(self, *parts: tuple[str, str] | str, indent: int = 0) -> None:
        from rich.text import Text

        text = Text(" " * indent)
        for part in parts:
            if isinstance(part, tuple):
                text.append(part[0], style=part[1])
            else:
                text.append(part)
        self.console.print(text, soft_wrap=True)

    def text(self) -> str:
        return self.out.getvalue()


def render_text(plan: Plan, *, color: bool = False, width: int = 100) -> str:
    """For a terminal. Colour only when asked (the CLI asks when stdout is a TTY)."""
    lines = _Lines(color=color, width=width)
    line = lines.line
    line((f"Plan for {plan.repository}", "bold"), f" (manifests in {plan.path})")
    line(ref_text("base", plan.base.ref, plan.base.commit, plan.base.note), " -> ",
         ref_text("head", plan.head.ref, plan.head.commit, plan.head.note))
    line(fleet_line(plan))
    if not plan.head.valid:
        line("")
        line((f"The head has {count(len(plan.head.errors), 'manifest error')}; nothing can be planned from it:",
              "bold red"))
        for error in plan.head.errors:
            line((error, "red"), indent=2)
        return lines.text()
    line("")
    _text_changes(lines, plan)
    if plan.rollouts:
        line("")
        line(("What will happen", "bold"))
        for rollout in plan.rollouts:
            _text_rollout(lines, rollout)
    if plan.warnings:
        line("")
        line(("Warnings", "bold yellow"))
        for warning in plan.warnings:
            where = f"{warning.group}: " if warning.group else ""
            line(("! ", "bold yellow"), where, warning.message, indent=2)
    line("")
    sentence = summary_sentence(plan)
    line((("Plan: " + sentence) if plan.has_changes else sentence, "bold"))
    return lines.text()


def _text_changes(lines: _Lines, plan: Plan) -> None:
    line = lines.line
    if not plan.changes:
        line(("No manifest changes.", "bold"))
        return
    line(("Manifest changes", "bold"))
    for change in plan.changes:
        source = f"  ({change.source})" if change.source else ""
        line((f"{CHANGE_SYMBOL[change.change]} {change.kind}/{change.name}", _STYLE[change.change]),
             (source, "dim"), indent=2)
        if change.change == "changed":
            for field in change.fields:
                line(f"{field.path}: ", (show(field.before), "red"), " -> ", (show(field.after), "green"),
                     indent=6)
        else:
            for field in change.fields:
                value = field.after if change.change == "added" else field.before
                line((f"{field.path}: {show(value)}", "dim"), indent=6)


def _text_rollout(lines: _Lines, rollout: GroupRollout) -> None:
    line = lines.line
    style = {"deploy": "cyan", "remove": "red", "settings": "yellow", "blocked": "magenta"}[rollout.action]
    line((rollout.group, f"bold {style}"), ": ", rollout_summary(rollout), indent=2)
    for label, value in detail_lines(rollout):
        line((f"{label}: ", "dim"), value, indent=6)
    for batch in rollout.batches or []:
        then = batch_then(rollout, batch)
        line((batch_label(batch.number, batch.canary, batch.zone) + ": ", "cyan"), host_list(batch.hosts, 20),
             (f"  then {then}" if then else "", "dim"), indent=6)



def render_json(plan: Plan) -> str:
    """The plan model as camelCase JSON with `formatVersion`, for bots. Stable key order."""
    data = json.loads(plan.model_dump_json(by_alias=True))
    return json.dumps(data, indent=2) + "\n"
