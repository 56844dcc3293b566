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


class Certificates:
    """A CA of the test's own and a certificate it signed for 127.0.0.1 (openssl; EC keys: quick to make)."""

    def __init__(self, folder: Path, name: str = "birdlive test"):
        folder.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = folder / "ca.crt", folder / "ca.key"
        self.cert, self.key = folder / "server.crt", folder / "server.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *args: subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)  # noqa
        run("req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca, "-days", "2", "-subj", f"/CN={name} CA")
        csr = folder / "server.csr"
        run("req", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=127.0.0.1")
        ext = folder / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial", "-out", self.cert,
            "-days", "2", "-extfile", ext)
        for path in (self.ca_key, self.key):
            path.chmod(0o644)       # mosquitto may read them as another user


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:`port` with a generated config; `stop()` and `start()` again keep the port.

    `persistent=True` keeps sessions and queued messages across a restart (a subscriber with clean_session=False
    then misses nothing published while it was reconnecting). `users` ({name: password}, hashed into a
    mosquitto_passwd file) turns anonymous access off; `tls` (CA, certificate, key: `Certificates`) makes the
    listener TLS-only."""

    def __init__(self, workdir: Path, persistent: bool = False, users: dict[str, str] | None = None,
                 tls: "Certificates | None" = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.users, self.tls = users, tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "mosquitto.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr"]
        if self.users:
            passwords = self.workdir / "passwords"
            passwords.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True,
                               capture_output=True)
            passwords.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
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

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

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

    def __init__(self, target: str, topics: list[str], client_id: str | None = None, clean_session: bool = True,
                 login: tuple[str, str] | None = None, ca: Path | None = None):
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
        if login is not None:
            self.client.username_pw_set(*login)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
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
