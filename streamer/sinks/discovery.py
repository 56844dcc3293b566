"""Home Assistant MQTT discovery (`--mqtt-discovery`): each stream appears in Home Assistant as a device with three
sensors — the last species heard, its confidence, the detections today — without writing YAML.

Home Assistant's documented scheme (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery): a retained
JSON config on `homeassistant/<component>/<node_id>/<object_id>/config` (node and object ids of `[a-zA-Z0-9_-]`),
with a `unique_id`, a `device` (`identifiers`, `name`, …) that groups the sensors, a `state_topic` and, here, a
`value_template` that picks the sensor's field from one retained JSON state per stream
(`birdlive/<stream>/state`), and the availability topic `birdlive/status` (online/offline, the Last Will). When
Home Assistant (re)starts it says `online` on `homeassistant/status`: the configs go out again then.
"""
from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from typing import Callable

import birdlive

from ..core.events import Event
from .mqtt import stream_topic_name

PREFIX = "homeassistant"
AVAILABILITY = "birdlive/status"
# object id → (name in Home Assistant, the state's field, extra config)
SENSORS: dict[str, tuple[str, str, dict]] = {
    "last_species": ("Last species", "name", {"icon": "mdi:bird"}),
    "confidence": ("Confidence", "confidence", {"unit_of_measurement": "%", "state_class": "measurement",
                                                "icon": "mdi:percent"}),
    "detections_today": ("Detections today", "detections_today", {"state_class": "total_increasing",
                                                                  "icon": "mdi:counter"}),
}


def node_id(stream: str) -> str:
    """A stream's node id: its MQTT topic level with anything but `[a-zA-Z0-9_-]` as `_`, behind `birdlive_`."""
    return "birdlive_" + (re.sub(r"[^A-Za-z0-9_-]+", "_", stream).strip("_") or "stream")


def state_topic(stream: str) -> str:
    return f"birdlive/{stream}/state"


def sensor_configs(stream: str) -> list[tuple[str, dict]]:
    """(config topic, config) of each of a stream's sensors; `stream` is its MQTT topic level."""
    node = node_id(stream)
    device = {"identifiers": [node], "name": f"birdlive {stream}", "manufacturer": "birdlive",
              "model": "bird-call detector", "sw_version": birdlive.__version__}
    out = []
    for obj, (name, field, extra) in SENSORS.items():
        out.append((f"{PREFIX}/sensor/{node}/{obj}/config", {
            "name": name, "unique_id": f"{node}_{obj}", "object_id": f"{node}_{obj}", "device": device,
            "state_topic": state_topic(stream), "value_template": f"{{{{ value_json.{field} }}}}",
            "json_attributes_topic": state_topic(stream), "availability_topic": AVAILABILITY,
            "payload_available": "online", "payload_not_available": "offline", **extra}))
    return out


class HomeAssistantDiscovery:
    """Announces each stream's sensors once (and again on every reconnect: a broker without persistence forgot
    them) and keeps its retained state: the last event's species and confidence, and the events of the day
    (local date of the event's wall time, else of now; the count starts again at midnight).

    `publish(topic, payload, retain)` is the MQTT publisher's (any thread)."""

    def __init__(self, publish: Callable[..., None]):
        self._publish = publish
        self._lock = threading.Lock()
        self._announced: set[str] = set()
        self._states: dict[str, dict] = {}
        self._days: dict[str, tuple[str, int]] = {}     # stream → (date, detections that day)

    def announce(self, source: str) -> None:
        stream = stream_topic_name(source)
        with self._lock:
            if stream in self._announced:
                return
            self._announced.add(stream)
        self._send_configs(stream)

    def resend(self) -> None:
        with self._lock:
            streams = list(self._announced)
        for stream in streams:
            self._send_configs(stream)

    def _send_configs(self, stream: str) -> None:
        for topic, config in sensor_configs(stream):
            self._publish(topic, json.dumps(config), retain=True)
        with self._lock:
            state = self._states.get(stream)
        if state is not None:
            self._publish(state_topic(stream), json.dumps(state), retain=True)

    def on_event(self, event: Event) -> None:
        self.announce(event.source)
        stream = stream_topic_name(event.source)
        when = event.wall_onset if event.wall_onset is not None else time.time()
        day = datetime.fromtimestamp(when).strftime("%Y-%m-%d")
        with self._lock:
            last_day, count = self._days.get(stream, (day, 0))
            count = count + 1 if last_day == day else 1
            self._days[stream] = (day, count)
            state = {"species": event.species, "name": event.name, "confidence": round(100 * float(event.peak), 1),
                     "detections_today": count, "date": day,
                     "time": datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")}
            self._states[stream] = state
        self._publish(state_topic(stream), json.dumps(state), retain=True)
