"""Fixtures of the web page's tests: a real `birdlive serve` process on a free port, and a real headless chromium
(Debian's chromium and chromium-driver, driven by selenium)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.common import BIRDLIVE

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"]


class Served:
    """A `birdlive serve` child process and the URL it listens on."""

    def __init__(self, *args, env: dict | None = None):
        self.proc = subprocess.Popen([*BIRDLIVE, "serve", "--port", "0", *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        line = self.proc.stderr.readline()
        m = re.search(r" on (http://\S+/);", line)
        if m is None:
            self.stop()
            raise AssertionError(f"serve did not start: {line}{self.proc.stderr.read()}")
        self.url = m[1]

    def stop(self) -> str:
        """Stop it (SIGTERM) and return what it wrote on stderr since it started."""
        if self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture
def serve():
    started: list[Served] = []

    def start(*args, env: dict | None = None) -> Served:
        started.append(Served(*args, env=env))
        return started[-1]
    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="birdlive-chromium-")     # a new empty profile: nothing to sync or update
    options = webdriver.ChromeOptions()
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or
                                                               "/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate, timeout: float, every: float = 0.05):
    """`predicate()` once it is truthy, or None after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(every)
