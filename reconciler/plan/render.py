"""How a `Plan` looks: text for a terminal, Markdown for a pull-request comment, JSON for bots.

Each renderer is a pure function of the plan model (plus layout knobs), returning a string; the CLI decides
where it goes and whether colour is on. Values are shortened the way reviewers read them (a commit as 7
characters, `CodeDeployDefault.` dropped); the JSON keeps every value whole.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.text import Text

from reconciler.plan.model import GroupRollout, ObjectChange, Plan
from reconciler.plan.words import count, duration

__all__ = [  # `count` is re-exported: the CLI's commands say numbers with it too
    "COMMENT_MARKER",
    "GITHUB_COMMENT_LIMIT",
    "count",
    "render_json",
    "render_markdown",
    "render_text",
    "rollout_summary",
    "show",
    "summary_sentence",
]

#: GitHub refuses comments longer than this many characters.
GITHUB_COMMENT_LIMIT = 65_536
#: The hidden marker CI jobs search for to update their one comment instead of adding another.
COMMENT_MARKER = "<!-- fleetshift:plan -->"

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SYMBOL = {"added": "+", "changed": "~", "removed": "-"}
_STYLE = {"added": "green", "changed": "yellow", "removed": "red"}


# --------------------------------------------------------------------------------------------------
# Values


def show(value: Any) -> str:
    """A JSON value as a reviewer wants to read it in one line."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if _SHA1.match(value):
            return value[:7]
        if _SHA256.match(value):
            return value[:12] + "…"
        return value.removeprefix("CodeDeployDefault.")
    if isinstance(value, list):
        return "[" + ", ".join(show(item) for item in value) + "]"
    if isinstance(value, dict):
        if set(value) <= {"key", "value", "type"} and value.get("type") in ("KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE"):
            return _tag_filter(value)
        return "{" + ", ".join(f"{key}: {show(item)}" for key, item in value.items()) + "}"
    return str(value)


def _tag_filter(value: dict[str, Any]) -> str:
    kind = value.get("type")
    if kind == "KEY_ONLY":
        return f"{value.get('key')}=*"
    if kind == "VALUE_ONLY":
        return f"*={value.get('value')}"
    return f"{value.get('key')}={value.get('value')}"


def short_commit(commit: str | None) -> str:
    return commit[:7] if commit else "(none)"


def _estimate(rollout: GroupRollout) -> str:
    assert rollout.estimate is not None
    return ("at least " if rollout.estimate.lower_bound else "~") + duration(rollout.estimate.seconds)


def _hosts(hosts: Iterable[str], limit: int = 12) -> str:
    listed = list(hosts)
    shown = ", ".join(listed[:limit])
    return shown + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


def _ref_note(ref: str, commit: str | None, note: str | None) -> str | None:
    if note:
        return note
    if commit and commit.startswith(ref):
        return None
    return ref


def _ref(label: str, ref: str, commit: str | None, note: str | None) -> str:
    shown = _ref_note(ref, commit, note)
    return f"{label} {short_commit(commit)}" + (f" ({shown})" if shown else "")


def _revision_move(rollout: GroupRollout) -> str:
    before = rollout.revision_from.short() if rollout.revision_from else "nothing"
    after = rollout.revision_to.short() if rollout.revision_to else "nothing"
    return f"{before} -> {after}"


def _fleet_line(plan: Plan) -> str:
    if plan.fleet == "store":
        return f"fleet: store {plan.store} ({count(plan.registered_hosts or 0, 'host')} registered)"
    note = f" ({plan.fleet_note})" if plan.fleet_note else ""
    return f"fleet: offline{note}: hosts and batches from the selectors alone"


def rollout_summary(rollout: GroupRollout) -> str:
    """One line: what happens to the group."""
    if rollout.action == "remove":
        return f"removed: {rollout.reason}"
    if rollout.action == "settings":
        return f"no deployment: {rollout.reason}"
    if rollout.action == "blocked":
        return f"blocked: {rollout.reason}"
    if rollout.revision_from is None:
        target = rollout.revision_to.short() if rollout.revision_to else "nothing"
        text = f"deploy {target} (first deployment)"
    else:
        text = f"deploy {_revision_move(rollout)}"
    if rollout.deploy_hosts is not None:
        text += f" to {count(len(rollout.deploy_hosts), 'host')}"
        if rollout.batches:
            text += f" in {count(len(rollout.batches), 'batch', 'batches')}"
    else:
        text += " to the hosts the selector matches"
    if rollout.simulated_status == "Failed":
        when = "" if rollout.batches else " before its first batch"
        code = f" ({rollout.simulated_error})" if rollout.simulated_error else ""
        text += f"; it would fail{when}{code}"
    elif rollout.estimate:
        text += f", {_estimate(rollout)}"
    if not rollout.from_change:
        text += " (already pending in the store, not from this change)"
    return text


def _change_summary(change: ObjectChange) -> str:
    if change.change != "changed":
        return change.change
    return ", ".join(field.path for field in change.fields)


def _config_line(rollout: GroupRollout) -> str | None:
    if rollout.deployment_config is None:
        return None
    text = show(rollout.deployment_config)
    if rollout.config_description:
        text += f" ({rollout.config_description})"
    if rollout.minimum_healthy_hosts is not None and rollout.target_hosts:
        hosts = len(rollout.target_hosts) if rollout.target_hosts is not None else None
        of = f" of {hosts}" if hosts is not None else ""
        text += f"; minimum healthy hosts: {rollout.minimum_healthy_hosts}{of}"
    return text


def _rollback_line(rollout: GroupRollout) -> str:
    if not rollout.rollback_enabled:
        return "disabled"
    return "on " + ", ".join(rollout.rollback_events)


def _detail_lines(rollout: GroupRollout) -> list[tuple[str, str]]:
    """(label, value) pairs describing a rollout, shared by text and Markdown."""
    lines: list[tuple[str, str]] = []
    if rollout.action == "deploy":  # the other summaries already say why
        lines.append(("why", rollout.reason))
    if rollout.revision_to is not None or rollout.revision_from is not None:
        lines.append(("revision", _revision_move(rollout)))
    config = _config_line(rollout)
    if config:
        lines.append(("config", config))
    if rollout.action != "remove":
        lines.append(("rollback", _rollback_line(rollout)))
    if rollout.selector:
        lines.append(("selector", rollout.selector))
    if rollout.action == "remove":
        pass  # a removed group targets nothing any more
    elif rollout.target_hosts is not None:
        basis = "" if rollout.basis == "store" else " (listed by id in the manifest)"
        lines.append(("hosts", f"{len(rollout.target_hosts)}: {_hosts(rollout.target_hosts)}{basis}"
                      if rollout.target_hosts else "none"))
    elif rollout.basis == "selectors":
        lines.append(("hosts", "unknown offline: whatever registered hosts the selector matches"))
    if rollout.deploy_hosts is not None and rollout.target_hosts is not None and \
            len(rollout.deploy_hosts) != len(rollout.target_hosts):
        lines.append(("deploys to", f"{len(rollout.deploy_hosts)}: {_hosts(rollout.deploy_hosts)}"))
    if rollout.offline_hosts:
        lines.append(("offline", f"{_hosts(rollout.offline_hosts)} (a deployment counts an offline host as "
                                 f"failed when its turn comes)"))
    if rollout.unhealthy_hosts:
        lines.append(("unhealthy", _hosts(rollout.unhealthy_hosts)))
    for quarantine in rollout.quarantined:
        lines.append(("quarantined", f"{quarantine.revision} ({quarantine.deployment_id}: {quarantine.reason})"))
    if rollout.in_flight:
        flight = rollout.in_flight
        lines.append(("in flight", f"{flight.deployment_id} {flight.status} {flight.revision}"))
    if rollout.suspended:
        lines.append(("suspended", "yes: no deployment starts until `suspend: false`"))
    if rollout.blocked and rollout.action != "blocked":
        lines.append(("blocked", rollout.blocked))
    if rollout.estimate:
        lines.append(("estimate", f"{_estimate(rollout)} ({rollout.estimate.basis})"))
    return lines


def _batch_label(number: int, canary: bool, zone: str | None) -> str:
    label = f"batch {number}"
    if canary:
        label += " (canary)"
    if zone:
        label += f" zone {zone}"
    return label


# --------------------------------------------------------------------------------------------------
# Text


class _Lines:
    """A rich console writing into a string, one styled line at a time."""

    def __init__(self, *, color: bool, width: int) -> None:
        self.out = io.StringIO()
        self.console = Console(file=self.out, width=width, force_terminal=color,
                               color_system="standard" if color else None, highlight=False, emoji=False,
                               markup=False, no_color=not color)

    def line(self, *parts: tuple[str, str] | str, indent: int = 0) -> None:
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
    line(_ref("base", plan.base.ref, plan.base.commit, plan.base.note), " -> ",
         _ref("head", plan.head.ref, plan.head.commit, plan.head.note))
    line(_fleet_line(plan))
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
        line((f"{_SYMBOL[change.change]} {change.kind}/{change.name}", _STYLE[change.change]),
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
    for label, value in _detail_lines(rollout):
        line((f"{label}: ", "dim"), value, indent=6)
    for batch in rollout.batches or []:
        bake = f"  then bake {duration(batch.bake_after_seconds)}" if batch.bake_after_seconds else ""
        line((_batch_label(batch.number, batch.canary, batch.zone) + ": ", "cyan"), _hosts(batch.hosts, 20),
             (bake, "dim"), indent=6)


def summary_sentence(plan: Plan) -> str:
    if not plan.head.valid:
        return f"The head has {count(len(plan.head.errors), 'manifest error')}."
    if not plan.has_changes:
        if plan.fleet == "store":
            return "No changes: the manifests mean the same at both refs and the fleet already matches them."
        return "No changes: the manifests mean the same at both refs."
    counts = plan.counts()
    starts = count(counts["deployments"], "deployment")
    return (f"{counts['added']} to add, {counts['changed']} to change, {counts['removed']} to remove; "
            f"{starts} would start.")


# --------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    """Table cells: pipes escaped (even inside code spans, as GFM requires), no newlines."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code that survives backticks in the value."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mermaid_text(text: str) -> str:
    """Mermaid's timeline syntax splits on ':' and treats '#' and ';' specially."""
    return re.sub(r"[:#;]", " ", text).strip()


def _mermaid(rollout: GroupRollout) -> list[str]:
    lines = ["```mermaid", "timeline", f"    title {_mermaid_text('Rollout of ' + rollout.group)}"]
    for batch in rollout.batches or []:
        lines.append(f"    {_mermaid_text(_batch_label(batch.number, batch.canary, batch.zone))} : "
                     + " : ".join(_mermaid_text(h) for h in batch.hosts[:20])
                     + (f" : {len(batch.hosts) - 20} more" if len(batch.hosts) > 20 else ""))
        if batch.bake_after_seconds:
            lines.append(f"    bake {duration(batch.bake_after_seconds)} : quiet time")
    lines.append("```")
    return lines


def _md_change_block(change: ObjectChange) -> str:
    what = {"added": "added", "removed": "removed",
            "changed": f"{count(len(change.fields), 'field')} changed"}[change.change]
    summary = f"<code>{_html(change.kind)}/{_html(change.name)}</code>: {what}"
    if change.source:
        summary += f" ({_html(change.source)})"
    lines = [f"<details><summary>{summary}</summary>", ""]
    if change.change == "changed":
        lines += ["| field | before | after |", "|---|---|---|"]
        lines += [f"| {_md_cell(_code(f.path))} | {_md_cell(_code(show(f.before)))} | "
                  f"{_md_cell(_code(show(f.after)))} |" for f in change.fields]
    else:
        lines += ["| field | value |", "|---|---|"]
        lines += [f"| {_md_cell(_code(f.path))} | "
                  f"{_md_cell(_code(show(f.after if change.change == 'added' else f.before)))} |"
                  for f in change.fields]
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _md_rollout_block(rollout: GroupRollout, *, mermaid: bool) -> str:
    summary = f"<code>{_html(rollout.group)}</code>: {_html(rollout_summary(rollout).replace(' -> ', ' → '))}"
    lines = [f"<details><summary>{summary}</summary>", ""]
    lines += [f"- **{label}**: {_md_inline(value)}" for label, value in _detail_lines(rollout)]
    if rollout.batches:
        zones = any(batch.zone for batch in rollout.batches)
        lines += ["", "| batch | hosts |" + (" zone |" if zones else "") + " then |",
                  "|---|---|" + ("---|" if zones else "") + "---|"]
        for batch in rollout.batches:
            label = f"{batch.number}" + (" (canary)" if batch.canary else "")
            then = f"bake {duration(batch.bake_after_seconds)}" if batch.bake_after_seconds else ""
            zone = f" {_md_cell(batch.zone or '')} |" if zones else ""
            lines.append(f"| {label} | {_md_cell(_hosts(batch.hosts, 30))} |{zone} {then} |")
        if mermaid:
            lines += ["", *_mermaid(rollout)]
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _md_ref(ref: str, commit: str | None, note: str | None) -> str:
    shown = _ref_note(ref, commit, note)
    return f"`{short_commit(commit)}`" + (f" ({_md_inline(shown)})" if shown else "")


def _md_inline(text: str) -> str:
    """Plain prose in a list item: keep Markdown and HTML from interpreting it."""
    return re.sub(r"([\\`*<\[\]])", r"\\\1", text).replace(" -> ", " → ")


def render_markdown(plan: Plan, *, mermaid: bool = False, limit: int = GITHUB_COMMENT_LIMIT) -> str:
    """For a pull-request comment: a summary table first, details folded, never longer than `limit`.

    When too long, whole detail blocks are dropped from the end (never cut inside a table, fence or
    <details>), and a note says how many and where to get the full plan."""
    head = [COMMENT_MARKER, f"### fleetshift plan: {_md_inline(summary_sentence(plan))}", ""]
    refs = (f"**base** {_md_ref(plan.base.ref, plan.base.commit, plan.base.note)} → "
            f"**head** {_md_ref(plan.head.ref, plan.head.commit, plan.head.note)} · "
            f"manifests {_code(plan.path)} · {_md_inline(_fleet_line(plan))}")
    head += [refs, ""]
    if not plan.head.valid:
        head += [f"**The head has {count(len(plan.head.errors), 'manifest error')}; nothing can be planned from it.**",
                 "",
                 "```text", *[e.replace("```", "'''") for e in plan.head.errors], "```"]
        return _fit(head, [], limit)
    essential = list(head)
    if plan.changes or plan.rollouts:
        essential += ["| | object | change | what happens |", "|---|---|---|---|"]
        rollouts_by_group = {r.group: r for r in plan.rollouts}
        # Group names are unique across applications (they are manifest names), so a name finds its rollout.
        rollouts_by_name = {r.group.split("/", 1)[-1]: r for r in plan.rollouts}
        shown_groups: set[str] = set()
        for change in plan.changes:
            happens = ""
            match = rollouts_by_name.get(change.name) if change.kind == "DeploymentGroup" else None
            if match is not None:
                happens = rollout_summary(match)
                shown_groups.add(match.group)
            what = _code(_change_summary(change)) if change.change == "changed" else change.change
            essential.append(f"| {_SYMBOL[change.change]} | {_md_cell(_code(change.kind + '/' + change.name))} | "
                             f"{_md_cell(what)} | {_md_cell(_md_inline(happens))} |")
        for group, rollout in rollouts_by_group.items():
            if group not in shown_groups:
                essential.append(f"| | {_md_cell(_code(group))} | | {_md_cell(_md_inline(rollout_summary(rollout)))} |")
        essential.append("")
    if plan.warnings:
        essential += ["**Warnings**", ""]
        for warning in plan.warnings:
            where = f"{_code(warning.group)}: " if warning.group else ""
            essential.append(f"- ⚠️ {where}{_md_inline(warning.message)}")
        essential.append("")
    blocks = [_md_change_block(c) for c in plan.changes]
    blocks += [_md_rollout_block(r, mermaid=mermaid) for r in plan.rollouts]
    return _fit(essential, blocks, limit)


def _fit(essential: list[str], blocks: list[str], limit: int) -> str:
    body = "\n".join(essential).rstrip("\n") + "\n"
    kept: list[str] = []
    size = len(body)
    # Room for the note that says what was left out, should anything be.
    reserve = len(_truncation_note(len(blocks))) + 2
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        if size + 1 + len(block) + (0 if last else reserve) > limit:
            break
        kept.append(block)
        size += 1 + len(block)
    dropped = len(blocks) - len(kept)
    text = "\n".join([body, *kept]) if kept else body
    if dropped:
        text += "\n" + _truncation_note(dropped)
    if len(text) > limit:
        # Even the summary is too long (thousands of objects): cut at a line boundary (the summary has no
        # fences or <details> to leave open) and say so.
        note = "\n" + _truncation_note(len(blocks), summary_cut=True)
        cut = text[: limit - len(note)]
        text = cut[: cut.rfind("\n") + 1] + note
    return text


def _truncation_note(dropped: int, *, summary_cut: bool = False) -> str:
    what = "the summary was cut and " if summary_cut else ""
    sections = count(dropped, "detail section")
    verb = "was" if dropped == 1 else "were"
    return (f"> **Truncated:** {what}{sections} {verb} left out to stay under GitHub's "
            f"{GITHUB_COMMENT_LIMIT:,}-character comment limit. Run `reconcile plan` locally or read the JSON plan "
            f"artifact for everything.\n")


# --------------------------------------------------------------------------------------------------
# JSON


def render_json(plan: Plan) -> str:
    """The plan model as camelCase JSON with `formatVersion`, for bots. Stable key order."""
    data = json.loads(plan.model_dump_json(by_alias=True))
    return json.dumps(data, indent=2) + "\n"
