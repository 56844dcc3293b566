"""birdlive.train: datasets, decode cache, augmentation, snippet composer, training loop and evaluation.

From Python:

    from birdlive.train import TrainConfig, AugmentConfig, train
    summary = train(TrainConfig(run_dir="runs/pr20", data=["../shared/data/xc-puerto-rico"],
                                noise_dir="../shared/data/noise", preset="cpu", epochs=30))
    # → RUN/best.safetensors + RUN/best.json, loadable with birdlive.model.load_checkpoint("runs/pr20")
"""
from .augment import AugmentConfig, NoiseBank
from .cache import AudioCache, AudioError
from .composer import Composer, ComposerConfig, SnippetPool
from .datasets import Dataset, DatasetError, Recording, Split, load_dataset, merge, split_groups
from .evaluate import clip_metrics, event_metrics, noise_false_positives
from .loop import TrainConfig, TrainError, train

__all__ = ["AudioCache", "AudioError", "AugmentConfig", "Composer", "ComposerConfig", "Dataset", "DatasetError",
           "NoiseBank", "Recording", "SnippetPool", "Split", "TrainConfig", "TrainError", "clip_metrics",
           "event_metrics", "load_dataset", "merge", "noise_false_positives", "split_groups", "train"]
