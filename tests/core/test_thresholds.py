"""Per-species thresholds: the smoother, the precedence of their sources, the --thresholds CSV, checkpoints that
carry them (or not), streaming against the offline reference, and the calibration's choice."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr
from sklearn.metrics import fbeta_score

from birdlive.errors import OptionError
from birdlive.model import load_checkpoint
from birdlive.model.checkpoint import CheckpointError, load_config, save_config
from birdlive.model.config import ModelConfig
from birdlive.streamer import EventSmoother, SmootherParams, default_params, detect_offline, file_specs, make_runner
from birdlive.streamer.core.thresholds import load_thresholds, resolve_thresholds, write_thresholds
from birdlive.train.calibrate import (Item, calibrate, candidates, choose, choose_global, noise_items,
                                      write_calibrated)

from tests.common import RECORDING, TINY, Collect

FPS = 10


# --------------------------------------------------------------------------------------------- smoother

def smooth(x, on, off, labels=("a", "b", "c")):
    sm = EventSmoother(list(labels), [""] * len(labels), 1 / FPS,
                       SmootherParams(threshold_on=on, threshold_off=off, median_s=0.0))
    return sm.push(x) + sm.finish()


def calls(n=300):
    """Three species, each with a weak call (peak 0.45) and a strong one (0.9), over a low random floor."""
    rng = np.random.default_rng(0)
    x = (rng.random((n, 3)) * 0.15).astype(np.float32)
    for k in range(3):
        x[20 + 60 * k:35 + 60 * k, k] = 0.45
        x[200 + 20 * k:215 + 20 * k, k] = 0.9
    return x


def by_species(events, sp):
    return [(e.onset_s, e.offset_s, e.peak) for e in events if e.species == sp]


def test_a_vector_of_equal_thresholds_is_the_scalar():
    x = np.clip(calls() + np.random.default_rng(3).random((300, 3)).astype(np.float32) * 0.3, 0, 1)
    assert smooth(x, (0.4,) * 3, (0.25,) * 3) == smooth(x, 0.4, 0.25)


def test_one_species_threshold_changes_only_that_species_events():
    x = calls()
    base = smooth(x, 0.4, 0.3)
    assert all(len(by_species(base, sp)) == 2 for sp in "abc")
    raised = smooth(x, (0.4, 0.6, 0.4), (0.3, 0.3, 0.3))      # b's weak call is gone, nothing else moves
    assert by_species(raised, "b") == by_species(base, "b")[1:]
    assert [e for e in raised if e.species != "b"] == [e for e in base if e.species != "b"]
    lowered = smooth(x, (0.4, 0.4, 0.1), (0.3, 0.3, 0.05))    # c now fires on its noise floor too
    assert len(by_species(lowered, "c")) > 2
    assert [e for e in lowered if e.species != "c"] == [e for e in base if e.species != "c"]


def test_smoother_rejects_off_above_on_naming_the_species_and_wrong_lengths():
    with pytest.raises(OptionError, match="for b"):
        smooth(calls(), (0.4, 0.3, 0.4), (0.3, 0.35, 0.3))
    with pytest.raises(OptionError, match="one value per species"):
        smooth(calls(), (0.4, 0.4), 0.3)


# ------------------------------------------------------------------------------------------- precedence

def cfg_with(thresholds=None):
    return ModelConfig(labels=["a", "b", "c"], names=["Alpha", "Beta", "Gamma Bird"], threshold_on=0.3,
                       threshold_off=0.2, thresholds=thresholds or {})


def pairs(cfg, *args, **kw):
    on, off = resolve_thresholds(cfg, *args, **kw)
    return [(round(a, 4), round(b, 4)) for a, b in zip(on, off)]


def test_checkpoint_per_species_beats_its_global_pair_and_old_checkpoints_use_the_global_pair():
    assert pairs(cfg_with()) == [(0.3, 0.2)] * 3
    assert pairs(cfg_with({"b": [0.5, 0.3333]})) == [(0.3, 0.2), (0.5, 0.3333), (0.3, 0.2)]


def test_flags_beat_the_checkpoint_and_the_file_beats_the_flags():
    cfg = cfg_with({"b": [0.5, 0.3333]})
    assert pairs(cfg, 0.4) == [(0.4, 0.2), (0.4, 0.3333), (0.4, 0.2)]
    assert pairs(cfg, 0.4, 0.1) == [(0.4, 0.1)] * 3
    assert pairs(cfg, 0.4, 0.1, {2: (0.7, None), 0: (0.2, 0.15)}) == [(0.2, 0.15), (0.4, 0.1), (0.7, 0.1)]
    assert default_params(cfg, 0.4, species_thresholds={0: (0.6, None)}).threshold_on == (0.6, 0.4, 0.4)


def test_a_lower_level_value_gives_way_keeping_the_checkpoints_ratio():
    cfg = cfg_with({"b": [0.5, 0.3333]})
    assert pairs(cfg, 0.25) == [(0.25, 0.2), (0.25, 0.1667), (0.25, 0.2)]      # b's calibrated off moves down
    assert pairs(cfg, None, 0.4) == [(0.6, 0.4), (0.5, 0.4), (0.6, 0.4)]       # a lone off lifts a lower on
    assert pairs(cfg, None, 0.8)[0] == (1.0, 0.8)                               # … never above 1
    assert pairs(cfg, None, None, {1: (0.1, None)})[1] == (0.1, 0.0667)


def test_contradictions_a_user_wrote_are_rejected():
    with pytest.raises(OptionError, match="threshold_off 0.4 exceeds threshold_on 0.3"):
        resolve_thresholds(cfg_with(), 0.3, 0.4)
    with pytest.raises(OptionError, match="outside 0–1"):
        resolve_thresholds(cfg_with(), 1.5)
    with pytest.raises(OptionError, match="for c"):
        resolve_thresholds(cfg_with(), species={2: (0.3, 0.5)})


# --------------------------------------------------------------------------------------------- the CSV

def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_by_code_or_common_name_case_insensitive(tmp_path):
    p = write(tmp_path, "Species,Threshold,threshold_off\n# comment\n\nA,0.4,\ngamma bird,0.6,0.5\n")
    assert load_thresholds(p, ["a", "b", "c"], ["Alpha", "Beta", "Gamma Bird"]) == {0: (0.4, None), 2: (0.6, 0.5)}
    p = write(tmp_path, "species,threshold\nbeta,0.45\n")
    assert load_thresholds(p, ["a", "b", "c"], ["Alpha", "Beta", "Gamma Bird"]) == {1: (0.45, None)}


@pytest.mark.parametrize("text, message", [
    ("", r"t\.csv, line 1: the header must be `species,threshold`"),
    ("bird,score\na,0.4\n", r"line 1: the header must be .* not `bird,score`"),
    ("species,threshold\nGama Bird,0.4\n", r"t\.csv, line 2: unknown species 'Gama Bird'; did you mean Gamma Bird\?"),
    ("species,threshold\nzzz,0.4\n", r"line 2: unknown species 'zzz'$"),
    ("species,threshold\na,high\n", r"line 2: threshold 'high' is not a number"),
    ("species,threshold\na,\n", r"line 2: no threshold"),
    ("species,threshold\na,1.2\n", r"line 2: threshold 1.2 is outside 0–1"),
    ("species,threshold\na,nan\n", r"line 2: threshold nan is outside 0–1"),
    ("species,threshold,threshold_off\na,0.4,-0.1\n", r"line 2: threshold_off -0.1 is outside 0–1"),
    ("species,threshold,threshold_off\na,0.4,0.5\n", r"line 2: threshold_off 0.5 exceeds threshold 0.4"),
    ("species,threshold\na,0.4\nb,0.5\n\nALPHA,0.6\n", r"line 5: a is listed twice \(first on line 2\)"),
    ("species,threshold\na,0.4,0.3\n", r"line 2: 3 columns, the header has 2"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(OptionError, match=message):
        load_thresholds(write(tmp_path, text), ["a", "b", "c"], ["Alpha", "Beta", "Gamma Bird"])


def test_csv_missing_file(tmp_path):
    with pytest.raises(OptionError, match=r"nope\.csv: no such thresholds file"):
        load_thresholds(tmp_path / "nope.csv", ["a"], [""])


def test_calibrated_table_written_as_csv_reads_back(tmp_path):
    cfg = cfg_with({"b": [0.5, 0.3333], "c": [0.35, 0.2333]})
    write_thresholds(tmp_path / "t.csv", cfg)
    assert load_thresholds(tmp_path / "t.csv", cfg.labels, cfg.names) == {1: (0.5, 0.3333), 2: (0.35, 0.2333)}


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def model():
    return load_checkpoint(TINY)


def copy_tiny(tmp_path):
    for ext in (".safetensors", ".json"):
        shutil.copy(TINY.with_suffix(ext), tmp_path / f"m{ext}")
    return tmp_path / "m"


def test_old_checkpoint_without_thresholds_loads_and_a_new_one_round_trips(tmp_path, model):
    assert "thresholds" not in json.loads(TINY.with_suffix(".json").read_text())
    assert model.cfg.thresholds == {}
    stem = copy_tiny(tmp_path)
    save_config(dataclasses.replace(model.cfg, thresholds={"trill": [0.7, 0.42]}), stem)
    assert load_checkpoint(stem).cfg.thresholds == {"trill": [0.7, 0.42]}


@pytest.mark.parametrize("table, message", [({"robin": [0.5, 0.3]}, "not a label"),
                                            ({"trill": [0.3, 0.5]}, "need 0 <= off <= on <= 1")])
def test_bad_thresholds_in_a_checkpoint_are_one_line(tmp_path, table, message):
    stem = copy_tiny(tmp_path)
    d = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**d, "thresholds": table}))
    with pytest.raises(CheckpointError, match=message):
        load_config(stem)


# --------------------------------------------------------------------- streaming and the offline reference

@pytest.fixture(scope="module")
def wave(model):
    x, sr = sf.read(RECORDING, dtype="float32")
    return soxr.resample(x, sr, model.cfg.sample_rate, quality="HQ").astype(np.float32)


def stream(model, params):
    got = Collect()
    make_runner(model, [got], params=params).run(file_specs([RECORDING], model.cfg.sample_rate))
    return got.events


def without(events, species):
    return [(e.species, e.onset_s, e.offset_s) for e in events if e.species != species]


def trill_events(events):
    return [(e.onset_s, e.offset_s, e.peak) for e in events if e.species == "trill"]


def test_per_species_thresholds_change_only_their_species_and_streaming_equals_offline(model, wave):
    """Tiny model, synthetic recording. Trill lowered to 0.09/0.06: weak trill events (peaks 0.1-0.13, where the
    other species call) come out, nothing else changes. Trill raised back to 0.2 (same off): exactly the weak
    ones go, the strong keep their extents. Streaming and the offline reference agree under each setting."""
    cfg = model.cfg
    k = cfg.labels.index("trill")
    base = stream(model, default_params(cfg))
    low_p = default_params(cfg, species_thresholds={k: (0.09, 0.06)})
    high_p = default_params(cfg, species_thresholds={k: (0.2, 0.06)})
    low, high = stream(model, low_p), stream(model, high_p)
    assert len(trill_events(low)) > len(trill_events(base)) == 3
    assert any(peak < cfg.threshold_on for _, _, peak in trill_events(low))
    assert trill_events(high) == [t for t in trill_events(low) if t[2] >= 0.2]
    assert without(low, "trill") == without(high, "trill") == without(base, "trill")
    for params, got in ((low_p, low), (high_p, high)):
        ref = detect_offline(model, wave, params=params)
        assert [e.species for e in got] == [e.species for e in ref]
        for a, b in zip(got, ref):
            assert abs(a.onset_s - b.onset_s) <= cfg.frame_s + 1e-6
            assert abs(a.offset_s - b.offset_s) <= cfg.frame_s + 1e-6


def test_a_checkpoints_table_is_the_default_for_streaming_and_the_offline_reference(model, wave, tmp_path):
    """No params given: both paths take the checkpoint's per-species pair (upsweep out of reach here)."""
    stem = copy_tiny(tmp_path)
    save_config(dataclasses.replace(model.cfg, thresholds={"upsweep": [0.999, 0.6]}), stem)
    net = load_checkpoint(stem)
    got = Collect()
    make_runner(net, [got]).run(file_specs([RECORDING], net.cfg.sample_rate))
    ref = detect_offline(net, wave)
    assert [e.species for e in got.events] == [e.species for e in ref]
    assert "upsweep" not in {e.species for e in ref}
    assert without(ref, "upsweep") == without(detect_offline(model, wave), "upsweep")


# ----------------------------------------------------------------------------------------- calibration

def test_candidates_start_at_the_floor():
    assert candidates(0.3).tolist() == pytest.approx([0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
                                                      0.85, 0.9, 0.95])
    assert candidates(0.32)[:2].tolist() == pytest.approx([0.32, 0.35])


def test_choose_best_fbeta_then_fewer_false_alarms_then_lower_and_falls_back():
    on = np.array([0.3, 0.4, 0.5])
    # 4 items; species 0 present in items 0-2, species 1 in item 3 only, species 2 in 0-2 but never detected
    target = np.array([[1, 0, 1], [1, 0, 1], [1, 0, 1], [0, 1, 0]], bool)
    known = np.ones_like(target)
    det = np.zeros((3, 4, 3), bool)
    det[0, :, 0] = [1, 1, 1, 1]     # 0.3: all three right, one false alarm
    det[1, :, 0] = [1, 1, 0, 0]     # 0.4: two right, no false alarm → F0.5 = 2.5/(2.5+0.25) beats 3.75/(3.75+1)
    det[2, :, 0] = [1, 0, 0, 0]
    det[:, 3, 1] = True             # species 1: one positive only → fallback
    assert choose(det, target, known, on, min_positives=3)[0]["on"] == 0.3   # F1 (the default): 6/7 beats 4/5
    rows = choose(det, target, known, on, min_positives=3, beta=0.5)
    assert rows[0]["on"] == 0.4 and rows[0]["chosen"] == {"tp": 2, "fp": 0, "f": pytest.approx(2.5 / 2.75)}
    assert rows[0]["floor"]["f"] == pytest.approx(fbeta_score(target[:, 0], det[0, :, 0], beta=0.5))
    assert rows[1]["on"] is None and "fewer than 3" in rows[1]["reason"]
    assert rows[2]["on"] is None and rows[2]["reason"] == "no events at any candidate"
    det[:, :, 2] = [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]    # never right, a false alarm up to 0.4
    assert choose(det, target, known, on, beta=0.5)[2]["on"] == 0.5
    known[3, 2] = False                                           # … that item's a background species: no evidence
    assert choose(det, target, known, on, beta=0.5)[2]["reason"] == "no events at any candidate"


def test_global_pair_is_the_best_fbeta_of_the_thresholds_that_keep_noise_silent_with_a_margin():
    on = np.array([0.1, 0.2, 0.3, 0.4])
    target = np.array([[1, 0], [0, 1], [1, 0]], bool)
    known = np.ones_like(target)
    det = np.zeros((4, 3, 2), bool)
    det[0] = [[1, 1], [1, 1], [1, 0]]      # 0.1: all three right, two false alarms
    det[1] = [[1, 0], [0, 1], [1, 0]]      # 0.2: perfect
    det[2] = [[1, 0], [0, 0], [1, 0]]      # 0.3: two right, none wrong
    det[3] = [[1, 0], [0, 0], [0, 0]]      # 0.4: one right
    noise = np.zeros((4, 2, 2), bool)
    noise[0, 1, 0] = True                  # a noise item has an event at 0.1
    g, rows = choose_global(det, target, known, noise, on, beta=0.5, margin=1.0)
    assert on[g] == 0.2 and rows[g] == {"on": 0.2, "tp": 3, "fp": 0, "f": 1.0, "noise_items_with_events": 0,
                                        "noise_items_with_events_at_margin": 0}
    assert [r["noise_items_with_events"] for r in rows] == [1, 0, 0, 0]
    # margin 0.5: 0.2 and 0.3 are judged at 0.1 (noisy), 0.4 at 0.2 (silent) → 0.4, though its F0.5 is lower
    g, rows = choose_global(det, target, known, noise, on, beta=0.5)
    assert on[g] == 0.4 and [r["noise_items_with_events_at_margin"] for r in rows] == [1, 1, 1, 0]
    assert rows[g]["f"] == pytest.approx(1.25 / (1.25 + 0.25 * 2))
    noise[:] = False
    assert on[choose_global(det, target, known, noise, on)[0]] == 0.2
    noise[:, 0, 1] = True
    with pytest.raises(OptionError, match="noise"):
        choose_global(det, target, known, noise, on)


def test_calibrate_with_noise_chooses_a_noise_safe_global_pair_and_writes_it(model, wave, tmp_path):
    """From 0.05 up, the global on threshold is the best-F0.5 one with no event on coloured noise and
    on a real background file; it is the per-species floor and lands in the checkpoint's global pair."""
    cfg, sr = model.cfg, model.cfg.sample_rate
    items = [Item(f"{a}", wave[a * sr:(a + 7) * sr], np.ones(len(cfg.labels), bool), np.ones(len(cfg.labels), bool))
             for a in (0, 12, 26)]
    bg = tmp_path / "rain.wav"
    sf.write(bg, np.random.default_rng(3).normal(0, 0.05, 5 * sr).astype(np.float32), sr)

    class Cache:
        def load(self, path):
            return sf.read(path, dtype="float32")[0]
    noise = noise_items(cfg, [str(bg)], Cache(), minutes=0.1)
    assert [n.name for n in noise[:3]] == ["white-noise", "pink-noise", "brown-noise"] and not noise[3].target.any()
    table, summary = calibrate(model, items, min_positives=3, noise=noise)
    g = summary["global"]
    assert g["on"] == summary["floor"] and all(on >= g["on"] for on, _ in table.values())
    row = next(r for r in g["sweep"] if r["on"] == g["on"])
    assert row["noise_items_with_events"] == 0 and row["tp"] > 0
    out = write_calibrated(TINY, cfg, table, {"global": g}, out=tmp_path / "cal")
    got = load_checkpoint(out.with_suffix("")).cfg
    assert (got.threshold_on, got.threshold_off) == (g["on"], g["off"])


def test_calibrate_on_the_tiny_model_raises_a_species_that_false_alarms(model, wave, tmp_path):
    """Cuts of the synthetic recording, labelled with their calls. From a floor of 0.05 the trill's weak
    responses to other species' calls are false alarms: its on threshold rises past them and keeps its three
    calls; downsweep (two positives) keeps the global pair. The table goes into a new checkpoint."""
    cfg, sr = model.cfg, model.cfg.sample_rate
    truth = {(0, 6): {"upsweep", "trill"}, (6, 12): {"two_tone", "downsweep"},
             (12, 19): {"upsweep", "two_tone", "trill"}, (19, 26): {"downsweep", "two_tone", "upsweep"},
             (26, 40): {"trill", "two_tone"}}
    items = [Item(f"{a}-{b}", wave[a * sr:b * sr], np.array([lab in sp for lab in cfg.labels]),
                  np.ones(len(cfg.labels), bool)) for (a, b), sp in truth.items()]
    table, summary = calibrate(model, items, floor=0.05, min_positives=3)
    rows = {r["label"]: r for r in summary["species"]}
    assert rows["trill"]["floor"]["fp"] > 0 and rows["trill"]["chosen"] == {"tp": 3, "fp": 0, "f": 1.0}
    assert 0.05 < table["trill"][0] < 0.9
    assert "downsweep" not in table and rows["downsweep"]["reason"] == "fewer than 3 positives"
    ratio = cfg.threshold_off / cfg.threshold_on
    assert all(on >= 0.05 and off == pytest.approx(on * ratio, abs=1e-4) for on, off in table.values())
    out = write_calibrated(TINY, cfg, table, {"note": "test"}, out=tmp_path / "cal")
    net = load_checkpoint(out.with_suffix(""))
    assert net.cfg.thresholds == table and net.cfg.extra["calibration"] == {"note": "test"}
    assert "trill" not in {e.species for e in detect_offline(net, wave[19 * sr:26 * sr])}


def test_calibration_data_is_the_training_splits_validation_groups_only(tmp_path):
    """Rebuilt from the seed the checkpoint records (accepted only when its validation-group count is the
    recorded one), or read from the run's split.json; never a training group."""
    from birdlive.train.calibrate import validation_recordings
    from birdlive.train.datasets import Split, load_dataset, split_groups
    for sp in ("a", "b"):
        (tmp_path / "data" / sp).mkdir(parents=True)
        for i in range(5):
            sf.write(tmp_path / "data" / sp / f"{i}.wav", np.zeros(800, np.float32), 16000)
    data = [str(tmp_path / "data")]
    split = split_groups(load_dataset(data[0]).recordings, 0.2, 7)
    cfg = ModelConfig(labels=["a", "b"], extra={"training": {"split_seed": 7, "val_fraction": 0.2},
                                                "heldout": {"n_groups": len(split.val)}})
    recs, _, info = validation_recordings(cfg, data, [], None)
    assert sorted(r.group for r in recs) == sorted(split.val) and len(recs) == 2
    assert info["split"]["n_val_groups"] == 2 and info["split"]["file"] is None
    Split(7, 0.2, split.train[1:], split.val + split.train[:1]).save(tmp_path / "split.json")
    with pytest.raises(OptionError, match=r"split\.json has 3 validation groups, the model's training run had 2"):
        validation_recordings(cfg, data, [], str(tmp_path / "split.json"))
    with pytest.raises(OptionError, match="does not record its training split"):
        validation_recordings(ModelConfig(labels=["a", "b"]), data, [], None)
