"""DetectorSettings: what turns a model's scores into events, one set of values for `replay`, `listen` and
`analyze` (and for a program that embeds the detector).

Made once from the user's options (`DetectorSettings.checked`: the checkpoint, the hop and the thresholds file are
checked against the model's config before any weights load or any audio is read), then handed to the runner —
or, frozen and picklable, to every worker process of an archive analysis.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from birdlive.model.config import ModelConfig

from .events import EventFilter
from .smoother import SmootherParams
from .stream import check_hop, default_params


@dataclass(frozen=True)
class DetectorSettings:
    model: str | None = None            # the checkpoint (resolved path); None: the embedded model
    model_version: str = ""             # its weights' size and mtime: a retrained checkpoint is another model
    hop_s: float = 1.0                  # seconds between window starts
    threshold_on: float | None = None   # every species' pair (--threshold-on/off); None: the checkpoint's
    threshold_off: float | None = None
    species_thresholds: tuple[tuple[int, float, float | None], ...] = ()    # --thresholds FILE, as read
    min_duration_s: float | None = None
    merge_gap_s: float | None = None
    include: tuple[str, ...] = ()       # species codes or common names
    species: tuple[str, ...] = ()       # labels the user's place and species list leave (--region, --lat/--lon,
                                        # --species-list: birdlive.model.regions); () = every species
    exclude: tuple[str, ...] = ()
    min_conf: float = 0.0
    pre_roll_s: float = 1.5             # audio kept around each event (clips, sinks' EventAudio)
    post_roll_s: float = 1.5

    @classmethod
    def checked(cls, model: str | Path | None = None, thresholds: str | Path | None = None,
                place: dict | None = None, **values) -> "DetectorSettings":
        """Settings from the user's options, checked against the checkpoint's config (cheap: no weights): one
        error line for a path that is not a checkpoint, a hop off the frame grid, a bad thresholds file or
        thresholds out of order, a place or species list the model cannot serve (`place`: the keywords of
        `allowed_species`). The model's path is resolved and its weights' size and mtime recorded."""
        from birdlive.model import DEFAULT_CHECKPOINT, load_config
        from birdlive.model.checkpoint import checkpoint_paths
        from birdlive.model.regions import allowed_species

        from .thresholds import load_thresholds
        path = Path(model).expanduser().resolve() if model is not None else None
        cfg = load_config(path or DEFAULT_CHECKPOINT)
        species = load_thresholds(thresholds, cfg.labels, cfg.names) if thresholds is not None else {}
        weights = checkpoint_paths(path or DEFAULT_CHECKPOINT)[0].stat()
        values["species"] = allowed_species(cfg, **(place or {}))
        given: dict[str, Any] = {k: tuple(v) if k in ("include", "exclude") else v for k, v in values.items()}
        settings = cls(model=str(path) if path else None, model_version=f"{weights.st_size}:{weights.st_mtime_ns}",
                       species_thresholds=tuple((i, on, off) for i, (on, off) in sorted(species.items())), **given)
        settings.check(cfg)
        return settings

    def check(self, cfg: ModelConfig) -> None:
        """OptionError if these settings cannot work with this model (the hop, the threshold pairs)."""
        check_hop(cfg, self.hop_s)
        self.smoother_params(cfg)

    def smoother_params(self, cfg: ModelConfig) -> SmootherParams:
        return default_params(cfg, self.threshold_on, self.threshold_off,
                              {i: (on, off) for i, on, off in self.species_thresholds} or None,
                              min_duration_s=self.min_duration_s, merge_gap_s=self.merge_gap_s)

    def event_filter(self) -> EventFilter:
        return EventFilter(list(self.include), list(self.exclude), self.min_conf, list(self.species))

    def as_dict(self) -> dict:
        return asdict(self)
