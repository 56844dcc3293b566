"""Per-species event thresholds: where each species' on/off pair comes from, and the `--thresholds` CSV.

Precedence, most specific first (`resolve_thresholds`; `default_params` uses it, so streaming, replay and the
offline reference all see the same values):

  1. a `--thresholds FILE` row for that species            (`load_thresholds`)
  2. the global `--threshold-on` / `--threshold-off` flags  (every species)
  3. the checkpoint's calibrated pair for that species      (`ModelConfig.thresholds`, `birdlive calibrate`)
  4. the checkpoint's global pair                           (`ModelConfig.threshold_on` / `threshold_off`)

A level may give only one of the pair; the other comes from the levels below. A value a user gave is never
changed; when a value from a lower level would put off above on, that lower value moves to keep the
checkpoint's off/on ratio: `--threshold-on 0.25` over a calibrated pair 0.45/0.30 gives 0.25/0.167 (with the
default model's 0.3/0.2 ratio), a lone `--threshold-off 0.4` lifts an on of 0.3 to 0.6 (never above 1). Off
above on at one level (both flags, or one CSV row) is the user's contradiction: rejected with one line.

The CSV (species by code or common name, case-insensitive; blank lines and lines starting with `#` skipped):

    species,threshold,threshold_off        ← header; the third column is optional, and may be empty in a row
    Bananaquit,0.45,
    Setophaga_adelaidae,0.2,0.12
"""
from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Mapping
from pathlib import Path

from birdlive.errors import OptionError
from birdlive.model.config import ModelConfig

SpeciesThresholds = Mapping[int, tuple[float | None, float | None]]   # species index → (on, off); None: not set
HEADER = ("species", "threshold", "threshold_off")


def resolve_thresholds(cfg: ModelConfig, threshold_on: float | None = None, threshold_off: float | None = None,
                       species: SpeciesThresholds | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each species' (on, off), in label order, by the precedence in the module docstring."""
    ratio = cfg.threshold_off / cfg.threshold_on if cfg.threshold_on > 0 else 1.0
    on, off = [cfg.threshold_on] * cfg.num_classes, [cfg.threshold_off] * cfg.num_classes
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    flags = (threshold_on, threshold_off)
    _check_pair(*flags)
    levels: list[SpeciesThresholds] = [{index[lab]: (a, b) for lab, (a, b) in cfg.thresholds.items()},
                                       dict.fromkeys(range(cfg.num_classes), flags) if flags != (None, None) else {},
                                       species or {}]
    for level in levels:
        for k, (a, b) in level.items():
            _check_pair(a, b, f" for {cfg.labels[k]}")
            on[k], off[k] = (on[k] if a is None else a), (off[k] if b is None else b)
            if off[k] > on[k]:      # only one of the pair was given here: the other one (from below) gives way
                if b is None:
                    off[k] = on[k] * ratio
                else:
                    on[k] = min(1.0, off[k] / ratio) if ratio > 0 else 1.0
    return tuple(on), tuple(off)


def _check_pair(on: float | None, off: float | None, which: str = "") -> None:
    for name, v in (("threshold_on", on), ("threshold_off", off)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise OptionError(f"{name} {v:g} is outside 0–1{which}")
    if on is not None and off is not None and off > on:
        raise OptionError(f"threshold_off {off:g} exceeds threshold_on {on:g}{which}")


# ------------------------------------------------------------------------------------------ the CSV file

def load_thresholds(path: str | Path, labels: list[str], names: list[str]) -> dict[int, tuple[float, float | None]]:
    """`--thresholds FILE` → {species index: (on, off or None)}. Every problem is one `OptionError` line naming
    the file and line: missing file, wrong header, unknown species (with close names), a value that is not a
    number in 0–1, off above on, a species listed twice."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OptionError(f"{path}: no such thresholds file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"{path}: cannot read it as a text CSV ({getattr(e, 'strerror', None) or e})") from None
    lookup = _species_lookup(labels, names)
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    got = tuple(c.strip().lower() for c in header or ())
    if got not in (HEADER[:2], HEADER):
        raise OptionError(f"{path}, line 1: the header must be `species,threshold` (optionally `,threshold_off`), "
                          f"not `{','.join(header or ())}`")
    out: dict[int, tuple[float, float | None]] = {}
    first_line: dict[int, int] = {}
    for row in rows:
        where = f"{path}, line {rows.line_num}"
        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) > len(got):
            raise OptionError(f"{where}: {len(row)} columns, the header has {len(got)}")
        species, on_text, off_text = (row + ["", ""])[:3]
        k = lookup.get(species.strip().casefold())
        if k is None:
            raise OptionError(f"{where}: unknown species {species.strip()!r}{_suggest(species, labels, names)}")
        if k in out:
            raise OptionError(f"{where}: {labels[k]} is listed twice (first on line {first_line[k]})")
        on = _number(on_text, "threshold", where)
        off = _number(off_text, "threshold_off", where) if off_text.strip() else None
        if off is not None and off > on:
            raise OptionError(f"{where}: threshold_off {off:g} exceeds threshold {on:g}")
        out[k], first_line[k] = (on, off), rows.line_num
    return out


def write_thresholds(path: str | Path, cfg: ModelConfig) -> None:
    """The checkpoint's calibrated pairs as a CSV that `load_thresholds` reads (to edit and pass back)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for lab, (on, off) in cfg.thresholds.items():
            w.writerow([lab, f"{on:g}", f"{off:g}"])


def _species_lookup(labels: list[str], names: list[str]) -> dict[str, int]:
    lookup = {n.strip().casefold(): i for i, n in enumerate(names) if n}
    lookup.update({lab.casefold(): i for i, lab in enumerate(labels)})   # a code wins over a name
    return lookup


def _suggest(species: str, labels: list[str], names: list[str]) -> str:
    """ "; did you mean …?" from difflib over codes and common names (case-insensitive), or ""."""
    choices = {c.casefold(): c for c in [*labels, *(n for n in names if n)]}
    close = difflib.get_close_matches(species.strip().casefold(), list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(choices[c] for c in close)}?" if close else ""


def _number(text: str, column: str, where: str) -> float:
    if not text.strip():
        raise OptionError(f"{where}: no {column}")
    try:
        v = float(text)
    except ValueError:
        raise OptionError(f"{where}: {column} {text.strip()!r} is not a number") from None
    if not 0.0 <= v <= 1.0:     # NaN fails this too
        raise OptionError(f"{where}: {column} {text.strip()} is outside 0–1")
    return v
