"""Start-up to the first window as CPU time: `birdlive replay` of the 5 s clip benchmarks/streaming.py cuts
(runs/bench-audio/xc-pr-5s-48k.flac), whole processes, interleaved between venvs.

    python benchmarks/startup_cpu.py [--repeat N] VENV [VENV ...]

e.g. a venv of the branch before a change beside one of the branch after it (`python3 -m venv V && V/bin/pip
install .`). For each: user+sys CPU of the whole process (os.wait4's rusage) and wall, spawn to exit, min and
median of N runs, and the same for `birdlive --help`. On a shared machine wall time measures the neighbours as
much as birdlive; CPU time much less so, and interleaving spreads what load is left over all venvs alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "runs" / "bench-audio" / "xc-pr-5s-48k.flac"


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(CPU s, wall s) of one whole process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err[-1000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("venvs", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=11)
    args = ap.parse_args()
    if not CLIP.exists():
        raise SystemExit(f"{CLIP.relative_to(ROOT)} is missing: benchmarks/streaming.py makes it")
    cmds = {}
    for venv in args.venvs:
        exe = str(venv / "bin" / "birdlive")
        cmds[f"{venv} replay"] = [exe, "replay", str(CLIP), "--no-live", "--compute", "onnx"]
        cmds[f"{venv} --help"] = [exe, "--help"]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            runs[name].append(run_once(cmd))
    load = os.getloadavg()[0]
    print(f"{args.repeat} interleaved runs each; load average {load:.2f} at the end")
    for name, rs in runs.items():
        cpu, wall = [c for c, _ in rs], [w for _, w in rs]
        print(f"{name}: CPU min {min(cpu):.3f} s, median {statistics.median(cpu):.3f} s; "
              f"wall min {min(wall):.3f} s, median {statistics.median(wall):.3f} s")


if __name__ == "__main__":
    main()
