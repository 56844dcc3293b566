"""ClipWriter (--clips): each event's audio as a FLAC clip beside a spectrogram PNG, under a disk cap, never half
written, never in the way of detection. Real files throughout: the project's recording resampled to 48 kHz and
run through the tiny model, clips read back with soundfile, a writer killed with SIGKILL mid-clip, a disk made
full with RLIMIT_FSIZE."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from PIL import Image

from birdlive.errors import OptionError
from birdlive.model import load_checkpoint
from birdlive.streamer import CsvEventLog, file_specs, make_runner
from birdlive.streamer.sinks.clips import ClipWriter, clip_stem, parse_clip
from birdlive.streamer.core.events import Event, EventAudio
from birdlive.streamer.core.settings import DetectorSettings

from tests.common import RECORDING, TINY, Collect, read_events_csv

RATE = 48000          # above the model's 32 kHz: clips keep the source's own rate
PRE_ROLL = 1.5


@pytest.fixture(scope="module")
def wav48(tmp_path_factory) -> Path:
    x, sr = sf.read(RECORDING, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "calls48k.wav"
    sf.write(path, soxr.resample(x, sr, RATE), RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def run48(wav48, tmp_path_factory):
    """The 48 kHz recording through the whole pipeline with a ClipWriter and a CSV log."""
    folder = tmp_path_factory.mktemp("run") / "clips"
    csv = folder.parent / "events.csv"
    net = load_checkpoint(TINY)
    log = CsvEventLog(csv)
    writer = ClipWriter(folder, pictures=True, fmin=net.cfg.fmin, fmax=net.cfg.fmax)
    seen = Collect()
    runner = make_runner(net, [log, seen], DetectorSettings(pre_roll_s=PRE_ROLL, post_roll_s=PRE_ROLL),
                         annotators=[writer])
    (status,) = runner.run(file_specs([wav48], net.cfg.sample_rate))
    log.close()
    writer.close()
    assert status.state == "done" and len(seen.events) >= 10
    return folder, csv, seen.events, net.cfg.frame_s


def find_in(source: np.ndarray, clip: np.ndarray, near: int, search: int) -> int:
    """Where `clip` starts in `source`, searched within `search` samples of `near`: the offset whose samples
    match best (the clip is a copy of the source, so the best match is exact)."""
    lo, head = max(0, near - search), clip[:64]
    windows = np.lib.stride_tricks.sliding_window_view(source[lo:near + search + len(head)], len(head))
    return lo + int(np.argmin(np.abs(windows - head).sum(axis=1)))


def test_clip_holds_the_event_audio_at_the_source_rate(run48, wav48):
    """Each clip is 16-bit FLAC at the file's 48 kHz and a sample-exact copy of the source around the event: it
    starts pre-roll seconds before the onset (less at the stream's start) and ends post-roll after the offset,
    each within one score frame. The start is found by searching the source for the clip, not by trusting
    EventAudio."""
    folder, _, events, frame_s = run48
    source, _ = sf.read(wav48, dtype="float32")
    for e in events:
        clip, rate = sf.read(e.clip, dtype="float32")
        assert rate == RATE and sf.info(e.clip).subtype == "PCM_16"
        guess = int(round(max(0.0, e.onset_s - PRE_ROLL) * RATE))
        start = find_in(source, clip, guess, RATE)        # anywhere within a second of where it should be
        np.testing.assert_allclose(clip, source[start:start + len(clip)], atol=1 / 32768)
        assert e.onset_s - start / RATE == pytest.approx(min(PRE_ROLL, e.onset_s), abs=frame_s)
        end_s = (start + len(clip)) / RATE
        assert end_s == pytest.approx(min(e.offset_s + PRE_ROLL, len(source) / RATE), abs=frame_s)


def test_every_event_names_its_clip_and_picture(run48):
    """The CSV row (a sink after the annotator) names the clip; the clip's name says recording, stream second,
    species and confidence; a PNG spectrogram lies beside it; nothing else is in the folder."""
    folder, csv, events, _ = run48
    rows = read_events_csv(csv)
    assert [r["clip"] for r in rows] == [e.clip for e in events]
    for e in events:
        path = Path(e.clip)
        assert path.parent == folder and path.name == f"calls48k_t{e.onset_s:08.1f}s_{e.species}_{e.peak:.2f}.flac"
        with Image.open(path.with_suffix(".png")) as im:
            assert im.format == "PNG" and im.size == (640, 300)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([Path(e.clip).name for e in events] + [Path(e.clip).with_suffix(".png").name
                                                                  for e in events])


def synthetic(onset_s: float, species="upsweep", peak=0.87, wall=None, seconds=4.0, rate=RATE, seed=0):
    """An event and its audio: noise with a click at the onset, pre-roll 1.5 s (less near the start)."""
    start = max(0.0, onset_s - PRE_ROLL)
    x = np.random.default_rng(seed).normal(0, 0.01, int(seconds * rate)).astype(np.float32)
    x[int(round((onset_s - start) * rate))] = 0.9
    event = Event(species, species, onset_s, onset_s + 0.5, peak, peak - 0.1, source="/data/dawn chorus.wav",
                  wall_onset=wall, wall_offset=None if wall is None else wall + 0.5)
    return event, EventAudio(x, rate, start)


def test_clip_is_the_audio_as_given(tmp_path):
    """Direct: the click at the onset is where EventAudio put it, the rate is kept, the event comes back with
    only `clip` set, and a sample beyond full scale is clipped, not wrapped around."""
    writer = ClipWriter(tmp_path / "clips", pictures=False)
    event, audio = synthetic(10.0)
    audio.samples[100] = 1.7
    out = writer.annotate(event, audio)
    assert out == Event(**{**event.__dict__, "clip": out.clip})
    y, rate = sf.read(out.clip, dtype="float32")
    assert rate == RATE and len(y) == len(audio.samples)
    assert int(np.argmax(y[1000:])) + 1000 == int(round(PRE_ROLL * RATE))
    assert y[100] == pytest.approx(1.0, abs=1e-4)


def test_names_sort_by_time_and_never_collide(tmp_path):
    """Live input: local date and time. Replay: recording stem and zero-padded stream second. The same name
    twice gets -2, -3; every name parses back to species and confidence."""
    wall = datetime(2024, 5, 1, 5, 30, 12).timestamp()
    assert clip_stem(synthetic(3.0, "eurrob1", 0.8712, wall)[0]) == "20240501_053012_eurrob1_0.87"
    assert clip_stem(synthetic(3.0, "Turdus merula", 1.0)[0]) == "dawn-chorus_t000003.0s_Turdus-merula_1.00"
    writer = ClipWriter(tmp_path, pictures=False)
    paths = [Path(writer.annotate(*synthetic(3.0, "eurrob1", 0.87, wall)).clip) for _ in range(3)]
    assert [p.name for p in paths] == ["20240501_053012_eurrob1_0.87.flac", "20240501_053012_eurrob1_0.87-2.flac",
                                       "20240501_053012_eurrob1_0.87-3.flac"]
    clip = parse_clip(paths[2])
    assert (clip.species, clip.conf, clip.time) == ("eurrob1", 0.87, wall)
    assert parse_clip(tmp_path / "holiday.flac") is None


def fill(writer: ClipWriter, plan) -> dict[str, Path]:
    """Clips of identical audio (so of identical size) at the planned wall times, species and confidences."""
    base = datetime(2024, 5, 1, 5, 0, 0).timestamp()
    out = {}
    for key, (minute, species, conf) in plan.items():
        event, audio = synthetic(3.0, species, conf, wall=base + 60 * minute, seconds=2.0)
        out[key] = Path(writer.annotate(event, audio).clip)
    return out


def test_cap_deletes_the_oldest_and_keeps_the_best_of_each_species(tmp_path, capsys, cli_logging):
    """Over the cap, the oldest clip goes first; the best `keep_best` of each species stay whatever their
    age. Files the writer did not name are neither counted nor touched. A restart rebuilds the index from
    the names: a lower cap trims at start, and says once that the best clips alone are over it."""
    probe = ClipWriter(tmp_path / "probe", pictures=False)
    size = Path(probe.annotate(*synthetic(3.0, seconds=2.0)).clip).stat().st_size
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "my notes.txt").write_bytes(b"x" * 100_000)
    (folder / "reference.flac").write_bytes(b"y" * 100_000)
    writer = ClipWriter(folder, max_gb=5.5 * size / 1e9, keep_best=2, pictures=False)
    paths = fill(writer, {"a0": (0, "A", 0.90), "b1": (1, "B", 0.70), "a2": (2, "A", 0.50), "a3": (3, "A", 0.60),
                          "a4": (4, "A", 0.95), "a5": (5, "A", 0.55), "b6": (6, "B", 0.80)})
    assert {p.stat().st_size for p in paths.values() if p.exists()} == {size}
    # after a5 (6 clips): a2 goes, the oldest that is not among A's best two (a4, a0) nor B's; after b6: a3
    assert sorted(k for k, p in paths.items() if p.exists()) == ["a0", "a4", "a5", "b1", "b6"]
    assert writer.total_bytes == 5 * size
    assert (folder / "my notes.txt").exists() and (folder / "reference.flac").exists()

    paths["a0"].with_suffix(".png").write_bytes(b"z" * 10)       # a picture goes with its clip
    ClipWriter(folder, max_gb=2.5 * size / 1e9, keep_best=1, pictures=False)
    # keep_best=1: A keeps a4, B keeps b6; a0, b1 and a5 go, oldest first, until 2 clips are left
    assert sorted(k for k, p in paths.items() if p.exists()) == ["a4", "b6"]
    assert not paths["a0"].with_suffix(".png").exists()
    assert capsys.readouterr().err == ""
    restarted = ClipWriter(folder, max_gb=1.5 * size / 1e9, keep_best=1, pictures=False)
    assert sorted(k for k, p in paths.items() if p.exists()) == ["a4", "b6"] and len(restarted.index) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --clips:") and "over its cap" in err[0]


def test_a_cap_below_one_clip_keeps_the_newest(tmp_path, capsys, cli_logging):
    """With nothing protected and a cap smaller than a clip, each new clip replaces the last: the event just
    written always has its clip, and the cap is reported once."""
    writer = ClipWriter(tmp_path, max_gb=1e-9, keep_best=0, pictures=False)
    clips = [writer.annotate(*synthetic(3.0 + i, seconds=2.0)).clip for i in range(3)]
    assert [p.name for p in tmp_path.glob("*.flac")] == [Path(clips[-1]).name]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "over its cap" in err[0]


CRASH_CHILD = """
import sys, numpy as np
from pathlib import Path
from birdlive.streamer.sinks.clips import ClipWriter
from birdlive.streamer.core.events import Event, EventAudio
writer = ClipWriter(Path(sys.argv[1]), pictures=False)
noise = np.random.default_rng(0).uniform(-0.5, 0.5, 60 * 48000).astype(np.float32)   # FLAC cannot shrink noise
for i in range(10_000):
    writer.annotate(Event("noise", "noise", 2.0 + i, 2.5 + i, 0.9, 0.8, source="big.wav"),
                    EventAudio(noise, 48000, 0.5 + i))
"""


def test_a_crash_mid_write_leaves_no_half_clip(tmp_path):
    """A writer killed with SIGKILL while a large clip is being written: every .flac in the folder decodes in
    full, and the temporary file of the clip it was writing is removed by the next start."""
    folder = tmp_path / "clips"
    child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(folder)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            names = os.listdir(folder) if folder.exists() else []
            if any(n.endswith(".flac") for n in names) and any(n.endswith(".tmp") for n in names):
                break                       # one clip done, the next one half-written: now
            time.sleep(0.002)
        else:
            pytest.fail(f"the writer never got to a second clip: {child.stderr.read().decode()[-2000:]}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    clips = sorted(folder.glob("*.flac"))
    assert clips
    for clip in clips:
        assert len(sf.read(clip, dtype="float32")[0]) == 60 * 48000
    (folder / ".20240501_050000_x_0.50.flac.tmp").write_bytes(b"half a clip")   # certainly one stale file
    ClipWriter(folder, pictures=False)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert sorted(folder.glob("*.flac")) == clips


FULL_DISK_CHILD = """
import json, resource, signal, sys, numpy as np
from pathlib import Path
from birdlive.streamer.sinks.clips import ClipWriter
from birdlive.streamer.core.events import Event, EventAudio
from birdlive.log import to_stderr
to_stderr()                                             # warnings as the command prints them
writer = ClipWriter(Path(sys.argv[1]), pictures=False)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit fails with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
noise = np.random.default_rng(0).uniform(-0.5, 0.5, 10 * 48000).astype(np.float32)
clips = []
for i, n in enumerate([4800, len(noise), len(noise), 4800]):   # fits, fails, fails, fits again
    e = writer.annotate(Event("x", "x", 2.0 + i, 2.5, 0.9, 0.8, source="a.wav"), EventAudio(noise[:n], 48000, 0.5))
    clips.append(e.clip)
print(json.dumps({"clips": clips, "failures": writer.failures, "matplotlib": "matplotlib" in sys.modules}))
"""


def test_a_full_disk_is_one_warning_and_events_go_on(tmp_path):
    """Clips that cannot be written (the file-size limit stands in for a full disk): the event comes back
    without a clip, one warning line says why, no half file is left, and clips are written again once there
    is room."""
    folder = tmp_path / "clips"
    out = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [c is not None for c in result["clips"]] == [True, False, False, True] and result["failures"] == 2
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--clips: cannot write clips to" in warnings[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(c).name for c in result["clips"] if c)
    assert not result["matplotlib"]     # imported to draw the first picture, not with birdlive.streamer.sinks.clips


def test_unwritable_folder_and_bad_cap_are_option_errors(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(OptionError, match=r"^--clips .*a_file/clips: cannot write to .*\(Not a directory\)$"):
        ClipWriter(tmp_path / "a_file" / "clips")
    with pytest.raises(OptionError, match="--clips-max-gb"):
        ClipWriter(tmp_path / "clips", max_gb=0)
    if os.geteuid() != 0:                         # root writes anywhere: the mode bits only stop other users
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(OptionError, match="Permission denied"):
            ClipWriter(tmp_path / "ro")
