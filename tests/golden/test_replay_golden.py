"""Behaviour unchanged: `birdlive replay` over real recordings, byte for byte.

Each case runs the real command (a subprocess, as a user runs it) with every table output at once — the CSV log,
a Raven selection table, an Audacity label track, JSON Lines — and the plain event lines on stdout and the
stream reports on stderr, and compares them with the snapshots in `tests/golden/<case>/`, written before the
layout of issue 17 moved any file.

What is normalised, and why (nothing else is touched):
- the recordings are linked into a temporary folder and named there by their file name, so the `source` column
  is the same on every machine; Raven's `Begin Path` is absolute by design, so the folder is written `<run>`;
- stderr's summary line says how fast the run was (`41.7 s audio in 0.7 s (61.5× real time)`): the wall time
  and the speed become `<wall>`; the audio seconds and the event count stay;
- fast replay has no wall clock, so the wall-time columns are empty in every output: nothing else depends on
  the time of day.

Float noise: on the machine kind the snapshots were made on (`cpu.txt`: torch's CPU capability, e.g. AVX2) the
bytes must be equal, but for the JSON Lines file: it prints the scores' full floats, whose last bits change with
the number of threads torch sums on (measured: 0.9581858396530152 with two, 0.958185863494873 with one), so its
numbers are compared to 1e-6 (every other character equal). Another CPU kind (AVX-512, ARM) sums in another
order, so its scores may differ in their last bits; there every number is compared at the precision the output
prints it, give or take one unit in its last printed digit (JSON Lines prints full floats: compared to 0.001, the
CSV's own precision), and every other character must be equal — the same events, species, order and columns.

`--jobs 1`: with two files read at once their rows interleave in arrival order, which depends on timing.

The snapshots were made by the torch scorer, so these runs ask for it (`--compute cpu`). The lean runtime's ONNX
Runtime scorer (the default on a CPU where the checkpoint has a graph) is held to the same snapshots at the
printed precision (`test_onnx_replay_gives_the_same_outputs`): the same events, times, species and columns, each
number within one unit of its last printed digit (the JSON Lines' full floats within 0.001).

To write new snapshots after a deliberate change of output: `BIRDLIVE_UPDATE_GOLDEN=1 pytest tests/golden`,
and say why in the commit.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared" / "data" / "xc-puerto-rico"
TINY = ROOT / "tests" / "fixtures" / "tiny_calls"

OUTPUTS = {"events.csv": "--csv", "raven.txt": "--raven", "audacity.txt": "--audacity", "events.jsonl": "--jsonl"}

# case: (recordings, extra options); each recording a path to link into the run's folder
CASES = {
    # the shipped real recording (MP3, 48 kHz mono) and the synthetic file (FLAC), one run, the default model
    "default_model": ([ROOT / "recordings" / "XC737279.mp3", ROOT / "recordings" / "synthetic_calls.flac"], []),
    # the synthetic calls with the tiny test model, which finds every one of them
    "tiny_model": ([ROOT / "recordings" / "synthetic_calls.flac"], ["--model", str(TINY)]),
    # real xeno-canto files from ../shared/data: a 44.1 kHz stereo MP3 and a 48 kHz Opus file
    "shared_data": ([SHARED / "Melopyrrha_portoricensis" / "XC308521.mp3",
                     SHARED / "Coereba_flaveola" / "XC32077.ogg"], []),
}

WALL = re.compile(r" in \d+(\.\d+)? s \(\d+(\.\d+)?× real time\)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def cpu_kind() -> str:
    import platform

    import torch
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def run_case(name: str, tmp_path: Path, compute: str = "cpu") -> dict[str, str]:
    recordings, extra = CASES[name]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for rec in recordings:
        (run_dir / rec.name).symlink_to(rec)
    outputs = [a for fname, option in OUTPUTS.items() for a in (option, fname)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BIRDLIVE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "birdlive", "replay", *[rec.name for rec in recordings], "--no-live",
                        "--jobs", "1", "--compute", compute, *outputs, *extra], cwd=run_dir, capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    got = {fname: (run_dir / fname).read_text(encoding="utf-8") for fname in OUTPUTS}
    got["stdout.txt"] = r.stdout
    got["stderr.txt"] = r.stderr
    return {k: normalise(v, run_dir) for k, v in got.items()}


def normalise(text: str, run_dir: Path) -> str:
    return WALL.sub(" in <wall>", text.replace(str(run_dir), "<run>"))


def same_at_printed_precision(expected: str, got: str, floor: float = 1e-3) -> bool:
    """Every non-number character equal; every number within one unit of its last printed digit, or `floor`
    where that is larger (JSON's full floats: the CSV's precision by default)."""
    if NUMBER.sub("#", expected) != NUMBER.sub("#", got):
        return False
    for a, b in zip(NUMBER.findall(expected), NUMBER.findall(got)):
        decimals = len(a.split(".")[1].split("e")[0]) if "." in a else 0
        if abs(float(a) - float(b)) > max(10.0 ** -decimals, floor) * 1.001:
            return False
    return True


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_outputs_are_unchanged(name, tmp_path):
    recordings, _ = CASES[name]
    missing = [str(r) for r in recordings if not r.exists()]
    if missing:
        pytest.skip(f"not here: {', '.join(missing)}")
    got = run_case(name, tmp_path)
    folder = HERE / name
    if os.environ.get("BIRDLIVE_UPDATE_GOLDEN"):
        folder.mkdir(exist_ok=True)
        for fname, text in got.items():
            (folder / fname).write_text(text, encoding="utf-8")
        (HERE / "cpu.txt").write_text(cpu_kind() + "\n")
    exact = (HERE / "cpu.txt").read_text().strip() == cpu_kind()
    for fname, text in got.items():
        expected = (folder / fname).read_text(encoding="utf-8")
        if exact and fname.endswith(".jsonl"):
            assert same_at_printed_precision(expected, text, floor=1e-6), \
                f"{name}/{fname} changed (made on {cpu_kind()}: numbers compared to 1e-6, the rest as bytes)"
        elif exact:
            assert text == expected, f"{name}/{fname} changed (made on {cpu_kind()}, bytes compared)"
        else:
            assert same_at_printed_precision(expected, text), \
                f"{name}/{fname} changed (made on another CPU kind: compared at the printed precision)"


@pytest.mark.parametrize("name", ["default_model", "shared_data"])     # the tiny test model has no graph
def test_onnx_replay_gives_the_same_outputs(name, tmp_path):
    pytest.importorskip("onnxruntime")
    recordings, _ = CASES[name]
    missing = [str(r) for r in recordings if not r.exists()]
    if missing:
        pytest.skip(f"not here: {', '.join(missing)}")
    got = run_case(name, tmp_path, compute="onnx-float")   # the float graph: torch's numbers (int8: test_quantize.py)
    for fname, text in got.items():
        expected = (HERE / name / fname).read_text(encoding="utf-8")
        assert same_at_printed_precision(expected, text), f"{name}/{fname}: ONNX Runtime's differs from torch's"


def test_the_loose_comparison_still_sees_a_changed_event():
    row = "XC737279.mp3,Setophaga_adelaidae,Adelaide's Warbler,13.00,14.00,1.00,0.615,0.545,,,\n"
    assert same_at_printed_precision(row, row.replace("0.615", "0.616"))          # one unit in the last digit
    assert not same_at_printed_precision(row, row.replace("0.615", "0.618"))
    assert not same_at_printed_precision(row, row.replace("13.00", "13.10"))      # an onset moved by 0.1 s
    assert not same_at_printed_precision(row, row.replace("Setophaga", "Xetophaga"))
    assert not same_at_printed_precision(row, row + row)
    jsonl = '{"peak_conf": 0.9581858396530152}'
    assert same_at_printed_precision(jsonl, jsonl.replace("0.9581858396530152", "0.958185863494873"), floor=1e-6)
    assert not same_at_printed_precision(jsonl, jsonl.replace("0.9581858396530152", "0.9591858"), floor=1e-6)
