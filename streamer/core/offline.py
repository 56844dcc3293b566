"""The offline reference: a whole waveform at once, written independently of the streaming path it checks.

    whole waveform → log-mel once (`LogMelFrontend.frames`) → every window cut from it → the network over all
    windows in batches → numpy average of the overlaps → EventSmoother

It shares only the model, the smoother and the window layout (5 s windows every hop, the last one zero-padded
over the audio after the last full window) with `StreamState` and `Runner`; the tests hold the streaming path
to it for block sizes from 0.1 s to 7.3 s. Evaluation uses it too: it is the fastest way to score audio that is
already in memory.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from birdlive.model import BirdSED
from birdlive.model.config import ModelConfig

from .events import Event, EventFilter
from .scorer import Scorer
from .smoother import EventSmoother, SmootherParams
from .stream import check_hop, default_params


def window_starts(n: int, window: int, hop: int) -> tuple[list[int], list[int]]:
    """Start and number of real samples of each window over n samples."""
    starts = list(range(0, n - window + 1, hop))
    covered = starts[-1] + window if starts else 0
    if n > covered:
        starts.append(starts[-1] + hop if starts else 0)
    return starts, [min(window, n - s) for s in starts]


@torch.inference_mode()
def whole_logmel(model: BirdSED, wave: np.ndarray, n: int, chunk_frames: int = 6000) -> torch.Tensor:
    """Log-mel frames centred on samples 0, hop, … of `wave` padded with silence to n samples: reflected at the
    start, as a stream's first frames are. Computed in pieces so that an hour of audio needs no hour of STFT."""
    fe = model.frontend
    ctx, hop = fe.context, fe.hop_length
    padded = np.zeros(ctx + n + ctx, np.float32)
    padded[ctx:ctx + len(wave)] = wave[:n]
    padded[:ctx] = padded[ctx + 1:2 * ctx + 1][::-1]
    x = torch.from_numpy(padded).to(next(model.parameters()).device)
    total = n // hop + 1         # the last frame is centred on sample n: a window's frames include both ends
    parts = []
    for f0 in range(0, total, chunk_frames):
        f1 = min(total, f0 + chunk_frames)
        parts.append(fe.frames(x[None, f0 * hop:(f1 - 1) * hop + 2 * ctx])[0, 0])
    return torch.cat(parts)


@torch.inference_mode()
def framewise_track(model: BirdSED, wave: np.ndarray, hop_s: float = 1.0, batch_size: int = 16) -> np.ndarray:
    """The stitched score track (frames at cfg.out_fps, K) of a whole waveform at the model's rate."""
    cfg = model.cfg
    check_hop(cfg, hop_s)
    hop = int(round(hop_s * cfg.sample_rate))
    starts, valid = window_starts(len(wave), cfg.window_samples, hop)
    if not starts:
        return np.zeros((0, cfg.num_classes), np.float32)
    mel = whole_logmel(model, np.asarray(wave, np.float32), starts[-1] + cfg.window_samples)
    win_frames, mel_hop = cfg.window_samples // cfg.hop_length + 1, hop // cfg.hop_length
    windows = mel.unfold(0, win_frames, mel_hop).transpose(1, 2)[:len(starts)]   # (n_windows, frames, mels)
    scores = np.concatenate([
        model.forward_logmel(windows[i:i + batch_size, None])["framewise"].float().cpu().numpy()
        for i in range(0, len(windows), batch_size)])
    return stitch(cfg, scores, starts, valid)


def stitch(cfg: ModelConfig, scores, starts: list[int], valid: list[int]) -> np.ndarray:
    """Framewise scores (n_out, K) of the windows at `starts` (samples; `valid` real samples each) → one track
    (frames at cfg.out_fps, K): the average of the windows over each frame, frames past the audio dropped."""
    fps = cfg.out_fps
    first = [int(round(s * fps / cfg.sample_rate)) for s in starts]
    count = [math.ceil(v * fps / cfg.sample_rate - 1e-9) for v in valid]
    total = np.zeros((max(f + c for f, c in zip(first, count)), cfg.num_classes))
    covered = np.zeros(len(total))
    for f, c, s in zip(first, count, scores):
        total[f:f + c] += s[:c]
        covered[f:f + c] += 1
    return (total / covered[:, None]).astype(np.float32)


def scorer_track(scorer: Scorer, wave: np.ndarray, hop_s: float = 1.0) -> np.ndarray:
    """`framewise_track` through a `Scorer` (the lean ONNX one, or torch's): the same window layout, log-mel
    frames and stitching, for code that scores whole files without torch (training's `--guide` pass)."""
    cfg = scorer.cfg
    check_hop(cfg, hop_s)
    hop = int(round(hop_s * cfg.sample_rate))
    starts, valid = window_starts(len(wave), cfg.window_samples, hop)
    if not starts:
        return np.zeros((0, cfg.num_classes), np.float32)
    n, ctx = starts[-1] + cfg.window_samples, cfg.n_fft // 2
    padded = np.zeros(ctx + n + ctx, np.float32)          # as `whole_logmel`: silence after, reflection before
    padded[ctx:ctx + min(len(wave), n)] = wave[:n]
    padded[:ctx] = padded[ctx + 1:2 * ctx + 1][::-1]
    (mel,) = scorer.logmel([padded[:n + 2 * ctx]])        # frames centred on samples 0, hop, …, n
    win_frames, mel_hop = cfg.window_samples // cfg.hop_length + 1, hop // cfg.hop_length
    windows = [mel[i * mel_hop:i * mel_hop + win_frames] for i in range(len(starts))]
    recording = _Recording()            # the stream the windows share work in (`Scorer.score`'s origins)
    scores = []
    for i in range(0, len(windows), 64):        # as a replay's ticks: memory stays that of 64 windows
        part = range(i, min(i + 64, len(windows)))
        scores += scorer.score([windows[k] for k in part], [(recording, k * mel_hop) for k in part])
    return stitch(cfg, scores, starts, valid)


class _Recording:
    """A key for one recording's windows, which a scorer may hold work under while it lives."""


def detect_offline(model: BirdSED, wave: np.ndarray, source: str = "", hop_s: float = 1.0,
                   params: SmootherParams | None = None, event_filter: EventFilter | None = None) -> list[Event]:
    """Events of a whole waveform (mono float32 at the model's rate)."""
    return events_of_track(model.cfg, framewise_track(model, wave, hop_s), source, params, event_filter)


def events_of_track(cfg: ModelConfig, track: np.ndarray, source: str = "", params: SmootherParams | None = None,
                    event_filter: EventFilter | None = None) -> list[Event]:
    """The events of a framewise track already computed (`framewise_track`): what `detect_offline` returns."""
    smoother = EventSmoother(cfg.labels, cfg.names, cfg.frame_s, params or default_params(cfg), source=source)
    keep = event_filter or EventFilter()
    return [e for e in smoother.push(track) + smoother.finish() if keep(e)]
