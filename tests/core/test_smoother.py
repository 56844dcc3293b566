import numpy as np
import pytest

from birdlive.streamer import EventSmoother, ScoreStitcher, SmootherParams

FPS = 10


def track(n, spans, k=2, level=0.9, species=0):
    x = np.zeros((n, k), np.float32)
    for a, b in spans:
        x[int(a * FPS):int(b * FPS), species] = level
    return x


def run(x, params=None, chunk=None):
    sm = EventSmoother(["a", "b"], ["Aa", ""], 1 / FPS, params or SmootherParams())
    out = []
    for i in range(0, len(x), chunk or len(x)):
        out += sm.push(x[i:i + (chunk or len(x))])
    return out + sm.finish()


def test_onset_offset_at_frame_accuracy():
    (e,) = run(track(100, [(2.0, 3.5)]))
    assert (e.species, e.name, e.onset_s, e.offset_s) == ("a", "Aa", 2.0, 3.5)
    assert e.peak == pytest.approx(0.9) and e.mean == pytest.approx(0.9)


def test_any_chunking_gives_identical_events():
    rng = np.random.default_rng(1)
    x = np.clip(rng.random((400, 2)) * 0.4 + track(400, [(3, 6), (10, 10.4), (10.6, 14), (30, 31)]), 0, 1)
    ref = run(x)
    assert ref
    for chunk in (1, 3, 17, 64):
        assert run(x, chunk=chunk) == ref


def test_hysteresis_extends_back_to_off_threshold():
    x = np.zeros((60, 2), np.float32)
    x[10:20, 0] = 0.35  # above off, below on
    x[20:30, 0] = 0.8
    x[30:35, 0] = 0.35
    (e,) = run(x, SmootherParams(median_s=0.0))
    assert (e.onset_s, e.offset_s) == (1.0, 3.5)


def test_median_filter_removes_single_frame_flicker_and_min_duration_drops_blips():
    x = track(100, [(2.0, 2.1), (5.0, 5.2)])  # a one-frame flicker and a 0.2 s blip
    assert [e.onset_s for e in run(x, SmootherParams(median_s=0.3, min_duration_s=0.2))] == [5.0]
    assert run(x, SmootherParams(median_s=0.3, min_duration_s=0.3)) == []
    assert len(run(x, SmootherParams(median_s=0.0, min_duration_s=0.1))) == 2


def test_merge_gap_joins_close_calls_of_one_species():
    x = track(100, [(1.0, 2.0), (2.2, 3.0), (5.0, 6.0)])
    evs = run(x, SmootherParams(merge_gap_s=0.3, median_s=0.0))
    assert [(e.onset_s, e.offset_s) for e in evs] == [(1.0, 3.0), (5.0, 6.0)]
    evs = run(x, SmootherParams(merge_gap_s=0.1, median_s=0.0))
    assert len(evs) == 3


def test_long_chorus_reported_in_pieces_without_waiting_for_the_end():
    x = track(1000, [(0.0, 100.0)])
    sm = EventSmoother(["a", "b"], ["", ""], 1 / FPS, SmootherParams(max_event_s=30.0))
    early = sm.push(x[:700])  # 70 s in: two 30 s pieces must already be out
    assert [(e.onset_s, e.offset_s) for e in early] == [(0.0, 30.0), (30.0, 60.0)]
    rest = sm.push(x[700:]) + sm.finish()
    assert [(e.onset_s, e.offset_s) for e in rest] == [(60.0, 90.0), (90.0, 100.0)]


def test_event_is_emitted_soon_after_it_closes():
    x = track(300, [(2.0, 3.0)])
    sm = EventSmoother(["a", "b"], ["", ""], 1 / FPS, SmootherParams(merge_gap_s=0.3, median_s=0.3))
    got = sm.push(x[:36])  # offset 3.0 s + median half (0.1) + gap (0.3) → out by 3.5 s
    assert len(got) == 1


def test_stitcher_averages_overlaps_and_releases_in_order():
    st = ScoreStitcher(1, hop_frames=2)
    first, out = st.add(0, np.full((4, 1), 1.0))
    assert first == 0 and out[:, 0].tolist() == [1.0, 1.0]
    first, out = st.add(2, np.full((4, 1), 3.0))
    assert first == 2 and out[:, 0].tolist() == [2.0, 2.0]
    first, out = st.add(4, np.full((4, 1), 5.0), valid_frames=3)  # last window: 3 real frames
    assert out[:, 0].tolist() == [4.0, 4.0]
    first, out = st.finish()
    assert first == 6 and out[:, 0].tolist() == [5.0]
    with pytest.raises(ValueError):
        st.add(0, np.zeros((4, 1)))
