"""birdlive.model: the SED network, its audio frontend, configs and checkpoints.

Names are imported on first use (PEP 562): the config, the checkpoint paths and the numpy frontend (`dsp`) need
no torch, and the lean runtime (ONNX Runtime, no torch installed) imports them through this package.
"""
from __future__ import annotations

from birdlive.lazy import lazy_exports

_WHERE = {
    "BirdSED": "sed", "LogMelFrontend": "frontend", "ModelConfig": "config",
    "DEFAULT_CHECKPOINT": "checkpoint", "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint",
    "load_for_inference": "checkpoint",
    "load_config": "checkpoint", "pick_device": "checkpoint", "save_checkpoint": "checkpoint",
    "PRESETS": "registry", "create_config": "registry",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _WHERE)
