"""Shared fixtures and markers of the test suite (tests are laid out like the code: tests/core, tests/sources,
tests/sinks, tests/archive, tests/model, tests/train, tests/cli, and tests/golden for the whole command's
output; helpers every folder uses are in tests/common.py)."""
from __future__ import annotations

import logging

import pytest

MARKERS = {
    "capture": "records from a real capture device (a PulseAudio null sink the test starts)",
    "network": "listens in real time (≥ 40 s each) to RTSP and Icecast servers the test starts (tests/streams.py)",
    "mqtt": "talks to a real mosquitto broker the test starts (skipped where mosquitto is not installed)",
    "ray": "runs a real local Ray cluster",
    "training": "trains a small model (minutes on two cores)",
}


def pytest_configure(config):
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny test checkpoint (tests/fixtures/tiny_calls: four synthetic call types), loaded once per run."""
    from birdlive.model import load_checkpoint

    from tests.common import TINY
    return load_checkpoint(TINY)


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
