"""A real RTSP server for the tests: GStreamer's (Debian: gir1.2-gst-rtsp-server-1.0, python3-gst-1.0,
gstreamer1.0-plugins-base/-good), run by the system's python3 (`/usr/bin/python3`, which has `gi`; birdlive's
venv does not). Each client that connects gets the recording from its start, paced in real time by the server's
clock and sent as Opus over RTP, as an IP camera sends its microphone (TCP-interleaved or UDP, the client's choice).

    /usr/bin/python3 tests/rtsp_server.py PORT /MOUNT RECORDING     # prints "ready" once it listens
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, mount, recording = sys.argv[1:4]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{recording}" ! decodebin ! audioconvert ! audioresample '
                       f'! opusenc bitrate=128000 ! rtpopuspay name=pay0 pt=96 )')
    factory.set_shared(False)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
