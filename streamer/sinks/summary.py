"""A night in one table and one picture, from the CSV logs `--csv` writes: per species how often it was heard,
when first and last, the best confidence and that event's clip (`summarize`); and an hour-by-species activity
chart like BirdNET-Pi's daily chart (`activity_chart`).

Times are wall-clock where the log has them (live input, --realtime replay): the recorder's local time as written,
UTC offset included. A fast replay's log has stream time only (seconds from the start of each recording); there
"first" means the earliest (recording name, stream time): recorders name files by their start time
(20240501_040000.WAV), so that is the order they were made in.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Iterable

import numpy as np

from birdlive.errors import OptionError

REQUIRED = ("source", "species", "onset_s", "peak_conf")


@dataclass(frozen=True)
class Detection:
    """One row of an event log (the columns `summary` uses)."""
    source: str
    species: str
    name: str
    onset_s: float
    peak: float
    wall_onset: datetime | None = None      # timezone-aware
    clip: str | None = None


@dataclass(frozen=True)
class SpeciesSummary:
    species: str
    name: str
    count: int
    first: Detection
    last: Detection
    best: Detection                         # the highest peak confidence

    @property
    def best_conf(self) -> float:
        return self.best.peak

    @property
    def best_clip(self) -> str | None:
        return self.best.clip


# ---- reading logs
def read_event_logs(paths: Iterable[str | Path], min_conf: float = 0.0) -> list[Detection]:
    """Every row of every log whose peak confidence is at least `min_conf`; OptionError (one line) for a file
    that is missing or is not a birdlive event log."""
    if not 0.0 <= min_conf <= 1.0:
        raise OptionError(f"--min-conf must be from 0 to 1, not {min_conf}")
    return [d for path in paths for d in _read_log(Path(path)) if d.peak >= min_conf]


def _read_log(path: Path) -> list[Detection]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise OptionError(f"{path}: not a birdlive event log (no column {', '.join(missing)})")
            return [_detection(row, path, reader.line_num) for row in reader if any(v for v in row.values())]
    except FileNotFoundError:
        raise OptionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise OptionError(f"{path}: is a folder, not an event log") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise OptionError(f"{path}: not a birdlive event log ({e})") from None


def _detection(row: dict, path: Path, line: int) -> Detection:
    def number(column: str) -> float:
        try:
            return float(row[column])
        except (TypeError, ValueError):
            raise OptionError(f"{path}, line {line}: {column} is {row[column]!r}, not a number") from None

    return Detection(source=row["source"] or "", species=row["species"] or "",
                     name=row.get("common_name") or row["species"] or "", onset_s=number("onset_s"),
                     peak=number("peak_conf"), wall_onset=_wall_time(row.get("wall_onset"), path, line),
                     clip=row.get("clip") or None)


def _wall_time(text: str | None, path: Path, line: int) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise OptionError(f"{path}, line {line}: wall_onset {text!r} is not an ISO 8601 time") from None
    return t if t.tzinfo is not None else t.astimezone()     # a hand-made log without offset: local time


# ---- the table
def when_key(d: Detection) -> tuple:
    """Order of hearing: wall time where there is one (before any stream-time row), else (recording, time in it)."""
    return (0, d.wall_onset, "", 0.0) if d.wall_onset is not None else (1, None, d.source, d.onset_s)


def summarize(rows: list[Detection]) -> list[SpeciesSummary]:
    """One summary per species, most detections first (then by name)."""
    by_species: dict[str, list[Detection]] = {}
    for d in rows:
        by_species.setdefault(d.species, []).append(d)
    out = []
    for species, ds in by_species.items():
        timed = [d for d in ds if d.wall_onset is not None] or ds     # a species' wall times, where it has any
        ordered = sorted(timed, key=when_key)
        out.append(SpeciesSummary(species, ds[0].name, len(ds), ordered[0], ordered[-1],
                                  max(ds, key=lambda d: d.peak)))
    return sorted(out, key=lambda s: (-s.count, s.name.lower()))


def heard_at(d: Detection, with_date: bool = True, with_source: bool = False) -> str:
    """A detection's time for people: local wall time, or `H:MM:SS.s` of stream time (in which recording)."""
    if d.wall_onset is not None:
        return d.wall_onset.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    h, rest = divmod(d.onset_s, 3600)
    text = f"{int(h)}:{int(rest // 60):02d}:{rest % 60:04.1f}"
    return f"{text} in {PurePath(d.source).name}" if with_source else text


def days_covered(rows: list[Detection]) -> list[str]:
    return sorted({d.wall_onset.date().isoformat() for d in rows if d.wall_onset is not None})


# ---- the chart
@dataclass
class HourGrid:
    """Detections per species (rows, most first) and hour (columns)."""
    names: list[str]
    counts: np.ndarray          # (species, hours) int
    wall_clock: bool            # hours of the day (recorder's local time), or hours of stream time
    left_out: int               # rows without a wall time in a wall-clock grid
    more_species: int           # species beyond the chart's rows


def hour_grid(rows: list[Detection], max_species: int = 40) -> HourGrid:
    wall_clock = any(d.wall_onset is not None for d in rows)
    used = [d for d in rows if d.wall_onset is not None] if wall_clock else rows
    hour = (lambda d: d.wall_onset.hour) if wall_clock else (lambda d: int(d.onset_s // 3600))
    hours = 24 if wall_clock else max((hour(d) for d in used), default=0) + 1
    totals = Counter(d.species for d in used)
    names = {d.species: d.name for d in used}
    species = sorted(totals, key=lambda s: (-totals[s], names[s].lower()))
    shown = species[:max_species]
    index = {s: i for i, s in enumerate(shown)}
    counts = np.zeros((len(shown), hours), dtype=int)
    for d in used:
        if d.species in index:
            counts[index[d.species], hour(d)] += 1
    return HourGrid([names[s] for s in shown], counts, wall_clock, len(rows) - len(used), len(species) - len(shown))


def activity_chart(rows: list[Detection], png: str | Path, max_species: int = 40) -> Path:
    """Species × hour heatmap with the count in each cell, and each species' total as a bar beside it."""
    from matplotlib.figure import Figure     # the object API: no pyplot, no global backend, no figure registry

    png = Path(png)
    _check_picture_type(png)
    grid = hour_grid(rows, max_species)
    n = max(len(grid.names), 1)
    heat_w = max(0.42 * grid.counts.shape[1], 2.5)     # inches: a cell about square, a stream-time grid not a sliver
    fig = Figure(figsize=(1.6 + heat_w, 1.3 + 0.32 * n), layout="constrained")
    bars, heat = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, heat_w]})
    if not grid.names:
        heat.text(0.5, 0.5, "no detections", ha="center", va="center", transform=heat.transAxes, fontsize=14)
        heat.set_axis_off()
        bars.set_axis_off()
    else:
        _draw_totals(bars, grid)
        _draw_heatmap(heat, grid)
    fig.suptitle(_title(rows, grid), fontsize=12, x=0.01, ha="left")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    return png


def _draw_totals(ax, grid: HourGrid) -> None:
    """The names, and each species' total as a bar with its number (rows line up with the heatmap's)."""
    totals = grid.counts.sum(axis=1)
    y = np.arange(len(grid.names))
    ax.barh(y, totals, color="#4c9a5b", height=0.66)
    for yi, t in zip(y, totals):
        ax.text(t, yi, f" {t}", va="center", ha="left", fontsize=8)
    ax.set_xlim(0, totals.max() * 1.3)                 # room for the number after the longest bar
    ax.set_ylim(len(grid.names) - 0.5, -0.5)            # most detections on top, as in the heatmap
    ax.set_yticks(y, grid.names, fontsize=9)
    ax.tick_params(axis="y", length=0, pad=4)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _draw_heatmap(ax, grid: HourGrid) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm
    counts = grid.counts
    cmap = colormaps["YlGn"].with_extremes(bad="#f4f4f4")    # an hour without the species: grey, no colour
    norm = PowerNorm(0.5, vmin=0, vmax=max(int(counts.max()), 1))   # one call stays visible beside a chorus
    ax.imshow(np.ma.masked_equal(counts, 0), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for (r, c), v in np.ndenumerate(counts):
        if v:
            ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                    color="white" if norm(v) > 0.6 else "#1b1b1b")
    hours = counts.shape[1]
    ax.set_xticks(np.arange(hours), [f"{h:02d}" if grid.wall_clock else str(h) for h in range(hours)], fontsize=8)
    ax.set_xticks(np.arange(-0.5, hours), minor=True)
    ax.set_yticks(np.arange(-0.5, len(grid.names)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="both", length=0)
    ax.tick_params(axis="y", labelleft=False)
    ax.set_xlabel("hour of the day (recorder's local time)" if grid.wall_clock
                  else "hour of stream time (from the start of each recording)", fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _title(rows: list[Detection], grid: HourGrid) -> str:
    days = days_covered(rows)
    when = ("" if not days else days[0] if len(days) == 1 else f"{days[0]} – {days[-1]} ({len(days)} days)")
    species = len(grid.names) + grid.more_species
    title = "  ·  ".join(part for part in ("birdlive", when, f"{len(rows) - grid.left_out} detections of {species} "
                                                            f"species") if part)
    notes = []
    if not grid.wall_clock and rows:
        notes.append("no wall-clock times in the log: hours of stream time")
    if grid.more_species:
        notes.append(f"the {len(grid.names)} most detected shown")
    if grid.left_out:
        notes.append(f"{grid.left_out} detections without wall time left out")
    return title + ("\n" + "; ".join(notes) if notes else "")


def _check_picture_type(png: Path) -> None:
    from matplotlib.backend_bases import FigureCanvasBase
    kinds = FigureCanvasBase.get_supported_filetypes()
    if png.suffix.lower().lstrip(".") not in kinds:
        raise OptionError(f"--plot {png}: not a picture type matplotlib writes; use one of "
                          f".{', .'.join(sorted(kinds))}")
