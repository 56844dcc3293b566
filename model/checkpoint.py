"""Checkpoints: `STEM.safetensors` (weights; loading runs no pickle code) + `STEM.json` (a `ModelConfig`).

Weights may be stored in float16 (`save_checkpoint(..., dtype=torch.float16)`: half the size, for committed
checkpoints) and are always loaded into the float32 network. Tensors under `KEEP_FULL_BELOW` elements stay float32:
they weigh nothing (6 % of the default model's values) and carry most of the rounding error — on 27 windows of real
recordings, rounding every tensor moved a framewise score by up to 2.8e-3, keeping these by at most 2.2e-4.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from birdlive.errors import BirdliveError, OptionError
from birdlive.files import atomic_path

from .config import ModelConfig

if TYPE_CHECKING:       # torch, safetensors and the network are imported by the functions that use them: the
    import torch        # lean runtime reads a checkpoint's config and its ONNX graph without them

    from .sed import BirdSED

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "default"
KEEP_FULL_BELOW = 4096     # elements: norms, biases, the stem and the small depthwise kernels keep their precision


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU; or a torch device name (`cpu`, `cuda`, `cuda:1`)."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("CUDA was asked for but torch sees no GPU; use cpu")
    return torch.device(name)


class CheckpointError(BirdliveError):
    """The path is not a usable birdlive checkpoint; the message says why, in one line."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Accepts `STEM`, `STEM.safetensors`, `STEM.json`, or a training run folder (uses its `best`)."""
    p = Path(path)
    if p.is_dir():
        p = p / "best"
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def graph_path(path: str | Path) -> Path:
    """STEM.onnx: the network as an ONNX graph (`birdlive export`), beside the checkpoint it was made from."""
    weights, _ = checkpoint_paths(path)
    return weights.with_suffix(".onnx")


def int8_graph_path(path: str | Path) -> Path:
    """STEM.int8.onnx: that graph with its backbone in int8 (`birdlive export --int8`, `birdlive.model.quantize`)."""
    weights, _ = checkpoint_paths(path)
    return weights.with_suffix(".int8.onnx")


def trunk_graph_paths(path: str | Path) -> tuple[Path, Path]:
    """STEM.trunk.onnx and STEM.rest.onnx: STEM.onnx cut after the backbone's first stages, so that overlapping
    windows share them (`birdlive.model.trunk`, `birdlive.streamer.core.trunk`)."""
    weights, _ = checkpoint_paths(path)
    return weights.with_suffix(".trunk.onnx"), weights.with_suffix(".rest.onnx")


def derived_graph_paths(path: str | Path) -> tuple[Path, ...]:
    """Every graph `birdlive export` makes from a checkpoint's weights: stale once the weights change."""
    return (graph_path(path), int8_graph_path(path), *trunk_graph_paths(path))


def save_checkpoint(model: BirdSED, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Writes STEM.safetensors + STEM.json. `dtype` (e.g. torch.float16) stores the floating-point tensors of at
    least `KEEP_FULL_BELOW` elements in that type; the others, and integer tensors, stay as they are. Returns STEM.
    A STEM.onnx (and its int8 and split graphs) made from earlier weights is removed: it would score with them
    (`birdlive export` makes new ones)."""
    from safetensors.torch import save_file

    from .frontend import FROZEN_PREFIXES
    weights, config = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: _stored(v, dtype) for k, v in model.state_dict().items() if not k.startswith(FROZEN_PREFIXES)}
    with atomic_path(weights) as tmp:      # an interrupted save never leaves a half checkpoint behind
        save_file(state, str(tmp))
    for graph in derived_graph_paths(path):
        graph.unlink(missing_ok=True)
    save_config(model.cfg, path)
    return weights.with_suffix("")


def _stored(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().cpu()
    if dtype is not None and t.is_floating_point() and t.numel() >= KEEP_FULL_BELOW:
        t = t.to(dtype)
    return t.contiguous()


def save_config(cfg: ModelConfig, path: str | Path) -> Path:
    """Write (or replace) only the checkpoint's JSON, atomically: new thresholds for unchanged weights."""
    _, config = checkpoint_paths(path)
    with atomic_path(config) as tmp:
        tmp.write_text(cfg.to_json() + "\n")
    return config


def load_config(path: str | Path) -> ModelConfig:
    _, config = checkpoint_paths(path)
    if not config.is_file():
        if Path(path).is_file():
            raise CheckpointError(f"{path} is not a birdlive checkpoint (expected STEM.safetensors + STEM.json)")
        raise CheckpointError(f"no checkpoint at {path} (expected {config.with_suffix('.safetensors').name} "
                              f"and {config.name})")
    try:
        return ModelConfig.load(config)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config} is not a birdlive checkpoint config: {e}") from None


def load_checkpoint(path: str | Path = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu") -> BirdSED:
    """Build the network from the JSON and load the safetensors weights, in eval mode on `device`. The JSON's
    per-species thresholds (absent in older checkpoints: the global pair serves) arrive in `model.cfg`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .frontend import FROZEN_PREFIXES
    from .sed import BirdSED
    weights, _ = checkpoint_paths(path)
    cfg = load_config(path)
    if not weights.is_file():
        raise CheckpointError(f"no checkpoint weights at {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a safetensors file: {e}") from None
    try:
        model = BirdSED(cfg)
    except Exception as e:  # timm raises RuntimeError/KeyError for unknown names
        raise CheckpointError(f"cannot build backbone {cfg.backbone!r}: {e}") from None
    # fixed DSP tensors and backbone blocks the network no longer runs (`drop_unused_blocks`): older checkpoints
    # stored them, and they change no output
    ignored = FROZEN_PREFIXES + model.dropped_prefixes
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    expected = {k for k in model.state_dict() if not k.startswith(FROZEN_PREFIXES)}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match its config ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    try:
        model.load_state_dict(state, strict=False)       # copies into the float32 parameters (fp16 → fp32)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: tensor shapes do not match the config: {str(e).splitlines()[0]}") from None
    return model.to(device).eval()


def load_for_inference(path: str | Path = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu") -> torch.nn.Module:
    """`load_checkpoint`, then the network the detector runs (`fuse.inference_copy`: BatchNorm folded,
    channels-last, ~1.5× on a CPU). Evaluation scores through it too, so what it measures is what ships."""
    from .fuse import inference_copy
    return inference_copy(load_checkpoint(path, device))
