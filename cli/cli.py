"""The `birdlive` command: a thin typer layer over library calls.

Every expected failure (bad file, unknown device, not a checkpoint, …) ends as one red line on stderr and exit
status 1; set BIRDLIVE_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Real-time bird-call detection from a microphone or recordings.")
err = Console(stderr=True)


def _install_stop_handlers(stop: threading.Event, on_stop=None) -> None:
    """SIGINT and SIGTERM end the stream cleanly: the loop sees `stop`, flushes open events, and exits 0."""
    def handler(signum, frame):
        stop.set()
        if on_stop is not None:
            on_stop()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _load_model(model: Optional[Path], compute: str):
    from birdlive.model import DEFAULT_CHECKPOINT, load_checkpoint, pick_device
    return load_checkpoint(model or DEFAULT_CHECKPOINT, device=pick_device(compute))


def _sinks(csv: Optional[Path], rotate: str, live: Optional[bool], device: str, model_name: str):
    from birdlive.streamer import CsvEventLog, EventPrinter
    sinks = []
    if csv is not None:
        sinks.append(CsvEventLog(csv, rotate=rotate).open())   # first: on disk before it is shown
    if live is None:
        live = sys.stdout.isatty()
    if live:
        from birdlive.streamer.liveview import LiveView
        sinks.append(LiveView(device=device, model=model_name))
    else:
        sinks.append(EventPrinter())
    return sinks


def _detector(model, hop, threshold_on, threshold_off, min_duration, merge_gap, include, exclude, min_conf, source):
    from birdlive.streamer import EventFilter, StreamDetector, default_params
    params = default_params(model, threshold_on=threshold_on, threshold_off=threshold_off,
                            min_duration_s=min_duration, merge_gap_s=merge_gap)
    return StreamDetector(model, hop_s=hop, params=params, source=source,
                          event_filter=EventFilter(include, exclude, min_conf))


def _summary(status) -> None:
    st = status.source_stats
    err.print(f"[dim]{status.source}: {status.audio_s:.1f} s audio in {status.wall_s:.1f} s "
              f"({status.realtime_factor:.1f}× real time), {status.events} events, "
              f"overflows {st.get('overflows', 0)}, dropped blocks {st.get('dropped_blocks', 0)}, "
              f"skipped windows {status.skipped_windows}[/]", highlight=False)


# Options shared by replay and listen.
ModelOpt = typer.Option(None, "--model", "-m", help="Checkpoint (STEM, STEM.safetensors or a training run folder). "
                                                    "Default: the embedded model.")
HopOpt = typer.Option(1.0, help="Seconds between window starts (windows are the model's length, 5 s).")
CsvOpt = typer.Option(None, "--csv", help="Append events to this CSV (flushed and fsync'ed per event).")
RotateOpt = typer.Option("none", help="'daily': one CSV per day, NAME-YYYY-MM-DD.csv.")
LiveOpt = typer.Option(None, "--live/--no-live", help="Rich live view (default when stdout is a terminal) or "
                                                      "one plain line per event.")
OnOpt = typer.Option(None, help="Score at which an event starts (default: the checkpoint's).")
OffOpt = typer.Option(None, help="Score below which an event ends (default: the checkpoint's).")
MinDurOpt = typer.Option(None, help="Drop events shorter than this (seconds).")
GapOpt = typer.Option(None, help="Merge events of one species closer than this (seconds).")
IncludeOpt = typer.Option(None, "--include", help="Only these species (code or common name; repeatable).")
ExcludeOpt = typer.Option(None, "--exclude", help="Never these species (repeatable).")
MinConfOpt = typer.Option(0.0, help="Drop events whose peak score is below this.")
ComputeOpt = typer.Option("auto", help="Where the network runs: auto (CUDA if present), cpu, cuda.")


@app.command()
def replay(
    files: list[Path] = typer.Argument(..., help="Recordings: WAV, FLAC, OGG, MP3."),
    model: Optional[Path] = ModelOpt,
    realtime: bool = typer.Option(False, "--realtime", help="Replay at real-time pace instead of as fast as possible."),
    channel: Optional[int] = typer.Option(None, help="Use this channel of a multichannel file instead of a mix."),
    hop: float = HopOpt, csv: Optional[Path] = CsvOpt, rotate: str = RotateOpt, live: Optional[bool] = LiveOpt,
    threshold_on: Optional[float] = OnOpt, threshold_off: Optional[float] = OffOpt,
    min_duration: Optional[float] = MinDurOpt, merge_gap: Optional[float] = GapOpt,
    include: Optional[list[str]] = IncludeOpt, exclude: Optional[list[str]] = ExcludeOpt,
    min_conf: float = MinConfOpt, compute: str = ComputeOpt,
):
    """Detect bird calls in recordings, as fast as the machine allows (or at real-time pace)."""
    from birdlive.streamer import run_stream
    from birdlive.streamer.sources import FileSource

    net = _load_model(model, compute)
    stop = threading.Event()
    _install_stop_handlers(stop)
    sinks = _sinks(csv, rotate, live, "", str(model or "default"))
    try:
        for path in files:
            # Big blocks when replaying fast: several windows go through the network as one batch.
            source = FileSource(path, net.cfg.sample_rate, block_s=1.0 if realtime else 16.0, realtime=realtime,
                                channel=channel)
            try:
                det = _detector(net, hop, threshold_on, threshold_off, min_duration, merge_gap, include, exclude,
                                min_conf, str(path))
                _summary(run_stream(source, det, sinks, stop))
            finally:
                source.close()
            if stop.is_set():
                break
    finally:
        for s in sinks:
            s.close()


@app.command()
def listen(
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Input device index or name substring "
                                                                      "(see `birdlive devices`). Default: system default."),
    model: Optional[Path] = ModelOpt,
    hop: float = HopOpt, csv: Optional[Path] = CsvOpt, rotate: str = RotateOpt, live: Optional[bool] = LiveOpt,
    threshold_on: Optional[float] = OnOpt, threshold_off: Optional[float] = OffOpt,
    min_duration: Optional[float] = MinDurOpt, merge_gap: Optional[float] = GapOpt,
    include: Optional[list[str]] = IncludeOpt, exclude: Optional[list[str]] = ExcludeOpt,
    min_conf: float = MinConfOpt, compute: str = ComputeOpt,
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds of audio."),
):
    """Detect bird calls live from a microphone or field recorder until Ctrl-C (or SIGTERM)."""
    from birdlive.streamer import run_stream
    from birdlive.streamer.sources import MicSource

    net = _load_model(model, compute)
    dev = int(device) if device is not None and device.strip().isdigit() else device
    source = MicSource(dev, net.cfg.sample_rate)
    stop = threading.Event()
    _install_stop_handlers(stop, source.stop)
    if duration is not None:
        timer = threading.Timer(duration, lambda: (stop.set(), source.stop()))
        timer.daemon = True
        timer.start()
    sinks = _sinks(csv, rotate, live, source.name, str(model or "default"))
    try:
        det = _detector(net, hop, threshold_on, threshold_off, min_duration, merge_gap, include, exclude, min_conf,
                        source.name)
        err.print(f"[dim]listening on {source.name} ({source.device_rate} Hz → {source.sample_rate} Hz); "
                  f"Ctrl-C to stop[/]", highlight=False)
        _summary(run_stream(source, det, sinks, stop))
    finally:
        source.close()
        for s in sinks:
            s.close()


@app.command()
def devices():
    """List audio input devices (index, name, channels, default rate)."""
    from rich.table import Table

    from birdlive.streamer.sources import list_input_devices
    table = Table("index", "name", "host API", "channels", "default rate", "")
    for d in list_input_devices():
        table.add_row(str(d["index"]), d["name"], str(d["hostapi"]), str(d["max_input_channels"]),
                      f"{d['default_samplerate']:.0f}", "default" if d.get("is_default") else "")
    Console().print(table)


def _register_training_commands() -> None:
    try:
        from . import train_commands
    except ImportError:  # training commands not present in this build
        return
    for name in ("train", "evaluate", "augment_demo"):
        fn = getattr(train_commands, name, None)
        if fn is not None:
            app.command(name.replace("_", "-"))(fn)


_register_training_commands()


def main() -> None:
    """Entry point: expected errors become one line; unexpected ones too, unless BIRDLIVE_DEBUG is set.

    Usage errors, --help and Ctrl-C before the stream starts are typer's own (standalone mode)."""
    from birdlive.model import CheckpointError
    from birdlive.streamer.sources import AudioSourceError
    try:
        app()
    except (AudioSourceError, CheckpointError, ValueError, OSError) as e:
        _one_line(str(e), 1)
    except Exception as e:  # a bug: still one line for the user, the traceback on request
        if os.environ.get("BIRDLIVE_DEBUG"):
            raise
        _one_line(f"{type(e).__name__}: {e} (set BIRDLIVE_DEBUG=1 for the traceback)", 2)


def _one_line(message: str, code: int) -> None:
    lines = message.strip().splitlines()
    err.print(f"[bold red]error:[/] {lines[0] if lines else 'failed'}", highlight=False, soft_wrap=True)
    sys.exit(code)
