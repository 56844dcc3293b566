"""MQTT with a login, TLS and Home Assistant discovery, against a real mosquitto (tests/broker.py) that has a password
file (mosquitto_passwd) and a certificate from a CA the test makes with openssl. The password reaches birdlive only
through BIRDLIVE_MQTT_PASSWORD or a file: never its command line."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from birdlive.errors import OptionError
from birdlive.streamer import Event
from birdlive.streamer.sinks.discovery import HomeAssistantDiscovery, sensor_configs
from birdlive.streamer.sinks.mqtt import BrokerTarget, MqttLogin, parse_target
from tests.broker import MOSQUITTO, Broker, Certificates, Subscriber, wait_until
from tests.common import RECORDING, TINY, birdlive, read_events_csv

pytestmark = [pytest.mark.mqtt, pytest.mark.skipif(shutil.which(MOSQUITTO) is None, reason="mosquitto is not installed "
                                                                        "(apt-get install mosquitto)")]
USER, PASSWORD = "birder", "correct horse battery"
# Home Assistant's discovery topic: <prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-]
# (homeassistant/components/mqtt/discovery.py, TOPIC_MATCHER)
DISCOVERY_TOPIC = re.compile(r"homeassistant/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)"
                             r"?(?P<object_id>[a-zA-Z0-9_-]+)/config")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory, certificates):
    b = Broker(tmp_path_factory.mktemp("mosquitto"), users={USER: PASSWORD}, tls=certificates).start()
    yield b
    b.stop()


def _env(password: str | None = PASSWORD) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BIRDLIVE_MQTT_PASSWORD"}
    if password is not None:
        env["BIRDLIVE_MQTT_PASSWORD"] = password
    return env


def test_targets_with_a_scheme_and_logins_checked_before_connecting(tmp_path, certificates):
    assert parse_target("mqtt://broker.lan") == BrokerTarget("broker.lan", 1883, False)
    assert parse_target("mqtts://broker.lan") == BrokerTarget("broker.lan", 8883, True)
    assert parse_target("mqtts://[::1]:8884") == BrokerTarget("::1", 8884, True)
    with pytest.raises(OptionError) as e:
        parse_target("mqtt://birder:hunter2@broker.lan")
    assert "hunter2" not in str(e.value) and "--mqtt-user" in str(e.value)
    for bad in ("http://broker.lan", "mqtt://broker.lan/topic", "mqtts://"):
        with pytest.raises(OptionError):
            parse_target(bad)
    with pytest.raises(OptionError, match="needs --mqtt-user"):
        MqttLogin(password_file=tmp_path / "password").check(parse_target("mqtt://h"), {})
    MqttLogin().check(parse_target("mqtt://h"), {"BIRDLIVE_MQTT_PASSWORD": "x"})   # anonymous: the variable unused
    with pytest.raises(OptionError, match="mqtts://"):
        MqttLogin(ca=certificates.ca).check(parse_target("mqtt://h"), {})
    with pytest.raises(OptionError, match="no such file"):
        MqttLogin(ca=tmp_path / "nope.crt").check(parse_target("mqtts://h"), {})
    secret = tmp_path / "password"
    secret.write_text("from the file\n")
    assert MqttLogin(user="u", password_file=secret).password({"BIRDLIVE_MQTT_PASSWORD": "env"}) == "from the file"
    assert MqttLogin(user="u").password({"BIRDLIVE_MQTT_PASSWORD": "env"}) == "env"


def test_replay_over_tls_with_the_password_and_discovery(broker, certificates, tmp_path):
    sub = Subscriber(broker.target, ["birdlive/#", "homeassistant/#"], login=(USER, PASSWORD), ca=certificates.ca)
    out = tmp_path / "night.csv"
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--csv", out, "--mqtt", broker.url,
                 "--mqtt-user", USER, "--mqtt-ca", certificates.ca, "--mqtt-discovery", environ=_env())
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stderr + r.stdout and "warning" not in r.stderr
    rows = read_events_csv(out)
    assert len(rows) >= 10
    wait_until(lambda: len(sub.on("synthetic_calls/detection")) == len(rows), what="every detection over TLS")
    assert [(p["species"], f"{p['onset_s']:.2f}") for p in sub.json_on("synthetic_calls/detection")] == \
        [(r["species"], r["onset_s"]) for r in rows]
    configs = wait_until(lambda: [(t, json.loads(p), retain) for t, p, retain in sub.messages
                                  if t.startswith("homeassistant/")], what="the discovery configs")
    assert {t for t, _, _ in configs} == {f"homeassistant/sensor/birdlive_synthetic_calls/{o}/config"
                                          for o in ("last_species", "confidence", "detections_today")}
    states = wait_until(lambda: sub.json_on("synthetic_calls/state"), what="the sensors' state")
    assert states[-1]["detections_today"] == len(rows)
    assert states[-1]["name"] == rows[-1]["common_name"]
    assert states[-1]["confidence"] == pytest.approx(100 * float(rows[-1]["peak_conf"]), abs=0.1)
    sub.close()
    late = Subscriber(broker.target, ["homeassistant/#", "birdlive/+/state"], login=(USER, PASSWORD),
                      ca=certificates.ca)
    # retained: Home Assistant started later still finds the device and its last state
    wait_until(lambda: len([m for m in late.messages if m[0].startswith("homeassistant/")]) == 3 and
               late.on("/state"), what="the retained configs and state")
    assert all(retain for _, _, retain in late.messages)
    late.close()


def test_discovery_configs_follow_home_assistants_schema():
    configs = sensor_configs("cam.local:554_live")
    assert len(configs) == 3
    ids = set()
    for topic, config in configs:
        m = DISCOVERY_TOPIC.fullmatch(topic)
        assert m and m["component"] == "sensor" and m["node_id"] == "birdlive_cam_local_554_live", topic
        for key in ("name", "unique_id", "state_topic", "device", "value_template", "availability_topic"):
            assert key in config, (topic, key)
        assert config["device"]["identifiers"] == ["birdlive_cam_local_554_live"]
        assert isinstance(config["device"]["name"], str)
        assert config["state_topic"] == "birdlive/cam.local:554_live/state"
        assert "#" not in config["state_topic"] and "+" not in config["state_topic"]
        ids.add(config["unique_id"])
    assert len(ids) == 3
    published = []
    discovery = HomeAssistantDiscovery(lambda topic, payload, retain=False: published.append((topic, payload, retain)))
    t0 = 1_714_536_000.0        # 2024-05-01 04:00 UTC
    for i in range(3):
        discovery.on_event(Event("eurrob1", "European Robin", i, i + 1, 0.877, 0.5, "rtsp://u:***@cam.local:554/live",
                                 t0 + i, t0 + i + 1))
    assert [t for t, _, _ in published].count("homeassistant/sensor/birdlive_cam_local_554_live/confidence/config") == 1
    state = json.loads([p for t, p, _ in published if t.endswith("/state")][-1])
    for _, config in configs:       # each sensor's template names a field of the state
        field = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", config["value_template"])[1]
        assert field in state
    assert state["detections_today"] == 3 and state["confidence"] == 87.7 and state["name"] == "European Robin"
    assert all(retain for _, _, retain in published)
    assert not any("u:" in t or "***" in t for t, _, _ in published)


def test_a_wrong_password_is_one_error_line_and_exit_1(broker, certificates, tmp_path):
    wrong = tmp_path / "password"
    wrong.write_text("not it\n")
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--mqtt", broker.url, "--mqtt-user", USER,
                 "--mqtt-password-file", wrong, "--mqtt-ca", certificates.ca, environ=_env(None))
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: MQTT broker 127.0.0.1:"), \
        r.stderr
    assert "refused the login" in r.stderr and "not it" not in r.stderr


def test_a_certificate_from_another_ca_is_one_error_line_and_exit_1(broker, tmp_path):
    other = Certificates(tmp_path / "other", name="not the broker's")
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--mqtt", broker.url, "--mqtt-user", USER,
                 "--mqtt-ca", other.ca, environ=_env())
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: MQTT broker 127.0.0.1:"), \
        r.stderr
    assert "certificate" in r.stderr and "--mqtt-ca" in r.stderr


def test_home_assistant_restarting_gets_the_configs_again(broker, certificates):
    """Home Assistant says `online` on homeassistant/status when it starts: the configs go out again (a broker
    without persistence, or Home Assistant's own clean start, would leave it without the devices)."""
    from birdlive.streamer import StreamStatus
    from birdlive.streamer.sinks.mqtt import MqttPublisher
    sub = Subscriber(broker.target, ["homeassistant/sensor/birdlive_garden-cam_live/#"], login=(USER, PASSWORD),
                     ca=certificates.ca)      # not the retained configs of the other tests
    publisher = MqttPublisher(broker.url, login=MqttLogin(user=USER, ca=certificates.ca, discovery=True),
                              environ={"BIRDLIVE_MQTT_PASSWORD": PASSWORD})
    try:
        wait_until(lambda: publisher.connected, what="the connection")
        publisher.on_status(StreamStatus(source="rtsp://u:***@garden-cam/live"))
        wait_until(lambda: len(sub.messages) == 3, what="the three configs")
        sub.client.publish("homeassistant/status", "online", qos=1)
        wait_until(lambda: len(sub.messages) == 6, what="the configs again")
        assert sorted(t for t, _, _ in sub.messages[:3]) == sorted(t for t, _, _ in sub.messages[3:])
        assert all("garden-cam_live" in t and "u:" not in t for t, _, _ in sub.messages)
    finally:
        publisher.close()
        sub.close()


def test_login_options_without_a_broker_are_one_error_line():
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--mqtt-user", USER)
    assert r.returncode == 1 and r.stderr.splitlines() == ["error: the --mqtt-… options need --mqtt (the broker)"], \
        r.stderr
