"""Shared fixtures and markers of the test suite."""
from __future__ import annotations

import logging

import pytest


@pytest.fixture
def log_lines(caplog):
    """The library's log records as the `birdlive` command prints them on stderr (birdlive.log.StderrLines):
    call it for the text so far, one line per record, warnings prefixed `warning: `."""
    caplog.set_level(logging.INFO, logger="birdlive")

    def text() -> str:
        return "".join(("warning: " if r.levelno >= logging.WARNING else "") + r.getMessage() + "\n"
                       for r in caplog.records if r.name.startswith("birdlive"))
    return text


@pytest.fixture
def cli_logging():
    """The library's log records on stderr as the `birdlive` command prints them (capsys sees them), for this
    test only."""
    from birdlive.log import LOGGER, to_stderr
    log = logging.getLogger(LOGGER)
    saved = (list(log.handlers), log.level, log.propagate)
    to_stderr()
    yield
    log.handlers[:], log.level, log.propagate = saved
