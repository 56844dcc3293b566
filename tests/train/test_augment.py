"""Each augmentation changes the signal as intended; mixing gives union labels; the energy crop finds the call;
the composer's strong targets sit where its notes are."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from birdlive.model import LogMelFrontend, create_config
from birdlive.audio import FileSource
from birdlive.train.augment import (AugmentConfig, NoiseBank, TempoPitchLogMel, add_noise, crop, energy_profile, mix,
                                    pitch_shift, power, time_stretch, weak_example)
from birdlive.train.cache import AudioCache, decode
from birdlive.train.composer import Composer, ComposerConfig, SnippetPool, frame_activity
from birdlive.train.datasets import load_dataset
from birdlive.train.synthetic import colored_noise, make_call
from birdlive.train.windows import WindowSet

SR = 32000


def tone(freq, seconds, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, sr=SR):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))]


@pytest.fixture(scope="module")
def frontend():
    return LogMelFrontend(create_config("tiny", ["a"])).eval()


def mel_peak_bin(frontend, x):
    with torch.no_grad():
        m = frontend(torch.from_numpy(x)[None])[0, 0]   # (T, F)
    return int(m[5:-5].mean(0).argmax())


# ----------------------------------------------------------------------------------------- pitch / stretch

@pytest.mark.parametrize("semitones", [3.0, -2.0])
def test_pitch_shift_moves_mel_peak_by_expected_bins(frontend, semitones):
    f0 = 3000.0
    x = tone(f0, 1.0)
    y = pitch_shift(x, SR, semitones)
    assert len(y) == len(x)                                            # duration kept
    expected = mel_peak_bin(frontend, tone(f0 * 2 ** (semitones / 12), 1.0))
    before = mel_peak_bin(frontend, x)
    assert abs(expected - before) >= 2                                 # the check can tell a shift from none
    assert mel_peak_bin(frontend, y) == expected
    assert peak_hz(y[4000:-4000]) == pytest.approx(f0 * 2 ** (semitones / 12), rel=0.01)


@pytest.mark.parametrize("factor", [0.9, 1.2])
def test_time_stretch_scales_duration_and_keeps_pitch(factor):
    x = np.zeros(2 * SR, np.float32)
    x[SR // 2: SR] = tone(2500, 0.5)                                   # a 0.5 s call at 0.5-1.0 s
    y = time_stretch(x, factor)
    assert len(y) / len(x) == pytest.approx(factor, rel=0.01)
    env = np.convolve(np.abs(y), np.ones(320) / 320, mode="same")
    active_s = np.count_nonzero(env > 0.5 * env.max()) / SR
    assert active_s == pytest.approx(0.5 * factor, abs=0.03)
    mid = y[int(0.6 * factor * SR): int(0.9 * factor * SR)]
    assert peak_hz(mid) == pytest.approx(2500, rel=0.01)


# ------------------------------------------------------------------------------------------------- noise

@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr", [0.0, 12.0])
def test_colored_noise_hits_requested_snr(color, snr):
    rng = np.random.default_rng(1)
    x = make_call("trill", SR, rng)
    x = np.pad(x, (4000, 6000)) * 0.3
    y = add_noise(x, NoiseBank().sample(len(x), rng, colors=(color,), file_prob=0.0), snr)
    measured = 10 * np.log10(power(x) / power(y - x))
    assert measured == pytest.approx(snr, abs=0.5)


def test_noise_files_hit_snr_and_skip_impulse_responses(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "noise" / "background").mkdir(parents=True)
    (tmp_path / "noise" / "impulse_responses").mkdir()
    rain = colored_noise(3 * 44100, "pink", rng) * 0.1
    sf.write(tmp_path / "noise" / "background" / "rain.wav", rain, 44100)
    sf.write(tmp_path / "noise" / "impulse_responses" / "ir.wav", np.eye(1, 4000)[0].astype(np.float32), 44100)
    bank = NoiseBank.from_dir(tmp_path / "noise", AudioCache(tmp_path / "cache", SR))
    assert [p.endswith("rain.wav") for p in bank.files] == [True]
    x = tone(4000, 2.0, amp=0.2)
    n = bank.sample(len(x), rng, file_prob=1.0)
    assert power(n) == pytest.approx(1.0, rel=1e-3)
    assert abs(peak_hz(n) - 4000) > 100                                # it is the file, not a tone
    y = add_noise(x, n, 6.0)
    assert 10 * np.log10(power(x) / power(y - x)) == pytest.approx(6.0, abs=0.5)


# -------------------------------------------------------------------------------------------- energy crop

def test_energy_crop_picks_the_call_and_ignores_rumble():
    rng = np.random.default_rng(3)
    x = colored_noise(10 * SR, "pink", rng) * 0.005
    rumble = colored_noise(2 * SR, "brown", rng) * 0.3                 # loud, low: wind / traffic
    x[1 * SR:3 * SR] += rumble
    call = make_call("upsweep", SR, rng) * 0.1
    at = int(6.3 * SR)
    x[at:at + len(call)] += call
    assert power(rumble) > 10 * power(call)                            # raw energy would pick the rumble
    centre = at + len(call) // 2
    prof = energy_profile(x, SR)

    def hits(p):
        return sum(s <= centre < s + 2 * SR for s in (crop(x, 2 * SR, rng, p, SR, prof)[1] for _ in range(40)))
    assert hits(1.0) == 40
    assert hits(0.0) < 25                                              # uniform crops miss it most of the time


def test_short_recording_is_padded_at_random_offset():
    rng = np.random.default_rng(4)
    x = np.ones(SR // 2, np.float32)
    offsets = set()
    for _ in range(10):
        w, start = crop(x, 2 * SR, rng, 1.0, SR)
        assert len(w) == 2 * SR and w.sum() == pytest.approx(len(x))
        offsets.add(start)
    assert len(offsets) > 1


# ------------------------------------------------------------------------------------------------- mixing

def test_mix_targets_are_the_union_with_masks():
    a = weak_example(np.full(100, 0.1, np.float32), [0], [2], 5, 4)      # species 0, secondary 2
    b = weak_example(np.full(100, 0.2, np.float32), [1], [], 5, 4)
    c = weak_example(np.zeros(100, np.float32), [3], [], 5, 4)
    c.frame_target[1:3, 3], c.frame_mask[:] = 1.0, 1.0                 # strong labels: species 3 in frames 1-2
    m = mix([a, b, c], [0.0, -6.0, 0.0])
    assert m.clip_target.tolist() == [1, 1, 0, 1, 0]
    assert m.clip_mask[2] == 0 and m.clip_mask[4] == 1                   # secondary stays unknown
    assert m.frame_target[:, 3].tolist() == [0, 1, 1, 0] and m.frame_mask[:, 3].tolist() == [1, 1, 1, 1]
    assert m.frame_mask[:, 0].sum() == 0 and m.frame_mask[:, 1].sum() == 0   # weak: when is unknown
    np.testing.assert_allclose(m.wave, 0.1 + 0.2 * 10 ** (-6 / 20), rtol=1e-5)


def test_mixed_windows_hold_exactly_the_labelled_species(tmp_path):
    """Species = pure tones at distinct pitches; every mixed window's labels must be the tones that are in it."""
    freqs = {"a": 1000.0, "b": 2500.0, "c": 5000.0, "d": 8000.0}
    for sp, f in freqs.items():
        (tmp_path / "data" / sp).mkdir(parents=True)
        for i in range(2):
            sf.write(tmp_path / "data" / sp / f"{sp}{i}.wav", tone(f, 3.0, amp=0.3), SR)
    recs = load_dataset(tmp_path / "data").recordings
    labels = sorted(freqs)
    aug = AugmentConfig.none()
    aug.mix_prob, aug.mix_max, aug.mix_gain_db = 1.0, 3, (-6.0, 0.0)
    ws = WindowSet(recs, labels, AudioCache(tmp_path / "cache", SR), NoiseBank(), aug, 1.0, 10, 30, seed=5)
    sizes = []
    for i in range(30):
        item = ws[i]
        spec = np.abs(np.fft.rfft(item["wave"].numpy()))
        hz = np.fft.rfftfreq(len(item["wave"]), 1 / SR)
        present = {sp for sp, f in freqs.items() if spec[np.argmin(abs(hz - f))] > 0.05 * spec.max()}
        labelled = {labels[k] for k in np.flatnonzero(item["clip_target"].numpy())}
        assert present == labelled
        sizes.append(len(labelled))
    assert min(sizes) >= 2 and max(sizes) == 3


# ----------------------------------------------------------------------------------------------- composer

def write_snippets(root, species=("up", "down"), runs=2, notes=6, seed=0):
    rng = np.random.default_rng(seed)
    kinds = {"up": "upsweep", "down": "downsweep", "trill": "trill", "two": "two_tone"}
    for sp in species:
        (root / sp).mkdir(parents=True, exist_ok=True)
        for r in range(runs):
            for i in range(notes):
                call = make_call(kinds[sp], 44100, rng)[: int(rng.uniform(0.08, 0.3) * 44100)]
                sf.write(root / sp / f"{sp}_run{r:04d}_{i:05d}.flac", call * 0.5, 44100)


def test_frame_activity_rule():
    act = frame_activity(10, 10.0, [(0.05, 0.19), (0.52, 0.54), (0.71, 0.74)])
    assert act.tolist() == [1, 1, 0, 0, 0, 1, 0, 1, 0, 0]


def test_composer_strong_targets_match_where_the_notes_are(tmp_path):
    write_snippets(tmp_path / "snip", species=("up", "down", "trill"))
    ds = load_dataset(tmp_path / "snip")
    pool = SnippetPool(ds.recordings, AudioCache(tmp_path / "cache", SR))
    assert len(pool) == 6 and pool.species == ["down", "trill", "up"]   # runs grouped from the file names
    aug = AugmentConfig.none()
    cfg = ComposerConfig(snr_db=(30.0, 30.0), background_dbfs=(-70.0, -70.0))
    comp = Composer(pool, ds.labels, NoiseBank(), SR, 10.0, 3.0, cfg, aug)
    rng = np.random.default_rng(6)
    n_species, n_clear = [], 0
    for _ in range(12):
        ex, events = comp.compose(rng)
        assert ex.wave.shape == (3 * SR,) and ex.frame_target.shape == (30, 3)
        assert ex.clip_mask.all() and ex.frame_mask.all()
        n_species.append(int(ex.clip_target.sum()))
        # frames marked active hold notes; frames 30 ms or more away from every note hold only the background
        frames = ex.wave.reshape(30, -1)
        rms = np.sqrt(np.mean(frames ** 2, axis=1))
        background = 10 ** (-70 / 20)
        any_active = ex.frame_target.max(axis=1) > 0
        assert any_active.any() and rms[any_active].min() > 10 * background
        clear = np.array([not any(a - 0.03 < (j + 1) / 10 and b + 0.03 > j / 10 for _, a, b in events)
                          for j in range(30)])
        if clear.any():
            assert rms[clear].max() < 3 * background
        n_clear += int(clear.sum())
        # each labelled species has notes (events) in the window, in its labelled frames
        for k in np.flatnonzero(ex.clip_target):
            sp = ds.labels[k]
            ivals = [(a, b) for s, a, b in events if s == sp]
            assert ivals and np.array_equal(frame_activity(30, 10.0, ivals), ex.frame_target[:, k])
    assert set(n_species) <= {1, 2, 3} and max(n_species) >= 2
    assert n_clear > 30                                                # the silence check did run


def test_note_gaps_keep_one_tempo_per_sequence_with_trills_as_common_as_spaced_calls(tmp_path):
    write_snippets(tmp_path / "snip", species=("up",), runs=1, notes=6)
    ds = load_dataset(tmp_path / "snip")
    pool = SnippetPool(ds.recordings, AudioCache(tmp_path / "cache", SR))

    def composer(**kw):
        return Composer(pool, ds.labels, NoiseBank(), SR, 10.0, 3.0, ComposerConfig(**kw), AugmentConfig.none())

    rng = np.random.default_rng(3)
    tempo = [composer(tempo_gap_s=(0.01, 0.6)).gaps(8, rng) for _ in range(400)]
    assert all(g.max() / g.min() <= 1.25 / 0.75 + 1e-9 and 0.0075 <= g.min() and g.max() <= 0.75 for g in tempo)
    medians = np.array([np.median(g) for g in tempo])
    assert 0.3 < np.mean(medians < 0.05) < 0.5        # log-uniform: P(tempo < 0.05 s) = log(5) / log(60) = 0.39
    alone = [composer().gaps(8, rng) for _ in range(400)]
    a, b = np.random.default_rng(9), np.random.default_rng(9)   # the default draws as before: resumed runs unchanged
    assert composer().gaps(5, a).tolist() == [b.uniform(0.05, 0.6) for _ in range(5)] and a.random() == b.random()
    assert all(0.05 <= g.min() and g.max() <= 0.6 for g in alone)
    assert np.mean([g.max() / g.min() > 2 for g in alone]) > 0.8     # each gap drawn alone: no tempo
    assert composer().gaps(0, rng).shape == (0,)
    # a trill: the run's notes back to back, 10 ms apart, in the composed window's events
    _, events = composer(tempo_gap_s=(0.01, 0.01), notes=(6, 6), sequences=(1, 1),
                         background_dbfs=(-70.0, -70.0)).compose(np.random.default_rng(2), n_species=1)
    gaps = [b[1] - a[2] for a, b in zip(events, events[1:])]
    assert len(events) >= 3 and all(0.007 <= g <= 0.013 for g in gaps), gaps


def test_composed_window_for_a_slower_tempo_has_its_targets_on_the_stretched_grid(tmp_path):
    """A window that will be shown 1.25× slower is 0.8 of the samples, its frame targets at 12.5 frames/s of audio:
    frame j covers [j, j+1)/12.5 s of the samples, which the network will see at [j, j+1)/10 s."""
    write_snippets(tmp_path / "snip", species=("up",), runs=1, notes=6)
    ds = load_dataset(tmp_path / "snip")
    comp = Composer(SnippetPool(ds.recordings, AudioCache(tmp_path / "cache", SR)), ds.labels, NoiseBank(), SR, 10.0,
                    3.0, ComposerConfig(background_dbfs=(-70.0, -70.0)), AugmentConfig.none())
    ex, events = comp.compose(np.random.default_rng(1), n=int(0.8 * 3 * SR), fps=12.5)
    assert ex.wave.shape == (int(0.8 * 3 * SR),) and ex.frame_target.shape == (30, 1)
    assert events and np.array_equal(ex.frame_target[:, 0], frame_activity(30, 12.5, [(a, b) for _, a, b in events]))


# ------------------------------------------------------------------------------ tempo and pitch in the log-mel

@pytest.fixture(scope="module")
def warp():
    return TempoPitchLogMel(create_config("tiny", ["a"], window_s=2.0))


def logmel(warp, x, hop, semitones):
    n = warp.samples(hop)
    wave = torch.zeros(1, max(n, len(x)))
    wave[0, :len(x)] = torch.from_numpy(x)
    with torch.no_grad():
        return warp(wave, torch.tensor([hop]), torch.tensor([semitones]))[0, 0]      # (T, F)


def test_unchanged_windows_are_the_models_own_log_mel(warp, frontend):
    x = tone(2000, 2.0) + 0.01 * colored_noise(2 * SR, "pink", np.random.default_rng(0))
    with torch.no_grad():
        plain = frontend(torch.from_numpy(x)[None])[0, 0]
    assert torch.equal(logmel(warp, x, 320, 0.0), plain)
    assert warp.frames == 201 and warp.samples(320) == 2 * SR


@pytest.mark.parametrize("semitones", [0.5, -0.5, 3.0])
def test_pitch_moves_the_mel_peak_like_a_higher_tone_and_keeps_the_frames(warp, frontend, semitones):
    f0 = 3000.0
    shifted = logmel(warp, tone(f0, 2.0), 320, semitones)
    assert shifted.shape == (201, 64)
    expected = logmel(warp, tone(f0 * 2 ** (semitones / 12), 2.0), 320, 0.0)
    peak = int(shifted[5:-5].mean(0).argmax())
    assert peak == int(expected[5:-5].mean(0).argmax())
    if abs(semitones) >= 3:
        assert peak != int(logmel(warp, tone(f0, 2.0), 320, 0.0)[5:-5].mean(0).argmax())
    # the bands that hold the tone have the energies of a tone really at that pitch (far bands are leakage)
    a, b = shifted[5:-5].mean(0), expected[5:-5].mean(0)
    near = b > b.max() - 30
    assert torch.allclose(a[near], b[near], atol=0.5)


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_tempo_shows_a_call_factor_times_longer_at_the_same_pitch(warp, factor):
    hop = warp.hop_for(factor)
    x = np.zeros(2 * SR, np.float32)
    x[SR // 2: SR // 2 + SR // 2] = tone(2500, 0.5)                     # a 0.5 s call from 0.5 s
    m = logmel(warp, x[:warp.samples(hop)], hop, 0.0)
    loud = (m.max(dim=1).values > m.max() - 20).numpy()
    assert loud.sum() / 100 == pytest.approx(0.5 * 320 / hop, abs=0.03)   # 10 ms frames as shown to the network
    assert np.flatnonzero(loud)[0] / 100 == pytest.approx(0.5 * 320 / hop, abs=0.03)
    plain = logmel(warp, x, 320, 0.0)
    assert int(m[loud].mean(0).argmax()) == int(plain[(plain.max(dim=1).values > plain.max() - 20)].mean(0).argmax())


def test_training_windows_carry_their_tempo_and_pitch_and_fit_the_batch(tmp_path, warp):
    for sp, f in (("a", 1500.0), ("b", 4000.0)):
        (tmp_path / "data" / sp).mkdir(parents=True)
        sf.write(tmp_path / "data" / sp / f"{sp}.wav", tone(f, 4.0, amp=0.3), SR)
    aug = AugmentConfig.none()
    aug.stretch_prob, aug.pitch_prob = 1.0, 1.0
    ws = WindowSet(load_dataset(tmp_path / "data").recordings, ["a", "b"], AudioCache(tmp_path / "cache", SR),
                   NoiseBank(), aug, 2.0, 10, 40, seed=3, warp=warp)
    items = [ws[i] for i in range(40)]
    hops = {int(it["hop"]) for it in items}
    semis = {float(it["semitones"]) for it in items}
    assert hops <= {warp.hop_for(f) for f in (0.9, 0.95, 1.0, 1.05, 1.1)} and len(hops) >= 3
    assert semis <= {-0.5, -0.25, 0.0, 0.25, 0.5} and len(semis) >= 3
    assert {it["wave"].shape[0] for it in items} == {ws.max_samples} == {warp.samples(warp.hop_for(0.9))}
    for it in items:
        n = warp.samples(int(it["hop"]))
        assert np.abs(it["wave"][n:].numpy()).max(initial=0) == 0           # padding after the window's samples
    batch = torch.utils.data.default_collate(items[:8])
    assert warp(batch["wave"], batch["hop"], batch["semitones"]).shape == (8, 1, 201, 64)
    assert batch["eq_db"].shape == (8, 64) and not batch["eq_db"].any()     # EQ off in AugmentConfig.none()
    assert ws[5]["wave"].equal(items[5]["wave"])                            # window i is a function of i
    ws.aug = dataclasses.replace(aug, eq_prob=1.0)
    assert ws[5]["eq_db"].abs().max() > 0


# ------------------------------------------------------------------------------------- decoding and packing

def test_training_decodes_as_replay_hears_it(tmp_path):
    """One decoder: a stereo 44.1 kHz file in the cache is FileSource's blocks, sample for sample."""
    rng = np.random.default_rng(7)
    stereo = np.stack([tone(1000, 3.0, sr=44100), 0.3 * rng.standard_normal(3 * 44100)], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.flac", stereo, 44100)
    replay = np.concatenate([b.samples for b in FileSource(tmp_path / "s.flac", SR, block_s=0.7)])
    np.testing.assert_array_equal(decode(tmp_path / "s.flac", SR), replay)
    np.testing.assert_array_equal(AudioCache(tmp_path / "cache", SR).load(tmp_path / "s.flac"), replay)


def test_snippets_are_one_shared_memory_map(tmp_path):
    write_snippets(tmp_path / "snip", species=("up", "down"))
    ds = load_dataset(tmp_path / "snip")
    cache = AudioCache(tmp_path / "cache", SR)
    pool = SnippetPool(ds.recordings, cache)
    for r in ds.recordings:
        np.testing.assert_array_equal(pool.audio(r.path), cache.load(r.path))
    audio, offsets = cache.pack(sorted(r.path for r in ds.recordings))
    assert isinstance(audio, np.memmap) and len(offsets) == len(ds.recordings) + 1 and offsets[-1] == len(audio)
    again = SnippetPool(ds.recordings, AudioCache(tmp_path / "cache", SR))
    assert again.audio(ds.recordings[0].path).base is not None             # a view of the packed map, no copy


# ------------------------------------------------------------------------------------ field realism (v3)

def test_composed_window_over_a_field_recording_masks_that_recordings_species(tmp_path):
    from birdlive.train.augment import FieldBackgrounds
    from birdlive.train.datasets import Recording
    write_snippets(tmp_path / "snip", species=("up", "down"), runs=1, notes=6)
    ds = load_dataset(tmp_path / "snip")
    labels = ["down", "field_bird", "other", "up"]
    field = tmp_path / "field.wav"
    sf.write(field, colored_noise(4 * SR, "pink", np.random.default_rng(0)) * 0.1, SR)
    cache = AudioCache(tmp_path / "cache", SR)
    backgrounds = FieldBackgrounds([Recording(str(field), ["field_bird"], ["other"], "g")], cache, labels)
    aug = dataclasses.replace(AugmentConfig.none(), field_background_prob=1.0)
    comp = Composer(SnippetPool(ds.recordings, cache), labels, NoiseBank(), SR, 10.0, 2.0,
                    ComposerConfig(species=(1, 1)), aug, backgrounds)
    ex, _ = comp.compose(np.random.default_rng(3))
    assert ex.clip_mask.tolist() == [1, 0, 0, 1] and not ex.frame_mask[:, [1, 2]].any()
    assert ex.frame_mask[:, [0, 3]].all() and ex.clip_target[[0, 3]].sum() == 1
    # the noise bed when not drawn: every target known
    comp.aug = AugmentConfig.none()
    assert comp.compose(np.random.default_rng(3))[0].clip_mask.all()


def test_distance_dulls_and_reverb_lengthens_a_call():
    from birdlive.train.augment import ImpulseResponses, propagate
    x = np.zeros(SR, np.float32)
    x[:3200] = tone(6000, 0.1)
    far = dataclasses.replace(AugmentConfig.none(), distance_prob=1.0, lowpass_hz=(1000.0, 1000.0))
    y, att = propagate(x, np.random.default_rng(0), far, SR, None)
    assert 0 <= att <= far.distance_db and power(y) < 0.01 * power(x)          # 6 kHz well above the cut-off
    wet = dataclasses.replace(AugmentConfig.none(), reverb_prob=1.0, reverb_rt60_s=(0.8, 0.8), reverb_wet_db=(0, 0))
    y, att = propagate(x, np.random.default_rng(0), wet, SR, ImpulseResponses([], None))
    assert att == 0 and power(y[6400:]) > 1e-3 * power(x) and not x[6400:].any()   # a tail after the call


def test_eq_curve_is_smooth_bounded_and_off_when_not_drawn():
    from birdlive.train.augment import eq_curve
    rng = np.random.default_rng(0)
    on = dataclasses.replace(AugmentConfig.none(), eq_prob=1.0, eq_db=6.0)
    for _ in range(20):
        c = eq_curve(rng, on, 64)
        assert c.shape == (64,) and np.abs(c).max() <= 6.0 + 1e-5 and np.abs(np.diff(c)).max() < 1.5
    assert not eq_curve(rng, AugmentConfig.none(), 64).any()


def test_a_run_recorded_before_the_field_augmentations_resumes_without_them():
    old = {k: v for k, v in AugmentConfig().to_dict().items() if k not in AugmentConfig.ADDED_OFF
           and k not in ("distance_db", "lowpass_hz", "reverb_rt60_s", "reverb_wet_db", "eq_db")}
    assert AugmentConfig.from_dict(old).field_background_prob == 0 and AugmentConfig.from_dict(old).eq_prob == 0
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()
