"""Stopping on SIGTERM and SIGINT without ever deadlocking: the one way `deploy-agent run`, `reconcile --once`,
`watch` and the operator commands turn a signal into a stop event.

Python runs a signal handler in the main thread between two bytecodes, whatever that thread holds at that
moment. A handler that logs, or sets an Event, takes a lock the interrupted code may already hold (the log's
write lock, the Event's condition) and then waits for itself forever: a `reconcile watch` that did not exit
within 10 s of SIGTERM under load was exactly this. So the handler proper does nothing; `signal.set_wakeup_fd`
makes the C-level handler write the signal number to a pipe, and a relay thread sets the events and logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import structlog

log = structlog.get_logger(__name__)

#: The signals that stop the agent and the reconciler.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)



def _relay_signals(read_fd: int, events: tuple[threading.Event, ...]) -> None:
    """Turns the signal numbers written to the wakeup pipe into set events (and a log line)."""
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return  # the write end was closed: the relay is over
        for signum in data:
            if signum in STOP_SIGNALS:
                for event in events:
                    event.set()
                log.info("signal.received", signal=signal.Signals(signum).name)


def _noted(_signum: int, _frame: object) -> None:
    """The Python-level handler: nothing to do here, the C handler already wrote to the wakeup pipe."""


@contextlib.contextmanager
def relay_stop_signals(*events: threading.Event) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set every one of `events` from a relay thread, never from the handler
    (see the module docstring). Only in the main thread (signals cannot be handled elsewhere); the previous
    handlers and wakeup fd are restored on the way out, so relays nest."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    relay = threading.Thread(target=_relay_signals, args=(read_fd, events), name="signal-relay",
                             daemon=True)
    relay.start()
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, _noted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)
        relay.join(timeout=1.0)
        os.close(read_fd)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM/SIGINT set, for loops that poll it (the reconciler finishes the action it is
    writing and releases the lease; the agent finishes the lifecycle event it is running and reports)."""
    stop = threading.Event()
    with relay_stop_signals(stop):
        yield stop
