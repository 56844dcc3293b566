"""A real mosquitto broker for the tests (Debian package `mosquitto`), and a paho subscriber that collects what
arrives. Everything waits by polling with a deadline, never by sleeping a guessed time."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_until(predicate, timeout: float = 20.0, what: str = "condition", every: float = 0.02):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:`port` with a generated config; `stop()` and `start()` again keep the port.

    `persistent=True` keeps sessions and queued messages across a restart (a subscriber with clean_session=False
    then misses nothing published while it was reconnecting)."""

    def __init__(self, workdir: Path, persistent: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "log_dest stderr"]
        if self.persistent:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            lines.append("user root")        # otherwise mosquitto drops to `mosquitto`, who cannot write workdir
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 10.0) -> "Broker":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self._config())], stdout=log, stderr=log)
        log.close()
        wait_until(self._accepting, timeout, f"mosquitto on port {self.port} (log: {self.log})")
        return self

    def _accepting(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Subscriber:
    """A paho client that subscribes (QoS 1) to `topics` and keeps every message as (topic, payload, retain).

    `client_id` + `clean_session=False` make a persistent session: with a persistent broker, messages published
    while this client reconnects are kept for it."""

    def __init__(self, target: str, topics: list[str], client_id: str | None = None, clean_session: bool = True):
        from paho.mqtt import client as mqtt
        host, port = target.rsplit(":", 1)
        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self._topics = topics
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, "the subscription")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def on(self, topic_suffix: str) -> list[str]:
        """Payloads of the messages whose topic ends with `topic_suffix`, in arrival order."""
        with self._lock:
            return [p for t, p, _ in self.messages if t.endswith(topic_suffix)]

    def json_on(self, topic_suffix: str) -> list[dict]:
        return [json.loads(p) for p in self.on(topic_suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
