"""The CI examples in examples/ci/ stay runnable: their YAML parses, every `reconcile` command they run is
accepted by the real argument parser, and the GitLab note script really posts one note and then updates it
(run with sh, curl and jq against a local HTTP server that answers like GitLab's notes API)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from reconciler.cli.main import build_parser
from reconciler.plan.render import COMMENT_MARKER
from tests.conftest import require_tool
from tests.test_examples import shell_texts

CI = Path(__file__).resolve().parents[2] / "examples" / "ci"
WORKFLOWS = sorted([*CI.glob("github/*.yml"), CI / "gitlab" / ".gitlab-ci.yml"])


def _reconcile_commands(text: str) -> list[list[str]]:
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        match = re.search(r"(?:^|[\s;(])reconcile\s+(--once|plan)\b[^|>;&\n]*", line)
        if not match:
            continue
        command = match.group(0).strip().lstrip(";(")
        # Shell and CI expansions become placeholder words; optional words in lower-case shell variables
        # (`$out`, `$plan`, `"${args[@]}"`) expand to nothing (tests/test_examples.py checks their flags).
        command = re.sub(r'"\$\{[a-z_]+\[@\]\}"', "", command)
        command = re.sub(r'(?<![\w"])\$[a-z_]+\b(?!")', "", command)
        command = re.sub(r"\$\{\{[^}]*\}\}", "X", command)
        command = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "X", command)
        commands.append(shlex.split(command)[1:])
    return commands


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_ci_files_parse_and_run_real_reconcile_commands(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    commands = [c for text in shell_texts(document) for c in _reconcile_commands(text)]
    assert commands, f"{path.name} runs no reconcile command"
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # SystemExit (a test error) on any flag the CLI does not have
        if args.command == "plan":
            assert args.format == "markdown"


def test_the_github_workflow_finds_its_comment_by_the_renderers_marker() -> None:
    workflow = (CI / "github" / "fleetshift-plan.yml").read_text()
    assert f"const marker = '{COMMENT_MARKER}';" in workflow


class _FakeGitLabNotes(BaseHTTPRequestHandler):
    """GitLab's merge request notes API, in memory: list (paginated), create, update."""

    notes: list[dict[str, Any]] = []
    requests: list[str] = []

    def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("PRIVATE-TOKEN") != "secret":
            self._reply(401, {"message": "401 Unauthorized"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        query = parse_qs(urlparse(self.path).query)
        page, per_page = int(query["page"][0]), int(query["per_page"][0])
        self.requests.append(f"GET page {page}")
        chunk = self.notes[(page - 1) * per_page: page * per_page]
        more = page * per_page < len(self.notes)
        self._reply(200, chunk, {"X-Next-Page": str(page + 1) if more else ""})

    def _body(self) -> str:
        length = int(self.headers["Content-Length"])
        return str(json.loads(self.rfile.read(length))["body"])

    def do_POST(self) -> None:
        if not self._authorised():
            return
        note = {"id": 1000 + len(self.notes), "body": self._body(), "system": False}
        self.notes.append(note)
        self.requests.append("POST")
        self._reply(201, note)

    def do_PUT(self) -> None:
        if not self._authorised():
            return
        note_id = int(urlparse(self.path).path.rsplit("/", 1)[-1])
        for note in self.notes:
            if note["id"] == note_id:
                note["body"] = self._body()
        self.requests.append(f"PUT {note_id}")
        self._reply(200, {"id": note_id})

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return


@pytest.mark.slow
def test_gitlab_note_script_posts_once_then_updates_the_same_note(tmp_path: Path) -> None:
    require_tool("curl", "curl")
    require_tool("jq", "jq")
    _FakeGitLabNotes.notes = [{"id": n, "body": f"a review comment {n}", "system": n % 2 == 0} for n in range(150)]
    _FakeGitLabNotes.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGitLabNotes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "PATH": "/usr/bin:/bin",
            "CI_API_V4_URL": f"http://127.0.0.1:{server.server_address[1]}/api/v4",
            "CI_PROJECT_ID": "42",
            "CI_MERGE_REQUEST_IID": "7",
            "FLEETSHIFT_GITLAB_TOKEN": "secret",
        }
        script = CI / "gitlab" / "fleetshift-mr-note.sh"
        plan = tmp_path / "plan.md"
        plan.write_text(f"{COMMENT_MARKER}\n### fleetshift plan: first push\n")
        first = subprocess.run(["sh", str(script), str(plan)], env=env, capture_output=True, text=True, timeout=30,
                               check=False)
        assert first.returncode == 0, first.stderr
        assert "posted the plan note" in first.stdout
        plan.write_text(f"{COMMENT_MARKER}\n### fleetshift plan: second push\n")
        second = subprocess.run(["sh", str(script), str(plan)], env=env, capture_output=True, text=True,
                                timeout=30, check=False)
        assert second.returncode == 0, second.stderr
        assert "updated the plan note 1150" in second.stdout
    finally:
        server.shutdown()
        server.server_close()
    ours = [n for n in _FakeGitLabNotes.notes if n["body"].startswith(COMMENT_MARKER)]
    assert [n["body"] for n in ours] == [f"{COMMENT_MARKER}\n### fleetshift plan: second push\n"]
    # The first run read both pages before posting; the second found the note on page 2 and updated it.
    assert _FakeGitLabNotes.requests == ["GET page 1", "GET page 2", "POST", "GET page 1", "GET page 2", "PUT 1150"]
