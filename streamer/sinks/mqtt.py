"""MQTT output (`--mqtt HOST[:PORT]`, `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`): every event as JSON on
`birdlive/<stream>/detection`, each stream's status retained on `birdlive/<stream>/status`, and `birdlive/status` =
online | offline (the Last Will says offline when birdlive dies without closing). `MqttLogin` adds a user and
password (never from the command line), TLS with a private CA and a client certificate, and Home Assistant's MQTT
discovery (discovery.py).

The first connection is awaited (up to `verify_s`): a broker that refuses the login or a certificate that does not
verify is an OptionError then (one `error:` line, exit 1): retrying cannot fix either.

paho-mqtt's own network thread (`loop_start`) connects, reconnects with backoff (1 s doubling to 60 s) and sends.
`on_event` only hands a QoS 1 message to paho's queue, so a slow, missing or vanished broker never holds up
detection or the CSV: messages wait in that queue (at most `queue_limit`) and go out when the broker is back; what
does not fit is counted in `dropped`, what is still waiting at close in `undelivered`. An unreachable broker is a
`warning:` line, not an error: the night's detection and its CSV are intact, the broker may come up later (a
Raspberry Pi that boots before its Wi-Fi), so it does not change the exit status.

A stream's topic level is its file's stem (`/data/2024-05-01 dawn.flac` → `2024-05-01_dawn`), its device name, or
its URL's host and path without user or password (`rtsp://u:***@cam:554/live` → `cam:554_live`), with every run
of characters other than letters, digits, `_ - . :` (so MQTT's `+ # /`, spaces, `$`) made one `_`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import logging
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Mapping
from urllib.parse import urlsplit

from birdlive.errors import OptionError
from birdlive.files import AUDIO_EXTENSIONS

from ..core.events import Event, EventAudio, StreamStatus
from .csvlog import iso_time

log = logging.getLogger(__name__)

TOPIC_ROOT = "birdlive"
ONLINE_TOPIC = f"{TOPIC_ROOT}/status"
DEFAULT_PORT = 1883
TLS_PORT = 8883
PASSWORD_ENV = "BIRDLIVE_MQTT_PASSWORD"
HA_STATUS_TOPIC = "homeassistant/status"     # Home Assistant's birth message: `online` when it (re)starts
MAX_QUEUE = 65000           # MQTT packet ids are 16 bits: paho cannot hold more messages than 65535
# CONNACK codes a new attempt cannot change: MQTT 3.1.1's 4 and 5 as paho reports them (MQTT 5's 134, 135)
LOGIN_REFUSED = {4, 5, 134, 135}
STATUS_ROOM = 500           # paho's queue holds this many more than the events' limit: statuses after an outage


@dataclass(frozen=True)
class BrokerTarget:
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_target(target: str) -> BrokerTarget:
    """`HOST[:PORT]`, `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` (TLS; port 8883 by default), an IPv6 address
    as `[ADDR]:PORT`; OptionError for anything else, and for a user or password in it (`ps` would show them)."""
    text = target.strip()
    tls = False
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("mqtt", "mqtts") or parts.path not in ("", "/") or parts.query:
            raise OptionError(f"--mqtt wants HOST[:PORT], mqtt://HOST[:PORT] or mqtts://HOST[:PORT], not "
                              f"{_without_login(target)!r}")
        if "@" in parts.netloc:
            raise OptionError("--mqtt: no user or password in the address (the process list shows it); use "
                              f"--mqtt-user and {PASSWORD_ENV} or --mqtt-password-file")
        tls, text = parts.scheme == "mqtts", parts.netloc
    host, port = _host_port(text, target, TLS_PORT if tls else DEFAULT_PORT)
    return BrokerTarget(host, port, tls)


def _without_login(target: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", target)


def _host_port(text: str, target: str, default_port: int) -> tuple[str, int]:
    bad = f"--mqtt wants HOST[:PORT] (like localhost or 192.168.1.5:1883), not {_without_login(target)!r}"
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
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise OptionError(f"--mqtt: port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class MqttLogin:
    """How to log in to the broker: a user, the file holding the password (else $BIRDLIVE_MQTT_PASSWORD), a CA
    for a broker whose certificate a private CA signed, a client certificate and key; and whether to announce
    each stream to Home Assistant (MQTT discovery)."""
    user: str | None = None
    password_file: Path | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    discovery: bool = False

    def password(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The password: the file's first line, else the environment's; OptionError for a file that is not there."""
        if self.password_file is not None:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise OptionError(f"--mqtt-password-file {self.password_file}: "
                                  f"{getattr(e, 'strerror', None) or e}") from None
            return text.splitlines()[0] if text.strip() else ""
        return environ.get(PASSWORD_ENV) or None

    def check(self, target: BrokerTarget, environ: Mapping[str, str] = os.environ) -> None:
        """What can be refused before anything connects (one `error:` line each)."""
        if self.password_file is not None and not self.user:     # (a password in the environment alone is unused)
            raise OptionError("--mqtt-password-file needs --mqtt-user")
        self.password(environ)
        if (self.ca or self.cert) and not target.tls:
            raise OptionError("--mqtt-ca and --mqtt-cert are for TLS: give the broker as mqtts://HOST[:PORT]")
        if (self.cert is None) != (self.key is None):
            raise OptionError("--mqtt-cert and --mqtt-key go together (the client certificate and its key)")
        for flag, path in (("--mqtt-ca", self.ca), ("--mqtt-cert", self.cert), ("--mqtt-key", self.key)):
            if path is not None and not Path(path).is_file():
                raise OptionError(f"{flag} {path}: no such file")


def stream_topic_name(source: str) -> str:
    """The topic level of a stream: its file's stem, its device name, or its URL's host and path, made safe for
    MQTT (see the module)."""
    if "://" in source:
        parts = urlsplit(source)
        name = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        return re.sub(r"[^\w.:-]+", "_", name).strip("_") or "stream"
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
                 status_every_s: float = 30.0, close_timeout_s: float = 5.0, login: MqttLogin | None = None,
                 verify_s: float = 10.0, environ: Mapping[str, str] = os.environ):
        self.target = parse_target(target)
        self.host, self.port = self.target.host, self.target.port
        self.login = login or MqttLogin()
        self.login.check(self.target, environ)
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
        self._first_answer = threading.Event()      # the first connection attempt came to an end, either way
        self._refusal: str | None = None            # …and retrying cannot help (login refused, bad certificate)
        self.discovery = None
        if self.login.discovery:
            from .discovery import HomeAssistantDiscovery
            self.discovery = HomeAssistantDiscovery(self._publish)
        self._client = self._make_client(client_id or f"birdlive-{socket.gethostname()}-{os.getpid()}",
                                         self.login.password(environ))
        self._client.connect_async(self.host, self.port, keepalive=30)   # resolves and connects in paho's thread
        self._client.loop_start()
        self._first_answer.wait(verify_s)
        self._first_answer.set()        # from here on a refusal is an outage like any other: a warning
        if self._refusal is not None:
            self._stop_client()
            raise OptionError(self._refusal)

    def _make_client(self, client_id: str, password: str | None):
        from paho.mqtt import client as mqtt    # imported here: only runs with --mqtt need paho
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        c.max_queued_messages_set(self.queue_limit + STATUS_ROOM)
        c.reconnect_delay_set(min_delay=1, max_delay=60)
        c.will_set(ONLINE_TOPIC, "offline", qos=1, retain=True)
        if self.login.user:
            c.username_pw_set(self.login.user, password)
        if self.target.tls:     # the system's CAs unless --mqtt-ca; the host name is checked against the certificate
            c.tls_set(ca_certs=_str(self.login.ca), certfile=_str(self.login.cert), keyfile=_str(self.login.key))
        c.on_connect, c.on_connect_fail = self._on_connect, self._on_connect_fail
        c.on_disconnect, c.on_publish = self._on_disconnect, self._on_publish
        c.on_message = self._on_message
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
        if self.discovery is not None:
            self.discovery.on_event(event)

    def on_status(self, status: StreamStatus) -> None:
        """Retained, when a stream's state changes and every `status_every_s` (not at the runner's 4 per second).
        Only while connected: a status is worth its newest value, and `_on_connect` sends each stream's newest."""
        if self.discovery is not None:
            self.discovery.announce(status.source)
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
        self._stop_client()
        if self.dropped or self.undelivered:
            log.warning(f"MQTT: {self.dropped} messages dropped (queue full) and {self.undelivered} not "
                      f"delivered (broker {self.host}:{self.port} unreachable); the other outputs have every event")

    def _stop_client(self) -> None:
        self._closing = True
        self._client.disconnect()
        # paho's loop_stop joins its thread, which may sit in a connect attempt (up to its 5 s timeout): bounded.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(self.close_timeout_s)

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
        try:
            if reason_code.is_failure:
                if reason_code.value in LOGIN_REFUSED and not self._first_answer.is_set():
                    self._refusal = (f"MQTT broker {self.target} refused the login ({reason_code}): check "
                                     f"--mqtt-user and the password ({PASSWORD_ENV} or --mqtt-password-file)")
                    return
                self._report_outage(f"refused the connection ({reason_code})")
                return
            self._connected()
        finally:
            self._first_answer.set()

    def _connected(self) -> None:
        self._publish(ONLINE_TOPIC, "online", retain=True)
        now = time.monotonic()
        with self._status_lock:
            latest = list(self._latest.items())
            self._sent.update((topic, (p["state"], now)) for topic, p in latest)
        for topic, payload in latest:
            self._publish(topic, to_json(payload), retain=True)
        if self.discovery is not None:
            self.discovery.resend()     # a broker without persistence forgot the retained configs
            self._client.subscribe(HA_STATUS_TOPIC, qos=1)
        if self._outage_reported:
            self._outage_reported = False
            log.info(f"MQTT: connected to {self.host}:{self.port} again; sending {self.queued} queued messages")

    def _on_connect_fail(self, client, userdata) -> None:
        self.connect_failures += 1
        error = sys.exc_info()[1]       # paho calls this inside its `except OSError`; the reason is the OSError
        try:
            if isinstance(error, ssl.SSLError) and not self._first_answer.is_set():
                reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
                self._refusal = (f"MQTT broker {self.target}: TLS failed ({reason}); give the CA that signed the "
                                 f"broker's certificate with --mqtt-ca")
                return
            self._report_outage(f"cannot connect ({error})" if error else "cannot connect")
        finally:
            self._first_answer.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._counts:
            self._counts.notify_all()   # close() stops waiting for a broker that is gone
        if not self._closing:
            self._report_outage(f"connection lost ({reason_code})")

    def _on_message(self, client, userdata, message) -> None:
        """Home Assistant's birth message: it (re)started and wants every discovery config again."""
        if message.topic == HA_STATUS_TOPIC and message.payload == b"online" and self.discovery is not None:
            self.discovery.resend()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._counts:
            self._delivered += 1
            self._counts.notify_all()

    def _report_outage(self, reason: str) -> None:
        """One warning line per outage, however many reconnect attempts it takes."""
        if self._outage_reported or self._closing or self._refusal is not None:
            return
        self._outage_reported = True
        log.warning(f"MQTT broker {self.host}:{self.port}: {reason}; detection goes on, events wait in a "
                  f"queue (up to {self.queue_limit}) and birdlive keeps reconnecting")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
