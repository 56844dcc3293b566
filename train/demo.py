"""`birdlive augment-demo A B`: one training-style mixture of two files, as a WAV and a PNG of what the model sees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from birdlive.errors import OptionError

from .augment import (AugmentConfig, NoiseBank, add_noise, crop, db_to_gain, energy_profile, fix_length,
                      pitch_shift, time_stretch)
from .cache import decode


def augment_demo(file_a: str | Path, file_b: str | Path, out_dir: str | Path, window_s: float = 5.0,
                 seed: int = 0, augment: AugmentConfig | None = None, noise_dir: str | None = None,
                 model: str | None = None) -> dict:
    """Energy crops of A and B (time-stretched / pitch-shifted by chance per `augment`), B added at a random gain,
    a random overall gain and noise at a random SNR. Writes OUT/mix.wav and OUT/mix.png (log-mel of A, B and the
    mixture through `LogMelFrontend` — the frontend of `model` when given, so its trained input normalisation is
    included). Returns what was written and what was applied."""
    from birdlive.model import LogMelFrontend, create_config, load_checkpoint

    aug = augment or AugmentConfig()
    if model:
        net = load_checkpoint(model)
        cfg, frontend = net.cfg, net.frontend.eval()
    else:
        cfg = create_config("tiny", ["a"], window_s=window_s)
        frontend = LogMelFrontend(cfg).eval()
    sr, n = cfg.sample_rate, int(round(window_s * cfg.sample_rate))
    rng = np.random.default_rng(seed)
    applied: dict = {"seed": seed, "window_s": window_s}
    parts = []
    for key, f in (("a", file_a), ("b", file_b)):
        w, applied[key] = _augmented_crop(f, aug, rng, sr, n)
        parts.append(w)
    gain_b = float(rng.uniform(*aug.mix_gain_db))
    y = parts[0] + db_to_gain(gain_b) * parts[1]
    applied["b"]["gain_db"] = round(gain_b, 2)
    applied["labels"] = sorted({applied["a"]["label"], applied["b"]["label"]})
    if aug.gain_prob > 0:
        g = float(rng.uniform(*aug.gain_db))
        y, applied["gain_db"] = y * db_to_gain(g), round(g, 2)
    if aug.noise_prob > 0:
        from .cache import AudioCache
        bank = NoiseBank.from_dir(noise_dir, AudioCache(None, sr)) if noise_dir else NoiseBank()
        snr = float(rng.uniform(*aug.snr_db))
        y = add_noise(y, bank.sample(n, rng, aug.noise_colors, aug.noise_file_prob), snr)
        applied["snr_db"] = round(snr, 2)
    peak = float(np.max(np.abs(y))) or 1.0
    y = (y / peak * 0.9 if peak > 0.99 else y).astype(np.float32)   # a playable file: no clipping

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wav, png = out / "mix.wav", out / "mix.png"
    sf.write(wav, y, sr, subtype="FLOAT")
    with torch.no_grad():
        mels = [frontend.normalize(frontend(torch.from_numpy(np.asarray(z, np.float32))[None]))[0, 0].T.numpy()
                for z in (parts[0], parts[1], y)]
    titles = [f"A: {applied['a']['label']}", f"B: {applied['b']['label']} ({gain_b:+.1f} dB)",
              "mixture + augmentation: " + ", ".join(applied["labels"])
              + (f", SNR {applied['snr_db']:.1f} dB" if "snr_db" in applied else "")]
    _plot_mels(png, mels, titles, window_s)
    return {"wav": str(wav), "png": str(png), "applied": applied}


def _augmented_crop(f: str | Path, aug: AugmentConfig, rng: np.random.Generator, sr: int, n: int) -> tuple:
    """An energy crop of `f`, n samples long after a chance time-stretch and pitch-shift; and what was applied."""
    x = decode(f, sr)
    if len(x) == 0:
        raise OptionError(f"{f}: no audio")
    factor = float(rng.uniform(*aug.stretch_range)) if rng.random() < aug.stretch_prob else 1.0
    w, start = crop(x, int(np.ceil(n / factor)), rng, aug.energy_crop, sr, energy_profile(x, sr))
    if factor != 1.0:
        w = time_stretch(w, factor)
    semis = float(rng.uniform(-aug.pitch_semitones, aug.pitch_semitones)) if rng.random() < aug.pitch_prob else 0.0
    if semis:
        w = pitch_shift(w, sr, semis)
    return fix_length(w, n), {"file": str(f), "label": Path(f).parent.name,
                              "crop_start_s": round(max(0, start) / sr, 3), "stretch": round(factor, 3),
                              "pitch_semitones": round(semis, 3)}


def _plot_mels(png: Path, mels: list, titles: list[str], window_s: float) -> None:
    from matplotlib.figure import Figure     # the object API: no pyplot, no global backend switch
    fig = Figure(figsize=(9, 7.5))
    axes = fig.subplots(3, 1, sharex=True)
    for ax, m, t in zip(axes, mels, titles):
        ax.imshow(m, origin="lower", aspect="auto", extent=(0, window_s, 0, m.shape[0]), cmap="magma")
        ax.set_title(t, fontsize=10)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
