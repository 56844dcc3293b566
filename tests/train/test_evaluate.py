"""Clip metrics (scikit-learn), event matching, the noise false-positive count."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import birdlive.train.evaluate as ev
from birdlive.train.evaluate import RefEvent, clip_metrics, event_metrics, read_strong_labels

LABELS = ["a", "b", "c"]


def test_clip_metrics_ap_f1_top1_and_confusions():
    rng = np.random.default_rng(0)
    targets = np.zeros((12, 3))
    targets[np.arange(12), np.arange(12) % 3] = 1                       # 4 single-species files per species
    scores = np.clip(targets * 0.7 + rng.uniform(0, 0.4, (12, 3)), 0, 1)
    scores[[2, 5], 1] = 0.95                                           # two files of c score highest as b
    res = clip_metrics(scores, targets, None, LABELS, threshold=0.5, names=["A", "", "C"])
    for k, sp in enumerate(res["species"]):
        assert sp["ap"] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]))
    assert res["macro_map"] == pytest.approx(np.mean([sp["ap"] for sp in res["species"]]))
    pred, y = scores >= 0.5, targets > 0
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    assert res["f1_micro"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    top = scores.argmax(1)
    assert res["top1"] == pytest.approx((top == targets.argmax(1)).mean()) and res["n_single"] == 12
    c = res["species"][2]
    assert c["top1"] == pytest.approx(0.5) and c["confused_with"][0] == ["b", 2]
    assert res["worst"][0] in ("b", "c")


def test_masked_labels_do_not_count():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], float)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.3], [0.1, 0.7]])
    masks = np.ones_like(targets)
    base = clip_metrics(scores, targets, masks, ["a", "b"])
    assert base["macro_map"] == 1.0
    scores[1, 0] = 0.99                                                # a confident "a" on a b-file ...
    assert clip_metrics(scores, targets, masks, ["a", "b"])["species"][0]["ap"] < 1.0
    masks[1, 0] = 0                                                    # ... where a is a secondary: no penalty
    res = clip_metrics(scores, targets, masks, ["a", "b"])
    assert res["species"][0]["ap"] == 1.0 and res["species"][0]["n"] == 3
    assert res["n_single"] == 3                                        # a file with a masked label is not single


def test_event_matching_tolerance_species_file_and_one_to_one():
    ref = [RefEvent("f", "x", 1.0, 2.0), RefEvent("f", "x", 5.0, 5.5), RefEvent("g", "y", 3.0, 4.0)]
    est = [RefEvent("f", "x", 1.4, 2.6),     # within 0.5 s of onset 1.0: hit
           RefEvent("f", "x", 1.1, 2.0),     # a second estimate of the same call: false positive
           RefEvent("f", "x", 5.6, 6.0),     # 0.6 s late: miss + false positive
           RefEvent("f", "y", 3.0, 4.0),     # right time, wrong file for y
           RefEvent("g", "x", 3.0, 4.0)]     # right file and time, wrong species
    m = event_metrics(ref, est, onset_tolerance=0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 4, 2)
    assert m["precision"] == pytest.approx(1 / 5) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 0.2 * (1 / 3) / (0.2 + 1 / 3))
    assert event_metrics(ref, est, onset_tolerance=0.61)["tp"] == 2
    # offsets: 2.6 vs 2.0 is beyond max(0.5, 0.2 × 1 s) → the first call is matched by the second estimate
    m2 = event_metrics(ref, est, onset_tolerance=0.5, offset_tolerance=0.5)
    assert m2["tp"] == 1 and m2["species"]["x"]["tp"] == 1


def test_event_matching_is_a_maximum_matching():
    ref = [RefEvent("f", "x", 0.0, 1.0), RefEvent("f", "x", 0.8, 1.5)]
    est = [RefEvent("f", "x", 0.4, 1.0), RefEvent("f", "x", 0.1, 1.0)]  # greedy in order would find one pair
    assert event_metrics(ref, est, onset_tolerance=0.5)["tp"] == 2


def test_read_strong_labels(tmp_path):
    p = tmp_path / "strong.csv"
    p.write_text("file,species,onset,offset\na.wav,x,1.5,2.0\n")
    assert read_strong_labels(p) == [RefEvent("a.wav", "x", 1.5, 2.0)]
    (tmp_path / "bad.csv").write_text("file,label\n")
    with pytest.raises(ValueError, match="onset"):
        read_strong_labels(tmp_path / "bad.csv")


class _Cfg:
    sample_rate = 8000


class _Model:
    cfg = _Cfg()


def test_noise_false_positive_count_uses_the_detector(monkeypatch):
    seen = []

    def fake_detect(model, wave, source=""):
        seen.append((source, len(wave), float(np.sqrt(np.mean(wave ** 2)))))
        n = {"white-noise": 2, "pink-noise": 0, "brown-noise": 1}[source]
        return [type("E", (), {"species": "x"})()] * n

    monkeypatch.setattr(ev, "detect_events", fake_detect)
    res = ev.noise_false_positives(_Model(), minutes=0.5, dbfs=-20.0)
    assert res["events"] == {"white": 2, "pink": 0, "brown": 1} and res["total"] == 3
    assert [s[1] for s in seen] == [0.5 * 60 * 8000] * 3
    assert all(s[2] == pytest.approx(0.1, rel=0.01) for s in seen)    # -20 dBFS RMS


def test_best_f1_threshold_hint():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], float)
    scores = np.array([[0.3, 0.1], [0.1, 0.35], [0.32, 0.2], [0.05, 0.4]])   # right ranking, all below 0.5
    res = clip_metrics(scores, targets, None, ["a", "b"], threshold=0.5)
    assert res["f1_micro"] == 0.0 and res["macro_map"] == 1.0
    assert res["f1_best"] == 1.0 and 0.2 < res["f1_best_threshold"] <= 0.3


# ------------------------------------------------------------------ train/evaluation.py (benchmarks and the gate)

def test_top1_counts_the_primary_among_the_species_asked_for():
    from birdlive.train.datasets import Recording
    from birdlive.train.evaluation import top1
    recs = [Recording(f"/{i}.wav", [sp], [], str(i)) for i, sp in enumerate("aab")]
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.3, 0.9], [0.1, 0.5, 0.6]])
    assert top1(scores, recs, LABELS) == pytest.approx(1 / 3)           # c wins the last two
    assert top1(scores, recs, LABELS, among=["a", "b"]) == pytest.approx(2 / 3)   # without c: a, b, b
    assert top1(scores, recs, LABELS, among=["c"]) is None              # no recording of c


def test_primary_ranks_count_from_one_among_the_species_asked_for_and_ties_count_against():
    from birdlive.train.datasets import Recording
    from birdlive.train.evaluation import primary_ranks, rank_summary
    recs = [Recording(f"/{i}.wav", [sp], [], str(i)) for i, sp in enumerate("abc")]
    scores = np.array([[0.9, 0.1, 0.8], [0.2, 0.3, 0.9], [0.6, 0.6, 0.1]])
    assert primary_ranks(scores, recs, LABELS) == [1, 2, 3]
    assert primary_ranks(scores, recs, LABELS, among=["a", "b"]) == [1, 1]   # c's recording is left out
    tied = [Recording("/t.wav", ["b"], [], "t")]
    assert primary_ranks(np.array([[0.5, 0.5, 0.1]]), tied, LABELS) == [2]
    assert rank_summary([1, 2, 3, 12]) == {"n": 4, "median": 2.5, "first": 1, "top3": 3, "top10": 3}
    assert rank_summary([]) is None


def test_north_american_field_recordings_take_the_models_labels_by_common_name(tmp_path):
    import soundfile as sf
    from birdlive.train.evaluation import NA_FIELD_DIR, na_field_data, read_raven
    root = tmp_path / NA_FIELD_DIR
    rows = ["filepath,label,common_name,also"]
    for k, (lab, name, also) in enumerate([("Setophaga_coronata", "Yellow-rumped Warbler", "Junco hyemalis"),
                                           ("Junco_hyemalis", "Dark-eyed Junco", ""),
                                           ("Aythya_collaris", "Ring-necked Duck", ""),
                                           ("Sonus_naturalis", "Soundscape", "")]):
        (root / lab).mkdir(parents=True)
        sf.write(root / lab / f"XC{k}.wav", np.zeros(100, np.float32), 32000)
        rows.append(f"{lab}/XC{k}.wav,{lab},{name},{also}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    field = na_field_data(tmp_path, ["dark_eyed_junco", "yellow_rumped_warbler"],
                          ["Dark-eyed Junco", "Yellow-rumped Warbler"])
    assert [(r.primary, r.secondary) for r in field.recordings] == [
        ("yellow_rumped_warbler", ["dark_eyed_junco"]), ("dark_eyed_junco", [])]
    assert field.unknown == {"Ring-necked Duck": 1} and len(field.soundscapes) == 1
    table = tmp_path / "t.selections.txt"
    table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\t0.5\t1.5\tDEJU\n2\t2\t3\tXXXX\n")
    assert read_raven(table, {"DEJU": "dark_eyed_junco"}, "f") == [RefEvent("f", "dark_eyed_junco", 0.5, 1.5)]
