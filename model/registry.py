"""Named network configurations, timm-style: one table, looked up by name.

`tiny` is for tests and fixtures (seconds to train), `cpu` is the first default (MobileNetV3, from scratch),
`lite0` is EfficientNet-Lite0 and `lite2` EfficientNet-Lite2, the backbones with ImageNet weights we may use
(`birdlive.model.pretrained`; Lite2's stride-16 stage has 120 channels, and it costs about 1.1x Lite0 per training
step here, where the data path sets the pace),
`full` is the seed's configuration (ResNeSt50) for GPU training.

`feature_index=3` reads the stride-16 stage (112 channels for both MobileNetV3 and EfficientNet-Lite0): a 5 s
window of 64 mel bands becomes 32 time steps × 4 bands (6.4 steps per second, interpolated to the 10 frames/s
the detector reports); the stride-32 stage (index 4) would leave 16 steps (3.2 per second), too coarse for the
onsets of short calls. n_mels stays 64: at stride 16 that already leaves 4 bands, and 128 would double the cost.

Measured on this 2-core CPU (`inference_copy`, batch 16, one thread, 190 species): `cpu` 5.2 ms per 5 s window,
`lite0` 9.3 ms. A stream needs one window per second of audio, so the network alone runs about 190× (`cpu`) and
100× (`lite0`) faster than real time on one core; the whole replay path (MP3 decode, resampling, log-mel,
stitching) 40-75× on one core of the shared machine.
"""
from __future__ import annotations

from .config import ModelConfig

PRESETS: dict[str, dict] = {
    "tiny": dict(backbone="mobilenetv3_small_050", feature_index=3, hidden=64, dropout=0.1),
    "cpu": dict(backbone="mobilenetv3_large_100", feature_index=3, hidden=256, dropout=0.2),
    "lite0": dict(backbone="tf_efficientnet_lite0", feature_index=3, hidden=256, dropout=0.2),
    "lite2": dict(backbone="tf_efficientnet_lite2", feature_index=3, hidden=256, dropout=0.2),
    "full": dict(backbone="resnest50d", feature_index=4, hidden=512, dropout=0.3, n_mels=128),
}


def create_config(preset: str, labels: list[str], names: list[str] | None = None, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(labels=list(labels), names=list(names or []), **{**PRESETS[preset], **overrides})
