"""Tests for birdlive.streamer.sources and the decoder (birdlive.audio): files, and a REAL capture device.

The MicSource tests capture from a private PulseAudio null sink through
PortAudio/ALSA (see tests/pulse.py); they skip when the packages from
.ci/apt-packages.txt are missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from tests.pulse import pulse_null_sink

from birdlive.streamer.sources import (  # noqa: E402
    AudioBlock,
    AudioSourceError,
    FileSource,
    MicSource,
    list_input_devices,
    resolve_input_device,
)

SR = 32000


def tone(freq, seconds, rate, amp=0.5, phase=0.0):
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def peak_freq(x, rate):
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w))
    k = int(np.argmax(spec))
    # parabolic interpolation for sub-bin accuracy
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return k * rate / len(x)


def read_all(src):
    blocks = list(src)
    return blocks, np.concatenate([b.samples for b in blocks]) if blocks else np.zeros(0, np.float32)


def check_contiguous(blocks):
    pos = blocks[0].start_sample
    assert pos == 0
    for b in blocks:
        assert isinstance(b, AudioBlock)
        assert b.samples.dtype == np.float32 and b.samples.ndim == 1
        assert b.start_sample == pos
        pos += len(b.samples)


# ------------------------------------------------------------------ FileSource


@pytest.mark.parametrize("rate,freq", [(8000, 1000.0), (192000, 3000.0), (44100, 2500.0), (32000, 4000.0)])
def test_resampling_keeps_frequency_and_length(tmp_path, rate, freq):
    secs = 3.0
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(path, tone(freq, secs, rate), rate, subtype="FLOAT")
    src = FileSource(path, SR, block_s=0.5)
    assert src.native_rate == rate and src.channels == 1
    assert src.duration_s == pytest.approx(secs)
    blocks, x = read_all(src)
    check_contiguous(blocks)
    assert abs(len(x) - secs * SR) <= 2
    assert all(len(b.samples) == SR // 2 for b in blocks[:-1])
    assert all(b.wall_time is None for b in blocks)
    mid = x[SR // 2 : -SR // 2]
    assert peak_freq(mid, SR) == pytest.approx(freq, rel=2e-3)
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    assert src.stats["blocks"] == len(blocks)


def test_reads_in_blocks_not_whole_file(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    rate = 16000
    sf.write(path, tone(440, 20, rate, amp=0.3), rate)
    calls = []
    orig = sf.SoundFile.read

    def spy(self, frames=-1, *a, **kw):
        calls.append(frames)
        return orig(self, frames, *a, **kw)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    blocks, x = read_all(FileSource(path, SR, block_s=1.0))
    assert calls and all(0 < c <= rate for c in calls), calls[:5]
    assert len(calls) >= 20
    assert len(blocks) == 20 and abs(len(x) - 20 * SR) <= 2


def test_stereo_downmix_and_channel_pick(tmp_path):
    rate = 32000
    left = tone(1000, 1, rate, amp=0.4)
    right = tone(1000, 1, rate, amp=0.2)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    _, x = read_all(FileSource(path, SR))
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)
    _, x1 = read_all(FileSource(path, SR, channel=1))
    np.testing.assert_allclose(x1, right, atol=1e-6)


def test_multichannel_requires_channel(tmp_path):
    rate = 16000
    data = np.zeros((rate, 8), np.float32)
    data[:, 5] = tone(2000, 1, rate)
    path = tmp_path / "eight.wav"
    sf.write(path, data, rate, subtype="FLOAT")
    with pytest.raises(AudioSourceError) as ei:
        FileSource(path, SR)
    msg = str(ei.value)
    assert msg == f"{path}: 8 channels; pick one with --channel N (0-7)"
    _, x = read_all(FileSource(path, SR, channel=5))
    assert peak_freq(x[1000:-1000], SR) == pytest.approx(2000, rel=2e-3)
    with pytest.raises(AudioSourceError, match=r"channel 8 does not exist.*0-7"):
        FileSource(path, SR, channel=8)
    with pytest.raises(AudioSourceError, match="channel -1 does not exist"):
        FileSource(path, SR, channel=-1)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats(tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no {fmt}")
    rate = 44100
    path = tmp_path / f"t.{fmt.lower()}"
    sf.write(path, tone(3000, 2, rate, amp=0.3), rate, format=fmt)
    blocks, x = read_all(FileSource(path, SR, block_s=0.25))
    check_contiguous(blocks)
    assert abs(len(x) - 2 * SR) < 0.05 * SR
    assert peak_freq(x[SR // 4 : -SR // 4], SR) == pytest.approx(3000, rel=3e-3)


class FakeClock:
    """`time` for `birdlive.audio`: monotonic and wall time move only when the code sleeps, so pacing is checked
    on the audio's own schedule, whatever the machine's load."""

    def __init__(self, wall0=1.7e9):
        self.now, self.wall0, self.sleeps = 0.0, wall0, []

    def monotonic(self):
        return self.now

    def time(self):
        return self.wall0 + self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_realtime_paces_to_wall_clock(tmp_path, monkeypatch):
    """Each 0.2 s block of a 0.6 s file comes once its last sample exists (0.2, 0.4, 0.6 s after the start) and
    is stamped with the wall time of its first sample."""
    import birdlive.audio
    clock = FakeClock()
    monkeypatch.setattr(birdlive.audio, "time", clock)
    rate = 16000
    path = tmp_path / "rt.wav"
    sf.write(path, tone(500, 0.6, rate), rate)
    delivered = []
    for b in FileSource(path, SR, block_s=0.2, realtime=True):
        delivered.append((clock.now, b))
    assert [round(t, 6) for t, _ in delivered] == [0.2, 0.4, 0.6]
    assert sum(clock.sleeps) == pytest.approx(0.6, abs=1e-6)
    walls = [b.wall_time for _, b in delivered]
    assert walls == pytest.approx([clock.wall0, clock.wall0 + 0.2, clock.wall0 + 0.4], abs=1e-6)


def _assert_one_line(err: AudioSourceError, path) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert str(path) in msg, msg
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.wav"
    with pytest.raises(AudioSourceError) as ei:
        FileSource(p, SR)
    assert str(ei.value) == f"{p}: file not found"


def test_directory(tmp_path):
    with pytest.raises(AudioSourceError) as ei:
        FileSource(tmp_path, SR)
    assert "directory" in _assert_one_line(ei.value, tmp_path)


def test_empty_files(tmp_path):
    p0 = tmp_path / "zero_bytes.wav"
    p0.write_bytes(b"")
    with pytest.raises(AudioSourceError) as ei:
        FileSource(p0, SR)
    assert "empty" in _assert_one_line(ei.value, p0)
    p1 = tmp_path / "zero_frames.wav"
    sf.write(p1, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioSourceError) as ei:
        FileSource(p1, SR)
    assert "0 samples" in _assert_one_line(ei.value, p1)


def test_not_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(AudioSourceError) as ei:
        FileSource(p, SR)
    assert "not an audio file" in _assert_one_line(ei.value, p)


def test_truncated_wav_is_read_up_to_its_end_with_one_warning(tmp_path):
    """A WAV cut short (a recorder whose card filled up): the audio that is there, and one line saying so."""
    good = tmp_path / "good.wav"
    sf.write(good, tone(440, 3, 16000), 16000)
    data = good.read_bytes()
    bad = tmp_path / "cut.wav"
    bad.write_bytes(data[: len(data) // 2])
    src = FileSource(bad, SR)
    _, x = read_all(src)
    assert abs(len(x) / SR - 1.5) < 0.01
    (warning,) = src.warnings
    assert "cut.wav" in warning and "truncated" in warning and "\n" not in warning


def test_streamed_wav_with_placeholder_size_is_fine(tmp_path):
    """A WAV written to a pipe (data size 0xFFFFFFFF) is not an error."""
    good = tmp_path / "good.wav"
    sf.write(good, tone(440, 1, 16000), 16000, subtype="PCM_16")
    b = bytearray(good.read_bytes())
    i = b.index(b"data")
    b[i + 4 : i + 8] = b"\xff\xff\xff\xff"
    b[4:8] = b"\xff\xff\xff\xff"
    p = tmp_path / "piped.wav"
    p.write_bytes(bytes(b))
    _, x = read_all(FileSource(p, SR))
    assert abs(len(x) - SR) <= 2


def cut_in_half(tmp_path, ext, fmt):
    """4 s of noise written as `fmt`, then the file's bytes cut in half (a copy or download cut short)."""
    good = tmp_path / f"good.{ext}"
    rng = np.random.default_rng(0)
    sf.write(good, (0.3 * rng.standard_normal(16000 * 4)).astype(np.float32), 16000, format=fmt)
    bad = tmp_path / f"cut.{ext}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


def test_truncated_ogg_is_read_up_to_its_end_with_one_warning(tmp_path):
    src = FileSource(cut_in_half(tmp_path, "ogg", "OGG"), SR)
    _, x = read_all(src)
    assert 0.3 < len(x) / SR < 3.0
    (warning,) = src.warnings
    assert "cut.ogg" in warning and "end-of-stream" in warning


def test_truncated_flac_delivers_the_audio_before_the_cut_then_fails(tmp_path):
    """libsndfile loses sync where a FLAC is cut: everything decodable before it is delivered, then one error."""
    bad = cut_in_half(tmp_path, "flac", "FLAC")
    got = []
    with pytest.raises(AudioSourceError) as ei:
        for b in FileSource(bad, SR, block_s=16.0):
            got.append(b)
    assert "corrupt or truncated" in _assert_one_line(ei.value, bad)
    assert sum(len(b.samples) for b in got) / SR > 1.0   # not all lost with the 16 s read that failed


def test_corrupt_flac(tmp_path):
    good = tmp_path / "good.flac"
    sf.write(good, tone(440, 3, 16000, amp=0.3), 16000)
    b = bytearray(good.read_bytes())
    for i in range(400, len(b)):
        b[i] = (i * 7919) % 256
    bad = tmp_path / "garbled.flac"
    bad.write_bytes(bytes(b))
    with pytest.raises(AudioSourceError) as ei:
        list(FileSource(bad, SR))
    assert "corrupt" in _assert_one_line(ei.value, bad)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_inf_reports_time(tmp_path, bad_value):
    rate = 16000
    x = tone(440, 3, rate)
    x[int(2.5 * rate)] = bad_value
    p = tmp_path / "nan.wav"
    sf.write(p, x, rate, subtype="FLOAT")
    got = []
    with pytest.raises(AudioSourceError) as ei:
        for b in FileSource(p, SR, block_s=1.0):
            got.append(b)
    msg = _assert_one_line(ei.value, p)
    assert "NaN/Inf" in msg and "2.500 s" in msg, msg
    assert len(got) >= 1  # the good part before it was delivered


# ------------------------------------------------------------------ devices


def test_portaudio_missing_message():
    code = textwrap.dedent(
        """
        import ctypes.util
        _orig = ctypes.util.find_library
        ctypes.util.find_library = lambda n: None if "portaudio" in n else _orig(n)
        import birdlive.streamer.sources as s
        # file replay must still work without PortAudio
        assert "sounddevice" not in __import__("sys").modules
        for fn in (s.list_input_devices, lambda: s.resolve_input_device("x"),
                   lambda: s.MicSource(None, 32000)):
            try:
                fn()
            except s.AudioSourceError as e:
                print("ERR:" + str(e))
            else:
                print("NOERR")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    want = "ERR:PortAudio library not found: install it with `apt-get install libportaudio2`"
    assert lines == [want] * 3, r.stdout + r.stderr


# ---- MicSource timing, without a device: the real callback and consumer code, fed made-up PortAudio blocks


class _FakeCard:
    """Drives MicSource's real callback (``make_callback``) like PortAudio would, with clocks the test sets:
    ``adc`` is PortAudio's stream clock, ``mono`` the monotonic clock, ``wall`` the system clock (steppable)."""

    def __init__(self, rate=SR, block=3200, latency=0.15, adc=500.0, mono=1000.0, wall=1.8e9, queue_blocks=1000):
        from birdlive.streamer.sources import timeline as S

        self.S, self.rate, self.block, self.latency = S, rate, block, latency
        self.adc, self.mono, self.wall = adc, mono, wall
        self.stats = {"dropped_blocks": 0, "dropped_samples": 0}
        self.q = __import__("queue").Queue(maxsize=queue_blocks)
        self.gen = 0
        self.new_stream()
        self.n = 0  # blocks delivered

    def new_stream(self):
        self.gen += 1
        self.cb = self.S.make_callback(self.q, self.stats, 1, self.gen, lambda: self.wall, lambda: self.mono)

    def advance(self, seconds):
        """Time passes (on every clock) without a callback: lost audio, or an outage."""
        self.adc += seconds
        self.mono += seconds
        self.wall += seconds

    def deliver(self, overflow=False, adc_jitter=0.0, valid_adc=True):
        """One block, its samples all equal to the block's number (so tests see where each block landed)."""
        from types import SimpleNamespace

        self.n += 1
        x = np.full((self.block, 1), float(self.n), np.float32)
        self.mono += self.block / self.rate  # the callback comes once the block is complete...
        self.wall += self.block / self.rate
        adc = self.adc + adc_jitter
        ti = SimpleNamespace(inputBufferAdcTime=adc if valid_adc else 0.0,
                             currentTime=adc + self.latency if valid_adc else 0.0)
        self.cb(x, self.block, ti, SimpleNamespace(input_overflow=overflow))
        self.adc += self.block / self.rate  # ...and the next block starts where this one ended

    def timeline(self, stats=None, warnings=None):
        stats = stats if stats is not None else {k: 0 for k in ("blocks", "samples", "overflows", "overflow_samples",
                                                                "gap_samples", "clock_steps")}
        return self.S.Timeline(self.rate, self.block, stats, warnings if warnings is not None else [])

    def drain(self, tl):
        while not self.q.empty():
            tl.add(self.q.get_nowait(), self.rate)
        return list(tl.blocks())


def _stream(blocks):
    check_contiguous(blocks)
    return np.concatenate([b.samples for b in blocks])


@pytest.mark.parametrize("valid_adc", [True, False], ids=["adc-clock", "callback-clock"])
def test_mic_overflow_lost_frames_are_zero_filled(valid_adc):
    """PortAudio flags input_overflow after losing 0.25 s: exactly that many zeros, from the timestamps' jump
    (the ADC clock, trusted after 5 s of consistent steps; or the callbacks' clock where there is no ADC time)."""
    card = _FakeCard()
    tl = card.timeline()
    pre = 60  # 6 s
    for _ in range(pre):
        card.deliver(valid_adc=valid_adc)
    assert tl._adc_trusted() is False  # (nothing consumed yet)
    card.advance(0.25)  # 8000 frames lost inside PortAudio / the driver
    card.deliver(overflow=True, valid_adc=valid_adc)
    for _ in range(3):
        card.deliver(valid_adc=valid_adc)
    x = _stream(card.drain(tl) + list(tl.blocks(final=True)))
    assert tl._adc_trusted() is valid_adc
    assert tl.stats["overflows"] == 1 and tl.stats["overflow_samples"] == 8000, tl.stats
    assert len(x) == (pre + 4) * 3200 + 8000
    assert np.all(x[: pre * 3200] == np.repeat(np.arange(1, pre + 1), 3200))
    assert np.all(x[pre * 3200 : pre * 3200 + 8000] == 0)  # the lost stretch, where it was lost
    assert np.all(x[pre * 3200 + 8000 :] == np.repeat(np.arange(pre + 1, pre + 5), 3200))
    # wall time stays true across the overflow: the next block began one block and the 0.25 s lost later
    assert tl.wall_at(pre * 3200 + 8000) - tl.wall_at((pre - 1) * 3200) == pytest.approx(0.1 + 0.25, abs=1e-6)


def test_mic_overflow_jitter_never_inserts_zeros():
    """A flagged overflow whose timestamps moved less than half a block, or timestamps that jump without the flag
    (the ALSA pulse plugin's do), insert nothing: stream time is the frames counted."""
    card = _FakeCard()
    tl = card.timeline()
    for _ in range(60):
        card.deliver()
    card.deliver(overflow=True, adc_jitter=0.04)  # 40 ms < half a 100 ms block
    card.deliver(adc_jitter=0.3)  # a 300 ms jump, not flagged
    card.deliver()
    x = _stream(card.drain(tl) + list(tl.blocks(final=True)))
    assert len(x) == 63 * 3200 and np.all(x == np.repeat(np.arange(1, 64), 3200))
    assert tl.stats["overflows"] == 1 and tl.stats["overflow_samples"] == 0


def test_mic_callback_never_blocks_and_carries_a_dropped_overflow_flag():
    """Queue full: the block is dropped and counted; the consumer zero-fills it from the frame counter, and the
    overflow flag of the dropped block reaches the consumer with the next one."""
    card = _FakeCard(queue_blocks=3)
    tl = card.timeline()
    for _ in range(3):
        card.deliver()
    card.deliver(overflow=True)  # queue full: dropped
    blocks = card.drain(tl)
    card.deliver()
    blocks += card.drain(tl) + list(tl.blocks(final=True))
    x = _stream(blocks)
    assert card.stats == {"dropped_blocks": 1, "dropped_samples": 3200}
    assert len(x) == 5 * 3200 and np.all(x[3 * 3200 : 4 * 3200] == 0) and np.all(x[4 * 3200 :] == 5)
    assert tl.stats["overflows"] == 1


def test_mic_clock_step_is_reported_not_zero_filled():
    """NTP steps the system clock by an hour mid-stream: no zeros, one warning line, wall times follow."""
    card = _FakeCard(latency=0.1)
    warnings = []
    tl = card.timeline(warnings=warnings)
    for _ in range(6):
        card.deliver()
    card.wall += 3600.0
    for _ in range(6):
        card.deliver()
    blocks = card.drain(tl) + list(tl.blocks(final=True))
    x = _stream(blocks)
    assert len(x) == 12 * 3200 and np.all(x != 0)
    assert tl.stats["clock_steps"] == 1 and tl.stats["gap_samples"] == 0
    assert len(warnings) == 1 and "\n" not in warnings[0] and "+3600.0 s" in warnings[0], warnings
    w = [b.wall_time for b in blocks]
    assert w[5] - w[0] == pytest.approx(0.5, abs=1e-6)
    assert w[11] - w[5] == pytest.approx(3600.6, abs=1e-6)  # the new clock, from the first block after the step


def test_mic_outage_is_measured_on_the_monotonic_clock():
    """The device is gone for 2 s and the clock is stepped by an hour meanwhile (a Pi without RTC getting NTP):
    2 s of zeros, not 3602 s; the step is reported."""
    card = _FakeCard(latency=0.1)
    warnings = []
    tl = card.timeline(warnings=warnings)
    for _ in range(5):
        card.deliver()
    card.advance(2.0)
    card.wall += 3600.0
    card.new_stream()  # reopened: a new stream, its frame counter starts at 0 again
    for _ in range(5):
        card.deliver()
    blocks = card.drain(tl) + list(tl.blocks(final=True))
    x = _stream(blocks)
    assert tl.stats["gap_samples"] == 2 * SR, tl.stats
    assert len(x) == 10 * 3200 + 2 * SR
    assert np.all(x[5 * 3200 : 5 * 3200 + 2 * SR] == 0)
    assert np.all(x[5 * 3200 + 2 * SR :] == np.repeat(np.arange(6, 11), 3200))
    assert tl.stats["clock_steps"] == 1 and len(warnings) == 1, warnings


def test_mic_wall_time_from_adc_timestamps_only_when_they_are_consistent():
    """A sound card's ADC timestamps advance with its frames: after 5 s of that, the block's age is currentTime -
    ADC time (here 0.15 s). Timestamps that jump about (the ALSA pulse plugin's), or that were steady only for the
    first second (the same plugin at stream start), are not used: the age is one block."""
    for jitter_from, age in ((None, 0.15), (10, 0.1), (70, 0.1)):
        card = _FakeCard(latency=0.15)
        tl = card.timeline()
        for k in range(80):
            card.deliver(adc_jitter=0.2 * (k % 2) if jitter_from is not None and k >= jitter_from else 0.0)
        card.drain(tl)
        assert tl.wall_at(79 * 3200) == pytest.approx(card.wall - age, abs=1e-6), jitter_from


def _portaudio_or_skip():
    try:
        return list_input_devices()
    except AudioSourceError as e:
        pytest.skip(str(e))


def test_unknown_device_errors():
    _portaudio_or_skip()
    for spec in (9999, "9999", "no-such-microphone-xyz"):
        with pytest.raises(AudioSourceError) as ei:
            resolve_input_device(spec)
        msg = str(ei.value)
        assert "birdlive devices" in msg and "\n" not in msg
    with pytest.raises(AudioSourceError, match="birdlive devices"):
        MicSource("no-such-microphone-xyz", SR)
    assert resolve_input_device(None) is None


@pytest.fixture(scope="module")
def pa():
    with pulse_null_sink() as p:
        yield p


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory):
    """1 s silence, 2 s of 2 kHz at 0.5, 1 s silence (48 kHz stereo)."""
    rate = 48000
    x = np.concatenate([np.zeros(rate, np.float32), tone(2000, 2, rate), np.zeros(rate, np.float32)])
    p = tmp_path_factory.mktemp("wav") / "tone.wav"
    sf.write(p, np.stack([x, x], axis=1), rate, subtype="PCM_16")
    return p


def test_list_and_resolve_devices(pa):
    devs = list_input_devices()
    names = [d["name"] for d in devs]
    assert pa.device in names, names
    d = devs[names.index(pa.device)]
    assert set(d) == {"index", "name", "hostapi", "max_input_channels", "default_samplerate", "is_default"}
    assert d["max_input_channels"] >= 1 and d["hostapi"]
    assert resolve_input_device("PULSE") == d["index"]
    assert resolve_input_device("puls") == d["index"]
    assert resolve_input_device(d["index"]) == d["index"]
    assert resolve_input_device(str(d["index"])) == d["index"]
    if len([n for n in names if "e" in n.lower()]) > 1:
        with pytest.raises(AudioSourceError, match="ambiguous"):
            resolve_input_device("e")


def _capture(src, seconds, on_block=None):
    """Iterate src until on_block stops it, or stop it after `seconds` (safety net)."""
    blocks = []
    timer = threading.Timer(seconds, src.stop)
    timer.daemon = True
    timer.start()
    try:
        for b in src:
            blocks.append(b)
            if on_block:
                on_block(b, blocks)
    finally:
        timer.cancel()
    return blocks


class TonePlayer:
    """on_block callback: start paplay after `after` blocks, stop the source
    `tail_s` of stream time after paplay has finished."""

    def __init__(self, pa, src, wav, after=3, tail_s=0.5, start_when=None):
        self.pa, self.src, self.wav = pa, src, wav
        self.after, self.tail = after, int(tail_s * src.sample_rate)
        self.start_when = start_when or (lambda b, blocks: len(blocks) >= after)
        self.proc = None
        self.play_pos = None  # stream position when paplay was started
        self.stop_at = None

    def __call__(self, b, blocks):
        if self.proc is None:
            if self.start_when(b, blocks):
                self.proc = self.pa.play(self.wav)
                self.play_pos = b.end_sample
        elif self.stop_at is None:
            if self.proc.poll() is not None:
                assert self.proc.returncode == 0, self.proc.stderr.read()
                self.stop_at = b.end_sample + self.tail
        elif b.end_sample >= self.stop_at:
            self.src.stop()

    def finished(self):
        return self.stop_at is not None


def _tone_profile(x, rate, win=0.1):
    n = int(win * rate)
    out = []
    for i in range(0, len(x) - n + 1, n):
        seg = x[i : i + n]
        rms = float(np.sqrt(np.mean(seg**2)))
        out.append((rms, peak_freq(seg, rate) if rms > 1e-3 else 0.0))
    return out


def _assert_tone(x, rate, min_s=1.7, max_s=2.3):
    """x holds one 2 s burst of 2 kHz at amplitude 0.5 surrounded by silence."""
    prof = _tone_profile(x, rate)
    loud = [i for i, (rms, f) in enumerate(prof) if rms > 0.1]
    assert loud, prof
    assert min_s * 10 <= len(loud) <= max_s * 10 + 1, (loud, prof)
    assert loud[-1] - loud[0] + 1 == len(loud), loud  # one contiguous burst
    for i in loud[1:-1]:
        rms, f = prof[i]
        assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.05), prof
        assert f == pytest.approx(2000, rel=5e-3), prof
    return loud[0] * int(0.1 * rate)  # onset sample (window resolution)


def _assert_wall_follows_stream(blocks, tol=0.25):
    """Every block's wall time agrees with the first block's plus the stream time between them. Wall times are
    re-estimated on every block from the callback's clock (so sound-card drift never accumulates); through the
    ALSA pulse plugin they scatter by about 0.1 s, and an outage's length is known to about that too."""
    w0 = blocks[0].wall_time
    assert w0 is not None
    worst = max(abs(b.wall_time - w0 - (b.start_sample - blocks[0].start_sample) / SR) for b in blocks)
    assert worst < tol, worst


def test_mic_captures_played_tone(pa, tone_wav):
    src = MicSource(pa.device, SR, block_s=0.1)
    assert src.name == pa.device and src.device_rate == SR
    player = TonePlayer(pa, src, tone_wav)
    blocks = _capture(src, 25.0, player)
    assert player.finished(), "paplay did not finish in time"
    check_contiguous(blocks)
    x = np.concatenate([b.samples for b in blocks])
    onset = _assert_tone(x, SR)
    # the tone starts ~1 s (the leading silence) after playback began
    onset_s = (onset - player.play_pos) / SR
    assert 0.5 < onset_s < 3.0, onset_s
    prof = _tone_profile(x, SR)
    assert max(rms for rms, _ in prof[: onset // int(0.1 * SR) - 1]) < 1e-3  # silence before
    # wall-clock timestamps follow the stream
    w = [b.wall_time for b in blocks]
    _assert_wall_follows_stream(blocks)
    assert abs(w[-1] + 0.1 - time.time()) < 2.0
    assert src.stats["reconnects"] == 0 and src.stats["blocks"] == len(blocks)
    assert src._stream is None  # closed when iteration ended


def test_mic_resamples_from_device_rate(pa, tone_wav):
    """pulse opens 16 kHz natively; force the device-rate -> target-rate path too."""
    src = MicSource(pa.device, 16000, block_s=0.05)
    assert src.device_rate == 16000
    src.device_rate = 44100  # as if the device only did 44.1 kHz
    player = TonePlayer(pa, src, tone_wav)
    blocks = _capture(src, 25.0, player)
    assert player.finished()
    check_contiguous(blocks)
    assert all(len(b.samples) == 800 for b in blocks[:-1])
    _assert_tone(np.concatenate([b.samples for b in blocks]), 16000)


def test_mic_stop_from_other_thread_ends_quickly(pa):
    src = MicSource(pa.device, SR, block_s=0.1)
    got_first = threading.Event()
    t_stop = []

    def stopper():
        got_first.wait(15)
        time.sleep(0.3)
        t_stop.append(time.monotonic())
        src.stop()

    th = threading.Thread(target=stopper, daemon=True)
    th.start()
    blocks = []
    for b in src:
        blocks.append(b)
        got_first.set()
    ended = time.monotonic()
    th.join(5)
    assert blocks and t_stop
    assert ended - t_stop[0] < 1.0
    check_contiguous(blocks)
    assert src._stream is None


def _capture_through_outage(pa, tone_wav, start_outage, end_outage, after_blocks: int, outage_s: float):
    """Captures from a MicSource (reconnect window 20 s) through an outage: `start_outage()` once `after_blocks`
    blocks have arrived, `end_outage()` `outage_s` later (from a thread: no blocks flow meanwhile), a tone played
    once the source has reconnected. Checks what every recovery keeps: a reconnect, the stream contiguous and
    locked to the wall clock, the tone captured. Returns (source, blocks)."""
    src = MicSource(pa.device, SR, block_s=0.1, reconnect_s=20)
    src.retry_s = 0.5
    began = threading.Event()

    def bring_back():
        began.wait()
        time.sleep(outage_s)
        end_outage()

    player = TonePlayer(pa, src, tone_wav, start_when=lambda b, blocks: src.stats["reconnects"] >= 1)

    def on_block(b, blocks):
        if not began.is_set() and len(blocks) >= after_blocks:
            began.set()
            start_outage()
        player(b, blocks)

    th = threading.Thread(target=bring_back, daemon=True)
    th.start()
    blocks = _capture(src, 30.0, on_block)
    th.join(20)
    assert src.stats["reconnects"] >= 1 and player.finished(), src.stats
    check_contiguous(blocks)
    # stream time covers the outage (zeros): it stays locked to the wall clock
    _assert_wall_follows_stream(blocks)
    # and the tone played after reconnecting is captured
    x = np.concatenate([b.samples for b in blocks])
    _assert_tone(x[player.play_pos :], SR)
    return src, blocks


def test_mic_reconnects_when_device_vanishes(pa, tone_wav):
    src, _ = _capture_through_outage(pa, tone_wav, pa.unload_sink, pa.load_sink, after_blocks=5, outage_s=1.5)
    assert src.stats["gap_samples"] > 1.0 * SR, src.stats


def test_mic_gives_up_after_reconnect_window(pa):
    src = MicSource(pa.device, SR, block_s=0.1, reconnect_s=1.5)
    src.retry_s = 0.3
    n = 0
    try:
        with pytest.raises(AudioSourceError) as ei:
            for _ in src:
                n += 1
                if n == 3:
                    pa.unload_sink()
        msg = str(ei.value)
        assert "lost" in msg and pa.device in msg and "\n" not in msg
        assert src.stats["reconnects"] == 0
    finally:
        if pa.module_id is None:
            pa.load_sink()


def test_mic_survives_sound_server_crash(pa, tone_wav):
    """The whole server dies (every PortAudio device vanishes) and comes back:
    PortAudio is re-initialised, the device found again by name, and reopened."""
    _capture_through_outage(pa, tone_wav, pa.crash_server, pa.restart_server, after_blocks=3, outage_s=1.0)


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_mics_at_once_and_one_rescanning_portaudio(pa, tone_wav):
    """Two MicSources on one device, each iterated in its own (non-main) thread. One loses its stream and
    re-initialises PortAudio to rescan devices, which closes every stream in the process: the other notices,
    reopens at once (one counted reconnect, the outage zero-filled with its true length), and both capture the
    tone played afterwards."""
    from birdlive.streamer.sources import devices as S

    a = MicSource(pa.device, SR, block_s=0.1, reconnect_s=30)
    b = MicSource(pa.device, SR, block_s=0.1, reconnect_s=30)
    a.retry_s = 0.3
    got = {"a": [], "b": []}
    errors = []

    def consume(src, key):
        try:
            for blk in src:
                got[key].append(blk)
        except Exception as e:  # surfaced by the asserts below
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(s, k), daemon=True) for s, k in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(got["a"]) >= 5 and len(got["b"]) >= 5, 20, "both streams")
        gen = S.PA_STATE["gen"]
        with S.PA_LOCK:  # a's stream dies (as if its device had gone): a rescans PortAudio to find it again
            a._stream.abort()
        _wait_for(lambda: a.stats["reconnects"] >= 1 and b.stats["reconnects"] >= 1, 30, "both to reconnect")
        assert S.PA_STATE["gen"] == gen + 1  # one rescan, by a; b reopened without one (no ping-pong)
        # play once both deliver again
        n = {k: len(v) for k, v in got.items()}
        _wait_for(lambda: all(len(got[k]) >= n[k] + 3 for k in got), 20, "data after reconnecting")
        play_pos = {k: got[k][-1].end_sample for k in got}
        assert pa.play(tone_wav).wait(30) == 0
        ends = {k: got[k][-1].end_sample for k in got}
        _wait_for(lambda: all(got[k][-1].end_sample >= ends[k] + SR for k in got), 20, "the tone's tail")
    finally:
        a.stop()
        b.stop()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert a.stats["reconnects"] == 1 and b.stats["reconnects"] == 1, (a.stats, b.stats)
    for k, src in (("a", a), ("b", b)):
        blocks = got[k]
        check_contiguous(blocks)
        _assert_wall_follows_stream(blocks)  # the outage was zero-filled with its true length
        assert 0 < src.stats["gap_samples"] < 10 * SR, src.stats
        _assert_tone(np.concatenate([blk.samples for blk in blocks])[play_pos[k] :], SR)
        assert src._stream is None


def test_mic_blocks_carry_the_device_rate_audio_aligned_with_stream_time():
    """A 48 kHz device: each 32 kHz block comes with its stretch of the device's own samples (for clips), the
    overflow's zeros included, so native sample i is always stream sample i·2/3."""
    card = _FakeCard(rate=48000, block=4800)
    stats = {k: 0 for k in ("blocks", "samples", "overflows", "overflow_samples", "gap_samples", "clock_steps")}
    tl = card.S.Timeline(SR, 3200, stats, [], keep_native=True)
    for _ in range(20):
        card.deliver()
    card.advance(0.25)
    card.deliver(overflow=True)
    for _ in range(5):
        card.deliver()
    blocks = []
    while not card.q.empty():
        tl.add(card.q.get_nowait(), 48000)
        blocks += list(tl.blocks())
    blocks += list(tl.blocks(final=True))
    check_contiguous(blocks)
    device = np.concatenate([np.repeat(np.arange(1, 21), 4800), np.zeros(12000), np.repeat(np.arange(21, 27), 4800)])
    for b in blocks:
        assert b.native_rate == 48000
        n0 = int(round(b.start_sample * 1.5))
        np.testing.assert_array_equal(b.native, device[n0:n0 + len(b.native)])
    native = np.concatenate([b.native for b in blocks])
    assert abs(len(native) - len(device)) <= 2
