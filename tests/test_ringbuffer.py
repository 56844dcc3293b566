import numpy as np
import pytest

from birdlive.streamer import RingBuffer, WindowScheduler


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


def test_scheduler_windows_are_exact_slices_for_any_block_size():
    sr, window, hop = 100, 500, 100
    x = np.random.default_rng(0).standard_normal(2345).astype(np.float32)
    for block in (1, 37, 100, 999, 5000):
        s = WindowScheduler(window, hop, sr)
        wins = []
        for i in range(0, len(x), block):
            wins += s.push(x[i:i + block])
        full = [w for w in wins]
        assert [w.start_sample for w in full] == list(range(0, len(x) - window + 1, hop))
        for w in full:
            np.testing.assert_array_equal(w.samples, x[w.start_sample:w.start_sample + window])
        tail = s.finish()
        assert len(tail) == 1 and tail[0].start_sample == full[-1].start_sample + hop
        assert tail[0].valid == len(x) - tail[0].start_sample
        assert not tail[0].samples[tail[0].valid:].any()


def test_scheduler_short_stream_gets_one_padded_window():
    s = WindowScheduler(500, 100, 100)
    assert s.push(np.ones(120, np.float32)) == []
    (w,) = s.finish()
    assert (w.start_sample, w.valid) == (0, 120)


def test_scheduler_fills_gaps_with_silence_and_keeps_stream_time():
    s = WindowScheduler(50, 10, 10)
    s.push(np.ones(20, np.float32), start_sample=0)
    wins = s.push(np.ones(20, np.float32), start_sample=40)  # 20 samples lost upstream
    assert s.end == 60 and [w.start_sample for w in wins] == [0, 10]
    np.testing.assert_array_equal(wins[0].samples[20:40], 0)


def test_scheduler_counts_windows_it_had_to_skip():
    s = WindowScheduler(50, 10, 10, capacity=60)
    s.ring.write(np.ones(200, np.float32))  # the consumer fell behind: the ring was overwritten
    wins = s._ready()
    assert s.skipped_windows == 14 and wins[0].start_sample == 140


def test_wall_clock_follows_newest_anchor():
    s = WindowScheduler(50, 10, 10)
    s.push(np.zeros(100, np.float32), wall_time=1000.0)
    s.push(np.zeros(100, np.float32), wall_time=1010.5)  # the card's clock drifted 0.5 s
    assert s.clock.at(5.0) == pytest.approx(1005.0)
    assert s.clock.at(12.0) == pytest.approx(1012.5)
