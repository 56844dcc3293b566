"""MQTT output against a real mosquitto (tests/broker.py) and the real pipeline (tiny model, demo recording)."""
from __future__ import annotations

import shutil
import threading
from datetime import datetime

import numpy as np
import pytest

from birdlive.errors import OptionError
from birdlive.streamer import CsvEventLog, Event, EventAudio, StreamStatus, file_specs, make_runner
from birdlive.streamer.sinks.mqtt import BrokerTarget, MqttPublisher, parse_target, stream_topic_name
from tests.broker import MOSQUITTO, Broker, Subscriber, wait_until
from tests.common import RECORDING, TINY, birdlive, read_events_csv

pytestmark = [pytest.mark.mqtt, pytest.mark.skipif(shutil.which(MOSQUITTO) is None, reason="mosquitto is not installed "
                                                                        "(apt-get install mosquitto)")]
SILENCE = EventAudio(np.zeros(320, np.float32), 32000, 0.0)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


def test_target_is_host_and_optional_port():
    assert parse_target("localhost") == BrokerTarget("localhost", 1883)
    assert parse_target("192.168.1.5:8883") == BrokerTarget("192.168.1.5", 8883)
    assert parse_target("[::1]:1884") == BrokerTarget("::1", 1884)
    assert parse_target("mqtt://host:1884") == BrokerTarget("host", 1884)     # mqtts://: test_mqtt_login.py
    for bad in ("", ":1883", "host:0", "host:65536", "host:abc", "ftp://host:1883", "::1:1883", "a b:1883",
                "[::1", "[::1]x"):
        with pytest.raises(OptionError):
            parse_target(bad)
    with pytest.raises(OptionError, match="port"):
        MqttPublisher("localhost:99999")        # refused before anything connects


def test_topic_level_is_the_file_stem_or_the_device_name_without_mqtt_wildcards():
    assert stream_topic_name("/data/2024-05-01 dawn.flac") == "2024-05-01_dawn"
    assert stream_topic_name("recordings/synthetic_calls.flac") == "synthetic_calls"
    assert stream_topic_name("USB Audio #1 (hw:1,0)") == "USB_Audio_1_hw:1_0"
    assert stream_topic_name("Blue Yeti 2.0") == "Blue_Yeti_2.0"        # a dot in a device name is not a suffix
    assert stream_topic_name("mic+2#left") == "mic_2_left"
    assert stream_topic_name("+++") == "stream"


def test_replay_publishes_each_csv_row_and_a_retained_status(tiny_model, broker, tmp_path):
    sub = Subscriber(broker.target, ["birdlive/#"])
    publisher = MqttPublisher(broker.target)
    wait_until(lambda: publisher.connected, what="the publisher's connection")
    csv_log = CsvEventLog(tmp_path / "night.csv").open()
    make_runner(tiny_model, [csv_log, publisher]).run(file_specs([RECORDING], tiny_model.cfg.sample_rate))
    csv_log.close()
    publisher.close()
    rows = read_events_csv(tmp_path / "night.csv")
    assert len(rows) >= 10
    wait_until(lambda: len(sub.on("synthetic_calls/detection")) == len(rows), what="every detection")
    got = sub.json_on("synthetic_calls/detection")
    as_csv = [[p["source"], p["species"], p["name"], f"{p['onset_s']:.2f}", f"{p['offset_s']:.2f}",
               f"{p['duration_s']:.2f}", f"{p['peak']:.3f}", f"{p['mean']:.3f}", p["wall_onset"] or "",
               p["wall_offset"] or "", p["clip"] or ""] for p in got]
    assert as_csv == [list(r.values()) for r in rows]
    # The runner reports status 4× a second; the broker sees a stream's state changes only (and one every 30 s).
    assert [s["state"] for s in sub.json_on("synthetic_calls/status")] == ["running", "done"]
    sub.close()

    late = Subscriber(broker.target, ["birdlive/#"])     # retained: what a dashboard opened later shows
    status = wait_until(lambda: late.json_on("synthetic_calls/status"), what="the retained status")
    assert status[-1] == {**status[-1], "state": "done", "events": len(rows), "error": None}
    assert status[-1]["audio_s"] == pytest.approx(40.0, abs=0.1)
    assert wait_until(lambda: late.on("birdlive/status")) == ["offline"]     # closed cleanly
    assert late.on("/detection") == []                                       # events are not retained
    late.close()


def test_event_payload_has_every_field_with_wall_times_both_ways(broker):
    sub = Subscriber(broker.target, ["birdlive/+/detection"])
    publisher = MqttPublisher(broker.target)
    t0 = datetime(2024, 5, 1, 4, 12, 33, 250000).astimezone().timestamp()
    event = Event("eurrob1", "European Robin", 12.5, 14.0, np.float32(0.875), np.float32(0.5), "hw:1,0 (USB)",
                  t0, t0 + 1.5, clip="clips/eurrob1/x.flac")
    publisher.on_event(event, SILENCE)
    [p] = wait_until(lambda: sub.json_on("hw:1_0_USB/detection"), what="the detection")
    publisher.close()
    sub.close()
    assert p == {"species": "eurrob1", "name": "European Robin", "onset_s": 12.5, "offset_s": 14.0, "peak": 0.875,
                 "mean": 0.5, "source": "hw:1,0 (USB)", "wall_onset": datetime.fromtimestamp(t0).astimezone()
                 .isoformat(timespec="milliseconds"), "wall_offset": p["wall_offset"], "clip": "clips/eurrob1/x.flac",
                 "duration_s": 1.5, "wall_onset_unix": t0, "wall_offset_unix": t0 + 1.5}
    assert p["wall_onset"].startswith("2024-05-01T04:12:33.250") and p["wall_offset"][11:23] == "04:12:34.750"
    assert publisher.queued == 0 and publisher.dropped == 0


def test_status_goes_out_on_state_changes_not_every_call(broker):
    sub = Subscriber(broker.target, ["birdlive/+/status"])
    publisher = MqttPublisher(broker.target)
    wait_until(lambda: publisher.connected, what="the publisher's connection")
    status = StreamStatus(source="/x/mic.wav")
    for i in range(50):
        status.audio_s = i * 0.25
        publisher.on_status(status)
    status.state, status.error = "failed", "x.wav: corrupt block"
    publisher.on_status(status)
    wait_until(lambda: len(sub.on("mic/status")) == 2, what="two statuses")
    publisher.close()
    sub.close()
    assert [(s["state"], s["error"]) for s in sub.json_on("mic/status")] == [("running", None),
                                                                            ("failed", "x.wav: corrupt block")]


class StopBrokerAt:
    """A sink ahead of the publisher that takes the broker away as the k-th event is handed out, once every
    earlier event has reached the subscriber."""

    def __init__(self, k: int, broker: Broker, publisher: MqttPublisher, sub: Subscriber):
        self.k, self.broker, self.publisher, self.sub, self.seen = k, broker, publisher, sub, 0

    def on_event(self, event, audio) -> None:
        self.seen += 1
        if self.seen == self.k:
            wait_until(lambda: self.publisher.queued == 0 and len(self.sub.on("/detection")) == self.k - 1,
                       what="the events before the outage")
            self.broker.stop()
            wait_until(lambda: not self.publisher.connected, what="the publisher to see the broker gone")

    def on_status(self, status) -> None:
        pass

    def close(self) -> None:
        pass


def test_broker_gone_mid_run_keeps_the_csv_whole_and_sends_the_queue_when_back(tiny_model, tmp_path, log_lines):
    broker = Broker(tmp_path / "mosquitto", persistent=True).start()
    # A persistent session: what is published after the restart waits for this subscriber until it reconnects.
    sub = Subscriber(broker.target, ["birdlive/#"], client_id="test-outage", clean_session=False)
    publisher = MqttPublisher(broker.target, queue_limit=4)
    try:
        wait_until(lambda: publisher.connected, what="the publisher's connection")
        csv_log = CsvEventLog(tmp_path / "night.csv").open()
        k = 6
        make_runner(tiny_model, [csv_log, StopBrokerAt(k, broker, publisher, sub), publisher]).run(
            file_specs([RECORDING], tiny_model.cfg.sample_rate))
        csv_log.close()
        rows = read_events_csv(tmp_path / "night.csv")
        assert len(rows) >= k + 4 + 1                               # some events found no room in the queue
        assert publisher.queued == 4                                 # events k … k+3 wait
        assert publisher.dropped == len(rows) - (k - 1) - 4
        assert log_lines().count("connection lost") == 1
        assert log_lines().count("warning: MQTT: 4 messages wait") == 1     # once, not per dropped event

        broker.start()                                               # same port
        wait_until(lambda: publisher.queued == 0, 60, "the queue to drain into the restarted broker")
        want = [(r["species"], r["onset_s"]) for r in rows[:k - 1 + 4]]
        received = lambda: list(dict.fromkeys((p["species"], f"{p['onset_s']:.2f}")     # noqa: E731
                                              for p in sub.json_on("/detection")))        # QoS 1: at least once
        wait_until(lambda: len(received()) >= len(want), 60, "the queued events at the subscriber")
        assert received() == want
        wait_until(lambda: any(s["state"] == "done" for s in sub.json_on("synthetic_calls/status")), 30,
                   "the stream's final status, sent on reconnecting")
        assert "connected to 127.0.0.1" in log_lines()
    finally:
        publisher.close()
        sub.close()
        broker.stop()
    closing = log_lines().splitlines()[-1]
    assert closing.startswith(f"warning: MQTT: {publisher.dropped} messages dropped") and "0 not delivered" in closing


def test_unresolvable_host_neither_raises_nor_blocks_and_says_so_once(log_lines):
    publisher = MqttPublisher("no-such-host.invalid", queue_limit=100)
    events = [Event("trill", "trill", i, i + 0.5, 0.9, 0.8, "a.wav") for i in range(20)]
    sender = threading.Thread(target=lambda: [publisher.on_event(e, SILENCE) for e in events])
    sender.start()
    sender.join(30)                                  # a guard against a hang, not a speed limit
    assert not sender.is_alive()
    assert publisher.queued == 20 and publisher.dropped == 0
    wait_until(lambda: publisher.connect_failures >= 2, 30, "a second connection attempt")
    lines = log_lines().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: MQTT broker no-such-host.invalid:1883: cannot connect")
    publisher.close()
    assert publisher.undelivered == 20
    assert log_lines().splitlines()[-1].startswith("warning: MQTT: 0 messages dropped (queue full) and 20 not "
                                                      "delivered")


def test_cli_replay_with_an_unreachable_broker_still_writes_the_csv_and_exits_0(tmp_path):
    out = tmp_path / "night.csv"
    r = birdlive("replay", RECORDING, "--model", TINY, "--no-live", "--csv", out, "--mqtt", "no-such-host.invalid")
    assert r.returncode == 0, r.stderr
    rows = read_events_csv(out)
    assert len(rows) >= 10
    warnings = [line for line in r.stderr.splitlines() if "MQTT" in line]
    assert len(warnings) == 2 and all(w.startswith("warning: MQTT") for w in warnings)
    assert f"and {len(rows)} not delivered" in warnings[-1]
    assert "error" not in r.stderr
