"""Paths and small helpers shared by the tests."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDING = ROOT / "recordings" / "synthetic_calls.flac"
TRUTH = ROOT / "recordings" / "synthetic_calls.csv"
TINY = ROOT / "tests" / "fixtures" / "tiny_calls"
BIRDLIVE = [sys.executable, "-m", "birdlive"]


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) as a module, registered in sys.modules under its name: the
    dataclasses it defines look their module up there."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_truth() -> list[tuple[str, float, float]]:
    with open(TRUTH, newline="") as f:
        return [(r["species"], float(r["onset_s"]), float(r["offset_s"])) for r in csv.DictReader(f)]


def read_events_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def birdlive(*args, timeout=300, environ=None, **kw) -> subprocess.CompletedProcess:
    """`birdlive ARGS` in a child process, in `environ` (default: this process's environment)."""
    env = {**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1"}
    env.pop("BIRDLIVE_DEBUG", None)
    return subprocess.run([*BIRDLIVE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          **kw)


def match_events(truth, events, tol=0.3):
    """Pairs each true call with an event of its species whose onset and offset are within `tol` seconds.
    Returns (matched pairs, missed calls, events that match no call)."""
    free = list(events)
    pairs, missed = [], []
    for sp, on, off in truth:
        cands = [e for e in free if e[0] == sp and abs(e[1] - on) <= tol and abs(e[2] - off) <= tol]
        if cands:
            best = min(cands, key=lambda e: abs(e[1] - on))
            free.remove(best)
            pairs.append(((sp, on, off), best))
        else:
            missed.append((sp, on, off))
    return pairs, missed, free


class Collect:
    """A sink that keeps what it is given."""

    def __init__(self):
        self.events, self.audio, self.statuses, self.closed = [], [], [], False

    def on_event(self, e, audio):
        self.events.append(e)
        self.audio.append(audio)

    def on_status(self, s):
        self.statuses.append(s)

    def close(self):
        self.closed = True


class NativeCollect(Collect):
    """A Collect that wants events' audio at the source's own rate, as clips do (`events.wants_native_audio`)."""

    wants_native_audio = True
