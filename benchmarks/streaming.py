"""Streaming benchmarks of the installed `birdlive` command, printed as one table from one run.

    .venv/bin/python benchmarks/streaming.py [--repeat N] [--skip-birdnet] [--skip-rss] [--skip-analyze]
        [--backends lean,torch] [--json OUT]

Every figure times a whole process, from spawn to exit (Python start-up and model load included), because
that is what a user waits for; ratios between columns come from the same run on the same machine.

Two birdlive columns: the lean runtime (`--compute onnx`: ONNX Runtime and the numpy log-mel, run from the venv
benchmarks/install.py keeps in runs/install/lean, where torch is not installed; from .venv where that is absent)
and torch (`--compute cpu`, from .venv).

1. replay of real audio, birdlive vs BirdNET V2.4 (benchmarks/birdnet_peer.py in .venv-peers): a 120 s and a
   30 min file made by concatenating the xeno-canto recordings of ../shared/data/xc-puerto-rico (sorted by path,
   so the files are the same on every machine), 48 kHz mono FLAC, cached in runs/bench-audio/;
2. time to `birdlive --help`, and time from spawn to the first event line on stdout (`replay --no-live`);
3. resident memory of one `birdlive replay` over 2 hours of audio (the 30 min file looped 4x, 32 kHz), and of
   one over the 30 min 48 kHz file (a rate above the model's: resampled on the way in), sampled every 0.5 s from
   /proc (the process and its children);
4. concurrent real-time streams one machine sustains with the default model (benchmarks/realtime_streams.py);
5. `birdlive analyze` of the first 60 min of the xeno-canto recordings (one worker per core) beside BirdNET V2.4's
   process pool (benchmarks/archive.py's rows, the faster BirdNET mode there);
6. fresh-venv installs, lean and with the torch extra: read from benchmarks/results/install.json
   (benchmarks/install.py measures them: minutes and gigabytes, not rerun here).

Timed figures are the best of --repeat runs (the machine may be shared; the minimum is the least disturbed).
The memory run is made once: memory does not depend on the machine's load the way time does.
Generated audio stays under runs/ (git-ignored); the recordings are never copied into the repository.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BIRDLIVE = ROOT / ".venv" / "bin" / "birdlive"
LEAN_VENV_BIRDLIVE = ROOT / "runs" / "install" / "lean" / "bin" / "birdlive"
# backend: (the birdlive command, its --compute)
BACKENDS = {"lean": (LEAN_VENV_BIRDLIVE if LEAN_VENV_BIRDLIVE.exists() else BIRDLIVE, "onnx"),
            "torch": (BIRDLIVE, "cpu")}
INSTALL_JSON = ROOT / "benchmarks" / "results" / "install.json"
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "birdnet_peer.py"
XC_DIR = ROOT.parent / "shared" / "data" / "xc-puerto-rico"
AUDIO_DIR = ROOT / "runs" / "bench-audio"
OUT_DIR = AUDIO_DIR / "out"  # CSVs and stderr logs of the runs, overwritten each time
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg"}    # what both tools read; birdlive alone reads more (base/files.py)

# Short real recordings for "time to first event", tried in order until one prints an event. Events are
# printed when they close, so a recording whose first call ends early measures start-up, not the recording.
FIRST_EVENT_TRIES = [
    ("Setophaga_adelaidae/XC308510.mp3", []),
    ("Setophaga_adelaidae/XC308510.mp3", ["--threshold-on", "0.1", "--threshold-off", "0.05"]),
    ("Agelaius_xanthomus/XC33703.mp3", ["--threshold-on", "0.1", "--threshold-off", "0.05"]),
]


def log(msg: str) -> None:
    print(f"[streaming] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- audio files

def xc_recordings() -> list[Path]:
    files = [p for p in XC_DIR.rglob("*") if p.suffix.lower() in AUDIO_EXT]
    return sorted(files, key=lambda p: p.relative_to(XC_DIR).as_posix())


def concat_real_audio(out: Path, seconds: float, sr: int = 48000) -> Path:
    """The first `seconds` of all xeno-canto recordings back to back, mono at `sr`: made once, then reused."""
    if out.exists():
        return out
    log(f"making {out.relative_to(ROOT)} ({seconds:.0f} s of real recordings, {sr} Hz)")
    need, done = int(seconds * sr), 0
    tmp = out.with_name(out.stem + ".part.flac")  # renamed at the end: an interrupted build is never reused
    with sf.SoundFile(tmp, "w", sr, 1, "PCM_16", format="FLAC") as w:
        for f in xc_recordings():
            y, fsr = sf.read(f, dtype="float32", always_2d=True)
            y = y.mean(axis=1)
            if fsr != sr:
                y = soxr.resample(y, fsr, sr)
            y = np.clip(y[: need - done], -1.0, 1.0)  # resampling can overshoot; 16-bit PCM must not wrap
            w.write(y)
            done += len(y)
            if done >= need:
                break
    if done < need:
        tmp.unlink()
        raise SystemExit(f"only {done / sr:.0f} s of recordings under {XC_DIR}, {seconds:.0f} s needed")
    tmp.rename(out)
    return out


def loop_audio(src: Path, out: Path, loops: int, sr: int) -> Path:
    """`src` played `loops` times over, resampled to `sr`, block by block (2 h does not fit comfortably in RAM)."""
    if out.exists():
        return out
    log(f"making {out.relative_to(ROOT)} ({loops}x {src.name}, {sr} Hz)")
    tmp = out.with_name(out.stem + ".part.flac")
    with sf.SoundFile(src) as r, sf.SoundFile(tmp, "w", sr, 1, "PCM_16", format="FLAC") as w:
        rs = soxr.ResampleStream(r.samplerate, sr, 1, dtype="float32")
        for _ in range(loops):
            r.seek(0)
            for block in r.blocks(blocksize=60 * r.samplerate, dtype="float32"):
                w.write(np.clip(rs.resample_chunk(block), -1.0, 1.0))
        w.write(np.clip(rs.resample_chunk(np.zeros(0, np.float32), last=True), -1.0, 1.0))
    tmp.rename(out)
    return out


def cut_audio(src: Path, out: Path, seconds: float) -> Path:
    """The first `seconds` of `src`, made once."""
    if not out.exists():
        info = sf.info(str(src))
        y, sr = sf.read(src, frames=int(seconds * info.samplerate), dtype="float32")
        sf.write(out, y, sr, subtype="PCM_16", format="FLAC")
    return out


def duration_s(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


# --------------------------------------------------------------------------------------------- processes

def run_process(cmd: list[str], name: str) -> dict:
    """Run `cmd` to completion; wall time from spawn to exit. stdout/stderr are kept for parsing."""
    log(f"run {name}: {' '.join(map(str, cmd))}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    (OUT_DIR / f"{name}.stderr.txt").write_text(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"{name} exited {p.returncode}: {p.stderr[-1500:]}")
    return {"wall_s": wall, "stdout": p.stdout, "stderr": p.stderr}


def best_of(repeat: int, fn) -> dict:
    """The run with the least wall time: on a shared machine it is the least disturbed one."""
    return min((fn() for _ in range(max(1, repeat))), key=lambda r: r["wall_s"])


def csv_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, newline="") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def birdlive_cmd(backend: str, *args: str) -> list[str]:
    exe, compute = BACKENDS[backend]
    return [str(exe), *args, "--compute", compute]


def birdlive_replay(audio: Path, tag: str, backend: str) -> dict:
    out = OUT_DIR / f"birdlive-{backend}-{tag}.csv"
    out.unlink(missing_ok=True)  # birdlive appends to an existing CSV
    r = run_process(birdlive_cmd(backend, "replay", str(audio), "--no-live", "--csv", str(out)),
                    f"birdlive-{backend}-{tag}")
    # birdlive's own summary on stderr: "… X s audio in Y s (Z× real time)"; the rest of the wall is start-up.
    m = re.search(r"audio in\s+([\d.]+)\s*s", " ".join(r["stderr"].split()))
    return {"wall_s": r["wall_s"], "inner_s": float(m.group(1)) if m else None, "events": csv_rows(out)}


def birdnet_replay(audio: Path, tag: str) -> dict:
    out = OUT_DIR / f"birdnet-{tag}.csv"
    # --threads is a global option of birdnet_peer.py: it must come before the subcommand.
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "--threads", "2", "recordings", str(audio), "-o", str(out)]
    r = run_process(cmd, f"birdnet-{tag}")
    # birdnet_peer's last line: "… N s audio in W s: real-time factor …" (decode + resample + model, per file).
    m = re.search(r"audio in ([\d.]+) s", r["stdout"])
    return {"wall_s": r["wall_s"], "inner_s": float(m.group(1)) if m else None, "events": csv_rows(out)}


def replay_figures(files: dict[str, Path], repeat: int, skip_birdnet: bool, backends: list[str]) -> dict:
    """Row 1. One untimed run of each tool first, so that no timed run pays for a cold page cache (torch,
    TFLite and the model files read from disk) or for numba compiling BirdNET's resampler on its first use."""
    first = next(iter(files.values()))
    log("warm-up runs (untimed)")
    for b in backends:
        birdlive_replay(first, "warmup", b)
    if not skip_birdnet:
        birdnet_replay(first, "warmup")
    figs = {}
    for label, audio in files.items():
        tag = label.replace(" ", "")
        f = {"file": str(audio.relative_to(ROOT)), "audio_s": duration_s(audio)}
        for b in backends:
            f[b] = best_of(repeat, lambda audio=audio, tag=tag, b=b: birdlive_replay(audio, tag, b))
        if not skip_birdnet:
            f["birdnet"] = best_of(repeat, lambda audio=audio, tag=tag: birdnet_replay(audio, tag))
        figs[label] = f
    return figs


def first_event_once(audio: Path, extra: list[str], backend: str) -> dict:
    """Spawn `replay --no-live` and time spawn -> first stdout line (one line per event, flushed) and -> exit."""
    cmd = birdlive_cmd(backend, "replay", str(audio), "--no-live", *extra)
    log(f"run first-event: {' '.join(cmd)}")
    with open(OUT_DIR / "first-event.stderr.txt", "w") as err:  # a file, not a pipe: a full pipe could block it
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        line = p.stdout.readline()
        t_line = time.perf_counter() - t0
        p.stdout.read()
        p.wait()
        t_exit = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"first-event run exited {p.returncode}: see {OUT_DIR / 'first-event.stderr.txt'}")
    return {"wall_s": t_line if line else float("inf"), "exit_s": t_exit, "line": " ".join(line.split())}


def startup_figures(repeat: int, backend: str) -> dict:
    """Row 2: `birdlive --help`; start-up to the first window: a whole `replay` of a 5 s clip (one window: spawn,
    imports, model load, decoding, one window scored, exit); then spawn -> first event on the first of
    FIRST_EVENT_TRIES that gives one."""
    exe, _ = BACKENDS[backend]
    help_run = best_of(repeat, lambda: run_process([str(exe), "--help"], f"help-{backend}"))
    clip = cut_audio(AUDIO_DIR / "xc-pr-120s-48k.flac", AUDIO_DIR / "xc-pr-5s-48k.flac", 5.0)
    one = best_of(repeat, lambda: run_process(birdlive_cmd(backend, "replay", str(clip), "--no-live"),
                                              f"one-window-{backend}"))
    figs = {"help": {"wall_s": help_run["wall_s"]}, "one_window": {"wall_s": one["wall_s"]}}
    for rel, extra in FIRST_EVENT_TRIES:
        audio = XC_DIR / rel
        runs = [first_event_once(audio, extra, backend)]
        if not runs[0]["line"]:
            log(f"no event from {rel} {' '.join(extra)}; trying the next candidate")
            continue
        runs += [first_event_once(audio, extra, backend) for _ in range(repeat - 1)]
        best = min(runs, key=lambda r: r["wall_s"])
        figs["first_event"] = {**best, "file": rel, "audio_s": duration_s(audio),
                               "thresholds": " ".join(extra) or "default"}
        break
    return figs


# --------------------------------------------------------------------------------------------- memory

def _descendants(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # thread gone, or a kernel without /proc/.../children: count the process alone
            pass
    return kids + [d for k in kids for d in _descendants(k)]


def rss_kib(pid: int) -> int:
    """VmRSS of the process and its children (worker processes would hold memory too)."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")), 0)
        except OSError:  # exited between listing and reading
            pass
    return total


def rss_figures(audio: Path, backend: str, period_s: float = 0.5, tag: str = "rss") -> dict:
    """Row 3: one accelerated replay of `audio`, RSS sampled every `period_s`. Waiting on the process (rather
    than sleeping) between samples keeps the wall time exact to the moment it exits."""
    out = OUT_DIR / f"birdlive-{backend}-{tag}.csv"
    out.unlink(missing_ok=True)
    cmd = birdlive_cmd(backend, "replay", str(audio), "--no-live", "--csv", str(out))
    log(f"run rss: {' '.join(cmd)}")
    samples: list[tuple[float, int]] = []
    with open(OUT_DIR / "rss.stderr.txt", "w") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        while p.poll() is None:
            now = time.perf_counter() - t0
            kib = rss_kib(p.pid)
            if kib:  # 0 once the process is a zombie
                samples.append((now, kib))
            try:
                p.wait(timeout=period_s - now % period_s)
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
    if p.returncode != 0 or not samples:
        raise RuntimeError(f"rss run exited {p.returncode}: see {OUT_DIR / 'rss.stderr.txt'}")
    at10 = next((kib for t, kib in samples if t >= 10.0), None)
    peak = max(kib for _, kib in samples)
    return {"file": str(audio.relative_to(ROOT)), "audio_s": duration_s(audio), "wall_s": wall,
            "rss_10s_mib": at10 / 1024 if at10 else None, "rss_peak_mib": peak / 1024,
            "rss_end_mib": samples[-1][1] / 1024, "growth_pct": (peak / at10 - 1) * 100 if at10 else None,
            "samples": len(samples), "events": csv_rows(out)}


def realtime_streams_figures(audio: Path, backend: str, seconds: float = 20.0, max_lag_s: float = 1.0) -> dict:
    """Row 4: the most real-time 32 kHz streams (0.1 s blocks, like a microphone) one process sustains with the
    default model, every window scored and none overdue by more than `max_lag_s`, no source that far behind the
    wall clock (benchmarks/realtime_streams.py). In this process: a stream count is not a start-up figure."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from realtime_streams import max_streams

    from birdlive.streamer import load_scorer
    scorer = load_scorer(None, BACKENDS[backend][1])
    x, rate = sf.read(audio, dtype="float32", always_2d=True)
    wave = soxr.resample(x.mean(axis=1), rate, scorer.cfg.sample_rate).astype(np.float32)
    log(f"real-time streams, {backend}: {seconds:g} s runs")
    n, tried = max_streams(scorer, wave, seconds, max_lag_s, log=log)
    return {"streams": n, "backend": backend, "seconds": seconds, "max_lag_s": max_lag_s,
            "worst_lag_by_count": tried}


def analyze_figures(minutes: float, backends: list[str], skip_birdnet: bool, repeat: int) -> dict:
    """Row 5: `birdlive analyze` (one worker per core, its default) of the first `minutes` of the recordings,
    beside BirdNET V2.4's process pool with as many processes (benchmarks/archive.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import archive
    folder, audio_s, count = archive.link_recordings(minutes)
    warm, _, _ = archive.link_recordings(0.5)
    archive.WORK.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    figs: dict = {"audio_s": audio_s, "files": count, "folder": str(folder.relative_to(ROOT))}
    for b in backends:
        exe, compute = BACKENDS[b]
        archive.birdlive_run(warm, f"warmup-{b}", cores, exe=exe, extra=("--compute", compute))
        figs[b] = best_of(repeat, lambda exe=exe, compute=compute, b=b: archive.birdlive_run(
            folder, f"analyze-{b}", cores, exe=exe, extra=("--compute", compute)))
    if not skip_birdnet:
        archive.birdnet_run(warm, "warmup-birdnet", 1, "pool")
        figs["birdnet"] = best_of(repeat, lambda: archive.birdnet_run(folder, "birdnet-pool", cores, "pool"))
    return figs


# --------------------------------------------------------------------------------------------- table

# what, {backend: figure}, BirdNET, {backend: birdlive ÷ BirdNET}, notes
Row = tuple[str, dict, str, dict, str]


def _speed(run: dict | None, audio_s: float) -> str:
    return f"{run['wall_s']:.2f} s · {audio_s / run['wall_s']:.0f}×" if run else "skipped"


def _ratios(f: dict, peer: dict | None, backends: list[str]) -> dict:
    """Throughput ratio = the inverse of the wall-time ratio."""
    return {b: f"{peer['wall_s'] / f[b]['wall_s']:.2f}×" for b in backends if peer and b in f}


def replay_rows(figs: dict, backends: list[str]) -> list[Row]:
    rows: list[Row] = []
    for label, f in figs.items():
        bn = f.get("birdnet")
        counts = ", ".join(f"{b} {f[b]['events']} events" for b in backends) + (
            f", BirdNET {bn['events']} detections" if bn else "")
        rows.append((f"replay {label} of real audio: wall s · × real time",
                     {b: _speed(f[b], f["audio_s"]) for b in backends}, _speed(bn, f["audio_s"]),
                     _ratios(f, bn, backends), f"{f['file']}; {counts}"))
        # Where the wall time goes: the tools' own in-process time (read from their output) vs the rest.
        if all(f[b]["inner_s"] is not None for b in backends) and (bn is None or bn["inner_s"] is not None):
            rows.append((f"  of which start-up + model load ({label})",
                         {b: f"{f[b]['wall_s'] - f[b]['inner_s']:.2f} s" for b in backends},
                         f"{bn['wall_s'] - bn['inner_s']:.2f} s" if bn else "skipped", {}, ""))
    return rows


def startup_rows(figs: dict, backends: list[str]) -> list[Row]:
    rows: list[Row] = [
        ("`birdlive --help`, whole process", {b: f"{figs[b]['help']['wall_s']:.2f} s" for b in backends}, "–", {},
         ""),
        ("start-up to first window: `replay` of a 5 s clip, spawn to exit",
         {b: f"{figs[b]['one_window']['wall_s']:.2f} s" for b in backends}, "–", {}, "one 5 s window scored")]
    fe = {b: figs[b].get("first_event") for b in backends}
    rows.append(("spawn → first event line (`replay --no-live`)",
                 {b: f"{e['wall_s']:.2f} s" if e else "no event" for b, e in fe.items()}, "–", {},
                 "; ".join(f"{b}: {e['file']} ({e['audio_s']:.1f} s), thresholds {e['thresholds']}, exit at "
                           f"{e['exit_s']:.2f} s" for b, e in fe.items() if e)))
    return rows


def rss_rows(r: dict | None, backends: list[str]) -> list[Row]:
    if not r:
        return []
    first = r[backends[0]]
    audio_s = first["audio_s"]
    span = (f"{audio_s / 3600:.0f} h" if audio_s >= 3600 else f"{audio_s / 60:.0f} min" if audio_s >= 60
            else f"{audio_s:.0f} s")
    khz = sf.info(ROOT / first["file"]).samplerate / 1000
    return [
        (f"RSS at 10 s of wall time ({span} replay, {khz:g} kHz)",
         {b: f"{r[b]['rss_10s_mib']:.0f} MiB" if r[b]["rss_10s_mib"] else "run < 10 s" for b in backends}, "–", {},
         first["file"]),
        ("  peak RSS (goal ≤ 250 MiB)", {b: f"{r[b]['rss_peak_mib']:.0f} MiB" for b in backends}, "–", {},
         "sampled every 0.5 s"),
        ("  growth (peak / RSS at 10 s − 1)",
         {b: f"{r[b]['growth_pct']:+.1f} %" if r[b]["growth_pct"] is not None else "–" for b in backends}, "–", {},
         ""),
        (f"  {span} replay: wall s · × real time", {b: _speed(r[b], r[b]["audio_s"]) for b in backends}, "–", {},
         ", ".join(f"{b} {r[b]['events']} events" for b in backends)),
    ]


def realtime_streams_rows(r: dict | None, backends: list[str]) -> list[Row]:
    if not r:
        return []
    first = r[backends[0]]
    return [("real-time 32 kHz streams sustained (CPU)", {b: str(r[b]["streams"]) for b in backends}, "–", {},
             f"every window scored, no source > {first['max_lag_s']:g} s behind, {first['seconds']:g} s runs")]


def analyze_rows(f: dict | None, backends: list[str]) -> list[Row]:
    if not f:
        return []
    bn = f.get("birdnet")
    return [(f"`analyze` of {f['audio_s'] / 3600:.2f} h of recordings ({f['files']} files): wall s · × real time",
             {b: _speed(f[b], f["audio_s"]) for b in backends}, _speed(bn, f["audio_s"]), _ratios(f, bn, backends),
             f"{os.cpu_count()} workers / BirdNET processes; {f['folder']}")]


def install_rows(backends: list[str]) -> list[Row]:
    """Row 6, from benchmarks/install.py's last run (lean = `pip install .`, torch = `pip install '.[torch]'`)."""
    if not INSTALL_JSON.exists():
        return []
    f = json.loads(INSTALL_JSON.read_text())
    have = [b for b in backends if b in f]
    return [("fresh venv: `pip install` (warm pip cache) · installed size",
             {b: f"{f[b]['pip_s']:.0f} s · {f[b]['size_mib']:.0f} MiB" for b in have}, "–", {},
             f"benchmarks/install.py, {f.get('date', '?')}; the demo replay after it: "
             + ", ".join(f"{b} {f[b]['demo_s']:.1f} s" for b in have))]


def machine_info() -> dict:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT).stdout.strip()
    except OSError:
        rev = ""
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "machine": platform.machine(), "python": platform.python_version(), "git_head": rev}


def print_table(rows: list[Row], info: dict, backends: list[str]) -> None:
    t = Table(title=f"birdlive streaming benchmarks — {info['date']}, {info['cpus']} CPUs, "
                    f"load {info['load_avg'][0]:.2f} at start, git {info['git_head'] or '?'}",
              caption="whole processes, spawn to exit (start-up and model load included); best of --repeat; "
                      "lean = ONNX Runtime, no torch (--compute onnx); torch = --compute cpu; "
                      "ratio = birdlive throughput ÷ BirdNET V2.4 throughput (2 TFLite threads)")
    t.add_column("measurement")
    for b in backends:
        t.add_column(f"birdlive {b}", justify="right")
    t.add_column("BirdNET V2.4", justify="right")
    for b in backends:
        t.add_column(f"{b} ÷ BirdNET", justify="right")
    t.add_column("notes")
    for what, figs, peer, ratios, notes in rows:
        t.add_row(what, *[figs.get(b, "–") for b in backends], peer, *[ratios.get(b, "") for b in backends], notes)
    Console(width=max(200, Console().width)).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="runs per timed figure; the best is kept (default 1)")
    ap.add_argument("--backends", default="lean,torch", help="birdlive columns: lean (ONNX Runtime), torch")
    ap.add_argument("--skip-birdnet", action="store_true", help="no BirdNET V2.4 runs")
    ap.add_argument("--skip-rss", action="store_true", help="no memory runs (2 hours at 32 kHz, 30 min at 48 kHz)")
    ap.add_argument("--skip-streams", action="store_true", help="no real-time streams search")
    ap.add_argument("--skip-analyze", action="store_true", help="no `analyze` of an hour of recordings")
    ap.add_argument("--analyze-minutes", type=float, default=60.0)
    ap.add_argument("--stream-seconds", type=float, default=20.0, help="length of each real-time streams run")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    backends = args.backends.split(",")
    if not BIRDLIVE.exists():
        raise SystemExit(f"{BIRDLIVE} not found: install birdlive into .venv first (README.md)")
    if not args.skip_birdnet and not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} not found: see benchmarks/README.md, or pass --skip-birdnet")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    figs: dict = {"machine": machine_info(), "repeat": args.repeat,
                  "commands": {b: [str(e), "--compute", c] for b, (e, c) in BACKENDS.items()}}
    log(f"lean runtime from {BACKENDS['lean'][0]}")

    long = concat_real_audio(AUDIO_DIR / "xc-pr-1800s-48k.flac", 1800)
    short = concat_real_audio(AUDIO_DIR / "xc-pr-120s-48k.flac", 120)
    figs["replay"] = replay_figures({"120 s": short, "30 min": long}, args.repeat, args.skip_birdnet, backends)
    figs["startup"] = {b: startup_figures(args.repeat, b) for b in backends}
    if not args.skip_analyze:
        figs["analyze"] = analyze_figures(args.analyze_minutes, backends, args.skip_birdnet, args.repeat)
    if not args.skip_rss:
        two_hours = loop_audio(long, AUDIO_DIR / "xc-pr-7200s-32k.flac", 4, 32000)
        figs["rss"] = {b: rss_figures(two_hours, b) for b in backends}
        figs["rss_48k"] = {b: rss_figures(long, b, tag="rss-48k") for b in backends}
    if not args.skip_streams:
        figs["streams"] = {b: realtime_streams_figures(short, b, args.stream_seconds) for b in backends}
    rows = [*replay_rows(figs["replay"], backends), *analyze_rows(figs.get("analyze"), backends),
            *startup_rows(figs["startup"], backends), *rss_rows(figs.get("rss"), backends),
            *rss_rows(figs.get("rss_48k"), backends),
            *realtime_streams_rows(figs.get("streams"), backends), *install_rows(backends)]
    print_table(rows, figs["machine"], backends)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figs, indent=1, default=str) + "\n")
        log(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
