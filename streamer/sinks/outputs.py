"""Outputs of a run, from the user's options: annotators (clips), sinks (CSV log, screen, exports, MQTT, the
recording's picture) and score sinks, in the order the runner must call them.

One place builds them for `listen`, `replay` and `analyze`, so the three commands offer the same outputs with the
same meaning. Each output's module is imported only when asked for (matplotlib and paho are slow to import).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from birdlive.errors import OptionError

from ..core.events import EventAnnotator, ScoreSink, Sink
from .console import EventPrinter, StreamReport
from .csvlog import CsvEventLog

if TYPE_CHECKING:
    from .mqtt import MqttLogin


@dataclass
class OutputOptions:
    csv: Path | None = None             # the event log (flushed and fsync'ed per row)
    db: Path | None = None              # the detection database (SQLite; committed per event)
    rotate: str = "none"                # "daily": one CSV per day
    live: bool | None = None            # rich live view; None: when stdout is a terminal
    quiet: bool = False                 # neither live view nor event lines (archive analysis)
    several: bool = False               # several streams: plain lines name their source
    model_name: str = "default"
    clips: Path | None = None           # a FLAC (and a PNG) per event
    clips_max_gb: float | None = None
    clips_keep_best: int = 3
    pictures: bool = True               # a spectrogram PNG beside each clip
    pre_roll_s: float = 1.5
    post_roll_s: float = 1.5
    plot: Path | None = None            # the whole recording's spectrogram with events and score tracks
    plot_recording: Path | None = None  # …of this recording
    plot_channel: int | None = None     # …this channel of it (replay --channel), else the mix
    raven: Path | None = None           # Raven Pro selection table
    audacity: Path | None = None        # Audacity label track
    jsonl: Path | None = None           # one JSON object per event
    mqtt: str | None = None             # HOST[:PORT], mqtt://HOST[:PORT] or mqtts://HOST[:PORT]
    mqtt_login: MqttLogin | None = None  # user, password, CA, client certificate; Home Assistant discovery
    summaries: bool = True              # one summary line per stream on stderr


@dataclass
class Outputs:
    annotators: list[EventAnnotator] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    score_sinks: list[ScoreSink] = field(default_factory=list)
    report: StreamReport | None = None

    def close(self) -> None:
        """Every output closed, even if one fails to (the first failure is raised after the rest)."""
        first: BaseException | None = None
        every: list[Sink | EventAnnotator | ScoreSink] = [*self.annotators, *self.sinks, *self.score_sinks]
        unique = {id(o): o for o in every}   # a plot is both kinds
        for out in unique.values():
            try:
                out.close()
            except BaseException as e:  # noqa: BLE001 - re-raised below, once the others are closed
                first = first or e
        if first is not None:
            raise first


def check_options(opts: OutputOptions) -> OutputOptions:
    """What can be refused before the model loads (seconds saved on a typo); returns `opts`."""
    if opts.mqtt is not None:
        from .mqtt import parse_target
        target = parse_target(opts.mqtt)
        if opts.mqtt_login is not None:
            opts.mqtt_login.check(target)
    elif opts.mqtt_login is not None:
        raise OptionError("the --mqtt-… options need --mqtt (the broker)")
    if opts.db is not None:
        from .database import connect
        connect(opts.db).close()        # created (or brought up to date) now, or refused in one line
    return opts


def build_outputs(opts: OutputOptions, cfg) -> Outputs:
    """The outputs `opts` asks for, for a model with config `cfg`. Files that cannot be written are refused here,
    before any audio is read, each with one error line (OptionError)."""
    out = Outputs()
    if opts.clips is not None:
        from .clips import ClipWriter
        out.annotators.append(ClipWriter(opts.clips, max_gb=opts.clips_max_gb, keep_best=opts.clips_keep_best,
                                         pictures=opts.pictures, fmin=cfg.fmin, fmax=_top_hz(cfg)))
    if opts.csv is not None:
        out.sinks.append(CsvEventLog(opts.csv, rotate=opts.rotate).open())   # first: on disk before it is shown
    if opts.db is not None:                                                   # also before the screen
        from .database import DetectionDatabase
        out.sinks.append(DetectionDatabase(opts.db, opts.model_name, list(cfg.labels), list(cfg.names),
                                           clips=opts.clips).open())
    if opts.raven is not None or opts.audacity is not None or opts.jsonl is not None:
        from . import exports
        if opts.raven is not None:
            out.sinks.append(exports.RavenTable(opts.raven, fmin=cfg.fmin, fmax=_top_hz(cfg)))
        if opts.audacity is not None:
            out.sinks.append(exports.AudacityLabels(opts.audacity, show_source=opts.several))
        if opts.jsonl is not None:
            out.sinks.append(exports.JsonlEvents(opts.jsonl))
    if opts.plot is not None:
        from .pictures import RecordingPlot
        if opts.plot_recording is None:
            raise OptionError(f"--plot {opts.plot}: which recording? (plot_recording)")
        plot = RecordingPlot(opts.plot, opts.plot_recording, [cfg.display_name(i) for i in range(cfg.num_classes)],
                             cfg.sample_rate, fmin=cfg.fmin, fmax=_top_hz(cfg), channel=opts.plot_channel)
        out.sinks.append(plot)
        out.score_sinks.append(plot)
    if opts.mqtt is not None:
        from .mqtt import MqttPublisher
        out.sinks.append(MqttPublisher(opts.mqtt, login=opts.mqtt_login))
    if not opts.quiet:
        out.sinks.append(_screen(opts))
    out.report = StreamReport(summaries=opts.summaries)
    out.sinks.append(out.report)
    return out


def _screen(opts: OutputOptions) -> Sink:
    live = sys.stdout.isatty() if opts.live is None else opts.live
    if live:
        from .liveview import LiveView
        return LiveView(model=opts.model_name)
    return EventPrinter(show_source=opts.several)


def _top_hz(cfg) -> float:
    return min(float(cfg.fmax), cfg.sample_rate / 2)
