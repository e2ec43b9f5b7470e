"""Secrets out of text before it is published: hook output before it leaves the host (the report's log tail,
the failure paragraph, the agent's log lines that quote them, the host's own script logs), and again, on the
reconciler's side, whatever a host reported before it is printed or copied into the store's records.

Shared by both sides (`contract/`), so the agent and the reconciler apply the same rules: the reconciler must
not trust that every agent redacted (`reportOutput.redact: false`, an older agent, a forged status).

What is replaced by `[REDACTED]` (docs/agent.md, "What hosts publish"):

- the values of environment variables whose names look secret (`*SECRET*`, `*TOKEN*`, `*PASSWORD*`,
  `*PASSWD*`, `*PASSPHRASE*`, `*CREDENTIAL*`, a name part ending in `KEY` such as `API_KEY` or `APIKEY`),
  from the agent's environment and from the hook's when the caller passes it (`Redactor.learn`). Names that
  are paths or known public identifiers (`*_FILE`, `*_PATH`, `*_DIR`, `BUNDLE_KEY`, the S3 object key) are
  kept. `AWS_ACCESS_KEY_ID` is redacted too: an access key id alone cannot sign a request, but it names the
  account and user, and the AKIA/ASIA pattern below hides it wherever it appears anyway;
- AWS access key ids (`AKIA…`, `ASIA…`), and 40-character secrets written after `aws_secret…`;
- values assigned to secret-looking names in the output itself (`password=…`, `API_KEY: …`, `"token": "…"`);
- bearer tokens and `Authorization:` header values;
- private key blocks (`-----BEGIN … PRIVATE KEY-----` up to the matching END line; the body lines are
  dropped, the block becomes one `[REDACTED]`);
- the password of URLs written `scheme://user:password@host` (the user is kept).

Values shorter than 4 characters, and `true`/`false`/`yes`/`no`/`none`/`null`, are not redacted by value:
replacing every `1` in the output would make it unreadable and hide nothing.

Output is redacted line by line as it arrives (`StreamRedactor` keeps the one piece of state between lines,
"inside a private key block"), before any tail is cut, so a cut can never leave half a secret visible.

For the reconciler (docs/trust.md, "Secrets in output"), two more helpers:

- `public_host_text`: a message or log tail a host reported, fit for a CI log or a record in the store:
  redacted by the patterns above and `redact_urls` (the reconciler knows none of the host's environment),
  control characters replaced (a forged status must not move the cursor or recolour a terminal to hide
  lines), on one line (it must not print lines that look like the reconciler's own), and at most
  `HOST_TEXT_LIMIT` characters, cut in the middle so both what failed and where the full log is survive;
- `redact_url` / `redact_urls`: a URL as `reconcile plan` shows it: the password of `user:password@`, a user
  name alone in an http(s) URL (forges take a token there: `https://TOKEN@github.com/...`), and the values of
  query parameters whose names look secret (`?token=`, `?api_key=`, `X-Amz-Signature=`) become `[REDACTED]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

REDACTED = "[REDACTED]"

_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL")
_NOT_SECRET_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_SOCK", "_URL_FILE")
_NOT_SECRET_NAMES = frozenset({"BUNDLE_KEY"})
_HARMLESS_VALUES = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off"})
_MIN_VALUE = 4

_BEGIN_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_END_KEY = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
# A whole block on one line (JSON with \n escapes, a key squeezed into one log line).
_ONE_LINE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----.*?-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----"
)

_NAME_WORDS = r"secret|token|password|passwd|passphrase|api[_-]?key|access[_-]?key|private[_-]?key|credential"
_NAME = rf"[A-Za-z0-9_.-]*(?:{_NAME_WORDS})[A-Za-z0-9_.-]*"
_VALUE = r"(?:\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:[REDACTED]@host
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@"), rf"\g<1>{REDACTED}@"),
    # Authorization: Basic xxx / Bearer xxx, and a bearer token anywhere.
    (re.compile(r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;]+"),
     rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\g<1>{REDACTED}"),
    # AWS: the secret access key after aws_secret..., and access key ids.
    (re.compile(r"(?i)(aws_?secret[A-Za-z_]*[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),
     rf"\g<1>{REDACTED}"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    # name=value / name: value / "name": "value" where the name looks secret.
    (re.compile(rf"(?i)(\b{_NAME}[\"']?\s*(?:=|:)\s*){_VALUE}"), rf"\g<1>{REDACTED}"),
)


def secret_name(name: str) -> bool:
    """Whether an environment variable's name says its value is secret."""
    upper = name.upper()
    if upper in _NOT_SECRET_NAMES or upper.endswith(_NOT_SECRET_SUFFIXES):
        return False
    if any(word in upper for word in _SECRET_WORDS):
        return True
    return any(part.endswith("KEY") for part in upper.split("_"))


class Redactor:
    """The secrets one command's output must not carry: known values and the patterns above."""

    def __init__(self, environment: Mapping[str, str] | None = None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._values: set[str] = set()
        self._value_pattern: re.Pattern[str] | None = None
        if environment is not None:
            self.learn(environment)

    def learn(self, environment: Mapping[str, str]) -> None:
        """Add the values of the secret-named variables of `environment` (a hook's environment, say)."""
        before = len(self._values)
        for name, value in environment.items():
            if secret_name(name):
                self._values.update(_pieces(value))
        if len(self._values) != before:
            # Longest first, so a value containing another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._value_pattern = re.compile("|".join(re.escape(value) for value in ordered))

    def text(self, text: str) -> str:
        """Redact a finished text (a message, a tail already cut): every line, key blocks included."""
        if not self.enabled or not text:
            return text
        stream = StreamRedactor(self)
        lines = [stream.line(line) for line in text.split("\n")]
        return "\n".join(line for line in lines if line is not None)

    def known(self, line: str) -> str:
        """Known values and patterns of one line (no private key blocks: `StreamRedactor` handles those)."""
        if self._value_pattern is not None:
            line = self._value_pattern.sub(REDACTED, line)
        for pattern, replacement in _PATTERNS:
            line = pattern.sub(replacement, line)
        return line


class StreamRedactor:
    """One output stream's lines, in order: remembers whether a private key block is open."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.in_key = False

    def line(self, line: str) -> str | None:
        """The line as it may be shown, or None to drop it (the inside of a private key block)."""
        if not self.redactor.enabled:
            return line
        if self.in_key:
            end = _END_KEY.search(line)
            if end is None:
                return None
            self.in_key = False
            rest = line[end.end():]
            return self.redactor.known(rest) if rest.strip() else None
        line = _ONE_LINE_KEY.sub(REDACTED, line)
        begin = _BEGIN_KEY.search(line)
        if begin is not None:
            self.in_key = True
            return self.redactor.known(line[: begin.start()]) + REDACTED
        return self.redactor.known(line)


def _pieces(value: str) -> Iterable[str]:
    """The parts of a value worth looking for: the whole value, and each line of a multi-line one."""
    for raw in {value, *value.splitlines()}:
        piece = raw.strip()
        if len(piece) >= _MIN_VALUE and piece.lower() not in _HARMLESS_VALUES:
            yield piece


# --------------------------------------------------------------------------------------------------
# URLs and host text, for the reconciler


#: Query parameter names that carry credentials besides the secret-looking ones (`secret_name`): presigned
#: S3 URLs (`X-Amz-Signature`), Azure SAS tokens (`sig`), HTTP auth parameters.
_SECRET_PARAMETER_WORDS = ("SIGNATURE",)
_SECRET_PARAMETERS = frozenset({"SIG", "PASS", "PWD", "KEY", "AUTH", "AUTHORIZATION"})
#: A URL in running text: up to whitespace, a quote, a backtick, `<`, `>` or a Markdown table's `|`.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'`<>|]+")
#: Control characters other than tab and newline: C0, DEL and C1 (ESC starts terminal escape sequences).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")
#: Longest host text the reconciler prints or copies. Above what an agent with default settings sends (a
#: failure paragraph quotes at most `reportOutput.tailBytes`, 2 KiB, of output), so it cuts only a report that
#: was made bigger, by settings or by hand.
HOST_TEXT_LIMIT = 3000
_CUT_MARK = " … [{} characters cut] … "


def _secret_parameter(name: str) -> bool:
    upper = name.upper().replace("-", "_")
    return (upper in _SECRET_PARAMETERS or secret_name(upper)
            or any(word in upper for word in _SECRET_PARAMETER_WORDS))


def redact_url(url: str) -> str:
    """`url` with its credentials replaced by `[REDACTED]`: a password, a bare user name in http(s) (a token),
    secret-looking query values. Anything else is kept as written (placeholders such as `{address}` too)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = min((index for index in (rest.find(c) for c in "/?#") if index >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{REDACTED}"
        elif scheme.lower() in ("http", "https") and user:
            userinfo = REDACTED
        authority = f"{userinfo}@{host}"
    path, question, query = tail.partition("?")
    if question:
        query, hash_mark, fragment = query.partition("#")
        parameters = []
        for parameter in query.split("&"):
            name, equals, value = parameter.partition("=")
            parameters.append(f"{name}={REDACTED}" if equals and value and _secret_parameter(name) else parameter)
        tail = f"{path}?{'&'.join(parameters)}{hash_mark}{fragment}"
    return f"{scheme}://{authority}{tail}"


def redact_urls(text: str) -> str:
    """Every URL in `text` through `redact_url`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def public_host_text(text: str, *, limit: int = HOST_TEXT_LIMIT) -> str:
    """A message or log tail that a host reported, as the reconciler may print it or copy it into a record:
    redacted (patterns and URLs), control characters shown as `?`, lines joined with ` | `, at most `limit`
    characters. Applied whatever the agent did: it may run with `reportOutput.redact: false`, be older than
    redaction, or not be an agent at all (anyone who can write its `status.json`).

    Remembered for the last thousand texts of up to 8 KiB (at most 8 MiB; a host can report a message of any length,
    and a long one is worked out each time): a pass over a 10,000-host batch sees the same few messages
    ("Succeeded", one hook's failure) thousands of times, and the patterns cost ~30 µs a text (issue 18)."""
    if not text:
        return text
    if len(text) > _REMEMBERED_TEXT:
        return _public_host_text.__wrapped__(text, limit)
    return _public_host_text(text, limit)


#: The longest host text `public_host_text` remembers (characters).
_REMEMBERED_TEXT = 8 * 1024


@lru_cache(maxsize=1024)
def _public_host_text(text: str, limit: int) -> str:
    shown = redact_urls(Redactor().text(text))
    shown = _CONTROL.sub("?", _NEWLINES.sub(" | ", shown.strip("\r\n")))
    if len(shown) <= limit:
        return shown
    # The mark names how much was cut; sized for the longest count, so the result never exceeds `limit`.
    cut = len(shown) - limit + len(_CUT_MARK.format(f"{len(shown):,}"))
    head = (limit * 2) // 3
    return shown[:head] + _CUT_MARK.format(f"{cut:,}") + shown[head + cut:]


__all__ = [
    "HOST_TEXT_LIMIT",
    "REDACTED",
    "Redactor",
    "StreamRedactor",
    "public_host_text",
    "redact_url",
    "redact_urls",
    "secret_name",
]
