"""Logging set-up shared by both CLIs: structlog, JSON lines off a TTY, readable console on a TTY.

Core modules only emit structured events (`log.info("event", key=value)`); how they look is decided here,
once, by the CLI that owns the process.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info", *, json_lines: bool | None = None, stream: TextIO | None = None) -> None:
    """Route structlog (and stdlib logging from boto3/GitPython) to stderr at `level`.

    `json_lines=None` decides by whether stderr is a terminal: people read the console renderer, machines
    (CI logs, journald, log shippers) get one JSON object per line.
    """
    out = stream or sys.stderr
    if json_lines is None:
        json_lines = not out.isatty()
    numeric = getattr(logging, level.upper(), logging.INFO)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if json_lines:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out, format="%(name)s: %(message)s")
