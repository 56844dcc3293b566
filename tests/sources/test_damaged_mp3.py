"""A real xeno-canto MP3 cut short and ending in damaged frames, replayed 20 times through the threaded runner.

Issue 17: such a file crashed `replay` in 2 of 6 runs (IndexError from the log-mel ring at the end of the stream)
and lost every event of the recording. Whether it crashed hung on timing: how many 16 s blocks the decoder had
queued when the end arrived. The cause is pinned down by tests/test_stream_property.py; this is the file.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from birdlive.model import load_checkpoint
from birdlive.streamer import Runner, SharedScorer, SourceSpec, StreamState
from birdlive.audio import FileSource

from tests.common import ROOT, TINY, Collect

RECORDING = ROOT.parent / "shared" / "data" / "xc-puerto-rico" / "Setophaga_adelaidae" / "XC46659.mp3"


@pytest.fixture(scope="module")
def damaged_mp3(tmp_path_factory):
    """The first 77 % of the recording's bytes (125.3 s: seven 16 s blocks and 13.3 s; three blocks and that
    rest, unconverted when the end arrives, fill all but 0.3 s of the 61.6 s audio ring, and with the padded last
    window overflow the log-mel ring: the case that crashed), then the start of a frame header and garbage:
    libmpg123 loses sync in the last frames, and the Xing header still promises the whole 163 s."""
    if not RECORDING.exists():
        pytest.skip(f"{RECORDING} not here (../shared/data)")
    data = RECORDING.read_bytes()
    junk = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("mp3") / "XC46659_damaged.mp3"
    path.write_bytes(data[:int(len(data) * 0.773)] + b"\xff\xfb\x90" + junk)
    return path


class SlowScorer(SharedScorer):
    """The default model's pace on a busy machine: while a window batch is scored, the decoder queues blocks
    ahead, and the end of the file arrives in one tick with several of them (what the crash needed)."""

    def score(self, windows, origins=None):
        time.sleep(0.005 * len(windows))
        return super().score(windows, origins)


def test_damaged_mp3_replays_20_times_without_a_crash(damaged_mp3):
    model = load_checkpoint(TINY)
    scorer = SlowScorer(model)
    runs = []
    for _ in range(20):
        got = Collect()
        runner = Runner(scorer, [got], lambda name: StreamState(name, model.cfg))
        spec = SourceSpec(str(damaged_mp3), lambda: FileSource(damaged_mp3, model.cfg.sample_rate, block_s=16.0))
        (status,) = runner.run([spec])
        assert "unexpected" not in (status.error or ""), status.error
        assert status.audio_s > 80
        runs.append([(e.species, e.onset_s, e.offset_s, round(e.peak, 4)) for e in got.events])
    assert runs[0], "the tiny model finds events in the recording"
    assert max(e[2] for e in runs[0]) > 60, "events from the end of the file are not lost"
    assert all(r == runs[0] for r in runs)
