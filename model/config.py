"""Everything that defines a model besides its weights: labels, audio frontend, network shape.

A checkpoint is `NAME.safetensors` (weights) + `NAME.json` (this config, serialised). The JSON is the contract
between training and streaming: the streamer reads the sample rate, window length and output frame rate from
it, never from its own defaults.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ModelConfig:
    labels: list[str]                       # species codes, one output unit each
    names: list[str] = field(default_factory=list)  # common names, same order ("" where unknown)
    # audio frontend (torchlibrosa)
    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 320                   # 10 ms frames at 32 kHz
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 14000.0
    # Floor of the log-mel power. Digital silence (a muted input, a null sink before playback, a zero-filled
    # outage) clamped at -100 dB lies 4-7 standard deviations below anything in training, and the step up to a
    # noise bed read as an upsweep: a spurious event at the start of live streams. At -80 dB that step is gone
    # (0 of 31 silence lengths gave an event, against 12) and real recordings score as before.
    logmel_floor_db: float = -80.0
    # SpecAugment strength (training mode only)
    time_drop_width: int = 32
    time_stripes_num: int = 2
    freq_drop_width: int = 8
    freq_stripes_num: int = 2
    # network
    backbone: str = "mobilenetv3_large_100"
    feature_index: int = 3                  # timm features_only stage: index 3 is stride 16 for most backbones
    hidden: int = 256                       # GRU width (both directions together)
    dropout: float = 0.2
    # what the streamer needs to know
    window_s: float = 5.0                   # clip length the network was trained on
    out_fps: float = 10.0                   # framewise scores per second of audio
    threshold_on: float = 0.5               # default event thresholds (hysteresis)
    threshold_off: float = 0.3
    # Per-species [on, off] where calibrated (`birdlive calibrate`, on a validation split); species not here use
    # the pair above. Older checkpoints have none. Who wins over whom: `birdlive.streamer.core.thresholds`.
    thresholds: dict[str, list[float]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # provenance: training command, data, figures

    def __post_init__(self):
        if not self.names:
            self.names = [""] * len(self.labels)
        if len(self.names) != len(self.labels):
            raise ValueError("labels and names differ in length")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("duplicate labels")
        self.thresholds = {lab: [float(on), float(off)] for lab, (on, off) in self.thresholds.items()}
        known = set(self.labels)
        for lab, (on, off) in self.thresholds.items():
            if lab not in known:
                raise ValueError(f"thresholds for {lab!r}, which is not a label")
            if not 0.0 <= off <= on <= 1.0:
                raise ValueError(f"thresholds for {lab}: need 0 <= off <= on <= 1, not {on:g}/{off:g}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def frame_s(self) -> float:
        return 1.0 / self.out_fps

    def display_name(self, i: int) -> str:
        return self.names[i] or self.labels[i]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        if "labels" not in d:
            raise ValueError("config has no 'labels'")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
