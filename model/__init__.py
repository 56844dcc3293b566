"""birdlive.model: the SED network, its audio frontend, configs and checkpoints."""
from .checkpoint import (DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, load_config, pick_device,
                         save_checkpoint)
from .config import ModelConfig
from .frontend import LogMelFrontend
from .registry import PRESETS, create_config
from .sed import BirdSED

__all__ = ["BirdSED", "CheckpointError", "DEFAULT_CHECKPOINT", "LogMelFrontend", "ModelConfig", "PRESETS",
           "create_config", "load_checkpoint", "load_config", "pick_device", "save_checkpoint"]
