"""Speed benchmarks, printed as one table from one run (ratios between rows are what to quote).

    python benchmarks/bench.py [--minutes 5] [--backbones tiny,cpu,full] [--repeat 3]

1. log-mel spectrogram of N minutes of audio: librosa (CPU), torchlibrosa's conv STFT (CPU), the lean runtime's
   numpy log-mel (`birdlive.model.dsp.LogMel`, one BLAS thread), birdlive's frontend (torch.stft + the same mel
   matrix; CPU, and CUDA if present);
2. end-to-end `replay` real-time factor (audio seconds per wall second) per network preset: FileSource on a
   real FLAC on disk → runner (log-mel once per hop, 5 s windows every 1 s) → network → stitcher → smoother.
Network weights are random for presets without a checkpoint: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from birdlive.model import BirdSED, create_config
from birdlive.model.dsp import LogMel
from birdlive.model.frontend import LogMelFrontend
from birdlive.streamer import file_specs, make_runner
from birdlive.train.synthetic import CALL_TYPES, make_scene


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, CUDA context, librosa's caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def logmel_rows(wave: np.ndarray, sr: int, repeat: int) -> list[tuple[str, float]]:
    import librosa
    cfg = create_config("cpu", labels=["x"])
    rows = []

    def with_librosa():
        m = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                           n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, power=2.0)
        librosa.power_to_db(m)
    rows.append(("log-mel, librosa (CPU)", best_of(with_librosa, repeat)))
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram
    spec = Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft, window="hann",
                       center=True, pad_mode="reflect", freeze_parameters=True)
    mel = LogmelFilterBank(sr=sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, ref=1.0,
                           amin=1e-10, top_db=None, freeze_parameters=True)
    x_cpu = torch.from_numpy(wave)[None]

    def with_torchlibrosa():
        with torch.inference_mode():
            mel(spec(x_cpu))
    rows.append(("log-mel, torchlibrosa conv STFT (CPU)", best_of(with_torchlibrosa, repeat)))
    lean, padded = LogMel(cfg), np.pad(wave, cfg.n_fft // 2, mode="reflect")
    with threadpool_limits(1, user_api="blas"):     # as OnnxScorer runs it
        rows.append(("log-mel, birdlive numpy (lean runtime, CPU)", best_of(lambda: lean.frames(padded), repeat)))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        fe = LogMelFrontend(cfg).to(dev).eval()
        x = x_cpu.to(dev)

        def with_birdlive(fe=fe, x=x, dev=dev):
            with torch.inference_mode():
                fe(x)
            if dev == "cuda":
                torch.cuda.synchronize()
        rows.append((f"log-mel, birdlive frontend, FFT STFT ({dev.upper()})", best_of(with_birdlive, repeat)))
    return rows


def replay_row(preset: str, path: Path, labels: list[str], device: str) -> tuple[str, float, float]:
    model = BirdSED(create_config(preset, labels=labels)).to(device).eval()
    t = time.perf_counter()
    (status,) = make_runner(model, []).run(file_specs([path], model.cfg.sample_rate))
    wall = time.perf_counter() - t
    return f"replay, {preset} ({model.cfg.backbone}, {device.upper()})", wall, status.audio_s / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--backbones", default="tiny,cpu,full")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sr = 32000
    rng = np.random.default_rng(0)
    seconds = args.minutes * 60
    calls = [(CALL_TYPES[i % 4], t) for i, t in enumerate(np.arange(2.0, seconds - 2, 7.0))]
    wave, _ = make_scene(seconds, sr, calls, snr_db=10, rng=rng)

    table = Table(title=f"birdlive benchmarks: {args.minutes:g} min of audio, {args.threads} torch threads, "
                        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    table.add_column("what")
    table.add_column("wall s", justify="right")
    table.add_column("× real time", justify="right")
    for name, t in logmel_rows(wave, sr, args.repeat):
        table.add_row(name, f"{t:.3f}", f"{seconds / t:.0f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.flac"
        sf.write(path, wave, sr)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for preset in args.backbones.split(","):
            for dev in devices:
                name, wall, rtf = replay_row(preset, path, [f"s{i}" for i in range(120)], dev)
                table.add_row(name, f"{wall:.2f}", f"{rtf:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
