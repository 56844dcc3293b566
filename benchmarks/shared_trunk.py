"""The shared trunk (issue 18) against the full graph per window: whole `birdlive replay` processes of the same
file, the embedded model with its split graph (STEM.trunk.onnx + STEM.rest.onnx) and a copy without it, runs
interleaved.

    .venv/bin/python benchmarks/shared_trunk.py [--audio runs/bench-audio/xc-pr-1800s-48k.flac] [--repeat 3]
        [--json benchmarks/results/shared_trunk.json]

For each: user+sys CPU and wall of the whole process (min and median of --repeat runs) and the events (the CSV
logs must be byte-identical: the split changes no score beyond float noise, `tests/core/test_shared_trunk.py`).
The audio is the 30 min file `benchmarks/streaming.py` makes from the xeno-canto recordings (run that first, or
give --audio). On a shared machine CPU time measures birdlive better than wall time.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from streaming import AUDIO_DIR  # noqa: E402

DEFAULT = ROOT / "model" / "weights" / "default"


def replay(model: Path, audio: Path, csv: Path) -> tuple[float, float]:
    """(CPU s, wall s) of one `birdlive replay` process."""
    cmd = [str(ROOT / ".venv" / "bin" / "birdlive"), "replay", str(audio), "--no-live", "--compute", "onnx",
           "--model", str(model), "--csv", str(csv)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-1000:] if p.stderr else ''}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", type=Path, default=AUDIO_DIR / "xc-pr-1800s-48k.flac")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not a.audio.is_file():
        raise SystemExit(f"{a.audio} is missing: run benchmarks/streaming.py once (it makes it), or give --audio")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "default"
        for suffix in (".safetensors", ".json", ".onnx"):
            shutil.copy(DEFAULT.with_name(DEFAULT.name + suffix), full.with_name(full.name + suffix))
        ways = {"shared trunk": DEFAULT, "full graph per window": full}
        runs: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
        for _ in range(a.repeat):
            for way, model in ways.items():
                log = Path(tmp) / f"{way}.csv"
                log.unlink(missing_ok=True)             # --csv appends: one run's events each
                runs[way].append(replay(model, a.audio, log))
        logs = {way: (Path(tmp) / f"{way}.csv").read_bytes() for way in ways}
    res: dict = {}
    for way, r in runs.items():
        cpu, wall = [c for c, _ in r], [w for _, w in r]
        res[way] = {"cpu_s_min": round(min(cpu), 2), "cpu_s_median": round(statistics.median(cpu), 2),
                    "wall_s_min": round(min(wall), 2), "wall_s_median": round(statistics.median(wall), 2)}
    res["cpu_ratio_min"] = round(res["full graph per window"]["cpu_s_min"] / res["shared trunk"]["cpu_s_min"], 3)
    res["wall_ratio_min"] = round(res["full graph per window"]["wall_s_min"] / res["shared trunk"]["wall_s_min"], 3)
    res["csv_identical"] = len(set(logs.values())) == 1
    res["events"] = len(list(csv.reader(io.StringIO(logs["shared trunk"].decode())))) - 1
    res.update(audio=str(a.audio.relative_to(ROOT) if a.audio.is_relative_to(ROOT) else a.audio), repeat=a.repeat,
               load_average_1min=os.getloadavg()[0], command=" ".join(["benchmarks/shared_trunk.py", *sys.argv[1:]]))
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
