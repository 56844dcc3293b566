"""The `birdlive` command: a thin typer layer over library calls.

Only typer is imported up front: `--help` and usage errors never wait for torch. Expected failures (a bad file,
an unknown device, not a checkpoint, a bad option) end as one `error:` line and exit status 1; anything else is
a bug, reported in one line that says where its traceback was written (BIRDLIVE_DEBUG=1 raises it instead).
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .options import GIVEN, ClipPicturesOpt, ComputeOpt, DetectorOptions, detector_options, mqtt_options

if TYPE_CHECKING:
    from birdlive.streamer.sinks.mqtt import MqttLogin

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Real-time bird-call detection from microphones or recordings.")


def _install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT and SIGTERM end the streams cleanly: open events are written, the exit status is 0."""
    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _load_scorer(detector, compute: str):
    from birdlive.streamer.core.scorer import load_scorer
    return load_scorer(detector.model, compute)


def _outputs(detector, several: bool, csv, rotate, live, clips, clips_max_gb, clip_pictures, raven, audacity, jsonl,
             mqtt, plot=None, plot_recording=None, channel=None, mqtt_login=None, db=None):
    from birdlive.streamer.sinks.outputs import OutputOptions, check_options
    return check_options(OutputOptions(
        csv=csv, rotate=rotate, live=live, several=several, model_name=detector.model or "default", clips=clips,
        clips_max_gb=clips_max_gb, pictures=clip_pictures, pre_roll_s=detector.pre_roll_s,
        post_roll_s=detector.post_roll_s, plot=plot, plot_recording=plot_recording, plot_channel=channel,
        raven=raven, audacity=audacity, jsonl=jsonl, mqtt=mqtt, mqtt_login=mqtt_login, db=db))


def _run(scorer, specs, options, stop, detector, max_open: int) -> None:
    """Every source through one runner and one scorer; exit status 1 if any stream failed."""
    from birdlive.streamer import make_runner
    from birdlive.streamer.sinks.outputs import build_outputs
    outputs = build_outputs(options, scorer.cfg)
    try:
        runner = make_runner(scorer, outputs.sinks, detector, stop=stop, max_open=max_open,
                             annotators=outputs.annotators, score_sinks=outputs.score_sinks)
        runner.run(specs)
    finally:
        outputs.close()
    if outputs.report is not None and outputs.report.failed:
        raise typer.Exit(1)


# Options replay and listen share beside the detector's (cli/options.py).
CsvOpt = typer.Option(None, "--csv", help="Append events to this CSV (flushed and fsync'ed per event).")
DbOpt = typer.Option(None, "--db", help="Store events and stream status in this SQLite database (committed per "
                                        "event; several detectors may share one; `birdlive serve` shows it).")
RotateOpt = typer.Option("none", help="'daily': one CSV per day, NAME-YYYY-MM-DD.csv.")
LiveOpt = typer.Option(None, "--live/--no-live", help="Rich live view (default when stdout is a terminal) or "
                                                      "one plain line per event.")
ClipsOpt = typer.Option(None, "--clips", help="Save each event's audio (FLAC, with pre- and post-roll) and a "
                                              "spectrogram PNG in this folder; the CSV row names the clip.")
ClipsMaxOpt = typer.Option(None, "--clips-max-gb", help="Cap the clips folder: oldest clips go first, the best "
                                                        "3 of each species stay.")
RavenOpt = typer.Option(None, "--raven", help="Write a Raven Pro selection table (tab-separated).")
AudacityOpt = typer.Option(None, "--audacity", help="Write an Audacity label track.")
JsonlOpt = typer.Option(None, "--jsonl", help="Append one JSON object per event (flushed per line).")
MqttOpt = typer.Option(None, "--mqtt", help="Publish events to an MQTT broker, HOST[:PORT] or mqtt(s)://HOST[:PORT], "
                                            "on birdlive/<source>/detection (retained status on birdlive/<source>/"
                                            "status).")


@app.command()
@detector_options
@mqtt_options
def replay(
    files: list[Path] = typer.Argument(..., help="Recordings: WAV, FLAC, OGG, MP3."),
    detector: DetectorOptions = GIVEN,
    realtime: bool = typer.Option(False, "--realtime", help="Replay at real-time pace instead of as fast as possible."),
    channel: Optional[int] = typer.Option(None, help="Use this channel of a multichannel file instead of a mix."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Files read at once (their windows share the "
                                                            "network's batches). --realtime reads one at a time."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw the recording's spectrogram with every event "
                                        "boxed and the species' score tracks under it (PNG; one recording)."),
    csv: Optional[Path] = CsvOpt, db: Optional[Path] = DbOpt, rotate: str = RotateOpt,
    live: Optional[bool] = LiveOpt,
    clips: Optional[Path] = ClipsOpt, clips_max_gb: Optional[float] = ClipsMaxOpt,
    clip_pictures: bool = ClipPicturesOpt, raven: Optional[Path] = RavenOpt,
    audacity: Optional[Path] = AudacityOpt, jsonl: Optional[Path] = JsonlOpt, mqtt: Optional[str] = MqttOpt,
    compute: str = ComputeOpt, mqtt_login: MqttLogin | None = None,
):
    """Detect bird calls in recordings, as fast as the machine allows (or at real-time pace).

    A file that cannot be read is reported in one line and the next one starts; the exit status is 1 if any
    file failed."""
    from birdlive.errors import OptionError

    if plot is not None and len(files) != 1:
        raise OptionError(f"--plot draws one recording; {len(files)} were given")
    settings = detector.settings()
    options = _outputs(settings, len(files) > 1, csv, rotate, live, clips, clips_max_gb, clip_pictures, raven,
                       audacity, jsonl, mqtt, plot=plot, plot_recording=files[0], channel=channel,
                       mqtt_login=mqtt_login, db=db)
    from birdlive.streamer import file_specs
    scorer = _load_scorer(settings, compute)
    stop = threading.Event()
    _install_stop_handlers(stop)
    specs = file_specs(files, scorer.cfg.sample_rate, realtime=realtime, channel=channel)
    _run(scorer, specs, options, stop, settings, max_open=1 if realtime else jobs)


@app.command()
@detector_options
@mqtt_options
def listen(
    device: Optional[list[str]] = typer.Option(None, "--device", "-d", help="Input device index or name substring "
                                               "(see `birdlive devices`); repeat for several microphones at once. "
                                               "Default: the system's default input (none with --url or --url-file)."),
    url: Optional[list[str]] = typer.Option(None, "--url", help="A network stream: RTSP camera, Icecast or HTTP "
                                            "stream, anything FFmpeg reads; repeatable, mixes with --device. "
                                            "Reopened with backoff when it drops; its password is never shown."),
    url_file: Optional[Path] = typer.Option(None, "--url-file", help="Stream URLs, one a line: a camera's "
                                            "password kept off the command line (which `ps` shows)."),
    detector: DetectorOptions = GIVEN,
    csv: Optional[Path] = CsvOpt, db: Optional[Path] = DbOpt, rotate: str = RotateOpt,
    live: Optional[bool] = LiveOpt,
    clips: Optional[Path] = ClipsOpt, clips_max_gb: Optional[float] = ClipsMaxOpt,
    clip_pictures: bool = ClipPicturesOpt, raven: Optional[Path] = RavenOpt,
    audacity: Optional[Path] = AudacityOpt, jsonl: Optional[Path] = JsonlOpt, mqtt: Optional[str] = MqttOpt,
    compute: str = ComputeOpt,
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    mqtt_login: MqttLogin | None = None,
):
    """Detect bird calls live from microphones, field recorders or network streams until Ctrl-C (or SIGTERM)."""
    from birdlive.streamer import SourceSpec
    from birdlive.streamer.sources import MicSource, UrlSource, check_url, read_url_file

    urls = [check_url(u) for u in url or []] + (read_url_file(url_file) if url_file is not None else [])
    wanted: list[str | None] = list(device) if device else ([] if urls else [None])
    settings = detector.settings()
    options = _outputs(settings, len(wanted) + len(urls) > 1, csv, rotate, live, clips, clips_max_gb, clip_pictures,
                       raven, audacity, jsonl, mqtt, mqtt_login=mqtt_login, db=db)
    scorer = _load_scorer(settings, compute)
    sources = [MicSource(int(d) if d is not None and d.strip().isdigit() else d, scorer.cfg.sample_rate)
               for d in wanted] + [UrlSource(u, scorer.cfg.sample_rate) for u in urls]
    stop = threading.Event()
    _install_stop_handlers(stop)
    if duration is not None:
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
    for s in sources:
        rates = f"{s.device_rate} Hz → {s.sample_rate} Hz" if isinstance(s, MicSource) else f"→ {s.sample_rate} Hz"
        print(f"listening on {s.name} ({rates}); Ctrl-C to stop", file=sys.stderr, flush=True)
    specs = [SourceSpec(s.name, (lambda s=s: s)) for s in sources]
    _run(scorer, specs, options, stop, settings, max_open=len(specs))


@app.command()
def devices():
    """List audio input devices (index, name, channels, default rate)."""
    from rich.console import Console
    from rich.table import Table

    from birdlive.streamer.sources import list_input_devices
    table = Table("index", "name", "host API", "channels", "default rate", "")
    for d in list_input_devices():
        table.add_row(str(d["index"]), d["name"], str(d["hostapi"]), str(d["max_input_channels"]),
                      f"{d['default_samplerate']:.0f}", "default" if d.get("is_default") else "")
    Console().print(table)


def _register_commands() -> None:
    """Commands that live in their own modules (each imports only typer at module level)."""
    from . import analyze_command, serve_command, summary_command, train_commands
    app.command("analyze")(analyze_command.analyze)
    app.command("serve")(serve_command.serve)
    app.command("summary")(summary_command.summary)
    for name in ("train", "evaluate", "calibrate", "augment_demo", "finetune", "export"):
        app.command(name.replace("_", "-"))(getattr(train_commands, name))


_register_commands()


def main() -> None:
    """Entry point: expected errors become one line and exit 1; a bug becomes one line and exit 2, with its
    traceback in a file (or raised, under BIRDLIVE_DEBUG=1). Usage errors and --help are typer's own. The
    library's warnings (logging) become one `warning: …` line each on stderr."""
    from birdlive.log import to_stderr
    to_stderr(tracebacks=bool(os.environ.get("BIRDLIVE_DEBUG")))
    try:
        app()
    except SystemExit as e:
        _exit(e.code)
    except Exception as e:
        from birdlive.errors import BirdliveError
        if isinstance(e, BirdliveError):
            _error_exit(str(e), 1)
        if isinstance(e, ModuleNotFoundError) and _needs_torch_extra(e):
            from birdlive.errors import TORCH_EXTRA
            command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
            _error_exit(f"birdlive {command} needs the torch extra: {TORCH_EXTRA}", 1)
        if isinstance(e, OSError) and e.filename is not None:   # a path the user gave: unwritable, missing, …
            _error_exit(f"{e.filename}: {e.strerror or e}", 1)
        if os.environ.get("BIRDLIVE_DEBUG"):
            raise
        _error_exit(f"unexpected {type(e).__name__}: {e} (a bug; traceback in {_save_traceback()}, or set "
                  f"BIRDLIVE_DEBUG=1)", 2)


def _needs_torch_extra(e: ModuleNotFoundError) -> bool:
    """A package of the torch extra is missing (the lean install): a path the commands' own checks missed."""
    from birdlive.errors import TORCH_EXTRA_MODULES
    return (e.name or "").split(".")[0] in TORCH_EXTRA_MODULES


# Libraries whose teardown at exit is slow (the interpreter frees their modules and objects one by one, the ONNX
# Runtime session with them): torch's took about 1 s of every `replay` (a fifth of a 120 s file's whole run);
# ONNX Runtime's and numpy's about 70 ms of CPU, a sixth of a 5 s clip's replay (measured, benchmarks/streaming.py's
# start-up row).
SLOW_TEARDOWN = ("torch", "onnxruntime", "numpy")


def _exit(code) -> None:
    """Leave without the interpreter's teardown once a library in SLOW_TEARDOWN is loaded. By now every sink is
    closed (CSV flushed and fsync'ed) and every source stopped; what Python's own exit would still do that matters
    is done here, in its order: say the message of a `sys.exit("…")`, wait for the threads that are not daemons
    (threading's own exit step, which first tells executors' threads to end), run the atexit functions, flush
    stdout and stderr."""
    if not any(name in sys.modules for name in SLOW_TEARDOWN):
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)    # as sys.exit("message") would
        code = 1
    threading._shutdown()   # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:             # a closed pipe (`birdlive replay … | head`): Python's exit reports it as it did
        sys.exit(code)
    os._exit(0 if code is None else code)


def _save_traceback() -> str:
    import tempfile
    fd, path = tempfile.mkstemp(prefix="birdlive-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exc(file=f)
    return path


def _error_exit(message: str, code: int) -> None:
    from birdlive.errors import one_line
    print(f"error: {one_line(message) or 'failed'}", file=sys.stderr, flush=True)
    sys.exit(code)
