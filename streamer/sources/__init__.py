"""Where audio comes from: microphones (PortAudio devices, their timeline and wall clock: devices.py,
timeline.py, microphone.py), network streams (url.py: decoded through PyAV, on the same timeline) and recordings
(files.py: read through the package's one decoder, birdlive.audio), as sources the runner opens in their own
threads. Each yields `birdlive.audio.AudioBlock`s."""
from birdlive.audio import AudioBlock, AudioSourceError, FileSource

from .devices import list_input_devices, resolve_input_device
from .files import file_specs
from .microphone import MicSource
from .url import UrlSource, check_url, read_url_file, redact

__all__ = ["AudioBlock", "AudioSourceError", "FileSource", "MicSource", "UrlSource", "check_url", "file_specs",
           "list_input_devices", "read_url_file", "redact", "resolve_input_device"]
