"""Pictures: a clip's spectrogram PNG and `--plot` (RecordingPlot: the recording's spectrogram, every event
boxed, the species' score tracks under it). What a picture looks like was checked by eye (examples in the
lead's notes); these tests hold what can be measured: valid PNGs of sensible size, written whole, the
streaming spectrogram and the time pooling exact for any chunking, boxes on the calls, the recording plot fed
by the real pipeline."""
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from birdlive.errors import OptionError
from birdlive.model import load_checkpoint
from birdlive.streamer import file_specs, make_runner
from birdlive.streamer.core.events import Event, EventAudio
from birdlive.streamer.sinks.pictures import (EventBoxes, RecordingPlot, StreamingSpectrogram, TimePool, above_floor,
                                        event_picture)

from tests.common import RECORDING, TINY, read_truth


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()                     # a truncated or corrupt PNG raises here
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10            # a picture, not a blank page
    return im.size


def test_time_pool_is_an_exact_max_pool_for_any_chunking():
    """Frames pushed in chunks of any size come out as the max over each run of `factor` frames (the last,
    partial run included), and never more than 2 × limit rows are kept."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5003, 3)).astype(np.float32)
    random_cuts = np.diff([0, *sorted(rng.integers(0, 5003, 40)), 5003])
    for chunks in ([5003], [1] * 300 + [4703], random_cuts):
        pool, pos = TimePool(limit=50), 0
        for n in chunks:
            pool.push(x[pos:pos + n])
            pos += n
        rows, f = pool.rows(), pool.factor
        assert f == 64 and len(rows) <= 100 and pool.frames == pos
        want = [x[i:min(i + f, pos)].max(axis=0) for i in range(0, pos, f)]
        np.testing.assert_array_equal(rows, want)


def test_streaming_spectrogram_is_the_same_in_any_blocks_and_in_time():
    """Blocks of any size give the same spectrogram, and a click at t lands in the column that spans t."""
    sr, t_click = 16000, 7.3
    x = np.random.default_rng(2).normal(0, 1e-3, 12 * sr).astype(np.float32)
    x[int(t_click * sr)] = 1.0
    specs = []
    for block in (len(x), 999, 16000):
        stft = StreamingSpectrogram(sr, 50, 8000, columns=200)
        for i in range(0, len(x), block):
            stft.push(x[i:i + block])
        specs.append(stft.finish())
    for s in specs[1:]:
        np.testing.assert_array_equal(s.power, specs[0].power)
    s = specs[0]
    assert 200 <= len(s.power) <= 400 and s.extent[1] == pytest.approx(12.0, abs=s.col_s)
    loudest = int(np.argmax(s.power.sum(axis=1)))
    assert loudest == s.column(t_click)


def test_a_box_covers_the_call_band():
    """The box of an event over a 3 kHz tone spans about the tone's frequency, not the whole band; over
    nothing, the whole band."""
    sr = 32000
    t = np.arange(20 * sr) / sr
    x = np.random.default_rng(3).normal(0, 1e-3, len(t)).astype(np.float32)
    on = (t >= 8) & (t < 9)
    x[on] += 0.1 * np.hanning(on.sum()) * np.sin(2 * np.pi * 3000 * t[on])      # a whistle, no click
    stft = StreamingSpectrogram(sr, 50, 14000, columns=1000)
    stft.push(x)
    spec = stft.finish()
    boxes = EventBoxes(None, above_floor(spec.power), spec, duration=20, width_in=12)
    tone = Event("x", "x", 8.0, 9.0, 0.9, 0.8)
    f0, f1 = boxes.call_band(tone)
    assert f0 < 3.0 < f1 and f1 - f0 < 1.5
    assert boxes.call_band(Event("x", "x", 14.0, 15.0, 0.9, 0.8)) == pytest.approx((0.0625, 14.0))


def test_event_picture_is_a_whole_png(tmp_path):
    """A 640×300 PNG beside the clip, written whole (no temporary file left); a 48 kHz clip, a clip cut at
    the stream's start (no pre-roll) and one without a wall clock all draw."""
    x, sr = sf.read(RECORDING, dtype="float32")
    for i, (onset, start, wall) in enumerate([(12.3, 10.8, None), (0.4, 0.0, 1.7e9)]):
        audio = EventAudio(x[int(start * sr):int((onset + 2.0) * sr)], sr, start)
        event = Event("upsweep", "upsweep", onset, onset + 0.45, 0.93, 0.8, source=str(RECORDING), wall_onset=wall)
        event_picture(audio, event, tmp_path / f"{i}.png", 50, 14000)
        assert png_size(tmp_path / f"{i}.png") == (640, 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png"]


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    """The project's recording through the pipeline with a RecordingPlot as sink and score sink."""
    net = load_checkpoint(TINY)
    cfg = net.cfg
    out = tmp_path_factory.mktemp("plot") / "night.png"
    plot = RecordingPlot(out, RECORDING, [cfg.display_name(i) for i in range(cfg.num_classes)], cfg.sample_rate,
                         cfg.fmin, cfg.fmax)
    runner = make_runner(net, [plot], score_sinks=[plot])
    (status,) = runner.run(file_specs([RECORDING], cfg.sample_rate))
    assert status.state == "done"
    plot.close()
    return plot, out, cfg


def test_recording_plot_gets_every_score_frame_and_event(plotted):
    """Every stitched score frame of the 40 s recording (10 a second, none missing, none twice) and every
    event reach the plot; every species with an event has a track, in order of its first event."""
    plot, _, cfg = plotted
    assert plot.scores.frames == round(40.0 / cfg.frame_s) and plot.frame_s == cfg.frame_s
    assert len(plot.events) == len(read_truth()) and all(k is not None for _, k in plot.events)
    tracks = plot._tracks()
    first = []
    for _, k in sorted(plot.events, key=lambda ek: ek[0].onset_s):
        first += [k] if k not in first else []
    assert tracks.species == first


def test_recording_plot_is_a_png_sized_to_the_recording(plotted):
    """A PNG an inch wide for every 3 s of the recording (13.3 inches at 100 dpi for 40 s), as tall as the
    spectrogram and its four tracks need."""
    _, out, _ = plotted
    assert png_size(out) == (1333, 360 + 4 * 45)
    assert [p.name for p in out.parent.iterdir()] == ["night.png"]


def test_long_recording_is_drawn_at_bounded_size(tmp_path):
    """11 minutes: the spectrogram and the scores are pooled to at most 2 × `columns` columns, the picture is
    4000 pixels wide, and it takes little memory whatever the length."""
    sr = 8000
    t = np.arange(11 * 60 * sr) / sr
    x = (0.05 * np.sin(2 * np.pi * 1500 * t) * ((t % 30) < 1)).astype(np.float32)
    rec = tmp_path / "long.flac"
    sf.write(rec, x, sr)
    plot = RecordingPlot(tmp_path / "long.png", rec, ["a", "b"], sr, 50, 4000)
    frames = np.zeros((len(t) // 800, 2), np.float32)          # 10 score frames a second
    frames[:, 0] = (t[::800][:len(frames)] % 30) < 1
    for i in range(0, len(frames), 50):
        plot.on_scores(str(rec), i, frames[i:i + 50], 0.1)
    for k in range(22):
        plot.on_event(Event("a", "a", 30.0 * k, 30.0 * k + 1, 0.9, 0.8, source=str(rec)), None)
    plot.close()
    assert len(plot.scores.rows()) <= 2 * plot.columns
    assert png_size(tmp_path / "long.png") == (4000, 360 + 2 * 45)   # track "a" and the strongest other, "b"


def test_plot_options_are_checked_before_the_run(tmp_path):
    with pytest.raises(OptionError, match=r"--plot .*\.jpg: .*PNG"):
        RecordingPlot(tmp_path / "x.jpg", RECORDING, ["a"], 32000)
    (tmp_path / "file").write_text("")
    with pytest.raises(OptionError, match="^--plot .*cannot write"):
        RecordingPlot(tmp_path / "file" / "x.png", RECORDING, ["a"], 32000)


def test_a_stream_that_never_opened_draws_nothing(tmp_path, capsys, cli_logging):
    """The recording could not be read: the stream's own error line says so; the plot adds nothing."""
    plot = RecordingPlot(tmp_path / "x.png", tmp_path / "missing.wav", ["a"], 32000)
    plot.close()
    assert not (tmp_path / "x.png").exists() and capsys.readouterr().err == ""
