"""MQTT output (`--mqtt HOST[:PORT]`): every event as JSON on `birdlive/<stream>/detection`, each stream's status
retained on `birdlive/<stream>/status`, and `birdlive/status` = online | offline (the Last Will says offline when
birdlive dies without closing).

paho-mqtt's own network thread (`loop_start`) connects, reconnects with backoff (1 s doubling to 60 s) and sends.
`on_event` only hands a QoS 1 message to paho's queue, so a slow, missing or vanished broker never holds up
detection or the CSV: messages wait in that queue (at most `queue_limit`) and go out when the broker is back; what
does not fit is counted in `dropped`, what is still waiting at close in `undelivered`. An unreachable broker is a
`warning:` line, not an error: the night's detection and its CSV are intact, the broker may come up later (a
Raspberry Pi that boots before its Wi-Fi), so it does not change the exit status.

A stream's topic level is its file's stem (`/data/2024-05-01 dawn.flac` → `2024-05-01_dawn`) or its device name,
with every run of characters other than letters, digits, `_ - . :` (so MQTT's `+ # /`, spaces, `$`) made one `_`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import logging
import sys
import threading
import time
from pathlib import PurePath

from birdlive.errors import OptionError
from birdlive.files import AUDIO_EXTENSIONS

from ..core.events import Event, EventAudio, StreamStatus
from .csvlog import iso_time

log = logging.getLogger(__name__)

TOPIC_ROOT = "birdlive"
ONLINE_TOPIC = f"{TOPIC_ROOT}/status"
DEFAULT_PORT = 1883
MAX_QUEUE = 65000           # MQTT packet ids are 16 bits: paho cannot hold more messages than 65535
STATUS_ROOM = 500           # paho's queue holds this many more than the events' limit: statuses after an outage


def parse_target(target: str) -> tuple[str, int]:
    """`HOST[:PORT]` (an IPv6 address as `[ADDR]:PORT`) → (host, port); OptionError for anything else."""
    text = target.strip()
    bad = f"--mqtt wants HOST[:PORT] (like localhost or 192.168.1.5:1883), not {target!r}"
    if "://" in text:
        raise OptionError(bad)
    if text.startswith("["):                       # [IPv6]  or  [IPv6]:PORT
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise OptionError(bad)
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise OptionError(f"--mqtt: write an IPv6 address as [ADDR]:PORT, not {target!r}")
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise OptionError(bad)
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise OptionError(f"--mqtt: port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


def stream_topic_name(source: str) -> str:
    """The topic level of a stream: its file's stem, or its device name, made safe for MQTT (see the module)."""
    path = PurePath(source)
    looks_like_file = path.suffix.lower() in AUDIO_EXTENSIONS or "/" in source or "\\" in source
    name = path.stem if looks_like_file else source
    return re.sub(r"[^\w.:-]+", "_", name).strip("_") or "stream"


def detection_topic(source: str) -> str:
    return f"{TOPIC_ROOT}/{stream_topic_name(source)}/detection"


def status_topic(source: str) -> str:
    return f"{TOPIC_ROOT}/{stream_topic_name(source)}/status"


def event_payload(e: Event) -> dict:
    """Every Event field; wall times as local ISO 8601 with offset (as in the CSV) and as unix times."""
    payload = dataclasses.asdict(e)
    payload.update(duration_s=e.duration_s, wall_onset=iso_time(e.wall_onset) or None,
                   wall_offset=iso_time(e.wall_offset) or None, wall_onset_unix=e.wall_onset,
                   wall_offset_unix=e.wall_offset)
    return payload


def status_payload(s: StreamStatus) -> dict:
    return {"source": s.source, "state": s.state, "audio_s": round(s.audio_s, 3), "events": s.events,
            "error": s.error, "time": iso_time(time.time())}


def to_json(payload: dict) -> str:
    return json.dumps(payload, default=float)      # default: numpy scalars (np.float32 scores) as plain floats


class MqttPublisher:
    """A Sink that publishes events and stream statuses to an MQTT broker (see the module docstring).

    `queued` is how many messages paho holds that the broker has not acknowledged yet; `connected` whether the
    broker is there now; `dropped` and `undelivered` count the loss.
    """

    def __init__(self, target: str, queue_limit: int = 10000, client_id: str | None = None,
                 status_every_s: float = 30.0, close_timeout_s: float = 5.0):
        self.host, self.port = parse_target(target)
        if not 1 <= queue_limit <= MAX_QUEUE:
            raise OptionError(f"MQTT queue limit must be from 1 to {MAX_QUEUE} messages, not {queue_limit}")
        self.queue_limit, self.status_every_s, self.close_timeout_s = queue_limit, status_every_s, close_timeout_s
        self.dropped = 0                            # refused: the queue was full
        self.undelivered = 0                        # still queued when close() gave up
        self.connect_failures = 0
        self._counts = threading.Condition()        # guards the counters; close() waits on it for the queue to drain
        self._accepted = self._delivered = 0
        self._status_lock = threading.Lock()
        self._latest: dict[str, dict] = {}          # status topic → newest status payload of that stream
        self._sent: dict[str, tuple[str, float]] = {}   # status topic → (state, monotonic time) last published
        self._outage_reported = False
        self._closing = False
        self._client = self._make_client(client_id or f"birdlive-{socket.gethostname()}-{os.getpid()}")
        self._client.connect_async(self.host, self.port, keepalive=30)   # resolves and connects in paho's thread
        self._client.loop_start()

    def _make_client(self, client_id: str):
        from paho.mqtt import client as mqtt    # imported here: only runs with --mqtt need paho
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        c.max_queued_messages_set(self.queue_limit + STATUS_ROOM)
        c.reconnect_delay_set(min_delay=1, max_delay=60)
        c.will_set(ONLINE_TOPIC, "offline", qos=1, retain=True)
        c.on_connect, c.on_connect_fail = self._on_connect, self._on_connect_fail
        c.on_disconnect, c.on_publish = self._on_disconnect, self._on_publish
        self._queue_full = mqtt.MQTT_ERR_QUEUE_SIZE
        return c

    @property
    def queued(self) -> int:
        with self._counts:
            return self._accepted - self._delivered

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    # ---- the Sink protocol (the runner's thread)
    def on_event(self, event: Event, audio: EventAudio | None = None) -> None:
        if self.queued >= self.queue_limit:     # events stop here; paho's own limit leaves statuses room
            self._dropped_one()
            return
        self._publish(detection_topic(event.source), to_json(event_payload(event)))

    def on_status(self, status: StreamStatus) -> None:
        """Retained, when a stream's state changes and every `status_every_s` (not at the runner's 4 per second).
        Only while connected: a status is worth its newest value, and `_on_connect` sends each stream's newest."""
        topic, payload, now = status_topic(status.source), status_payload(status), time.monotonic()
        with self._status_lock:
            self._latest[topic] = payload
            last = self._sent.get(topic)
            due = last is None or last[0] != status.state or now - last[1] >= self.status_every_s
            if not due or not self.connected:
                return
            self._sent[topic] = (status.state, now)
        self._publish(topic, to_json(payload), retain=True)

    def close(self) -> None:
        """Say offline, give the queue up to `close_timeout_s` to reach a connected broker, disconnect, report loss."""
        if self._closing:
            return
        self._closing = True
        if self.connected:
            self._publish(ONLINE_TOPIC, "offline", retain=True)
            with self._counts:
                self._counts.wait_for(lambda: self._accepted <= self._delivered or not self.connected,
                                      timeout=self.close_timeout_s)
        self.undelivered = max(self.queued, 0)
        self._client.disconnect()
        # paho's loop_stop joins its thread, which may sit in a connect attempt (up to its 5 s timeout): bounded.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(self.close_timeout_s)
        if self.dropped or self.undelivered:
            log.warning(f"MQTT: {self.dropped} messages dropped (queue full) and {self.undelivered} not "
                      f"delivered (broker {self.host}:{self.port} unreachable); the other outputs have every event")

    # ---- publishing (any thread)
    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        with self._counts:
            self._accepted += 1     # before paho can acknowledge it
        info = self._client.publish(topic, payload, qos=1, retain=retain)   # never waits: queues and wakes paho
        if info.rc == self._queue_full:
            with self._counts:
                self._accepted -= 1
            self._dropped_one()

    def _dropped_one(self) -> None:
        with self._counts:
            self.dropped += 1
            first = self.dropped == 1
        if first:
            log.warning(f"MQTT: {self.queue_limit} messages wait for broker {self.host}:{self.port}; "
                      f"further events are not published until it is back (counted; the other outputs still get them)")

    # ---- paho callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report_outage(f"refused the connection ({reason_code})")
            return
        self._publish(ONLINE_TOPIC, "online", retain=True)
        now = time.monotonic()
        with self._status_lock:
            latest = list(self._latest.items())
            self._sent.update((topic, (p["state"], now)) for topic, p in latest)
        for topic, payload in latest:
            self._publish(topic, to_json(payload), retain=True)
        if self._outage_reported:
            self._outage_reported = False
            log.info(f"MQTT: connected to {self.host}:{self.port} again; sending {self.queued} queued messages")

    def _on_connect_fail(self, client, userdata) -> None:
        self.connect_failures += 1
        error = sys.exc_info()[1]       # paho calls this inside its `except OSError`; the reason is the OSError
        self._report_outage(f"cannot connect ({error})" if error else "cannot connect")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._counts:
            self._counts.notify_all()   # close() stops waiting for a broker that is gone
        if not self._closing:
            self._report_outage(f"connection lost ({reason_code})")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._counts:
            self._delivered += 1
            self._counts.notify_all()

    def _report_outage(self, reason: str) -> None:
        """One warning line per outage, however many reconnect attempts it takes."""
        if self._outage_reported or self._closing:
            return
        self._outage_reported = True
        log.warning(f"MQTT broker {self.host}:{self.port}: {reason}; detection goes on, events wait in a "
                  f"queue (up to {self.queue_limit}) and birdlive keeps reconnecting")
