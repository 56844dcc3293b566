"""Options more than one command takes, declared once.

`detector_options` gives a command the one group of detector options (`--model`, `--hop`, the thresholds, the
species filters, the event audio's pre- and post-roll): `replay`, `listen` and `analyze` offer the same options
with the same meaning, and each gets them in its `detector` parameter, to turn into one checked
`DetectorSettings` when it is ready to (`detector.settings()`: after the checks that need no model).
"""
import functools
import inspect
from pathlib import Path
from typing import Callable, List, Optional

import typer

DETECTOR = "Detector (replay, listen and analyze alike)"     # their panel in --help


def _detector(default, *names: str, help: str):
    return typer.Option(default, *names, help=help, rich_help_panel=DETECTOR)


ModelOpt = _detector(None, "--model", "-m", help="Checkpoint (STEM, STEM.safetensors or a training run folder). "
                                                 "Default: the embedded model.")
HopOpt = _detector(1.0, help="Seconds between window starts (windows are the model's length, 5 s).")
OnOpt = _detector(None, help="Score at which an event starts, for every species not in --thresholds (default: the "
                             "checkpoint's per-species values).")
OffOpt = _detector(None, help="Score below which an event ends (default: the checkpoint's).")
ThresholdsOpt = _detector(None, "--thresholds", help="CSV `species,threshold[,threshold_off]`: per-species values; "
                                                     "they win over --threshold-on/off.")
MinDurOpt = _detector(None, help="Drop events shorter than this (seconds).")
GapOpt = _detector(None, help="Merge events of one species closer than this (seconds).")
IncludeOpt = _detector(None, "--include", help="Only these species (code or common name; repeatable).")
ExcludeOpt = _detector(None, "--exclude", help="Never these species (repeatable).")
MinConfOpt = _detector(0.0, help="Drop events whose peak score is below this.")
RegionOpt = _detector(None, "--region", help="Only the species of this region (puerto-rico, north-america; the "
                                             "checkpoint's region table).")
LatOpt = _detector(None, "--lat", help="Latitude of the microphone: only the species of its region (with --lon).")
LonOpt = _detector(None, "--lon", help="Longitude of the microphone (with --lat).")
SpeciesListOpt = _detector(None, "--species-list", help="A file of species, one a line (labels, scientific or "
                                                        "common names, or BirdNET's 'Scientific_Common' lines): "
                                                        "events of these only.")
PreRollOpt = _detector(1.5, "--pre-roll", help="Seconds of audio kept before an event (clips, event audio).")
PostRollOpt = _detector(1.5, "--post-roll", help="Seconds of audio kept after an event.")

ComputeOpt = typer.Option("auto", help="Where the network runs: auto (CUDA if torch sees a GPU, else ONNX Runtime "
                                        "where the checkpoint has a graph, else torch on the CPU), onnx (its int8 "
                                        "graph where there is one), onnx-float, cpu (torch), cuda, cuda:N.")
ClipPicturesOpt = typer.Option(True, "--clip-pictures/--no-clip-pictures", help="A spectrogram PNG beside each clip.")

# name, type, default (typer.Option): the group `detector_options` adds to a command, in --help's order.
DETECTOR_OPTIONS: list[tuple[str, object, object]] = [
    ("model", Optional[Path], ModelOpt), ("hop", float, HopOpt),
    ("threshold_on", Optional[float], OnOpt), ("threshold_off", Optional[float], OffOpt),
    ("thresholds", Optional[Path], ThresholdsOpt),
    ("min_duration", Optional[float], MinDurOpt), ("merge_gap", Optional[float], GapOpt),
    ("include", Optional[List[str]], IncludeOpt), ("exclude", Optional[List[str]], ExcludeOpt),
    ("min_conf", float, MinConfOpt), ("region", Optional[str], RegionOpt), ("lat", Optional[float], LatOpt),
    ("lon", Optional[float], LonOpt), ("species_list", Optional[Path], SpeciesListOpt),
    ("pre_roll", float, PreRollOpt), ("post_roll", float, PostRollOpt),
]


def detector_options(command: Callable) -> Callable:
    """Adds the detector options to `command`, which takes them as one `DetectorOptions` in `detector`."""
    return _option_group(command, "detector", DETECTOR_OPTIONS, DetectorOptions)


def mqtt_options(command: Callable) -> Callable:
    """Adds the MQTT login options to `command`, which takes them as one `MqttLogin` (or None) in `mqtt_login`."""
    return _option_group(command, "mqtt_login", MQTT_OPTIONS, _mqtt_login)


def _option_group(command: Callable, param: str, options: list[tuple[str, object, object]],
                  make: Callable[[dict], object]) -> Callable:
    """`command` with `options` instead of its parameter `param`, which gets `make(their values)`."""
    sig = inspect.signature(command)        # its own annotations stay strings: typer resolves them (get_type_hints)
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
             for name, kind, default in options]
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != param]

    @functools.wraps(command)
    def run(**values):
        values[param] = make({name: values.pop(name) for name, _, _ in options})
        return command(**values)

    run.__signature__ = sig.replace(parameters=own + added)     # type: ignore[attr-defined]
    # `param` is not an option: its annotation (a name the command imports only for type checkers) goes too
    run.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != param}
    return run


MQTT = "MQTT (with --mqtt)"


def _mqtt(names: str, help: str, default=None):
    return typer.Option(default, names, help=help, rich_help_panel=MQTT)


# The password never comes from the command line (`ps` shows it to every user): $BIRDLIVE_MQTT_PASSWORD or a file.
MQTT_OPTIONS: list[tuple[str, object, object]] = [
    ("mqtt_user", Optional[str], _mqtt("--mqtt-user", "User name at the broker; the password comes from "
                                       "$BIRDLIVE_MQTT_PASSWORD or --mqtt-password-file.")),
    ("mqtt_password_file", Optional[Path], _mqtt("--mqtt-password-file", "A file whose first line is the password.")),
    ("mqtt_ca", Optional[Path], _mqtt("--mqtt-ca", "CA certificate (PEM) that signed the broker's (mqtts:// only; "
                                      "default: the system's CAs).")),
    ("mqtt_cert", Optional[Path], _mqtt("--mqtt-cert", "Client certificate (PEM), where the broker asks for one.")),
    ("mqtt_key", Optional[Path], _mqtt("--mqtt-key", "The client certificate's key (PEM).")),
    ("mqtt_discovery", bool, _mqtt("--mqtt-discovery", "Announce each source to Home Assistant (MQTT discovery): a "
                                   "device with last species, confidence and detections today.", False)),
]


def _mqtt_login(values: dict):
    if not any(values.values()):
        return None
    from birdlive.streamer.sinks.mqtt import MqttLogin
    return MqttLogin(user=values["mqtt_user"], password_file=values["mqtt_password_file"], ca=values["mqtt_ca"],
                     cert=values["mqtt_cert"], key=values["mqtt_key"], discovery=values["mqtt_discovery"])


class DetectorOptions:
    """The detector options as given on the command line."""

    def __init__(self, values: dict):
        self.values = values

    def settings(self):
        """One checked `DetectorSettings` (the checkpoint's config is read: one `error:` line for a bad value)."""
        return detector_settings(**self.values)


def detector_settings(model: Optional[Path] = None, hop: float = 1.0, threshold_on: Optional[float] = None,
                      threshold_off: Optional[float] = None, thresholds: Optional[Path] = None,
                      min_duration: Optional[float] = None, merge_gap: Optional[float] = None,
                      include: Optional[List[str]] = None, exclude: Optional[List[str]] = None,
                      min_conf: float = 0.0, region: Optional[str] = None, lat: Optional[float] = None,
                      lon: Optional[float] = None, species_list: Optional[Path] = None, pre_roll: float = 1.5,
                      post_roll: float = 1.5):
    from birdlive.streamer.core.settings import DetectorSettings
    place = dict(region=region, lat=lat, lon=lon, species_list=species_list)
    return DetectorSettings.checked(model, thresholds, place=place, hop_s=hop, threshold_on=threshold_on,
                                    threshold_off=threshold_off, min_duration_s=min_duration, merge_gap_s=merge_gap,
                                    include=tuple(include or ()), exclude=tuple(exclude or ()), min_conf=min_conf,
                                    pre_roll_s=pre_roll, post_roll_s=post_roll)


# A command's `detector` default, for Python's sake: `detector_options` always passes what the user gave.
GIVEN = DetectorOptions({})
