"""Dataset layouts, the group split (no recording on both sides, stratified, seeded, saved) and the decode cache."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from birdlive.train.cache import AudioCache, AudioError
from birdlive.train.datasets import (DatasetError, Split, load_dataset, merge, parse_label_list,
                                     split_groups)


def wav(path, seconds=0.2, sr=22050, channels=1, freq=1000.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr)
    return path


def test_parse_label_list_forms():
    assert parse_label_list("['amecro', 'norcar']") == ["amecro", "norcar"]
    assert parse_label_list("amecro norcar") == ["amecro", "norcar"]
    assert parse_label_list("amecro;norcar; amecro") == ["amecro", "norcar"]
    assert parse_label_list("[]") == [] and parse_label_list("") == [] and parse_label_list(None) == []


def test_folder_per_species_and_runs_from_snippets_csv(tmp_path):
    root = tmp_path / "ess"
    for sp in ("aaa", "bbb"):
        for run in range(2):
            for i in range(3):
                wav(root / sp / f"{sp}_run{run:04d}_{i:05d}.flac")
    with open(root / "snippets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "species_code", "common_name", "recording_run", "duration_s"])
        for sp, name in (("aaa", "Alpha Bird"), ("bbb", "Beta Bird")):
            for run in range(2):
                for i in range(3):
                    w.writerow([f"{sp}/{sp}_run{run:04d}_{i:05d}.flac", sp, name, run, 0.2])
    ds = load_dataset(root)
    assert len(ds.recordings) == 12 and ds.labels == ["aaa", "bbb"]
    assert ds.names == {"aaa": "Alpha Bird", "bbb": "Beta Bird"}
    assert len({r.group for r in ds.recordings}) == 4                  # 2 species × 2 runs
    assert all(r.duration_s == 0.2 for r in ds.recordings)


def test_birdclef_csv_layout(tmp_path):
    audio = tmp_path / "train_audio"
    wav(audio / "amecro" / "XC1.ogg")
    wav(audio / "norcar" / "XC2.wav")
    wav(audio / "XC3.wav")                                              # flat under the audio folder
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["primary_label", "secondary_labels", "filename", "common_name"])
        w.writerow(["amecro", "['norcar', 'unknownsp']", "XC1.ogg", "American Crow"])
        w.writerow(["norcar", "amecro", "XC2.wav", "Northern Cardinal"])
        w.writerow(["norcar", "[]", "XC3.wav", "Northern Cardinal"])
        w.writerow(["norcar", "[]", "missing.wav", "Northern Cardinal"])
    for path in (tmp_path, tmp_path / "train.csv"):
        ds = load_dataset(path)
        by = {os.path.basename(r.path): r for r in ds.recordings}
        assert sorted(by) == ["XC1.ogg", "XC2.wav", "XC3.wav"]
        assert by["XC1.ogg"].labels == ["amecro"] and by["XC1.ogg"].secondary == ["norcar"]   # unknown dropped
        assert by["XC2.wav"].secondary == ["amecro"]
        assert ds.names["amecro"] == "American Crow"


def test_xeno_canto_layout_maps_also_to_labels(tmp_path):
    root = tmp_path / "xc"
    wav(root / "Coereba_flaveola" / "XC1.mp3".replace(".mp3", ".wav"), channels=2)
    wav(root / "Agelaius_xanthomus" / "XC2.wav")
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "xc_id", "scientific_name", "common_name", "label", "also"])
        w.writerow(["Coereba_flaveola/XC1.wav", 1, "Coereba flaveola", "Bananaquit", "Coereba_flaveola",
                    "Agelaius xanthomus;Passer domesticus"])
        w.writerow(["Agelaius_xanthomus/XC2.wav", 2, "Agelaius xanthomus", "Yellow-shouldered Blackbird",
                    "Agelaius_xanthomus", ""])
    ds = load_dataset(root)
    r = {os.path.basename(r.path): r for r in ds.recordings}
    assert r["XC1.wav"].labels == ["Coereba_flaveola"] and r["XC1.wav"].secondary == ["Agelaius_xanthomus"]
    recs, labels, names = merge([ds])
    assert labels == ["Agelaius_xanthomus", "Coereba_flaveola"]
    assert names == ["Yellow-shouldered Blackbird", "Bananaquit"]


def test_unreadable_layouts_say_why(tmp_path):
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "sp").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no audio"):
        load_dataset(tmp_path / "empty")


def test_split_by_group_is_stratified_seeded_and_never_leaks(tmp_path):
    root = tmp_path / "d"
    for s, n_runs in (("aa", 5), ("bb", 10), ("cc", 2), ("dd", 1)):
        for run in range(n_runs):
            for i in range(4):                                         # 4 snippets per run: crops of one run
                wav(root / s / f"{s}_run{run:04d}_{i:05d}.wav", seconds=0.05)
    recs = load_dataset(root).recordings
    sp = split_groups(recs, 0.2, seed=3)
    assert not set(sp.train) & set(sp.val)
    assert set(sp.train) | set(sp.val) == {r.group for r in recs}
    val = sp.select(recs, "val")
    train = sp.select(recs, "train")
    assert {r.group for r in val}.isdisjoint({r.group for r in train})
    per = {s: len({r.group for r in val if r.primary == s}) for s in ("aa", "bb", "cc", "dd")}
    assert per == {"aa": 1, "bb": 2, "cc": 1, "dd": 0}                 # stratified; a lone run stays in training
    assert {r.primary for r in train} == {"aa", "bb", "cc", "dd"}
    again, other = split_groups(recs, 0.2, seed=3), split_groups(recs, 0.2, seed=4)
    assert again.val == sp.val and other.val != sp.val
    sp.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded.val == sp.val and loaded.train == sp.train and loaded.seed == 3


def test_cache_decodes_once_resamples_and_downmixes(tmp_path):
    src = wav(tmp_path / "a.wav", seconds=1.0, sr=44100, channels=2, freq=3000.0)
    cache = AudioCache(tmp_path / "cache", 32000)
    x = cache.load(src)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == 32000
    spec = np.abs(np.fft.rfft(x))
    assert np.fft.rfftfreq(len(x), 1 / 32000)[spec.argmax()] == pytest.approx(3000, abs=2)
    again = AudioCache(tmp_path / "cache", 32000)
    np.testing.assert_array_equal(again.load(src), x)
    assert cache.decoded == 1 and again.decoded == 0                    # the second read is a cache hit
    assert AudioCache(tmp_path / "cache", 16000).entry(src) != cache.entry(src)
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))         # an edited file is decoded anew
    fresh = AudioCache(tmp_path / "cache", 32000)
    fresh.load(src)
    assert fresh.decoded == 1
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(AudioError, match="bad.wav"):
        cache.load(tmp_path / "bad.wav")


def test_merge_unifies_species_named_alike_across_datasets(tmp_path):
    xc = tmp_path / "xc"
    wav(xc / "Coereba_flaveola" / "XC1.wav")
    wav(xc / "Contopus_latirostris" / "XC2.wav")
    (xc / "metadata.csv").write_text("filepath,label,common_name,also\n"
                                     "Coereba_flaveola/XC1.wav,Coereba_flaveola,Bananaquit,\n"
                                     "Contopus_latirostris/XC2.wav,Contopus_latirostris,Lesser Antillean Pewee,\n")
    ess = tmp_path / "ess"
    for sp in ("bananaquit", "gray_kingbird"):
        wav(ess / sp / f"{sp}_run0000_00000.wav")
    (ess / "snippets.csv").write_text("file,species_code,common_name,recording_run,duration_s\n"
                                      "bananaquit/bananaquit_run0000_00000.wav,bananaquit,Bananaquit,0,0.2\n"
                                      "gray_kingbird/gray_kingbird_run0000_00000.wav,gray_kingbird,Gray Kingbird,"
                                      "0,0.2\n")
    recs, labels, names = merge([load_dataset(xc), load_dataset(ess)])
    assert labels == ["Coereba_flaveola", "Contopus_latirostris", "gray_kingbird"]
    assert names == ["Bananaquit", "Lesser Antillean Pewee", "Gray Kingbird"]
    assert sorted(r.primary for r in recs) == ["Coereba_flaveola", "Coereba_flaveola", "Contopus_latirostris",
                                               "gray_kingbird"]
    _, separate, _ = merge([load_dataset(xc), load_dataset(ess)], unify_names=False)
    assert len(separate) == 4


def test_select_species_by_label_or_common_name_keeps_only_those_labels():
    from birdlive.train.datasets import Recording, select_species
    recs = [Recording("a.wav", ["coereba"], ["todus", "vireo"], "g1"), Recording("b.wav", ["todus"], [], "g2"),
            Recording("c.wav", ["vireo"], ["coereba"], "g3")]
    labels, names = ["coereba", "todus", "vireo"], ["Bananaquit", "Puerto Rican Tody", ""]
    kept, labs, nms = select_species(recs, labels, names, ["bananaquit", "VIREO"])
    assert labs == ["coereba", "vireo"] and nms == ["Bananaquit", ""]
    assert [r.path for r in kept] == ["a.wav", "c.wav"]
    assert kept[0].secondary == ["vireo"] and kept[1].secondary == ["coereba"]
    assert select_species(recs, labels, names, ["nothing"])[1] == []
