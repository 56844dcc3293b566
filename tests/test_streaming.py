"""The whole data path on the project's own recording and tiny checkpoint (see tests/fixtures/make_fixture.py)."""
import numpy as np
import pytest
import soundfile as sf
import soxr

from birdlive.model import load_checkpoint
from birdlive.streamer import StreamDetector, detect_waveform, run_stream
from birdlive.streamer.sources import FileSource

from common import RECORDING, TINY, match_events, read_truth


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(TINY)


@pytest.fixture(scope="module")
def offline_events(model):
    wave, sr = sf.read(RECORDING, dtype="float32")
    wave = soxr.resample(wave, sr, model.cfg.sample_rate, quality="HQ").astype(np.float32)
    return detect_waveform(model, wave, source=str(RECORDING))


def as_tuples(events):
    return [(e.species, e.onset_s, e.offset_s) for e in events]


def test_events_at_the_known_call_times(offline_events):
    """Every call found, onsets and offsets within 0.3 s, and nothing in the call-free stretches."""
    truth = read_truth()
    pairs, missed, spurious = match_events(truth, as_tuples(offline_events), tol=0.3)
    assert not missed, f"missed calls: {missed}"
    assert not spurious, f"events where there is no call: {spurious}"
    assert len(pairs) == len(truth)


@pytest.mark.parametrize("block_s", [0.1, 1.0, 7.3])
def test_streaming_equals_offline(model, offline_events, block_s):
    """Replaying the file block by block through the streaming path gives the events of the whole-file run:
    same species, onsets and offsets within one frame."""
    src = FileSource(RECORDING, model.cfg.sample_rate, block_s=block_s)

    class Collect(list):
        def write(self, e):
            self.append(e)

    got = Collect()
    status = run_stream(src, StreamDetector(model, source=str(RECORDING)), [got])
    assert status.audio_s == pytest.approx(sf.info(RECORDING).duration, abs=0.01)
    assert [e.species for e in got] == [e.species for e in offline_events]
    frame = model.cfg.frame_s
    for a, b in zip(got, offline_events):
        assert abs(a.onset_s - b.onset_s) <= frame + 1e-6 and abs(a.offset_s - b.offset_s) <= frame + 1e-6


def test_events_are_emitted_while_the_stream_runs(model):
    """Latency stays bounded: an event comes out within a few seconds of its call, not at the end of the file."""
    truth = read_truth()
    first_call_end = truth[0][2]
    src = FileSource(RECORDING, model.cfg.sample_rate, block_s=0.5)
    det = StreamDetector(model)
    for block in src:
        if det.push(block.samples, block.start_sample):
            break
    assert det.audio_s <= first_call_end + model.cfg.window_s + 2.0
