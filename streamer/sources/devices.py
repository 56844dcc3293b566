"""PortAudio input devices: listing them, finding one by index or name, and re-initialising PortAudio to
rescan (which closes every open stream in the process, so it is done here, under one lock, for every MicSource).

``sounddevice`` (and hence the PortAudio C library) is imported lazily, only by the functions that need a live
device, so that file replay works on machines without PortAudio.
"""

from __future__ import annotations

import threading

import numpy as np

from birdlive.audio import AudioSourceError
from birdlive.errors import one_line

PORTAUDIO_MISSING = "PortAudio library not found: install it with `apt-get install libportaudio2`"
SEE_DEVICES = "run `birdlive devices` to list input devices"


def sounddevice_module():
    """Import sounddevice lazily; a missing PortAudio becomes AudioSourceError."""
    try:
        import sounddevice
    except OSError:
        raise AudioSourceError(PORTAUDIO_MISSING) from None
    return sounddevice


def default_input_index(sd) -> int | None:
    try:
        idx = sd.default.device[0]
    except Exception:
        idx = -1
    if idx is None or int(idx) < 0:
        try:
            idx = int(sd.query_devices(kind="input")["index"])
        except Exception:
            return None
    return int(idx)


def list_input_devices() -> list[dict]:
    """All PortAudio devices that can record: like ``python -m sounddevice``, inputs only."""
    sd = sounddevice_module()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as e:
        raise AudioSourceError(f"cannot query audio devices: {one_line(e)}") from None
    default = default_input_index(sd)
    out = []
    for i, d in enumerate(devices):
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        try:
            api = hostapis[d["hostapi"]]["name"]
        except Exception:
            api = str(d.get("hostapi"))
        out.append(
            {
                "index": i,
                "name": d["name"],
                "hostapi": api,
                "max_input_channels": int(d["max_input_channels"]),
                "default_samplerate": float(d["default_samplerate"]),
                "is_default": i == default,
            }
        )
    return out


def resolve_input_device(spec: int | str | None) -> int | None:
    """Device index for ``spec``: None (system default), an index, or a
    case-insensitive substring of the device name."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip() == "":
        return None
    devices = list_input_devices()
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdigit()):
        idx = int(spec)
        for d in devices:
            if d["index"] == idx:
                return idx
        raise AudioSourceError(f"no input device with index {idx}; {SEE_DEVICES}")
    if not isinstance(spec, str):
        raise AudioSourceError(f"invalid input device {spec!r}; {SEE_DEVICES}")
    want = spec.strip().lower()
    exact = [d for d in devices if d["name"].lower() == want]
    if len(exact) == 1:
        return exact[0]["index"]
    matches = exact or [d for d in devices if want in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]["index"]
    if not matches:
        raise AudioSourceError(f"no input device matches '{spec}'; {SEE_DEVICES}")
    listing = ", ".join(f"{d['index']}: {d['name']}" for d in matches[:8])
    raise AudioSourceError(
        f"input device '{spec}' is ambiguous ({listing}); pass the index instead"
    )


# PortAudio rescans devices only by terminating and re-initialising the library, and Pa_Terminate closes (and
# frees) every stream open in the process. So every PortAudio call a MicSource makes goes through PA_LOCK, a
# re-initialisation first closes the other sources' streams itself (no stale pointer is ever used afterwards),
# and PA_STATE["gen"] counts re-initialisations so those sources notice and reopen their own streams.
PA_LOCK = threading.RLock()
PA_STATE = {"gen": 0}
OPEN_SOURCES: set = set()  # MicSources with an open stream


def reinit_portaudio(sd) -> None:
    """Rescan devices. Closes every MicSource's stream first: Pa_Terminate would free them under their owners."""
    with PA_LOCK:
        for src in list(OPEN_SOURCES):
            src._close_stream()
        try:
            if getattr(sd, "_initialized", 1):
                sd._terminate()
        except Exception:
            pass
        PA_STATE["gen"] += 1
        sd._initialize()
