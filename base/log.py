"""How birdlive's library code says what the user should know without stopping: `logging`.

Library modules log to `logging.getLogger(__name__)` (a warning: a full disk for clips, a broker gone, a file
given up; info: a broker back). The package adds no handler of its own but a `NullHandler`, so a program that
embeds birdlive decides what it sees. The `birdlive` command (and the worker processes it starts) installs
`StderrLines`: a warning is one `warning: …` line on stderr, info a plain line, as the command always printed.
"""
from __future__ import annotations

import logging
import sys
import traceback

LOGGER = "birdlive"


class StderrLines(logging.Handler):
    """One line per record on the stderr of the moment (the live view and pytest swap it): `warning: …` for
    warnings and errors, the message alone below; a record's traceback after it only with `tracebacks`."""

    def __init__(self, tracebacks: bool = False):
        super().__init__(logging.DEBUG if tracebacks else logging.INFO)
        self.tracebacks = tracebacks

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"warning: {text}"
            print(text, file=sys.stderr, flush=True)
            if self.tracebacks and record.exc_info and record.exc_info[1] is not None:
                traceback.print_exception(record.exc_info[1], file=sys.stderr)
        except Exception:   # noqa: BLE001 - logging must never stop detection
            self.handleError(record)


def to_stderr(tracebacks: bool = False) -> None:
    """Route birdlive's log records to stderr as `StderrLines` (once per process; calling again replaces it)."""
    log = logging.getLogger(LOGGER)
    for h in [h for h in log.handlers if isinstance(h, StderrLines)]:
        log.removeHandler(h)
    log.addHandler(StderrLines(tracebacks))
    log.setLevel(logging.DEBUG if tracebacks else logging.INFO)
    log.propagate = False       # an embedding program's root handler would print each line a second time
