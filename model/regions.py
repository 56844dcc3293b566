"""Where a model's species live, and a user's own species list: what `--region`, `--lat/--lon` and
`--species-list` keep of the events, as BirdNET users expect (a North American user never hears a Puerto Rican
frog).

A checkpoint says which of its species belong to which region in its JSON (`extra["regions"]`: region → labels,
written from the training data by `python -m birdlive.train.regions`); a species of two regions (Mourning Dove,
Yellow Warbler) is in both. Coordinates map to a region by its box; the Puerto Rico box lies inside the North
American one and is asked first. Only the scores' use changes: the network still scores every species.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from birdlive.errors import OptionError

from .config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    south: float
    north: float
    west: float
    east: float

    def __contains__(self, point: tuple[float, float]) -> bool:
        lat, lon = point
        return self.south <= lat <= self.north and self.west <= lon <= self.east


# First match wins: Puerto Rico (with Vieques, Culebra and Mona) before the continent around it.
REGION_BOXES: dict[str, Box] = {
    "puerto-rico": Box(17.6, 18.7, -68.0, -65.1),
    "north-america": Box(14.0, 84.0, -170.0, -50.0),     # Canada, the USA, Mexico, down to Guatemala's border
}


def region_at(lat: float, lon: float) -> str:
    """The region whose box holds (lat, lon); OptionError outside every region the models know."""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise OptionError(f"--lat {lat:g} --lon {lon:g}: not a place on Earth (latitude -90..90, longitude -180..180)")
    for name, box in REGION_BOXES.items():
        if (lat, lon) in box:
            return name
    raise OptionError(f"--lat {lat:g} --lon {lon:g} lies outside the regions birdlive's models know "
                      f"({', '.join(REGION_BOXES)}); leave it out to hear every species")


def region_species(cfg: ModelConfig, region: str) -> list[str]:
    """The labels of `cfg`'s species that live in `region`."""
    table = cfg.extra.get("regions") or {}
    if not table:
        raise OptionError("--region: this checkpoint has no region table (python -m birdlive.train.regions "
                          "writes one from its training data)")
    if region not in table:
        raise OptionError(f"--region {region}: this model knows {', '.join(sorted(table))}")
    return list(table[region])


def _key(name: str) -> str:
    """Labels, scientific and common names compared without case, spaces, hyphens, apostrophes; grey = gray."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("grey", "gray"))


def read_species_list(path: str | Path, cfg: ModelConfig) -> list[str]:
    """The labels named in a species list: one species a line, as a label (`american_robin`,
    `Coereba_flaveola`), a scientific or common name, or BirdNET's `Scientific name_Common Name`; `#` starts a
    comment. Names the model does not know are logged once (a BirdNET list names many); none known is an error."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"--species-list {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    by_key: dict[str, str] = {}
    for label, name in zip(cfg.labels, cfg.names):
        by_key[_key(label)] = label
        if name:
            by_key.setdefault(_key(name), label)
    found: list[str] = []
    unknown: list[str] = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        keys = [_key(entry)] + [_key(part) for part in entry.split("_", 1)] if " " in entry else [_key(entry)]
        match = next((by_key[k] for k in keys if k in by_key), None)
        if match is None:
            unknown.append(entry)
        elif match not in found:
            found.append(match)
    if not found:
        raise OptionError(f"--species-list {path}: names none of this model's {cfg.num_classes} species")
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        log.warning("%s: %d of its species are not known to the model and cannot be detected: %s",
                    path, len(unknown), shown)
    return found


def allowed_species(cfg: ModelConfig, region: str | None = None, lat: float | None = None,
                    lon: float | None = None, species_list: str | Path | None = None) -> tuple[str, ...]:
    """The labels the user's place and list leave (both given: those in both); () when neither narrows."""
    if (lat is None) != (lon is None):
        raise OptionError("--lat and --lon go together")
    if lat is not None and region is not None:
        raise OptionError("--region and --lat/--lon say the same thing: give one")
    if lat is not None:
        region = region_at(lat, lon)            # type: ignore[arg-type]
        log.info("--lat %g --lon %g: region %s", lat, lon, region)
    keep: list[str] | None = region_species(cfg, region) if region else None
    if species_list is not None:
        listed = read_species_list(species_list, cfg)
        keep = listed if keep is None else [s for s in listed if s in set(keep)]
        if not keep:
            raise OptionError(f"--species-list {species_list}: none of its species lives in {region}")
    return tuple(keep or ())
