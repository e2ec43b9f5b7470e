"""The install's hand-written encodings (agent/lifecycle/transaction.py, install.py) are the general ones'
byte for byte: `<group>-install.json` for people and scripts, the journal for crash recovery, the cleanup list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.lifecycle.install import _plain
from agent.lifecycle.transaction import _indented_json, _Journal, _read_journal

ODD = ["/srv/app/a b", '/srv/"quoted"', "/srv/ü/ñ", "/srv/tab\tnew\nline", "/srv/\\back", "/srv/\u2028"]


@pytest.mark.parametrize("instructions", [
    [],
    [{"type": "mkdir", "directory": path} for path in ODD],
    [{"type": "copy", "source": path, "destination": path + "2"} for path in ODD],
    [{"type": "chown", "file": "/x", "owner": None, "group": "g"},
     {"type": "setfacl", "file": "/x", "acl": ["u:a:rwx", "d:g::r-x"]},
     {"type": "semanage", "file": "/x", "context": {"user": None, "type": "t", "range": "s0"}},
     {"type": "chmod", "file": "/x", "mode": "0644"}],
])
def test_install_instructions_are_indented_json(instructions: list[dict[str, object]]) -> None:
    assert _indented_json(instructions) == json.dumps({"instructions": instructions}, indent=1) + "\n"


def test_journal_lines_are_the_general_encoders(tmp_path: Path) -> None:
    fast, general = _Journal(tmp_path / "fast"), _Journal(tmp_path / "general")
    for path in ODD:
        fast.write_path("create_file", path)
        general.write(op="create_file", path=path)
        fast.write_move(path, path + ".backup")
        general.write(op="move_aside", path=path, backup=path + ".backup")
    fast.close()
    general.close()
    assert (tmp_path / "fast").read_bytes() == (tmp_path / "general").read_bytes()
    assert _read_journal(tmp_path / "fast")[1] == {"op": "move_aside", "path": ODD[0], "backup": ODD[0] + ".backup"}


@pytest.mark.parametrize("line", ["/a/b", "/a//b", "/a/./b", "/a/b/", "/a/.", "./x", "/", "//a", ".", "/a/..",
                                  "/a/b.", "/.hidden/x", "/a/.b"])
def test_a_plain_cleanup_line_is_spelled_as_path_spells_it(line: str) -> None:
    assert not _plain(line) or str(Path(line)) == line
