"""git's own reason for a failure, for both sides: the reconciler reading the config repo and the agent fetching a
Git revision.

git surrounds the real cause (could not resolve host, authentication failed, repository not found) with
progress lines and generic advice, and GitPython wraps all of it in its own framing. A person fixing a URL or a
credential needs the cause, so both sides show the same trimmed lines. Also here: the environment every git
command of ours runs with, so a missing credential fails at once instead of waiting at a password prompt
nobody sees (a CI job, a systemd service).
"""

from __future__ import annotations

import re

#: Added to the environment of every git command the reconciler or the agent runs: never prompt on a
#: terminal for a user name, a password or an SSH passphrase; fail with git's own message instead.
#: And never follow `refs/replace/*`: a replace ref substitutes one object for another wherever git reads it, so
#: a pushed replace ref would make the manifests (or a bundle) read differently from the commit whose signature
#: `repository.verify` checked (docs/trust.md). Set for every git command and every GitPython repository.
GIT_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "GCM_INTERACTIVE": "never",
                 "GIT_NO_REPLACE_OBJECTS": "1"}

#: Advice git prints after the real reason; it says nothing about this failure, and "and the repository
#: exists." alone reads as if it did.
_ADVICE = re.compile(
    r"^(Please make sure you have the correct access rights|and the repository exists\.?)$", re.IGNORECASE
)
_GENERIC = "Could not read from remote repository."
_MOST_LINES = 4


def git_reason(stderr: str | bytes | None, status: object = None) -> str:
    """Why a git command failed, in git's words: its `fatal:`/`error:`/`remote:` lines (prefixes dropped,
    duplicates and advice removed, the generic "Could not read from remote repository." only when it is all git
    said), else the last line git printed, else the exit status."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else (stderr or "")
    marker = text.find("stderr: '")
    if marker >= 0:  # GitPython's framing: `Cmd('git') failed ... stderr: '<git's stderr>'`
        text = text[marker + len("stderr: '"):].rstrip().removesuffix("'")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _ADVICE.match(line.strip())]
    reasons: list[str] = []
    for line in lines:
        lowered = line.lower()
        if lowered.startswith(("fatal:", "error:")):
            reason = line.split(":", 1)[1].strip()
        elif lowered.startswith("remote:"):
            reason = line
        else:
            continue
        if reason and reason not in reasons:
            reasons.append(reason)
    if len(reasons) > 1 and _GENERIC in reasons:
        reasons.remove(_GENERIC)
    if reasons:
        return "; ".join(reasons[:_MOST_LINES])
    if lines:
        return lines[-1]
    return f"git exited with status {status}" if status is not None else "git failed without saying why"
