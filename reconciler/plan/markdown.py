"""A plan as Markdown for a pull-request comment: one comment, kept under GitHub's size limit by dropping whole
detail blocks, and safe against values that look like Markdown or HTML."""

from __future__ import annotations

import re

from reconciler.plan.describe import (
    CHANGE_SYMBOL,
    batch_label,
    batch_then,
    change_summary,
    detail_lines,
    fleet_line,
    host_list,
    ref_note,
    rollout_summary,
    short_commit,
    show,
    summary_sentence,
)
from reconciler.plan.model import GroupRollout, ObjectChange, Plan
from reconciler.plan.words import count, duration

#: GitHub refuses comments longer than this many characters.
GITHUB_COMMENT_LIMIT = 65_536
#: The hidden marker CI jobs search for to update their one comment instead of adding another.
COMMENT_MARKER = "<!-- fleetshift:plan -->"



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
        lines.append(f"    {_mermaid_text(batch_label(batch.number, batch.canary, batch.zone))} : "
                     + " : ".join(_mermaid_text(h) for h in batch.hosts[:20])
                     + (f" : {len(batch.hosts) - 20} more" if len(batch.hosts) > 20 else ""))
        if batch.bake_after_seconds:
            lines.append(f"    bake {duration(batch.bake_after_seconds)} : quiet time")
        gates = next((point for point in rollout.gate_checkpoints or [] if point.batch == batch.number), None)
        if gates is not None:
            wait = f" {duration(gates.wait_seconds)}" if gates.wait_seconds >= 1 else ""
            lines.append(f"    gates{wait} : " + " : ".join(_mermaid_text(name) for name in gates.gates))
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
    lines += [f"- **{label}**: {_md_inline(value)}" for label, value in detail_lines(rollout)]
    if rollout.batches:
        zones = any(batch.zone for batch in rollout.batches)
        lines += ["", "| batch | hosts |" + (" zone |" if zones else "") + " then |",
                  "|---|---|" + ("---|" if zones else "") + "---|"]
        for batch in rollout.batches:
            label = f"{batch.number}" + (" (canary)" if batch.canary else "")
            then = _md_cell(batch_then(rollout, batch))
            zone = f" {_md_cell(batch.zone or '')} |" if zones else ""
            lines.append(f"| {label} | {_md_cell(host_list(batch.hosts, 30))} |{zone} {then} |")
        if mermaid:
            lines += ["", *_mermaid(rollout)]
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _md_ref(ref: str, commit: str | None, note: str | None) -> str:
    shown = ref_note(ref, commit, note)
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
            f"manifests {_code(plan.path)} · {_md_inline(fleet_line(plan))}")
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
            what = _code(change_summary(change)) if change.change == "changed" else change.change
            essential.append(f"| {CHANGE_SYMBOL[change.change]} | {_md_cell(_code(change.kind + '/' + change.name))} | "
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
