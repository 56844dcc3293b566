import numpy as np
import pytest

from birdlive.model import load_checkpoint
from birdlive.streamer import RingBuffer, SharedScorer, StreamState
from birdlive.streamer.core.clock import WallClock
from birdlive.streamer.core.offline import whole_logmel, window_starts

from tests.common import TINY


def test_ring_wraps_and_reads_by_absolute_index():
    r = RingBuffer(10)
    data = np.arange(25, dtype=np.float32)
    for chunk in np.array_split(data, 7):
        r.write(chunk)
    assert (r.start, r.end) == (15, 25)
    np.testing.assert_array_equal(r.read(15, 10), data[15:25])
    np.testing.assert_array_equal(r.read(18, 4), data[18:22])
    with pytest.raises(IndexError):
        r.read(14, 2)  # overwritten
    with pytest.raises(IndexError):
        r.read(20, 6)  # not written yet


def test_ring_write_larger_than_capacity_keeps_newest():
    r = RingBuffer(4)
    r.write(np.arange(9, dtype=np.float32))
    assert r.end == 9
    np.testing.assert_array_equal(r.read(5, 4), [5, 6, 7, 8])


def test_ring_does_not_reallocate_in_steady_state():
    r = RingBuffer(100)
    buf = r._buf
    for _ in range(50):
        r.write(np.random.rand(37).astype(np.float32))
        r.write_zeros(3)
    assert r._buf is buf and r.end == 50 * 40


def test_ring_holds_rows_of_log_mel_frames():
    r = RingBuffer(6, (3,))
    frames = np.arange(30, dtype=np.float32).reshape(10, 3)
    r.write(frames[:4])
    r.write(frames[4:])
    np.testing.assert_array_equal(r.read(5, 5), frames[5:])


@pytest.fixture(scope="module")
def scorer():
    return SharedScorer(load_checkpoint(TINY))


def run_stream_state(scorer, wave, block):
    """Feed `wave` block by block through a StreamState with the runner's protocol; return its windows."""
    st = StreamState("x", scorer.cfg)
    cuts = []

    def tick():
        chunk = st.frontend_chunk()
        if chunk is not None:
            st.add_logmel(scorer.logmel([chunk])[0])
        cuts.extend(st.ready_windows())

    for i in range(0, len(wave), block):
        for piece, wall in st.pieces(wave[i:i + block]):
            st.push(piece, wall)
            tick()
    st.end_input()
    tick()
    assert st.drained
    return cuts


@pytest.mark.parametrize("block_s", [0.07, 1.0, 7.3, 20.0])
def test_stream_windows_are_cut_from_one_log_mel_of_the_whole_stream(scorer, block_s):
    """Each sample's log-mel is computed once; every window, the padded last one included, is exactly the
    whole recording's log-mel cut at its place — for any block size."""
    cfg = scorer.cfg
    sr = cfg.sample_rate
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(12.37 * sr))).astype(np.float32)
    cuts = run_stream_state(scorer, wave, int(block_s * sr))
    starts, valid = window_starts(len(wave), cfg.window_samples, sr)
    assert [c.start_sample for c in cuts] == starts and [c.valid for c in cuts] == valid
    whole = whole_logmel(scorer.model, wave, starts[-1] + cfg.window_samples).numpy()
    for c in cuts:
        f = c.start_sample // cfg.hop_length
        np.testing.assert_allclose(c.logmel, whole[f:f + len(c.logmel)], atol=1e-3)


def test_short_stream_gets_one_padded_window(scorer):
    cuts = run_stream_state(scorer, np.ones(1200, np.float32), 1200)
    assert [(c.start_sample, c.valid) for c in cuts] == [(0, 1200)]


def test_gaps_become_silence_and_keep_stream_time(scorer):
    st = StreamState("x", scorer.cfg)
    sr = scorer.cfg.sample_rate
    for piece, wall in st.pieces(np.ones(sr, np.float32), 0, 1000.0):
        st.push(piece, wall)
    pieces = st.pieces(np.ones(sr, np.float32), 3 * sr, 1003.0)   # two seconds lost upstream
    assert [len(p) for p, _ in pieces] == [2 * sr, sr] and not pieces[0][0].any()
    for piece, wall in pieces:
        st.push(piece, wall)
    assert st.audio_s == 4.0
    assert st.clock.at(3.5) == pytest.approx(1003.5)
    overlap = st.pieces(np.arange(sr, dtype=np.float32), 3 * sr + sr // 2)    # half of it is here already
    assert len(overlap) == 1 and overlap[0][0][0] == sr // 2


def test_wall_clock_follows_newest_anchor():
    clock = WallClock(10)
    clock.anchor(0, 1000.0)
    clock.anchor(100, 1010.5)           # the card's clock drifted 0.5 s
    assert clock.at(5.0) == pytest.approx(1005.0)
    assert clock.at(12.0) == pytest.approx(1012.5)
    clock.anchor(200, 5000.0)           # the system clock was set (NTP): times after it follow, before do not
    assert clock.at(15.0) == pytest.approx(1015.5) and clock.at(21.0) == pytest.approx(5001.0)
