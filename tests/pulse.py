"""A private PulseAudio server with a null sink: a real capture device for tests.

Audio played into the null sink (``paplay --device=<sink>``) comes back out of
its monitor source, which PortAudio sees through the ALSA ``pulse`` plugin
(device name ``pulse``).  Nothing on the machine is touched: the daemon runs
with its own runtime dir and socket under a temp dir and is reached through
``PULSE_SERVER``, which this helper sets in ``os.environ`` while it runs.

Needs the Debian packages listed in ``.ci/apt-packages.txt`` (pulseaudio,
pulseaudio-utils, libasound2-plugins, libportaudio2).  Works as root.

    with PulseNullSink() as pa:
        src = MicSource(pa.device, 32000)
        pa.play(wav_path)            # async; returns the paplay Popen
        pa.upload_sample(wav_path, "x"); t0, t1 = pa.play_sample("x")   # starts between t0 and t1
        pa.unload_sink(); pa.load_sink()   # simulate a device vanishing

``pulse_null_sink()`` is the same as a context manager that calls
``pytest.skip`` with the reason when something is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SINK = "birdlive_null"
PORTAUDIO_DEVICE = "pulse"  # ALSA pcm from libasound2-plugins (50-pulseaudio.conf)


class PulseUnavailable(RuntimeError):
    """PulseAudio / PortAudio / the ALSA pulse plugin is not usable here."""


def _missing_requirements() -> str | None:
    for tool, pkg in (("pulseaudio", "pulseaudio"), ("pactl", "pulseaudio-utils"),
                      ("paplay", "pulseaudio-utils")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install {pkg})"
    plugin_dirs = ["/usr/lib/x86_64-linux-gnu/alsa-lib", "/usr/lib/aarch64-linux-gnu/alsa-lib",
                   "/usr/lib/alsa-lib", "/usr/lib64/alsa-lib"]
    if not any(os.path.exists(os.path.join(d, "libasound_module_pcm_pulse.so")) for d in plugin_dirs):
        return "ALSA pulse plugin not found (apt-get install libasound2-plugins)"
    import ctypes.util
    if ctypes.util.find_library("portaudio") is None:
        return "PortAudio not found (apt-get install libportaudio2)"
    return None


def _rescan_portaudio() -> None:
    """PortAudio enumerates devices once at init; rescan if already imported. Through birdlive's own rescan when
    it is loaded: that one closes open MicSource streams first and tells them to reopen (a bare Pa_Terminate
    would free their streams under them)."""
    sd = sys.modules.get("sounddevice")
    if sd is None:
        return
    sources = sys.modules.get("birdlive.streamer.sources.devices")
    try:
        if sources is not None and hasattr(sources, "reinit_portaudio"):
            sources.reinit_portaudio(sd)
        else:
            sd._terminate()
            sd._initialize()
    except Exception:
        pass


class PulseNullSink:
    def __init__(self, sink: str = SINK, rate: int = 48000, channels: int = 2):
        self.sink = sink
        self.source = f"{sink}.monitor"
        self.device = PORTAUDIO_DEVICE
        self.rate = rate
        self.channels = channels
        self.tmp: str | None = None
        self.proc: subprocess.Popen | None = None
        self.server: str | None = None
        self.module_id: str | None = None
        self._saved_env: dict[str, str | None] = {}
        self._log = None

    # -- environment for clients (pactl, paplay, this process's libpulse)
    def env(self) -> dict:
        e = dict(os.environ)
        e.update(self._client_env())
        return e

    def _client_env(self) -> dict:
        return {
            "PULSE_SERVER": self.server,
            "PULSE_CLIENTCONFIG": os.path.join(self.tmp, "client.conf"),
            "PULSE_SOURCE": self.source,
            "PULSE_SINK": self.sink,
        }

    def pactl(self, *args: str, check: bool = True, timeout: float = 10) -> str:
        r = subprocess.run(["pactl", *args], env=self.env(), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise PulseUnavailable(f"pactl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    # -- lifecycle
    def start(self, timeout: float = 15.0) -> "PulseNullSink":
        why = _missing_requirements()
        if why:
            raise PulseUnavailable(why)
        self.tmp = tempfile.mkdtemp(prefix="birdlive-pulse-")
        os.makedirs(os.path.join(self.tmp, "runtime"), mode=0o700)
        self.server = f"unix:{os.path.join(self.tmp, 'native')}"
        with open(os.path.join(self.tmp, "client.conf"), "w") as f:
            f.write("autospawn = no\n")
        try:
            self._spawn(timeout)
        except BaseException:
            self.stop()
            raise
        # make this process's libpulse (via the ALSA plugin) talk to our server
        for k, v in self._client_env().items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v
        _rescan_portaudio()
        return self

    def command(self) -> list[str]:
        """The pulseaudio command line (what CI / README can run by hand)."""
        sock = os.path.join(self.tmp, "native")
        return [
            "pulseaudio", "-n", "--daemonize=no", "--use-pid-file=no", "--system=no",
            "--exit-idle-time=-1", "--disallow-exit", "--realtime=no", "--high-priority=no",
            "--fail=yes", "--log-target=stderr", "--log-level=warning",
            "-L", f"module-native-protocol-unix socket={sock} auth-anonymous=1",
            "-L", self._sink_args(),
        ]

    def _spawn(self, timeout: float) -> None:
        runtime = os.path.join(self.tmp, "runtime")
        sock = os.path.join(self.tmp, "native")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        denv = dict(os.environ)
        denv.update(HOME=self.tmp, XDG_RUNTIME_DIR=runtime, XDG_CONFIG_HOME=self.tmp,
                    PULSE_RUNTIME_PATH=runtime, PULSE_STATE_PATH=self.tmp)
        for k in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE", "PULSE_CLIENTCONFIG",
                  "DBUS_SESSION_BUS_ADDRESS"):
            denv.pop(k, None)
        if self._log is None:
            self._log = open(os.path.join(self.tmp, "pulseaudio.log"), "ab")
        self.proc = subprocess.Popen(self.command(), env=denv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PulseUnavailable(f"pulseaudio exited at start: {self.log_tail()}")
            r = subprocess.run(["pactl", "info"], env=self.env(), capture_output=True, text=True)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise PulseUnavailable(f"pulseaudio did not come up: {self.log_tail()}")
            time.sleep(0.1)
        self.module_id = self._find_module()
        self.pactl("set-default-sink", self.sink)
        self.pactl("set-default-source", self.source)

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def crash_server(self) -> None:
        """Kill the sound server outright (SIGKILL): every device vanishes."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        self.module_id = None

    def restart_server(self, timeout: float = 15.0) -> None:
        """Start the server again on the same socket (after crash_server)."""
        self._kill()
        self._spawn(timeout)

    def _sink_args(self) -> str:
        return (f"module-null-sink sink_name={self.sink} rate={self.rate} "
                f"channels={self.channels} sink_properties=device.description={self.sink}")

    def _find_module(self) -> str | None:
        for line in self.pactl("list", "short", "modules").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "module-null-sink" and f"sink_name={self.sink}" in parts[2]:
                return parts[0]
        return None

    def unload_sink(self) -> None:
        """Make the capture device vanish (like unplugging a USB mic)."""
        mid = self.module_id or self._find_module()
        if mid is None:
            raise PulseUnavailable("null sink module not loaded")
        self.pactl("unload-module", mid)
        self.module_id = None

    def load_sink(self) -> None:
        """Bring the capture device back."""
        args = self._sink_args().split(" ", 1)
        self.module_id = self.pactl("load-module", args[0], *args[1].split()).strip()
        self.pactl("set-default-source", self.source)
        self.pactl("set-default-sink", self.sink)

    def play(self, wav_path: str) -> subprocess.Popen:
        """Start playing a sound file into the null sink; returns the paplay process."""
        return subprocess.Popen(["paplay", f"--device={self.sink}", os.fspath(wav_path)],
                                env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def upload_sample(self, wav_path, name: str) -> None:
        """Put a sound file into the server's sample cache (for ``play_sample``)."""
        self.pactl("upload-sample", os.fspath(wav_path), name)

    def play_sample(self, name: str) -> tuple[float, float]:
        """Play a cached sample into the null sink; returns ``time.time()`` before and after the command. The
        server starts the sample when it answers: its first sound reached the monitor ~15 ms after the command
        was issued (measured against the capture); ``play()``'s paplay takes ~90 ms (connecting, buffering)."""
        before = time.time()
        self.pactl("play-sample", name, self.sink)
        return before, time.time()

    def log_tail(self, n: int = 600) -> str:
        try:
            with open(os.path.join(self.tmp, "pulseaudio.log"), "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except Exception:
            return ""
        return " | ".join(data[-n:].strip().splitlines())

    def stop(self) -> None:
        self._kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "PulseNullSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def pulse_null_sink(**kw):
    """Like PulseNullSink, but ``pytest.skip`` with the reason if unusable here."""
    import pytest

    pa = PulseNullSink(**kw)
    try:
        pa.start()
    except PulseUnavailable as e:
        pytest.skip(f"no PulseAudio capture device: {e}")
    try:
        yield pa
    finally:
        pa.stop()
