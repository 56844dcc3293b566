"""Property test of the streaming core against the offline reference, over every interleaving hypothesis finds.

The runner's consumer side (`Runner._handle` for opens, blocks and ends; `Runner._tick`) is driven by hand, with
no threads, so that each case is one exact interleaving: blocks from 1 ms to 20 s, several blocks queued before
one tick, ticks with nothing new, gaps a source could not fill, and the end of input arriving in the same tick
as the last blocks. The network is a stub that is a pure function of each window's log-mel (so batching cannot
change a score), on a small model configuration (4 kHz, 2 s windows, rings of a few seconds) so that thousands
of cases, rings that wrap many times and streams that end early take seconds.

Bug this caught (issue 17): at the end of a stream every log-mel frame still owed — up to a whole audio ring of
unconverted samples plus the zero-padded last window — was computed in one chunk, more than the log-mel ring
holds beyond the oldest window not yet cut, so the window schedule asked for frames already overwritten.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from birdlive.model.config import ModelConfig
from birdlive.model.frontend import LogMelFrontend
from birdlive.streamer.core.events import StreamStatus
from birdlive.streamer.core.offline import detect_offline, framewise_track
from birdlive.streamer.core.runner import Runner, _Live
from birdlive.audio import AudioBlock
from birdlive.streamer.core.stream import StreamState

CFG = ModelConfig(labels=["low", "high"], sample_rate=4000, n_fft=64, hop_length=40, n_mels=8, fmin=50.0,
                  fmax=1900.0, window_s=2.0, out_fps=10.0)
N_OUT = int(CFG.window_s * CFG.out_fps)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: a second thread only waits on the other core (4x slower beside a training run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StubModel(torch.nn.Module):
    """What the offline reference needs of a model; framewise scores from band energies of the window's own
    log-mel frames: "low" follows the lower four mel bands, "high" the upper four."""

    def __init__(self):
        super().__init__()
        self.cfg = CFG
        self.frontend = LogMelFrontend(CFG)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward_logmel(self, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        x = logmel[:, 0].double()                                  # (B, frames, mels)
        per_out = (x.shape[1] - 1) // N_OUT
        pooled = x[:, :N_OUT * per_out].reshape(len(x), N_OUT, per_out, -1).mean(2)
        bands = torch.stack([pooled[..., :4].mean(-1), pooled[..., 4:].mean(-1)], -1)
        return {"framewise": torch.sigmoid((bands + 45.0) / 4.0).float()}


class StubScorer:
    """The `SharedScorer` contract (cfg, logmel, score) over the stub network."""

    def __init__(self, model: StubModel):
        self.model, self.cfg = model, model.cfg

    @torch.inference_mode()
    def logmel(self, chunks):
        return [self.model.frontend.frames(torch.from_numpy(c)[None])[0, 0].numpy() for c in chunks]

    @torch.inference_mode()
    def score(self, windows, origins=None):
        return list(self.model.forward_logmel(torch.from_numpy(np.stack(windows))[:, None])["framewise"].numpy())


class Track:
    """A score sink that keeps the stitched frames."""

    def __init__(self):
        self.parts = []

    def on_scores(self, source, first_frame, frames, frame_s):
        self.parts.append((first_frame, frames))

    def frames(self) -> np.ndarray:
        if not self.parts:
            return np.zeros((0, CFG.num_classes), np.float32)
        assert [f for f, _ in self.parts] == list(np.cumsum([0] + [len(p) for _, p in self.parts[:-1]]))
        return np.concatenate([p for _, p in self.parts])


class Events:
    def __init__(self):
        self.events = []

    def on_event(self, e, audio):
        self.events.append(e)

    def on_status(self, s):
        pass

    def close(self):
        pass


class Opened:
    """The source as the runner sees it once open (the blocks are handed over by the test)."""
    name, stats, warnings = "case", {}, []

    def stop(self):
        pass

    def close(self):
        pass


def calls(seed: int, n: int) -> np.ndarray:
    """Quiet noise with tone bursts, low and high, at random places: events of both species."""
    rng = np.random.default_rng(seed)
    x = 0.003 * rng.standard_normal(n)
    t = np.arange(n) / CFG.sample_rate
    for _ in range(max(1, n // 8000)):
        a, d = rng.integers(0, max(1, n)), rng.integers(800, 6000)
        f = rng.choice([300.0, 1500.0])
        x[a:a + d] += 0.3 * np.sin(2 * np.pi * f * t[a:a + d])
    return x.astype(np.float32)


# An operation: ("block", seconds) hands over the next samples; ("gap", seconds) skips stream time the source
# could not fill; ("tick",) runs one tick. Whatever audio is left after the operations comes as one last block,
# with the end of input in the same tick.
OPERATION = st.one_of(
    st.tuples(st.just("block"), st.floats(0.001, 20.0)),
    st.tuples(st.just("block"), st.floats(0.001, 0.05)),
    st.tuples(st.just("gap"), st.floats(0.001, 3.0)),
    st.tuples(st.just("tick")),
)


def stream(ops, wave: np.ndarray, hop_s: float, keep_s: float, max_block_s: float, end_at: int):
    """Drive the runner's consumer side through `ops`; returns (stitched track, events, the audio it saw)."""
    track, sink = Track(), Events()
    runner = Runner(StubScorer(StubModel()), [sink],
                    lambda name: StreamState(name, CFG, hop_s=hop_s, keep_audio_s=keep_s, max_block_s=max_block_s),
                    score_sinks=[track])
    runner._live[0] = _Live(StreamStatus(source="case"))
    runner._handle(0, "open", Opened(), [])
    state = runner._live[0].state
    heard = []                         # what the stream was told: blocks, and the silence of gaps before them
    told, pos, sr = 0, 0, CFG.sample_rate

    def hand_over(block: np.ndarray, start: int) -> None:
        nonlocal told
        runner._handle(0, "block", AudioBlock(block, start, None), [])
        heard.extend([np.zeros(start - told, np.float32), block])
        told = start + len(block)

    for op in ops:
        if op[0] == "tick":
            runner._tick([state])
            continue
        n = max(1, int(op[1] * sr))
        if op[0] == "gap":              # stream time the source skipped: silence once the next block comes
            pos = min(end_at, pos + n)
        elif pos < end_at:
            hand_over(wave[pos:min(end_at, pos + n)], pos)
            pos = told
    if pos < end_at:
        hand_over(wave[pos:end_at], pos)
    done = []
    runner._handle(0, "end", None, done)
    assert done[0].state == "done" and not runner._live
    return track.frames(), sink.events, np.concatenate(heard or [np.zeros(0, np.float32)])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPERATION, max_size=12), seconds=st.floats(0.0005, 30.0), seed=st.integers(0, 2 ** 16),
       hop_s=st.sampled_from([0.1, 0.5, 1.0, 2.0]), max_block_s=st.floats(0.25, 4.0),
       spare_s=st.floats(0.5, 6.0))
def test_streaming_equals_offline_for_any_interleaving(ops, seconds, seed, hop_s, max_block_s, spare_s):
    """Whatever the blocks, ticks, gaps and end, the stitched score track and the events are the offline
    reference's over the same audio (gaps as silence)."""
    n = max(1, int(seconds * CFG.sample_rate))
    wave = calls(seed, n)
    keep_s = CFG.window_s + max_block_s + spare_s
    frames, events, heard = stream(ops, wave, hop_s, keep_s, max_block_s, n)
    model = StubModel()
    expected = framewise_track(model, heard, hop_s)
    assert frames.shape == expected.shape
    np.testing.assert_allclose(frames, expected, atol=2e-5)
    reference = detect_offline(model, heard, source="case", hop_s=hop_s)
    assert [(e.species, e.onset_s, e.offset_s) for e in events] == \
        [(e.species, e.onset_s, e.offset_s) for e in reference]


def test_a_full_audio_ring_owed_at_the_end_is_scored():
    """The crash of issue 17 as one case: a whole audio ring not yet turned into log-mel when the end arrives
    in the same tick (what a fast decoder and several queued 16 s blocks did on a real MP3)."""
    hop_s, max_block_s = 1.0, 2.0
    keep_s = CFG.window_s + max_block_s + 1.0
    n = int(4 * keep_s * CFG.sample_rate)
    wave = calls(7, n)
    frames, _, heard = stream([("block", 2.0)] * 20, wave, hop_s, keep_s, max_block_s, n)
    assert len(heard) == n
    np.testing.assert_allclose(frames, framewise_track(StubModel(), heard, hop_s), atol=2e-5)


@pytest.mark.parametrize("hop_s", [0.5, 1.0])
def test_stub_scores_cross_the_thresholds(hop_s):
    """The stub makes events of both species, so the property test compares events, not two empty lists."""
    wave = calls(3, 20 * CFG.sample_rate)
    species = {e.species for e in detect_offline(StubModel(), wave, hop_s=hop_s)}
    assert species == {"low", "high"}
