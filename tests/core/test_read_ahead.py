"""What a replay holds in memory beside the stream itself: the runner's read-ahead is bounded in seconds of audio
per stream, sources make their own-rate copy only when an output wants it, and a block does not keep the larger
buffer it was cut from alive. No timing: a fast fake source and a fake scorer count what is outstanding."""
from __future__ import annotations

import platform
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import HealthCheck, given, settings, strategies as st

from birdlive.audio import AudioBlock, Blocker, FileSource, NativeTrail
from birdlive.malloc import fix_mmap_threshold
from birdlive.model.checkpoint import load_config
from birdlive.streamer import Runner, SourceSpec, StreamState
from birdlive.streamer.core.events import wants_native_audio

from tests.common import RECORDING, TINY, Collect, NativeCollect

CFG = load_config(TINY)


class ZeroScorer:
    """The `Scorer` contract at no cost: all-zero log-mel and scores (no event), so a run is only the data path."""

    windows_scored = 0
    cfg = CFG

    def logmel(self, chunks):
        ctx, hop = CFG.n_fft // 2, CFG.hop_length
        return [np.zeros(((len(c) - 2 * ctx) // hop + 1, CFG.n_mels), np.float32) for c in chunks]

    def score(self, windows, origins=None):
        n_out = int(round(CFG.window_s * CFG.out_fps))
        return [np.zeros((n_out, CFG.num_classes), np.float32) for _ in windows]


class CountingSource:
    """Yields `blocks` (sizes in samples) as fast as it is asked; at each yield records how many samples it has
    handed out that the stream has not taken in yet."""

    name = "counting"
    warnings: list[str] = []
    keep_native = False

    def __init__(self, sizes: list[int], pushed: list[int]):
        self.sizes, self.pushed, self.outstanding = sizes, pushed, []
        self.stats: dict = {}

    def __iter__(self):
        pos = 0
        for n in self.sizes:
            self.outstanding.append(pos - self.pushed[0])
            yield AudioBlock(np.zeros(n, np.float32), pos, None)
            pos += n

    def stop(self):
        pass

    def close(self):
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 3 * CFG.sample_rate), min_size=1, max_size=40),
       read_ahead_s=st.floats(0.5, 8.0))
def test_read_ahead_never_exceeds_its_bound(sizes, read_ahead_s):
    """However the blocks are sized, a source is never more than the bound (or one block, if that is longer) ahead
    of the stream, though the consumer is far slower than this reader; and every sample arrives."""
    pushed = [0]

    def make_stream(name):
        state = StreamState(name, CFG)
        push = state.push

        def counted(samples, wall_time=None):
            push(samples, wall_time)
            pushed[0] += len(samples)
        state.push = counted
        return state

    source = CountingSource(sizes, pushed)
    runner = Runner(ZeroScorer(), [], make_stream, read_ahead_s=read_ahead_s)
    (status,) = runner.run([SourceSpec("counting", lambda: source)])
    assert status.state == "done" and pushed[0] == sum(sizes)
    bound = int(read_ahead_s * CFG.sample_rate)   # a block longer than the bound passes alone
    assert max(source.outstanding) <= max(bound, max(sizes)), (max(source.outstanding), bound)
    assert runner.read_ahead.held(0) == 0


@pytest.fixture(scope="module")
def rec48(tmp_path_factory):
    x, sr = sf.read(RECORDING, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "rec48.flac"
    sf.write(path, soxr.resample(x, sr, 48000, quality="HQ"), 48000, subtype="PCM_24")
    return path


@pytest.mark.parametrize("sink, native", [(Collect(), False), (NativeCollect(), True)])
def test_own_rate_audio_is_made_only_when_an_output_wants_it(rec48, sink, native):
    """A 48 kHz file read for sinks that do not want its own rate yields blocks without a 48 kHz copy; with one
    that does (clips), the runner tells the source to keep it."""
    seen: list[AudioBlock] = []

    class Spy(FileSource):
        def __iter__(self):
            for b in super().__iter__():
                seen.append(b)
                yield b

    runner = Runner(ZeroScorer(), [sink], lambda name: StreamState(name, CFG))
    assert runner.keep_native is native is wants_native_audio([sink])
    runner.run([SourceSpec("rec48", lambda: Spy(rec48, CFG.sample_rate, block_s=4.0))])
    assert seen and all((b.native is not None) is native for b in seen)
    if native:
        assert all(b.native_rate == 48000 for b in seen)


def _root(a: np.ndarray) -> object:
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def _holds_only_itself(a: np.ndarray) -> bool:
    root = _root(a)
    return not isinstance(root, np.ndarray) or root.nbytes == a.nbytes


def test_a_block_does_not_keep_its_parent_buffer_alive():
    """Blocks cut from chunks that do not line up with them (a resampler's output never does) are arrays of
    their own: a queued block is its size in memory, not the concatenation it came from."""
    rng = np.random.default_rng(1)
    blocker, trail, blocks = Blocker(1000), NativeTrail(48000, 32000), []
    for n in rng.integers(1, 2500, 60):
        x = rng.standard_normal(n).astype(np.float32)
        blocker.push(x)
        trail.push(np.repeat(x, 2)[: int(n * 1.5)])
        for start, b in blocker.pop_blocks():
            blocks.append((b, trail.take(start, start + len(b))))
    assert len(blocks) > 20
    for b, native in blocks:
        assert _holds_only_itself(b) and _holds_only_itself(native)
    assert all(_holds_only_itself(p) for p in blocker._parts + trail._parts)


def test_file_blocks_hold_only_themselves(rec48):
    source = FileSource(rec48, CFG.sample_rate, block_s=1.3)
    source.keep_native = True
    blocks = list(source)
    assert all(_holds_only_itself(b.samples) and b.native is not None and _holds_only_itself(b.native)
               for b in blocks)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_fixed_mmap_threshold():
    """The lean scorer's allocator setting reaches glibc (a wrong symbol or signature would silently do nothing)."""
    assert fix_mmap_threshold()
