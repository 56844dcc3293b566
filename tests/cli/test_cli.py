"""The `birdlive` command as a user runs it: CSV log, restarts, signals, kill -9, and bad input."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from birdlive.streamer import CSV_COLUMNS
from birdlive.train.synthetic import make_scene

from tests.common import BIRDLIVE, RECORDING, TINY, birdlive, match_events, read_events_csv, read_truth


def test_replay_writes_csv_and_restart_appends_without_second_header(tmp_path):
    log = tmp_path / "night.csv"
    r = birdlive("replay", RECORDING, "--model", TINY, "--csv", log, "--no-live")
    assert r.returncode == 0, r.stderr
    rows = read_events_csv(log)
    assert list(rows[0]) == CSV_COLUMNS
    truth = read_truth()
    pairs, missed, spurious = match_events(truth, [(x["species"], float(x["onset_s"]), float(x["offset_s"]))
                                                   for x in rows])
    assert not missed and not spurious
    # one printed line per event
    assert len([ln for ln in r.stdout.splitlines() if "peak" in ln]) == len(rows)
    r = birdlive("replay", RECORDING, "--model", TINY, "--csv", log, "--no-live")
    assert r.returncode == 0
    text = log.read_text().splitlines()
    assert text.count(",".join(CSV_COLUMNS)) == 1 and len(text) == 1 + 2 * len(rows)


def test_species_filters_and_min_conf(tmp_path):
    log = tmp_path / "f.csv"
    birdlive("replay", RECORDING, "--model", TINY, "--csv", log, "--no-live", "--include", "trill")
    assert {r["species"] for r in read_events_csv(log)} == {"trill"}
    log.unlink()
    birdlive("replay", RECORDING, "--model", TINY, "--csv", log, "--no-live", "--exclude", "trill",
             "--exclude", "upsweep")
    assert {r["species"] for r in read_events_csv(log)} == {"downsweep", "two_tone"}
    log.unlink()
    birdlive("replay", RECORDING, "--model", TINY, "--csv", log, "--no-live", "--min-conf", "1.01")
    assert read_events_csv(log) == []


def test_daily_rotation_names_file_by_date(tmp_path):
    r = birdlive("replay", RECORDING, "--model", TINY, "--csv", tmp_path / "night.csv", "--rotate", "daily",
                 "--no-live")
    assert r.returncode == 0
    (f,) = tmp_path.glob("night-*.csv")
    assert f.name == f"night-{time.strftime('%Y-%m-%d')}.csv" and read_events_csv(f)


def _start_realtime(tmp_path, log):
    # real-time pace so that the process is mid-stream when the signal arrives
    return subprocess.Popen([*BIRDLIVE, "replay", str(RECORDING), "--model", str(TINY), "--csv", str(log),
                             "--no-live", "--realtime"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_events(proc, n, timeout=60):
    lines, t0 = [], time.time()
    while len(lines) < n and time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        if "peak" in line:
            lines.append(line)
    return lines


def test_kill_9_keeps_every_event_already_printed(tmp_path):
    log = tmp_path / "k.csv"
    proc = _start_realtime(tmp_path, log)
    printed = _wait_for_events(proc, 2)
    proc.kill()  # SIGKILL: no handler, no flush
    proc.wait(10)
    assert len(printed) == 2
    rows = read_events_csv(log)
    assert len(rows) >= len(printed)
    for line, row in zip(printed, rows):
        assert row["species"] in line and f"{float(row['onset_s']):.2f}" in line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_flush_and_exit_0(tmp_path, sig):
    log = tmp_path / "s.csv"
    proc = _start_realtime(tmp_path, log)
    printed = _wait_for_events(proc, 1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    rows = read_events_csv(log)
    assert len(rows) == len(printed) + len([ln for ln in out.splitlines() if "peak" in ln])
    assert 0 < float(rows[-1]["onset_s"]) < 25  # stopped mid-file, did not run to the end


def _one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:")
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


def bad_files(tmp_path):
    sr = 32000
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), sr)
    good = tmp_path / "good.wav"
    sf.write(good, np.random.default_rng(0).standard_normal(sr * 3).astype(np.float32) * 0.1, sr)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    nan = tmp_path / "nan.wav"
    x = np.zeros(sr * 8, np.float32)
    x[sr * 6] = np.nan
    sf.write(nan, x, sr, subtype="FLOAT")
    inf = tmp_path / "inf.wav"
    x[sr * 6] = np.inf
    sf.write(inf, x, sr, subtype="FLOAT")
    promised = tmp_path / "promised.wav"     # a header that promises 3 s, then one sample: nothing to analyse
    header_end = good.read_bytes().index(b"data") + 8
    promised.write_bytes(good.read_bytes()[:header_end + 4])
    eight = tmp_path / "eight.wav"
    sf.write(eight, np.zeros((sr, 8), np.float32), sr)
    return {"missing": (tmp_path / "nope.wav", "not found"), "empty": (empty, "empty"),
            "truncated": (truncated, "truncated.wav"), "text": (text, "notes.wav"), "nan": (nan, "nan"),
            "inf": (inf, "inf"), "eight": (eight, "8 channels"), "promised": (promised, "nothing to analyse")}


def test_bad_input_files_give_one_clear_line(tmp_path):
    for path, needle in bad_files(tmp_path).values():
        r = birdlive("replay", path, "--model", TINY, "--no-live")
        _one_line_error(r, str(path.name), needle)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk"
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    _one_line_error(birdlive("replay", RECORDING, "--model", junk), "junk.json")
    _one_line_error(birdlive("replay", RECORDING, "--model", RECORDING), "not a birdlive checkpoint")
    (tmp_path / "junk.json").write_text(TINY.with_suffix(".json").read_text())
    _one_line_error(birdlive("replay", RECORDING, "--model", junk), "safetensors")


@pytest.mark.parametrize("rate", [8000, 192000])
def test_low_and_high_sample_rates_work(tmp_path, rate):
    """8 kHz and 192 kHz recordings are resampled and give the calls they hold (up to the Nyquist limit)."""
    # at 8 kHz only what lies below 4 kHz survives: the two-tone whistle (2.6 and 3.9 kHz)
    calls = [("two_tone", 2.0), ("two_tone", 9.0)] if rate == 8000 else [("upsweep", 2.0), ("trill", 9.0)]
    wave, truth = make_scene(14.0, rate, calls, snr_db=12, rng=np.random.default_rng(3))
    path = tmp_path / f"r{rate}.wav"
    sf.write(path, wave, rate)
    log = tmp_path / "r.csv"
    r = birdlive("replay", path, "--model", TINY, "--csv", log, "--no-live")
    assert r.returncode == 0, r.stderr
    got = [(x["species"], float(x["onset_s"]), float(x["offset_s"])) for x in read_events_csv(log)]
    _, missed, spurious = match_events(truth, got, tol=0.35)
    assert not missed and not spurious, (got, truth)


def test_python_m_birdlive_and_help():
    r = subprocess.run([sys.executable, "-m", "birdlive", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "replay" in r.stdout and "listen" in r.stdout and "devices" in r.stdout


@pytest.mark.parametrize("device", ["99", "no-such-microphone"])
def test_unknown_input_device(device):
    r = birdlive("listen", "--device", device, "--model", TINY, "--no-live")
    _one_line_error(r)
    assert device in r.stderr or "PortAudio library not found" in r.stderr


PATCHED_PORTAUDIO = """
import ctypes.util, sys
real = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if "portaudio" in name else real(name)
sys.argv = ["birdlive", *sys.argv[1:]]
from birdlive.cli import main
main()
"""


@pytest.mark.parametrize("args", [["devices"], ["listen", "--model", str(TINY)]])
def test_portaudio_missing_is_one_line_and_replay_still_works(args, tmp_path):
    r = subprocess.run([sys.executable, "-c", PATCHED_PORTAUDIO, *args], capture_output=True, text=True)
    _one_line_error(r, "PortAudio library not found", "libportaudio2")
    r = subprocess.run([sys.executable, "-c", PATCHED_PORTAUDIO, "replay", str(RECORDING), "--model", str(TINY),
                        "--no-live"], capture_output=True, text=True)
    assert r.returncode == 0 and "peak" in r.stdout


def test_multichannel_file_with_channel_option(tmp_path):
    wave, truth = make_scene(8.0, 32000, [("upsweep", 2.0)], snr_db=12, rng=np.random.default_rng(5))
    x = np.zeros((len(wave), 8), np.float32)
    x[:, 5] = wave
    path = tmp_path / "array.wav"
    sf.write(path, x, 32000)
    log = tmp_path / "c.csv"
    r = birdlive("replay", path, "--model", TINY, "--channel", "5", "--csv", log, "--no-live")
    assert r.returncode == 0, r.stderr
    assert [x["species"] for x in read_events_csv(log)] == ["upsweep"]


def test_replay_of_a_list_goes_on_after_bad_files(tmp_path):
    """A list replay reports each bad file in one line and still analyses every good one; exit status 1."""
    bad = bad_files(tmp_path)
    log = tmp_path / "list.csv"
    r = birdlive("replay", bad["nan"][0], bad["missing"][0], RECORDING, bad["text"][0], "--model", TINY,
                 "--csv", log, "--no-live")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3 and {"nan.wav", "nope.wav", "notes.wav"} == {
        name for name in ("nan.wav", "nope.wav", "notes.wav") for ln in errors if name in ln}
    rows = [x for x in read_events_csv(log) if x["source"] == str(RECORDING)]
    _, missed, spurious = match_events(read_truth(), [(x["species"], float(x["onset_s"]), float(x["offset_s"]))
                                                      for x in rows])
    assert not missed and not spurious


def test_mp3_that_ends_early_is_analysed_with_one_warning(tmp_path):
    """An MP3 whose header promises 40 s but whose audio stops at about 24 s (a recorder that died, a download cut
    short) gives the events of the audio that is there, one warning line, and exit status 0."""
    x, rate = sf.read(RECORDING, dtype="float32")
    full = tmp_path / "full.mp3"
    sf.write(full, x, rate, format="MP3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(full.read_bytes()[:int(full.stat().st_size * 0.6)])
    log = tmp_path / "mp3.csv"
    r = birdlive("replay", cut, "--model", TINY, "--csv", log, "--no-live")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "cut.mp3" in warnings[0] and "header says 40.00 s" in warnings[0]
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    ends = float(warnings[0].split("audio ends at ")[1].split(" s")[0])
    assert 15 < ends < 30
    truth = [t for t in read_truth() if t[2] < ends - 1.0]
    got = [(x["species"], float(x["onset_s"]), float(x["offset_s"])) for x in read_events_csv(log)]
    _, missed, _ = match_events(truth, got)
    assert not missed and len(got) >= len(truth)


def test_library_imports_no_cli_and_help_imports_no_torch():
    """`import birdlive.model` / `birdlive.streamer` load no CLI; `birdlive --help` loads no torch."""
    code = ("import sys, birdlive.model, birdlive.streamer; "
            "assert not {'typer', 'birdlive.cli'} & set(sys.modules), sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = ("import sys\nsys.argv = ['birdlive', '--help']\nfrom birdlive.cli import main\ntry:\n    main()\n"
            "except SystemExit as e:\n    assert e.code == 0\nassert 'torch' not in sys.modules and 'timm' not in "
            "sys.modules\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout and "replay" in r.stdout, r.stderr


BUGGY_COMMAND = """
import sys
from birdlive.cli import app, main
@app.command()
def explode():
    raise RuntimeError("a bug in birdlive")
sys.argv = ["birdlive", "explode"]
main()
"""


def test_a_bug_is_one_line_that_says_where_the_traceback_is():
    env = {k: v for k, v in os.environ.items() if k != "BIRDLIVE_DEBUG"}
    r = subprocess.run([sys.executable, "-c", BUGGY_COMMAND], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: unexpected RuntimeError: a bug in birdlive")
    path = line.split("traceback in ")[1].split(",")[0]
    assert "RuntimeError: a bug in birdlive" in open(path).read()
    os.unlink(path)
    r = subprocess.run([sys.executable, "-c", BUGGY_COMMAND], capture_output=True, text=True,
                       env={**env, "BIRDLIVE_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("args, says", [
    (["--clips", "{tmp}/afile/clips"], "--clips"),
    (["--thresholds", "{tmp}/unknown.csv"], "unknown species"),
    (["--thresholds", "{tmp}/range.csv"], "0"),
    (["--raven", "{tmp}/afile/x.txt"], "--raven"),
    (["--mqtt", "host:0"], "--mqtt"),
], ids=["unwritable-clips", "unknown-species", "threshold-out-of-range", "unwritable-raven", "bad-mqtt-port"])
def test_bad_output_options_are_one_line(tmp_path, args, says):
    """An output that cannot work is refused before any audio is read: one `error:` line, exit 1, no CSV rows."""
    (tmp_path / "afile").write_text("a file where a folder should be")
    (tmp_path / "unknown.csv").write_text("species,threshold\nnot_a_bird,0.5\n")
    (tmp_path / "range.csv").write_text("species,threshold\ntrill,1.5\n")
    csv = tmp_path / "out.csv"
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--csv", csv,
                 *[a.format(tmp=tmp_path) for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.stderr
    assert not csv.exists() or len(read_events_csv(csv)) == 0


def test_mqtt_host_that_does_not_resolve_still_detects(tmp_path):
    """Detection starts and the CSV is whole; the broker's absence is a warning, not a failure."""
    csv = tmp_path / "out.csv"
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--csv", csv, "--mqtt", "no-such-host.invalid")
    assert r.returncode == 0, r.stderr
    assert len(read_events_csv(csv)) == len(read_truth())
    assert any(line.startswith("warning:") and "no-such-host.invalid" in line for line in r.stderr.splitlines())


@pytest.mark.parametrize("args", [
    ["--out", "{tmp}/cal", "--report", "{tmp}/cal.json"],
    ["--out", "{tmp}/cal", "--report", "{tmp}/cal.safetensors"],
    ["--in-place", "--report", "{tmp}/tiny.json"],
    ["--out", "{tmp}/cal", "--csv", "{tmp}/tiny.onnx"],
], ids=["report-over-out-json", "report-over-out-weights", "report-over-model-json", "csv-over-model-graph"])
def test_calibrate_refuses_a_side_output_over_a_checkpoints_own_file(tmp_path, args):
    """`--out X --report X.json` would make the report X's checkpoint JSON: refused before anything is computed,
    in one `error:` line, and the checkpoint's files are as they were."""
    import shutil
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(TINY.with_suffix(suffix), tmp_path / f"tiny{suffix}")
    (tmp_path / "tiny.onnx").write_bytes(b"a graph")
    (tmp_path / "data").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    r = birdlive("calibrate", tmp_path / "data", "--model", tmp_path / "tiny", *[a.format(tmp=tmp_path) for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "would write over a file of the checkpoint" in lines[0] and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("option, value", [("--gain", "6,-30"), ("--gain", "loud"), ("--snr", "20,0"),
                                           ("--note-gap", "0,0.6"), ("--note-gap", "0.6,0.01")])
def test_train_refuses_a_bad_range_in_one_line_before_any_run_folder(tmp_path, option, value):
    (tmp_path / "snippets").mkdir()
    r = birdlive("train", "--snippets", tmp_path / "snippets", option, value, "--run", tmp_path / "run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {option}"), r.stderr
    assert not (tmp_path / "run").exists()
