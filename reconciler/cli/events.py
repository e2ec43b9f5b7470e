"""`reconcile events [GROUP] [--since T] [--type GLOB] [--min-severity S] [--follow] [--format text|json]`.

Where it sits: the CLI layer; reads only. The events are the ones the reconciler recorded in its deployment
records and the fleet event log (reconciler/core/events.py, docs/events.md); this command lists the records
(never every host's report, so it stays cheap on a big fleet) and prints the events in the order they were
recorded. `--follow` keeps reading by version, so a quiet store costs a listing per interval and a rollout shows
up line by line as passes record it, in another terminal or a log shipper (`--format json`: one event per line,
the shape of `schemas/event.json`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from contract.durations import parse_duration
from contract.events import Event, from_deployment, from_fleet_log, in_order
from contract.exitcodes import ExitCode
from contract.models import EventSeverity, EventType
from contract.redact import public_host_text
from contract.signals import stop_on_signals
from reconciler.cli.common import no_store, open_for_reading, resolve_group
from reconciler.core import State
from reconciler.errors import ReconcilerError
from reconciler.settings import DeploySettings
from reconciler.shell.observe import StoreReader

#: How often `--follow` re-reads the records by default: a pass records events at most this often anyway on a
#: busy rollout (`pollInterval` while busy is 1 s).
FOLLOW_INTERVAL = timedelta(seconds=1)

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}")


class BadOption(ReconcilerError):
    """A flag value that cannot be used (a `--since` that is neither a duration nor a time)."""


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    events = sub.add_parser(
        "events",
        parents=[parent],
        help="what happened: deployments, batches, host results, gates, rollbacks, refused commands",
        description="Print the events the reconciler recorded, oldest first (docs/events.md). With --follow, keep "
        "printing new ones as passes record them (Ctrl-C stops).",
    )
    events.add_argument("group", nargs="?", default=None, help="only this GROUP or APPLICATION/GROUP")
    events.add_argument("--since", default=None,
                        help="only events recorded after this: a duration back from now (30m, 2h, 7d) or a time "
                        "(2026-11-28T10:00:00Z)")
    events.add_argument("--type", dest="types", action="append", default=None, metavar="GLOB",
                        help="only these event types (deployment.failed, 'rollback.*'); repeatable")
    events.add_argument("--min-severity", choices=[s.value for s in EventSeverity], default=None,
                        help="only events at least this severe")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    events.add_argument("--interval", type=_interval, default=FOLLOW_INTERVAL,
                        help="with --follow: how often to re-read the store (default 1s)")
    events.add_argument("--format", choices=("text", "json"), default="text",
                        help="json: one event per line (schemas/event.json)")
    events.set_defaults(func=cmd_events)


def _interval(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError("the interval must be more than 0")
    return value


def parse_since(text: str, now: datetime) -> datetime:
    """`30m` (back from now) or an ISO 8601 time (UTC unless it says otherwise)."""
    if _TIMESTAMP.match(text.strip()):
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadOption(
                f"--since {text!r}: not a time: {exc} (write 2026-11-28T10:00:00Z or a duration: 30m)"
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    try:
        return now - parse_duration(text)
    except ValueError as exc:
        raise BadOption(f"--since {text!r}: {exc}, or a time like 2026-11-28T10:00:00Z") from None


class EventFilter:
    """Which events to print: a group, a time, types, a severity."""

    def __init__(self, *, group: str | None, since: datetime | None, types: list[str] | None,
                 min_severity: EventSeverity | None) -> None:
        self.group = group
        self.since = since
        self.types = types
        self.min_severity = min_severity

    def wants(self, event: Event) -> bool:
        if self.group is not None and event.group != self.group:
            return False
        if self.since is not None and event.at < self.since:
            return False
        if self.types and not any(fnmatch.fnmatchcase(event.type.value, pattern) for pattern in self.types):
            return False
        return self.min_severity is None or event.severity.rank >= self.min_severity.rank


def recorded_events(state: State) -> list[Event]:
    """Every event in the records a pass reads: each group's deployments in flight and in history, and the fleet
    log; oldest first."""
    events: list[Event] = []
    for deployment in state.deployments.values():
        events.extend(from_deployment(deployment))
    if state.fleet_events is not None:
        events.extend(from_fleet_log(state.fleet_events))
    return in_order(events)


def cmd_events(args: argparse.Namespace, settings: DeploySettings) -> int:
    store, missing = open_for_reading(settings)
    reader = StoreReader(store)
    state = reader.records()
    group = resolve_group(args.group, set(state.groups), missing) if args.group else None
    types = args.types
    if types:
        known = {t.value for t in EventType}
        unknown = [t for t in types if not any(fnmatch.fnmatchcase(k, t) for k in known)]
        if unknown:
            raise BadOption(f"--type {', '.join(unknown)}: matches no event type (known: {', '.join(sorted(known))})")
    wanted = EventFilter(
        group=group,
        since=parse_since(args.since, datetime.now(UTC)) if args.since else None,
        types=types,
        min_severity=EventSeverity(args.min_severity) if args.min_severity else None,
    )
    printer = _Printer(args.format)
    shown: set[str] = set()
    events = recorded_events(state)
    for event in events:
        shown.add(event.id)
        if wanted.wants(event):
            printer.print(event)
    if not args.follow:
        if not printer.printed and args.format == "text":
            where = f" ({no_store(missing)})" if missing is not None else ""
            print(f"no events recorded{' for ' + group if group else ''}{' since then' if args.since else ''}{where}")
        return ExitCode.OK
    with stop_on_signals() as stop:
        _follow(reader, wanted, printer, shown, stop=stop, interval=args.interval)
    return ExitCode.OK


def _follow(reader: StoreReader, wanted: EventFilter, printer: _Printer, shown: set[str], *, stop: threading.Event,
            interval: timedelta) -> None:
    """Re-read the records every `interval` (only changed documents are fetched) and print events not seen yet.
    Events are never renumbered, so an id seen once is never printed again; a deployment that leaves every
    group's history takes its ids out of the set with it."""
    while not stop.wait(interval.total_seconds()):
        try:
            state = reader.records()
        except Exception as exc:  # a store hiccup must not end a follow: it is reported and retried
            print(f"(store read failed, retrying: {exc})", file=sys.stderr, flush=True)
            continue
        current = recorded_events(state)
        for event in current:
            if event.id not in shown and wanted.wants(event):
                printer.print(event)
        shown.clear()
        shown.update(event.id for event in current)


class _Printer:
    def __init__(self, form: str) -> None:
        self.form = form
        self.printed = 0

    def print(self, event: Event) -> None:
        self.printed += 1
        if self.form == "json":
            # Host-provided text (a hook's output in a failure message) is redacted like in `status`.
            data = event.model_dump(mode="json", by_alias=True, exclude_none=True)
            data["message"] = public_host_text(event.message)
            print(json.dumps(data, separators=(",", ":")), flush=True)
            return
        print(text_line(event), flush=True)


#: The most of a message one text line shows (a failed hook's output can run to kilobytes); JSON keeps it all.
TEXT_MESSAGE_LIMIT = 400


def text_line(event: Event) -> str:
    """`2026-11-28 10:01:02  ERROR    hello/web  d-68df7714e9d9  deployment.failed  app@bc893b7 failed [...]`."""
    at = event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    where = event.group or "fleet"
    source = event.deployment_id or ""
    message = public_host_text(event.message)
    if len(message) > TEXT_MESSAGE_LIMIT:
        message = message[: TEXT_MESSAGE_LIMIT - 1] + "…"
    return f"{at}  {event.severity.value.upper():<8} {where:<24} {source:<20} {event.type.value:<22} {message}"


__all__ = ["EventFilter", "cmd_events", "parse_since", "recorded_events", "register", "text_line"]
