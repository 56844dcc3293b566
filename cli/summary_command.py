"""`birdlive summary night.csv [more.csv …] [--plot activity.png] [--min-conf X]`: a thin wrapper over
`birdlive.streamer.sinks.summary`.

Registered by app.py: app.command("summary")(summary).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

COLUMNS = ("species", "code", "count", "first heard", "last heard", "best conf", "best clip")


def summary(
    csvs: List[Path] = typer.Argument(..., metavar="CSV", help="Event logs written by --csv (several: one "
                                      "night's rotated files, several nights, several recorders)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw an hour-by-species activity chart (PNG)."),
    min_conf: float = typer.Option(0.0, "--min-conf", help="Count only detections whose peak score is at least "
                                                           "this."),
):
    """Per species: detections, first and last heard, best confidence and its clip; optionally an activity chart.

    Wall-clock times where the log has them (live input, --realtime replay), else stream time."""
    from birdlive.streamer.sinks.summary import activity_chart, days_covered, read_event_logs, summarize

    rows = read_event_logs(csvs, min_conf=min_conf)     # OptionError (one line) for a missing or garbled log
    species = summarize(rows)
    with_date = len(days_covered(rows)) > 1
    several_sources = len({d.source for d in rows}) > 1
    table = [_row(s, with_date, several_sources) for s in species]
    if sys.stdout.isatty():
        _print_rich(table, f"{len(rows)} detections of {len(species)} species")
    else:
        _print_plain(table)
    if plot is not None:
        activity_chart(rows, plot)
        print(f"activity chart: {plot}", file=sys.stderr)


def _row(s, with_date: bool, with_source: bool) -> list[str]:
    from birdlive.streamer.sinks.summary import heard_at
    return [s.name, s.species, str(s.count), heard_at(s.first, with_date, with_source),
            heard_at(s.last, with_date, with_source), f"{s.best_conf:.3f}", s.best_clip or ""]


def _print_rich(table: list[list[str]], caption: str) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(*COLUMNS, caption=caption)
    for col in (2, 5):
        t.columns[col].justify = "right"
    for col in (3, 4):
        t.columns[col].no_wrap = True           # a time is read whole
    t.columns[6].overflow = "fold"              # a clip's path stays complete, to copy into a player
    for row in table:
        t.add_row(*row[:-1], row[-1] or "—")
    Console().print(t)


def _print_plain(table: list[list[str]]) -> None:
    """Tab-separated with a header: for pipes, scripts and spreadsheets."""
    print("\t".join(COLUMNS))
    for row in table:
        print("\t".join(row))
