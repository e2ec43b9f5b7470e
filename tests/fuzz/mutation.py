"""Byte-level YAML mutations of a seed corpus, shared by the fuzzers: insert a YAML-significant piece or random
bytes, delete, flip a byte, splice from another seed, or repeat a line (the cheap way to deep nesting and
alias fan-out)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], pieces: Sequence[bytes], *, min_steps: int = 0) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_steps, 6))):
        action = draw(st.sampled_from(["insert", "delete", "flip", "splice", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if action == "insert":
            data[at:at] = draw(st.sampled_from(pieces) | st.binary(max_size=8))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif action == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif action == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start:start + draw(st.integers(1, 200))]
        elif action == "duplicate":
            lines = bytes(data).splitlines(keepends=True)
            if lines:
                index = draw(st.integers(0, len(lines) - 1))
                lines[index:index] = [lines[index]] * draw(st.integers(1, 20))
                data = bytearray(b"".join(lines))
    return bytes(data)
