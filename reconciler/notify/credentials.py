"""Secrets of a notification, read on the reconciler's machine at the moment they are needed.

A `SecretSource` names an environment variable or a file; its value is read for each request, so a rotated token
or URL is used without a restart. What cannot be read is one delivery's failure with its reason (`SecretMissing`),
never a crash of the worker nor of a pass, and the reason names the source, never a value.
"""

from __future__ import annotations

import os

from reconciler.desired.notification_spec import SecretSource

#: A secret file bigger than this is not a token or a URL: refused rather than read into memory.
MAX_SECRET_BYTES = 64 * 1024


class SecretMissing(Exception):
    """A secret could not be read. `retryable`: a file may appear (a mounted secret being rotated); an environment
    variable of a running process will not."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def read_secret(source: SecretSource) -> str:
    """The secret's value (a file's content without its final line break). Raises SecretMissing."""
    if source.env is not None:
        value = os.environ.get(source.env, "")
        if not value:
            raise SecretMissing(
                f"environment variable {source.env} is not set (or empty) in the reconciler's environment",
                retryable=False,
            )
        return value
    assert source.file is not None, "SecretSource has exactly one of env and file"
    try:
        with open(source.file, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretMissing(f"cannot read secret file {source.file}: {exc.strerror or exc}", retryable=True) from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretMissing(f"secret file {source.file} is over {MAX_SECRET_BYTES // 1024} KiB: not a secret value",
                            retryable=False)
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretMissing(f"secret file {source.file} is not UTF-8 text", retryable=False) from None
    if not value:
        raise SecretMissing(f"secret file {source.file} is empty", retryable=True)
    return value


__all__ = ["MAX_SECRET_BYTES", "SecretMissing", "read_secret"]
