"""`train --guide`: crops placed by a guide model's scores, background species as soft targets above a floor, the
guide's pass over the training recordings cached in the run and reused on resume, never given validation audio."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from birdlive.model import BirdSED, create_config, save_checkpoint
from birdlive.streamer.core.offline import framewise_track, scorer_track
from birdlive.streamer.core.torch_scorer import SharedScorer
from birdlive.train import TrainConfig, train
from birdlive.train.augment import AugmentConfig, NoiseBank, mix, weak_example
from birdlive.train.datasets import Recording, Split, load_dataset
from birdlive.train.guide import (GUIDE_FPS, HEARD_FLOOR, GuideScores, GuideTrack, guided_start, pooled,
                                  soft_targets)

from birdlive.train.windows import Geometry, WindowSet

from .test_train_loop import small_run

SR = 32000


def test_guided_crops_hold_the_scored_calls_far_more_often_than_chance():
    bins = np.full(200, 0.05)                   # 100 s at 2 bins a second; the guide hears the bird at 60-62 s only
    bins[120:124] = 0.9
    n, length, rng = 5 * SR, 100 * SR, np.random.default_rng(0)
    starts = [guided_start(bins, GUIDE_FPS, n, length, SR, rng) for _ in range(400)]
    assert all(s is not None and 0 <= s <= length - n for s in starts)
    held = np.mean([s < 62 * SR and s + n > 60 * SR for s in starts])
    uniform = np.mean([s < 62 * SR and s + n > 60 * SR for s in rng.integers(0, length - n + 1, 400)])
    assert held == 1.0 and uniform < 0.15      # every guided window holds some of the call; chance: ~7 %


def test_a_guide_that_hears_nothing_leaves_the_crop_to_energy():
    rng = np.random.default_rng(0)
    assert guided_start(np.full(200, HEARD_FLOOR - 0.01), GUIDE_FPS, 5 * SR, 100 * SR, SR, rng) is None
    assert guided_start(np.zeros(0), GUIDE_FPS, 5 * SR, 100 * SR, SR, rng) is None
    assert guided_start(np.full(8, 0.9), GUIDE_FPS, 5 * SR, 4 * SR, SR, rng) is None   # shorter than the window


def test_background_species_become_soft_targets_only_where_heard_above_the_floor():
    scores = np.zeros((40, 3), np.float16)     # 20 s: the primary, then backgrounds b (heard at 0-5 s) and c (faint)
    scores[:, 0] = 0.9
    scores[:10, 1], scores[10:, 1] = 0.8, 0.1
    scores[:, 2] = HEARD_FLOOR - 0.05
    track = GuideTrack(["a", "b", "c"], scores)
    early = soft_targets(track, GUIDE_FPS, 0, 5 * SR, SR)
    assert list(early) == ["b"] and early["b"] == pytest.approx(0.8, abs=1e-3)
    assert soft_targets(track, GUIDE_FPS, 10 * SR, 5 * SR, SR) == {}
    ex = weak_example(np.zeros(SR, np.float32), [0], [1, 2], 4, 10, {1: early["b"]})
    assert list(ex.clip_target) == pytest.approx([1.0, 0.8, 0.0, 0.0], abs=1e-3)   # a stays a hard positive
    assert list(ex.clip_mask) == [1.0, 1.0, 0.0, 1.0]                             # c stays masked
    assert not ex.frame_mask[:, :3].any()     # when b calls is not known: its frames stay masked


def test_a_soft_target_mixed_with_a_window_that_may_hold_the_species_is_unknown():
    soft = weak_example(np.zeros(SR, np.float32), [0], [1], 3, 10, {1: 0.6})
    absent = weak_example(np.zeros(SR, np.float32), [2], [], 3, 10)         # species 1 known absent
    unknown = weak_example(np.zeros(SR, np.float32), [2], [1], 3, 10)       # species 1 a masked background
    with_absent, with_unknown = mix([soft, absent], [0.0, 0.0]), mix([soft, unknown], [0.0, 0.0])
    assert with_absent.clip_target[1] == pytest.approx(0.6) and with_absent.clip_mask[1] == 1.0
    assert with_unknown.clip_mask[1] == 0.0 and list(with_unknown.clip_mask[[0, 2]]) == [1.0, 1.0]


def test_the_scorer_track_is_the_offline_track():
    model = BirdSED(create_config("tiny", ["a", "b"], window_s=1.0)).eval()
    wave = np.random.default_rng(0).normal(0, 0.1, int(3.3 * SR)).astype(np.float32)
    ref = framewise_track(model, wave, hop_s=0.5)
    got = scorer_track(SharedScorer(model), wave, hop_s=0.5)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    assert pooled(ref, 5).shape == (int(np.ceil(len(ref) / 5)), 2)


class RampCache:
    """A 60-s recording whose every sample is its own time in seconds: a window says where it was cut."""
    sample_rate = SR

    def load(self, path):
        return np.arange(60 * SR, dtype=np.float32) / SR


def test_training_windows_follow_the_guide_and_carry_its_soft_background_labels():
    rec = Recording("/rec.wav", ["a"], ["b"])
    scores = np.zeros((120, 2), np.float16)           # the guide hears a at 40-42 s, b there too, nothing elsewhere
    scores[80:84] = [0.9, 0.7]
    windows = WindowSet([rec], ["a", "b"], RampCache(), NoiseBank([], None), AugmentConfig.none(), 5.0, 10.0, 300)
    g = Geometry(5 * SR, 0, 10.0, 0.0)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [windows._recording_example(rng, set(), g) for _ in range(300)]

    def holds_the_call(ex):
        return ex.wave[0] < 42 and ex.wave[-1] > 40
    unguided = draws(1)
    windows.guide = GuideScores("g", {rec.path: GuideTrack(["a", "b"], scores)})
    guided = draws(1)
    assert np.mean([holds_the_call(ex) for ex in unguided]) < 0.2        # uniform crops: ~13 %
    assert np.mean([holds_the_call(ex) for ex in guided]) > 0.45         # half of them placed by the guide
    for ex in guided:
        assert ex.clip_target[0] == 1.0 and ex.clip_mask[0] == 1.0
        assert ex.clip_mask[1] == holds_the_call(ex) and ex.clip_target[1] == pytest.approx(0.7 * ex.clip_mask[1],
                                                                                                abs=1e-3)


@pytest.mark.training
def test_the_guide_scores_training_recordings_once_and_never_validation_ones(tmp_path, monkeypatch):
    import birdlive.streamer.core.offline as offline
    import birdlive.train.loop as loop
    common = small_run(tmp_path, max_steps=2)
    labels = sorted(load_dataset(common["data"][0]).labels)
    torch.manual_seed(0)
    save_checkpoint(BirdSED(create_config("tiny", labels, window_s=1.0)), tmp_path / "guide")
    given: list[list[str]] = []
    real_pass = loop.guide_pass

    def recorded(guide, recordings, *args, **kw):
        given.append([r.path for r in recordings])
        return real_pass(guide, recordings, *args, **kw)
    monkeypatch.setattr(loop, "guide_pass", recorded)
    run = tmp_path / "run"
    train(TrainConfig(run_dir=str(run), guide=str(tmp_path / "guide"), **common), show_progress=False)
    assert json.loads((run / "train.json").read_text())["guide"] == str(tmp_path / "guide")
    split, recs = Split.load(run / "split.json"), load_dataset(common["data"][0]).recordings
    train_paths = {r.path for r in split.select(recs, "train")}
    held_out = {r.path for r in split.select(recs, "val") + split.select(recs, "test")}
    assert held_out and set(given[0]) == train_paths and not held_out & set(given[0])
    cached = GuideScores.load(run / "guide.npz", str(tmp_path / "guide"))
    assert set(cached.tracks) == train_paths

    def no_scoring(*args, **kw):
        raise AssertionError("the guide scored again on resume")
    monkeypatch.setattr(offline, "scorer_track", no_scoring)
    resumed = train(TrainConfig(run_dir=str(run), max_steps=3), resume=True, show_progress=False)  # guide: the run's
    assert resumed["steps"] == 2 and len(given) == 2 and set(given[1]) == train_paths
