"""birdlive.model: the SED network, its audio frontend, configs and checkpoints.

Names are imported on first use (PEP 562): the config, the checkpoint paths and the numpy frontend (`dsp`) need
no torch, and the lean runtime (ONNX Runtime, no torch installed) imports them through this package.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "BirdSED": "sed", "LogMelFrontend": "frontend", "ModelConfig": "config",
    "DEFAULT_CHECKPOINT": "checkpoint", "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint",
    "load_config": "checkpoint", "pick_device": "checkpoint", "save_checkpoint": "checkpoint",
    "PRESETS": "registry", "create_config": "registry",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
