"""The bounds on hostile YAML, for every reader of `contract/yamlmarks.py` (manifests, `deploy.yaml`,
`agent.yaml`, appspecs), and the refusals they raise.

Everything here is refused with a located `yaml.MarkedYAMLError` (`YamlRefused`), never a stray exception:

- text longer than `MAX_TEXT_CHARS` (1 MiB) is refused before parsing;
- the nodes built per stream, counting every visit through an alias and every pair a merge key (`<<`)
  brings in, are bounded by `MAX_NODES` (100,000): an alias bomb (`&a [*b, *b, ...]` nested) is linear to
  write and exponential to expand, and was expanded at every reference (`NodeBudget`);
- nesting, including through aliases and merge keys (a recursive anchor nests forever), by `MAX_DEPTH`
  (100 levels), which also keeps PyYAML's recursive composer (`BoundedLoader`) and constructor away from
  RecursionError;
- characters PyYAML's reader rejects (control characters) are refused with their line and column, and so,
  for files people write, are line breaks editors do not show (`screen`);
- a scalar PyYAML's constructor cannot build (`!!timestamp x`, a 5,000-digit integer, `!!binary` that is
  not base64) is a located error at the scalar, not a ValueError or AttributeError (`unbuildable`).

`contract/yamlmarks.py` walks the nodes and records where they stand; this module only says what is too
much and how to say so.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.reader import Reader

#: The longest YAML text read, in characters (1 MiB): far above any manifest, settings file or appspec.
MAX_TEXT_CHARS = 1024 * 1024
#: The most nodes built from one stream, counting each visit through an alias or a merge key.
MAX_NODES = 100_000
#: The deepest nesting of collections, counting through aliases and merge keys.
MAX_DEPTH = 100


class YamlRefused(yaml.MarkedYAMLError):
    """YAML refused before or while building it: too large, too deep, too many nodes through aliases, a
    character that cannot be read, a scalar that cannot be built. A `yaml.MarkedYAMLError`, so every reader
    that reports syntax errors with a line and column reports these the same way; `problem` is the message."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


# --------------------------------------------------------------------------------------------------
# Nodes and depth: what building a stream may cost


_MERGE_TAG = "tag:yaml.org,2002:merge"


class NodeBudget:
    """What is left of `MAX_NODES` for one whole stream (shared by its documents); every node visited,
    through an alias as often as it is referenced, costs one. Also refuses nesting beyond `MAX_DEPTH`."""

    def __init__(self) -> None:
        self.left = MAX_NODES

    def charge(self, node: Node, depth: int, count: int = 1) -> None:
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep (counting through aliases)",
                              node.start_mark)
        self.left -= count
        if self.left < 0:
            raise YamlRefused(
                f"expands to more than {MAX_NODES:,} values (aliases and merge keys count each time they are "
                f"used); refusing a possible alias bomb", node.start_mark)

    def measure(self, node: Node, depth: int) -> None:
        """Charge for everything under a node PyYAML's constructor will build (it recurses, so bound depth)."""
        stack = [(child, depth + 1) for child in _children_of(node)]
        while stack:
            child, level = stack.pop()
            self.charge(child, level)
            stack.extend((grandchild, level + 1) for grandchild in _children_of(child))

    def merged_size(self, node: MappingNode, depth: int, sizes: dict[int, int]) -> int:
        """How many pairs `node` holds once its merge keys are flattened; refuses (through this budget and
        depth) before PyYAML's `flatten_mapping` builds an exponential list or recurses forever."""
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            self.charge(node, depth)
        total = 0
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                total += 1
                continue
            merged = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            total += sum(self.merged_size(sub, depth + 1, sizes) for sub in merged if isinstance(sub, MappingNode))
        if total > MAX_NODES:
            self.charge(node, depth, total)
        sizes[id(node)] = total
        return total


def _children_of(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, with the composer's recursion bounded by `MAX_DEPTH` (libyaml's
    own parser stops at 1000 levels, and our walker at `MAX_DEPTH`)."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                event: Any = self.peek_event()  # type: ignore[no-untyped-call]
                raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def unbuildable(node: Node, exc: BaseException) -> YamlRefused:
    """The refusal for a scalar (or tagged node) PyYAML's constructor raised `exc` building."""
    shown = node.value if isinstance(node.value, str) else ""
    shown = shown if len(shown) <= 40 else shown[:40] + "..."
    tag = node.tag.rsplit(":", 1)[-1] if node.tag.startswith("tag:yaml.org,2002:") else node.tag
    return YamlRefused(f"cannot read {shown!r} as {tag}: {_reason(exc, tag)}", node.start_mark)


def _reason(exc: BaseException, tag: str) -> str:
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "a number with more than 4300 digits"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValueError | OverflowError) and str(exc):
        return str(exc)
    return f"not a valid {tag}"


# --------------------------------------------------------------------------------------------------
# Text: refused before PyYAML reads it


#: Line breaks PyYAML counts that `\n`-counting editors do not (a lone CR, NEL, LS, PS).
ODD_BREAKS = re.compile("\r(?!\n)|[\x85\u2028\u2029]")
_BREAK_NAMES = {"\r": "a carriage return (CR) not followed by a line feed", "\x85": "U+0085 (NEL)",
                "\u2028": "U+2028 (LINE SEPARATOR)", "\u2029": "U+2029 (PARAGRAPH SEPARATOR)"}


def text_mark(text: str, index: int) -> Mark:
    """A mark at `index` of `text` whose line and column count `\n` only (0-based, as PyYAML's)."""
    line_start = text.rfind("\n", 0, index) + 1
    return Mark("<text>", index, text.count("\n", 0, index), index - line_start, None, 0)


def screen(text: str, *, refuse_odd_breaks: bool) -> None:
    """Refuse, with a `\n`-counted location, what must not reach PyYAML: too much text, a character its
    reader rejects (a ReaderError carries no line), and (for `load_located`) line breaks editors do not show."""
    if len(text) > MAX_TEXT_CHARS:
        raise YamlRefused(f"the text is {len(text):,} characters long; at most {MAX_TEXT_CHARS:,} are read",
                          text_mark(text, 0))
    bad = Reader.NON_PRINTABLE.search(text)
    if bad is not None:
        raise YamlRefused(f"a control character U+{ord(bad.group()):04X} (YAML allows no control characters "
                          f"but tab, line feed and carriage return)", text_mark(text, bad.start()))
    odd = ODD_BREAKS.search(text) if refuse_odd_breaks else None
    if odd is not None:
        raise YamlRefused(f"{_BREAK_NAMES[odd.group()]}: YAML reads it as a line break but editors do not "
                          f"show one; use plain line breaks (\\n or \\r\\n)", text_mark(text, odd.start()))


def as_text(text: str | bytes) -> str | bytes:
    """Bytes decoded as PyYAML would (UTF-16 by its BOM, else UTF-8) so they can be screened; bytes that do
    not decode are left to PyYAML to report. Refuses bytes far beyond `MAX_TEXT_CHARS` before decoding."""
    if isinstance(text, str):
        return text
    if len(text) > 4 * MAX_TEXT_CHARS:
        raise YamlRefused(f"the text is {len(text):,} bytes long; at most {MAX_TEXT_CHARS:,} characters are read",
                          Mark("<bytes>", 0, 0, 0, None, 0))
    try:
        return text.decode("utf-16" if text[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8")
    except UnicodeDecodeError:
        return text
