"""The whole data path on the project's own recording and tiny checkpoint (see tests/fixtures/make_fixture.py):
the streaming runner against the independent offline reference, several streams at once, and streams that fail."""
import threading

import numpy as np
import pytest
import soundfile as sf
import soxr

from birdlive.model import load_checkpoint
from birdlive.streamer import CsvEventLog, Runner, SharedScorer, SourceSpec, StreamState, detect_offline
from birdlive.audio import FileSource

from tests.common import RECORDING, TINY, Collect, NativeCollect, match_events, read_events_csv, read_truth


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(TINY)


@pytest.fixture(scope="module")
def wave(model):
    x, sr = sf.read(RECORDING, dtype="float32")
    return soxr.resample(x, sr, model.cfg.sample_rate, quality="HQ").astype(np.float32)


@pytest.fixture(scope="module")
def offline_events(model, wave):
    return detect_offline(model, wave, source=str(RECORDING))


def as_tuples(events):
    return [(e.species, e.onset_s, e.offset_s) for e in events]


def run(model, specs, sinks, max_open=1, stop=None):
    runner = Runner(SharedScorer(model), sinks, lambda name: StreamState(name, model.cfg), stop=stop,
                    max_open=max_open)
    return runner.run(specs)


def file_spec(path, model, block_s=1.0, label=None):
    return SourceSpec(label or str(path), lambda: FileSource(path, model.cfg.sample_rate, block_s=block_s))


def test_offline_reference_finds_the_known_calls(offline_events):
    """Every call found, onsets and offsets within 0.3 s, and nothing in the call-free stretches."""
    truth = read_truth()
    pairs, missed, spurious = match_events(truth, as_tuples(offline_events), tol=0.3)
    assert not missed, f"missed calls: {missed}"
    assert not spurious, f"events where there is no call: {spurious}"
    assert len(pairs) == len(truth)


@pytest.mark.parametrize("block_s", [0.1, 1.0, 7.3])
def test_streaming_equals_offline_reference(model, offline_events, block_s):
    """The file read block by block through sources, runner, per-stream state and the shared scorer gives the
    events of the offline reference (whole log-mel at once, numpy overlap average): same species, onsets and
    offsets within one frame, peaks within 0.01."""
    got = Collect()
    (status,) = run(model, [file_spec(RECORDING, model, block_s)], [got])
    assert status.state == "done" and status.audio_s == pytest.approx(sf.info(RECORDING).duration, abs=0.01)
    assert [e.species for e in got.events] == [e.species for e in offline_events]
    frame = model.cfg.frame_s
    for a, b in zip(got.events, offline_events):
        assert abs(a.onset_s - b.onset_s) <= frame + 1e-6 and abs(a.offset_s - b.offset_s) <= frame + 1e-6
        assert a.peak == pytest.approx(b.peak, abs=0.01)
    assert got.statuses[-1].state == "done" and got.statuses[-1].events == len(offline_events)


def test_each_event_comes_with_its_audio(model, wave):
    """A sink gets the event's own samples with 1.5 s of pre- and post-roll."""
    got = Collect()
    run(model, [file_spec(RECORDING, model)], [got])
    sr = model.cfg.sample_rate
    for e, a in zip(got.events, got.audio):
        assert a.sample_rate == sr
        assert a.start_s == pytest.approx(max(0.0, e.onset_s - 1.5), abs=1 / sr)
        assert a.end_s == pytest.approx(min(len(wave) / sr, e.offset_s + 1.5), abs=1 / sr)
        i = int(round(a.start_s * sr))
        np.testing.assert_allclose(a.samples, wave[i:i + len(a.samples)], atol=1e-4)


@pytest.mark.parametrize("rate", [48000, 22050])
def test_event_audio_is_at_the_sources_own_rate_when_that_is_higher(model, tmp_path, rate):
    """For an output that asks for it, a 48 kHz recording's events come with 48 kHz audio, sample for sample the
    file's (clips keep the top octave the model never hears); a 22.05 kHz one's at the model's rate. Same events
    either way."""
    x, sr = sf.read(RECORDING, dtype="float32")
    y = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32)
    path = tmp_path / f"rec{rate}.flac"
    sf.write(path, y, rate, subtype="PCM_24")
    y = sf.read(path, dtype="float32")[0]
    got = NativeCollect()       # an output that wants the source's own rate, as clips do
    run(model, [file_spec(path, model, block_s=16.0)], [got])
    assert [e.species for e in got.events] == [e.species for e in detect_offline(model, soxr.resample(
        y, rate, model.cfg.sample_rate, quality="HQ").astype(np.float32))]
    want_rate = max(rate, model.cfg.sample_rate)
    for e, a in zip(got.events, got.audio):
        assert a.sample_rate == want_rate
        assert a.start_s == pytest.approx(max(0.0, e.onset_s - 1.5), abs=1 / want_rate)
        if rate == want_rate:
            i = int(round(a.start_s * rate))
            np.testing.assert_array_equal(a.samples, y[i:i + len(a.samples)])


class Clipper:
    """An annotator: names each event's 'clip' after its audio, as ClipWriter does with a real path."""

    def annotate(self, e, audio):
        import dataclasses
        return dataclasses.replace(e, clip=f"{e.species}@{audio.start_s:.2f}")

    def close(self):
        pass


class Tracks:
    def __init__(self):
        self.parts = []

    def on_scores(self, source, first, frames, frame_s):
        self.parts.append((first, frames))

    def close(self):
        pass


def test_annotators_run_before_sinks_and_score_sinks_get_the_whole_track(model, wave):
    """Every sink gets the annotated event; the score frames come contiguous, cover the recording, and are the
    offline reference's stitched track."""
    from birdlive.streamer import framewise_track
    got, tracks = Collect(), Tracks()
    runner = Runner(SharedScorer(model), [got], lambda name: StreamState(name, model.cfg),
                    annotators=[Clipper()], score_sinks=[tracks])
    runner.run([file_spec(RECORDING, model, block_s=3.0)])
    assert got.events and all(e.clip == f"{e.species}@{a.start_s:.2f}" for e, a in zip(got.events, got.audio))
    firsts = [f for f, _ in tracks.parts]
    assert firsts[0] == 0 and all(a + len(fr) == b for (a, fr), b in zip(tracks.parts, firsts[1:]))
    track = np.concatenate([fr for _, fr in tracks.parts])
    ref = framewise_track(model, wave)
    assert track.shape == ref.shape
    np.testing.assert_allclose(track, ref, atol=0.01)


def test_three_streams_at_once_give_each_the_events_it_gives_alone(model, tmp_path):
    """Three recordings share one scorer (their windows are batched together) and keep their own events."""
    x, rate = sf.read(RECORDING, dtype="float32")
    paths = []
    for k, (a, b) in enumerate([(0, 40), (10, 35), (3, 28)]):        # three different stretches
        p = tmp_path / f"part{k}.flac"
        sf.write(p, x[a * rate:b * rate], rate)
        paths.append(p)
    alone = {}
    for p in paths:
        got = Collect()
        run(model, [file_spec(p, model)], [got])
        alone[str(p)] = as_tuples(got.events)
        assert alone[str(p)], p
    together = Collect()
    specs = [file_spec(p, model, block_s=bs) for p, bs in zip(paths, (0.1, 1.0, 3.3))]
    statuses = run(model, specs, [together], max_open=3)
    assert sorted(s.source for s in statuses) == sorted(alone)
    for p in paths:
        mine = as_tuples([e for e in together.events if e.source == str(p)])
        assert [e[0] for e in mine] == [e[0] for e in alone[str(p)]]
        for a, b in zip(mine, alone[str(p)]):
            assert abs(a[1] - b[1]) <= model.cfg.frame_s + 1e-6 and abs(a[2] - b[2]) <= model.cfg.frame_s + 1e-6


def nan_recording(tmp_path, at_s):
    """The test recording with one NaN sample at `at_s`: a source that raises there, mid-stream."""
    x, rate = sf.read(RECORDING, dtype="float32")
    x = x.copy()
    x[int(at_s * rate)] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, rate, subtype="FLOAT")
    return p


def test_a_source_that_raises_mid_stream_loses_no_event(model, tmp_path, offline_events):
    """The source fails at 12.6 s, in the middle of the upsweep at 12.3–12.8 s: every event before it and the
    open one are in the CSV, the stream is reported failed in one line, and the stream beside it goes on."""
    bad = nan_recording(tmp_path, 12.6)
    log = tmp_path / "events.csv"
    got = Collect()
    csv = CsvEventLog(log).open()
    statuses = run(model, [file_spec(bad, model, block_s=16.0), file_spec(RECORDING, model)], [csv, got],
                   max_open=2)
    csv.close()
    by_source = {s.source: s for s in statuses}
    assert by_source[str(bad)].state == "failed" and "NaN/Inf" in by_source[str(bad)].error
    assert "\n" not in by_source[str(bad)].error
    assert by_source[str(RECORDING)].state == "done"
    rows = [r for r in read_events_csv(log) if r["source"] == str(bad)]
    before = [e for e in offline_events if e.onset_s < 12.3]
    assert [r["species"] for r in rows[:len(before)]] == [e.species for e in before]
    open_one = rows[len(before):]
    assert [r["species"] for r in open_one] == ["upsweep"]
    assert float(open_one[0]["onset_s"]) == pytest.approx(12.3, abs=0.3)
    good = [e for e in got.events if e.source == str(RECORDING)]
    assert as_tuples(good) == as_tuples(offline_events)


class StopAt(Collect):
    """A sink that sets `stop`, as Ctrl-C does, once its stream has been fed `at_s` seconds of audio. Statuses come
    from the consumer's own thread, so where the stop falls is a fact of the audio, not of the machine's speed."""

    def __init__(self, stop, at_s):
        super().__init__()
        self.stop, self.at_s = stop, at_s

    def on_status(self, s):
        super().on_status(s)
        if s.audio_s >= self.at_s:
            self.stop.set()


def test_stop_flushes_open_events_and_ends_promptly(model, wave, offline_events):
    """Stop in the middle of the trill at 4.2–4.69 s: the runner returns with the events of the audio it was fed,
    the open trill included (cut where the audio ends), and its source reads at most three blocks past the stop
    (one queued, one waiting for its place in the read-ahead, one read before the source thread sees the stop).

    No clock: the stop comes from a sink at a given point of the audio, and with a read-ahead of one block and a
    status every tick the consumer is fed one block per tick, so the audio fed is exactly the block that reached
    the stop point and the run is the same on a loaded machine as on an idle one."""
    block_s, stop_at_s = 0.25, 4.5
    stop = threading.Event()
    got = StopAt(stop, stop_at_s)
    sources = []

    def open_source():
        sources.append(FileSource(RECORDING, model.cfg.sample_rate, block_s=block_s))
        return sources[0]

    runner = Runner(SharedScorer(model), [got], lambda name: StreamState(name, model.cfg), stop=stop,
                    status_every_s=0.0, read_ahead_s=block_s)
    (status,) = runner.run([SourceSpec(str(RECORDING), open_source)])
    assert status.state == "done" and got.statuses[-1].state == "done"
    assert status.audio_s == pytest.approx(stop_at_s, abs=1e-6)
    # Ended promptly: the source was stopped, not read to its end (40 s).
    read_s = sources[0].stats["samples"] / model.cfg.sample_rate
    assert stop_at_s <= read_s <= stop_at_s + 3 * block_s + 1e-6
    # Flushed: exactly the events of the fed audio alone, the trill still open at the stop among them.
    fed = detect_offline(model, wave[:int(round(stop_at_s * model.cfg.sample_rate))], source=str(RECORDING))
    assert [e.species for e in got.events] == [e.species for e in fed] == ["upsweep", "trill"]
    frame = model.cfg.frame_s
    for a, b in zip(got.events, fed):
        assert abs(a.onset_s - b.onset_s) <= frame + 1e-6 and abs(a.offset_s - b.offset_s) <= frame + 1e-6
    trill_whole = next(e for e in offline_events if e.species == "trill")
    assert got.events[-1].offset_s <= stop_at_s < trill_whole.offset_s
