"""Real stream servers for `listen --url` tests, on 127.0.0.1, each from Debian's packages (.ci/apt-packages.txt):
GStreamer's RTSP server (tests/rtsp_server.py, under the system python3) and Icecast2 fed by `ffmpeg -re`. Both can be
killed and started again on the same port. Everything waits by polling with a deadline (tests/broker.py)."""
from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.broker import free_port, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def missing_tools() -> str | None:
    """Why these servers cannot run here (None: they can)."""
    for tool, pkg in (("ffmpeg", "ffmpeg"), ("icecast2", "icecast2")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install {pkg})"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True)
    if probe.returncode != 0:
        return "GStreamer's RTSP server not found (apt-get install python3-gst-1.0 gir1.2-gst-rtsp-server-1.0)"
    return None


def _wait_serving(proc: subprocess.Popen, port: int, log: Path, what: str) -> None:
    """Until `proc` accepts connections on `port`; its log's end if it exits instead."""
    def accepting() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False
    wait_until(accepting, 30, f"{what} on port {port} (log: {log})")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.kill()         # the outage a test wants is abrupt, as a camera losing power
    proc.wait(timeout=10)


class RtspServer:
    """rtsp://127.0.0.1:PORT/birds plays `recording` from its start to each client that connects."""

    def __init__(self, workdir: Path, recording: Path, mount: str = "/birds"):
        self.workdir, self.recording, self.mount = Path(workdir), Path(recording), mount
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "rtsp.log"

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self) -> "RtspServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SCRIPT), str(self.port), self.mount,
                                          str(self.recording)], stdout=log, stderr=log)
        _wait_serving(self.proc, self.port, self.log, "the RTSP server")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class IcecastServer:
    """Icecast2 on 127.0.0.1:PORT with a generated config (its source password only there and in the feeder's
    arguments, never printed), fed by `ffmpeg -re` with `recording`'s MP3 frames unchanged, over and over, as a radio
    station: a listener gets http://127.0.0.1:PORT/birds.mp3. A new listener first gets a burst of what was sent
    before it came (up to 2 MB: 86 s of the 193 kb/s recording), so one that connects during the first pass hears it
    from its start."""

    def __init__(self, workdir: Path, recording: Path, mount: str = "/birds.mp3"):
        self.workdir, self.recording, self.mount = Path(workdir), Path(recording), mount
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logdir: Path | None = None
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen | None = None
        self.feed: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.mount}"

    def _config(self) -> Path:
        path = self.workdir / "icecast.xml"
        path.write_text(f"""<icecast>
  <limits><clients>20</clients><sources>2</sources><source-timeout>10</source-timeout>
    <queue-size>4194304</queue-size><burst-size>2097152</burst-size></limits>
  <authentication><source-password>{self.password}</source-password>
    <admin-user>admin</admin-user><admin-password>{self.password}</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{self.port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths><basedir>/usr/share/icecast2</basedir><logdir>{self.logdir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group></changeowner></security>
</icecast>
""")
        path.chmod(0o644)
        return path

    def start(self) -> "IcecastServer":
        # icecast2 will not run as root: it drops to nobody, who cannot enter pytest's private tmp_path
        self.logdir = Path(tempfile.mkdtemp(prefix="birdlive-icecast-"))
        self.logdir.chmod(0o755)
        shutil.chown(self.logdir, "nobody", "nogroup")
        log = self.workdir / "icecast.stderr"
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(["icecast2", "-c", str(self._config())], stdout=subprocess.DEVNULL,
                                         stderr=err)
        _wait_serving(self.proc, self.port, log, "icecast2")
        return self

    def start_feed(self) -> None:
        """`ffmpeg -re` sends the recording in a loop, MP3 frames as they are, to the mount; waits until listeners
        get it."""
        _stop(self.feed)
        self.feed = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.recording),
             "-c:a", "copy", "-content_type", "audio/mpeg", "-f", "mp3", "-password", self.password,
             f"icecast://source@127.0.0.1:{self.port}{self.mount}"],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "ffmpeg.log", "ab"))
        wait_until(self._mounted, 60, f"the mount {self.mount}")

    def _mounted(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(f"GET {self.mount} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                return s.recv(64).startswith(b"HTTP/1.0 200")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.feed)
        _stop(self.proc)
        self.feed = self.proc = None
        if self.logdir is not None:
            shutil.rmtree(self.logdir, ignore_errors=True)
            self.logdir = None
