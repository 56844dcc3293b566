"""Named network configurations, timm-style: one table, looked up by name.

`tiny` is for tests and fixtures (seconds to train), `cpu` is the shipped default (runs `listen` on two CPU
cores), `full` is the seed's configuration (ResNeSt50) for GPU training.
"""
from __future__ import annotations

from .config import ModelConfig

PRESETS: dict[str, dict] = {
    "tiny": dict(backbone="mobilenetv3_small_050", feature_index=3, hidden=64, dropout=0.1),
    "cpu": dict(backbone="mobilenetv3_large_100", feature_index=3, hidden=256, dropout=0.2),
    "full": dict(backbone="resnest50d", feature_index=4, hidden=512, dropout=0.3, n_mels=128),
}


def create_config(preset: str, labels: list[str], names: list[str] | None = None, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(labels=list(labels), names=list(names or []), **{**PRESETS[preset], **overrides})
