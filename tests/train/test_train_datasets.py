"""Dataset layouts, the group split (no recording on both sides, stratified, seeded, saved) and the decode cache."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from birdlive.train.cache import AudioCache, AudioError
from birdlive.train.datasets import (DatasetError, Holdout, Recording, Split, load_dataset, merge,
                                     parse_label_list, split_counts, split_groups, subset_sizes)

from tests.common import ROOT, load_benchmark


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


def fake_recs(spec: dict[str, dict[str, int]]) -> list[Recording]:
    """{species: {source: n groups}} → recordings, two files per group (crops of one recording run)."""
    return [Recording(f"/{src}/{sp}/g{i}_{j}.wav", [sp], [], f"{src}:{sp}/g{i}")
            for sp, by in spec.items() for src, n in by.items() for i in range(n) for j in range(2)]


def test_subset_sizes_give_every_species_what_it_can():
    assert subset_sizes(1, 0.15, 0.15) == (0, 0)                       # a lone group trains
    assert subset_sizes(2, 0.15, 0.15) == (1, 0)                       # two: one validates, none tests
    assert subset_sizes(3, 0.15, 0.15) == (1, 1)                       # three: one of each
    assert subset_sizes(14, 0.15, 0.15) == (2, 2)
    assert subset_sizes(10, 0.2, 0.0) == (2, 0)                        # the two-way split of before
    n_val, n_test = subset_sizes(4, 0.9, 0.9)
    assert n_val >= 1 and n_test >= 1 and n_val + n_test == 3          # training keeps one


def test_three_way_split_is_stratified_by_species_and_source_and_never_leaks():
    recs = fake_recs({"aa": {"xc": 3, "ess": 24}, "bb": {"ess": 2}, "cc": {"xc": 1}, "dd": {"xc": 1, "ess": 1},
                      "ee": {"xc": 14}})
    sp = split_groups(recs, 0.15, seed=1, test_fraction=0.15)
    subsets = [set(sp.train), set(sp.val), set(sp.test)]
    assert all(not (a & b) for i, a in enumerate(subsets) for b in subsets[i + 1:])
    assert set().union(*subsets) == {r.group for r in recs}
    c = split_counts(recs, sp)
    assert c["aa"]["test"] == {"xc": 1, "ess": 4} and c["aa"]["val"] == {"xc": 1, "ess": 4}   # both sources
    assert c["aa"]["train"] == {"xc": 1, "ess": 16}
    assert c["bb"]["val"] == {"ess": 1} and c["bb"]["test"] == {}
    assert c["cc"]["train"] == {"xc": 1} and not c["cc"]["val"]
    assert sum(c["dd"]["val"].values()) == 1 and sum(c["dd"]["train"].values()) == 1   # one source each: moved
    assert c["ee"]["val"] == {"xc": 2} and c["ee"]["test"] == {"xc": 2}
    assert split_groups(recs, 0.15, seed=1, test_fraction=0.15).test == sp.test
    assert split_groups(recs, 0.15, seed=2, test_fraction=0.15).test != sp.test


def test_excluded_recordings_are_in_no_subset(tmp_path):
    recs = fake_recs({"bull": {"xc": 5}})
    recs.append(Recording("/data/xc/bull/XC737279.mp3", ["bull"], [], "xc:bull/XC737279.mp3"))
    for exclude in (["XC737279"], ["recordings/XC737279.mp3"], ["xc737279.MP3"]):
        sp = split_groups(recs, 0.2, seed=0, test_fraction=0.2, exclude=exclude)
        assert sp.excluded == ["xc:bull/XC737279.mp3"]
        assert all("XC737279" not in r.path for s in ("train", "val", "test") for r in sp.select(recs, s))
        assert len(sp.train) + len(sp.val) + len(sp.test) == 5
    # a snippet excludes its whole recording run: crops of one source recording
    run = fake_recs({"wren": {"ess": 3}})
    sp = split_groups(run, 0.2, seed=0, test_fraction=0.2, exclude=["g0_1"])
    assert sp.excluded == ["ess:wren/g0"]


def test_split_files_round_trip_and_two_way_files_still_load(tmp_path):
    recs = fake_recs({"aa": {"xc": 6}})
    sp = split_groups(recs, 0.2, seed=5, test_fraction=0.2, exclude=["g5_0"])
    sp.save(tmp_path / "split.json")
    back = Split.load(tmp_path / "split.json")
    assert (back.train, back.val, back.test, back.excluded, back.test_fraction) == \
        (sp.train, sp.val, sp.test, sp.excluded, 0.2)
    old = {"seed": 0, "val_fraction": 0.2, "train": ["xc:aa/g0", "xc:aa/g1"], "val": ["xc:aa/g2"], "sources": []}
    (tmp_path / "old.json").write_text(json.dumps(old))
    two_way = Split.load(tmp_path / "old.json")
    assert two_way.test == [] and two_way.excluded == [] and len(two_way.select(recs, "val")) == 2
    assert two_way.select(recs, "test") == []
    with pytest.raises(ValueError, match="subset"):
        two_way.select(recs, "validation")


def test_holdout_keeps_noise_out_of_training(tmp_path):
    noise = tmp_path / "noise"
    for name in ("blanket/rain.ogg", "blanket/storm.ogg", "bg/sheep.ogg"):
        wav(noise / name)
    (tmp_path / "h.json").write_text(json.dumps({"exclude": ["XC1"], "noise": ["blanket/storm.ogg", "bg/sheep.ogg"]}))
    h = Holdout.load(tmp_path / "h.json")
    files = sorted(str(p) for p in noise.rglob("*.ogg"))
    assert [os.path.basename(f) for f in h.training_noise(files, noise)] == ["rain.ogg"]
    assert [p.name for p in h.heldout_noise(noise)] == ["storm.ogg", "sheep.ogg"]
    assert Holdout.load(None).noise == [] and Holdout.load(None).training_noise(files, noise) == files
    (tmp_path / "bad.json").write_text(json.dumps({"noise": ["gone.ogg"]}))
    with pytest.raises(DatasetError, match="gone.ogg"):
        Holdout.load(tmp_path / "bad.json").heldout_noise(noise)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetError, match="hold-out"):
        Holdout.load(tmp_path / "broken.json")


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


# ------------------------------------------------------------------------------------------- species v3

def test_subspecies_codes_are_read_as_their_species_with_runs_kept_apart(tmp_path):
    from birdlive.train.datasets import species_of
    assert species_of("dark_eyed_junco_slate_colored", "Dark-eyed Junco (Slate-colored)") == \
        ("dark_eyed_junco", "Dark-eyed Junco")
    assert species_of("yellow_rumped_warbler_audubons", "Yellow-rumped Warbler (Audubon's)") == \
        ("yellow_rumped_warbler", "Yellow-rumped Warbler")
    assert species_of("odd_code", "Some Bird (Odd)") == ("odd_code", "Some Bird (Odd)")    # not a suffix: kept
    snippet_set(tmp_path, {"yellow_rumped_warbler_myrtle": ("Yellow-rumped Warbler (Myrtle)", 2),
                           "yellow_rumped_warbler_audubons": ("Yellow-rumped Warbler (Audubon's)", 1)})
    ds = load_dataset(tmp_path)
    assert ds.labels == ["yellow_rumped_warbler"] and ds.names == {"yellow_rumped_warbler": "Yellow-rumped Warbler"}
    assert len({r.group for r in ds.recordings}) == 3           # run 0 of each subspecies: two groups


def test_ovenbird_clips_group_by_individual_and_keep_the_song_in_the_crop(tmp_path):
    import numpy as np
    from birdlive.train.augment import crop_around
    for k in range(3):
        wav(tmp_path / "clips" / f"c{k}.wav", seconds=0.02)
    (tmp_path / "labels.csv").write_text("file,localization_event_id,array,final_label\n" + "".join(
        f"clips/c{k}.wav,e{k},A,{bird}\n" for k, bird in enumerate((7, 7, 9))))
    ds = load_dataset(tmp_path)
    assert ds.labels == ["ovenbird"] and sorted({r.group for r in ds.recordings}) == [
        f"{tmp_path.name}:bird7", f"{tmp_path.name}:bird9"]
    x = np.zeros(10 * 100, np.float32)
    x[350:650] = 1.0                                  # the song at 3.5-6.5 s (100 samples a second)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert crop_around(x, 500, rng, (3.5, 6.5), 100).sum() == 300


def test_extend_split_places_new_groups_and_keeps_the_old_ones(tmp_path):
    from birdlive.train.datasets import extend_split, split_groups
    old = [Recording(f"/a/{sp}{i}.wav", [sp], [], f"a:{sp}{i}") for sp in "xy" for i in range(5)]
    split = split_groups(old, 0.2, 0, 0.2)
    before = {s: list(getattr(split, s)) for s in ("train", "val", "test")}
    new = [Recording(f"/b/z{i}.wav", ["z"], [], f"b:z{i}") for i in range(5)]
    added = extend_split(split, old + new)
    assert len(added) == 5 and extend_split(split, old + new) == []
    for s, groups in before.items():
        assert set(groups) <= set(getattr(split, s))
    assert {g for s in ("train", "val", "test") for g in getattr(split, s) if g.startswith("b:")} == set(added)
    assert all(any(g.startswith("b:") for g in getattr(split, s)) for s in ("train", "val", "test"))

def xc_set(root, counts: dict[str, tuple[str, int]]):
    """A xeno-canto layout: {label: (common name, n recordings)}."""
    rows = ["filepath,label,common_name,also"]
    k = 0
    for lab, (name, n) in counts.items():
        for _ in range(n):
            k += 1
            wav(root / lab / f"XC{k}.wav", seconds=0.02)
            rows.append(f"{lab}/XC{k}.wav,{lab},{name},")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


def snippet_set(root, runs: dict[str, tuple[str, int]]):
    rows = ["file,species_code,common_name,recording_run,duration_s"]
    for code, (name, n) in runs.items():
        for run in range(n):
            f = f"{code}/{code}_run{run:04d}_00000.wav"
            wav(root / f, seconds=0.02)
            rows.append(f"{f},{code},{name},{run},0.02")
    (root / "snippets.csv").write_text("\n".join(rows) + "\n")


def test_species_rule_takes_puerto_rico_by_count_and_north_america_by_list(tmp_path):
    from birdlive.train.species import FIRST_RELEASE, FROGS, choose_species
    counts = {lab: (lab.replace("_", " "), 3) for lab in FIRST_RELEASE}
    counts |= {lab: (lab.replace("_", " "), 1) for lab in FROGS}
    counts |= {"Rarus_avis": ("Rare Bird", 2), "Commonus_avis": ("Common Bird", 3),
               "Zenaida_macroura": ("Mourning Dove", 1)}
    xc_set(tmp_path / "xc", counts)
    snippet_set(tmp_path / "ess", {"american_robin": ("American Robin", 2), "hooded_warbler": ("Hooded Warbler", 1),
                                   "mourning_dove": ("Mourning Dove", 1), "blue_jay": ("Blue Jay", 1),
                                   "berylline_hummingbird": ("Berylline Hummingbird", 50),
                                   "fox_sparrow_sooty": ("Fox Sparrow (Sooty)", 1),
                                   "fox_sparrow_red": ("Fox Sparrow (Red)", 1)})
    choice = choose_species(load_dataset(tmp_path / "xc"), load_dataset(tmp_path / "ess"))
    assert set(FIRST_RELEASE) | set(FROGS) | {"Commonus_avis"} <= set(choice.labels)
    assert "Rarus_avis" not in choice.labels                              # two recordings, not a frog
    assert "american_robin" in choice.labels and "hooded_warbler" not in choice.labels   # 2 runs / 1 run
    assert "blue_jay" in choice.labels                            # a yard bird (group 1): in with one run
    assert "fox_sparrow" in choice.labels                         # two subspecies, one run each: two groups
    assert "Zenaida_macroura" in choice.labels                   # one run + one xeno-canto recording: two groups
    assert "berylline_hummingbird" not in choice.labels                   # many runs, but not a common bird
    assert ("Hooded Warbler", "only one recording run") in choice.left_out
    del counts["Vireo_latimeri"]
    xc_set(tmp_path / "xc2", counts)
    with pytest.raises(ValueError, match="Vireo_latimeri"):
        choose_species(load_dataset(tmp_path / "xc2"), load_dataset(tmp_path / "ess"))


def test_committed_species_list_is_what_the_rule_gives():
    from birdlive.train.species import choose_species
    root = ROOT
    data = root.parent / "shared" / "data"
    if not (data / "xc-puerto-rico").is_dir() or not (data / "essential-set").is_dir():
        pytest.skip("../shared/data is not on this machine")
    choice = choose_species(load_dataset(data / "xc-puerto-rico"), load_dataset(data / "essential-set"))
    assert (root / "model" / "weights" / "default_species_v3.txt").read_text().split() == choice.labels
    v2 = (root / "model" / "weights" / "default_species_v2.txt").read_text().split()
    assert set(v2) <= set(choice.labels)                          # v3 adds species, drops none
    assert {"dark_eyed_junco", "yellow_rumped_warbler"} <= set(choice.labels)


def tiny_run(tmp_path):
    """A made-up run: two xeno-canto species, two snippet species, noise files, a hold-out list, a three-way
    split and a random tiny model as its best checkpoint. Returns (run folder, recordings, split)."""
    import torch
    from birdlive.model import BirdSED, create_config, save_checkpoint
    from birdlive.train.loop import TrainConfig
    xc_set(tmp_path / "xc", {"Aus_bus": ("A Bird", 4), "Cus_dus": ("C Bird", 3)})
    for p in (tmp_path / "xc").rglob("*.wav"):
        wav(p, seconds=6.0, sr=32000, freq=2000.0 + 500 * len(p.stem))
    snippet_set(tmp_path / "ess", {"eee": ("E Bird", 3), "fff": ("F Bird", 4)})
    for p in (tmp_path / "ess").rglob("*.wav"):
        wav(p, seconds=0.15, sr=32000, freq=3000.0)
    for name in ("blanket/rain.ogg", "blanket/storm.ogg"):
        wav(tmp_path / "noise" / name, seconds=6.0, sr=32000)
    (tmp_path / "holdout.json").write_text(json.dumps({"exclude": ["XC1"], "noise": ["blanket/storm.ogg"]}))
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), data=[str(tmp_path / "xc")], snippets=[str(tmp_path / "ess")],
                      noise_dir=str(tmp_path / "noise"), preset="tiny", cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text(json.dumps(cfg.to_dict() | {"holdout": str(tmp_path / "holdout.json")}))
    recs, labels, names = merge([load_dataset(tmp_path / "xc"), load_dataset(tmp_path / "ess")])
    split = split_groups(recs, 0.2, seed=0, test_fraction=0.2, exclude=["XC1"])
    split.save(run / "split.json")
    torch.manual_seed(0)
    save_checkpoint(BirdSED(create_config("tiny", labels, names)), run / "best")
    torch.manual_seed(1)
    save_checkpoint(BirdSED(create_config("tiny", labels[:3], names[:3])), run / "other")
    return run, recs, split


def test_gate_compares_two_models_on_the_validation_groups_of_the_species_both_know(tmp_path):
    run, recs, split = tiny_run(tmp_path)
    gate = load_benchmark("compare_validation")
    out = tmp_path / "gate.json"
    assert gate.main(["--candidate", str(run / "best"), "--run", str(run), "--incumbent", str(run / "other"),
                      "--per-species", "1", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["common_species"] == 3 and isinstance(res["candidate_wins"], bool)
    val_xc = [r for r in split.select(recs, "val") if "/xc/" in r.path]
    assert res["settings"]["xc_recordings"] == len(val_xc)
    for who in ("candidate", "incumbent"):
        assert 0 <= res[who]["composed_map"] <= 1 and 0 <= res[who]["xc_recording_top1"] <= 1
        assert 0 <= res[who]["xc_track_top1"] <= 1 and 0 <= res[who]["xc_track_map"] <= 1
        assert len(res[who]["xc_recording_right"]) == len(res[who]["xc_track_right"]) == len(val_xc)
    assert res["rule"] == ["composed_map", "xc_track_top1", "xc_track_map"]
    assert res["candidate_wins"] == all(res["candidate"][k] >= res["incumbent"][k] for k in res["rule"])
    n = len(val_xc)
    for how, top in (("", "xc_recording_top1"), ("_mean", "xc_recording_top1_mean"), ("_track", "xc_track_top1")):
        pair = res["paired_recording_top1" + how]
        assert pair["only_candidate_right"] - pair["only_incumbent_right"] == round(
            n * (res["candidate"][top] - res["incumbent"][top]))
    for how in ("", "_track"):
        m = res["matched_false_alarms" + how]
        assert m["candidate_wrong"] <= m["wrong_pairs"] or m["candidate_threshold"] == 0.95
    boot = res["bootstrap_xc_track_map"]
    assert boot["difference"] == pytest.approx(res["candidate"]["xc_track_map"] - res["incumbent"]["xc_track_map"])
    assert boot["interval_95"][0] <= boot["interval_95"][1] and 0 <= boot["share_ahead"] <= 1
    assert not any(k.startswith("_") for k in res["candidate"])       # the arrays stay out of the JSON
    assert gate.paired_top1([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]) == {
        "only_candidate_right": 5, "only_incumbent_right": 0, "sign_test_p": 0.0625}     # 2 / 2**5
    assert gate.paired_top1([1, 0, 1], [0, 1, 1])["sign_test_p"] == 1.0


def test_gate_scores_an_output_ensemble_as_the_mean_of_its_members_probabilities(tmp_path):
    import torch

    from birdlive.model import BirdSED, load_checkpoint, save_checkpoint
    run, _, _ = tiny_run(tmp_path)
    gate = load_benchmark("compare_validation")
    a = load_checkpoint(run / "best")
    torch.manual_seed(2)
    save_checkpoint(BirdSED(a.cfg), run / "second")
    b = load_checkpoint(run / "second")
    pair = gate.load_candidate(f"{run / 'best'}+{run / 'second'}").eval()
    x = torch.randn(2, int(a.cfg.sample_rate * a.cfg.window_s))
    with torch.no_grad():
        want = (a(x)["clipwise"] + b(x)["clipwise"]) / 2
        assert not torch.allclose(a(x)["clipwise"], b(x)["clipwise"])
        assert torch.allclose(pair(x)["clipwise"], want, atol=1e-6)
    wave = np.random.default_rng(0).normal(0, 0.1, int(a.cfg.sample_rate * 7.5)).astype(np.float32)
    from birdlive.streamer.core.offline import framewise_track
    assert np.allclose(framewise_track(pair, wave), (framewise_track(a, wave) + framewise_track(b, wave)) / 2,
                       atol=1e-6)
    assert pair.cfg.labels == a.cfg.labels
    assert not isinstance(gate.load_candidate(str(run / "best")), gate.MeanOfModels)
    with pytest.raises(SystemExit, match="species lists"):
        gate.load_candidate(f"{run / 'best'}+{run / 'other'}")      # "other" knows 3 of the species


def test_paired_bootstrap_of_map_is_sure_of_a_clear_lead_and_unsure_of_none():
    from birdlive.train.evaluate import clip_metrics, macro_ap
    from birdlive.train.evaluation import paired_bootstrap_map
    rng = np.random.default_rng(3)
    targets = np.eye(4)[rng.integers(0, 4, 40)]
    masks = np.ones_like(targets)
    masks[0, 1] = 0                                              # a background species: neither right nor wrong
    good = targets * 0.6 + rng.uniform(0, 0.5, targets.shape)    # ranks most recordings right
    noise = rng.uniform(0, 1, targets.shape)
    assert macro_ap(good, targets, masks) == pytest.approx(
        clip_metrics(good, targets, masks, list("abcd"))["macro_map"])
    clear = paired_bootstrap_map(good, noise, targets, masks, resamples=200)
    assert clear["difference"] > 0.3 and clear["interval_95"][0] > 0 and clear["share_ahead"] == 1.0
    same = paired_bootstrap_map(good, good, targets, masks, resamples=50)
    assert same["difference"] == 0 and same["interval_95"] == [0.0, 0.0] and same["share_ahead"] == 0.0
    assert paired_bootstrap_map(good, noise, targets, masks, resamples=50, seed=7) == \
        paired_bootstrap_map(good, noise, targets, masks, resamples=50, seed=7)      # seeded: the same figures


def test_operating_points_count_right_recordings_and_wrong_pairs_and_match_the_incumbents_false_alarms():
    from birdlive.train.evaluation import matched_false_alarms, operating_points
    scores = np.array([[.9, .5, .1], [.2, .7, .65]])
    targets = np.array([[1, 0, 0], [0, 1, 0]])
    masks = np.array([[1, 0, 1], [1, 1, 1]])          # b is a background species of the first recording: neither
    op = operating_points(scores, targets, masks, np.array([0.4, 0.6, 0.8]))
    assert op == {"thresholds": [0.4, 0.6, 0.8], "right": [2, 2, 1], "wrong": [1, 1, 0]}
    louder = {"thresholds": [0.4, 0.6, 0.8], "right": [2, 2, 2], "wrong": [5, 1, 0]}
    m = matched_false_alarms(louder, op, threshold=0.6)
    assert (m["wrong_pairs"], m["incumbent_right"], m["candidate_threshold"], m["candidate_right"]) == (1, 2, 0.6, 2)
    m = matched_false_alarms(louder, op, threshold=0.8)    # no wrong pair allowed: the candidate moves up to 0.8
    assert (m["wrong_pairs"], m["incumbent_right"], m["candidate_threshold"], m["candidate_right"]) == (0, 1, 0.8, 2)


def test_tempo_probe_scores_each_model_under_three_note_gap_regimes(tmp_path):
    run, recs, split = tiny_run(tmp_path)
    probe = load_benchmark("tempo_probe")
    out = tmp_path / "tempo.json"
    assert probe.main(["--run", str(run), "--models", str(run / "best"), "--per-species", "2", "--threads", "1",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())[str(run / "best")]
    assert set(res) == {"gaps_alone", "tempo", "trills"}
    assert len({r["windows"] for r in res.values()}) == 1 and res["trills"]["windows"] > 0
    assert all(0 <= r["macro_map"] <= 1 for r in res.values())


def test_fit_gap_scores_the_training_runs_beside_the_held_out_ones(tmp_path):
    run, recs, split = tiny_run(tmp_path)
    fit_gap = load_benchmark("fit_gap")
    out = tmp_path / "fit.json"
    assert fit_gap.main(["--run", str(run), "--split", str(run / "split.json"), "--models", str(run / "best"),
                         "--per-species", "2", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())[str(run / "best")]
    snippet_species = {name: {r.primary for r in split.select(recs, name) if "/ess/" in r.path}
                       for name in ("train", "val")}
    for name in ("train", "val"):
        assert res[name]["species"] == len(snippet_species[name]) > 0
        assert res[name]["windows"] == 2 * res[name]["species"] and 0 <= res[name]["macro_map"] <= 1


def test_evaluate_default_scores_the_test_split_only(tmp_path):
    """benchmarks/evaluate_default.py end to end on a made-up run (random tiny model, no BirdNET): it reads the
    test groups and nothing else, refuses a split without them, and reports the never-trained-on noise apart."""
    from pathlib import Path
    run, recs, split = tiny_run(tmp_path)
    ev = load_benchmark("evaluate_default")

    args = ["--model", str(run / "best"), "--run", str(run), "--minutes", "0.2", "--per-species", "1",
            "--noise-minutes", "0.05", "--threads", "1", "--rtf-threads", "1", "--out", str(tmp_path / "r.json")]
    assert ev.main(args) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    test_files = {Path(r.path).stem for r in split.select(recs, "test") if "/xc/" in r.path}
    assert {Path(x["file"]).stem for x in res["xc"]["recordings"]} == test_files and "XC1" not in test_files
    assert 0 <= res["xc"]["recording_top1_track"] <= 1 and 0 <= res["xc"]["recording_level_track"]["macro_map"] <= 1
    assert res["settings"]["test_snippet_runs"] == len([g for g in split.test if g.startswith("ess:")])
    noise = res["background_noise"]["files"]
    assert noise["blanket/storm.ogg"]["heldout"] and not noise["blanket/rain.ogg"]["heldout"]
    Split(0, 0.2, split.train + split.test, split.val).save(run / "split.json")      # two-way: no test list
    with pytest.raises(SystemExit, match="no test list"):
        ev.main(args)


def test_average_checkpoints_is_the_mean_of_the_weights_and_refuses_other_species(tmp_path):
    import torch

    from birdlive.model import BirdSED, create_config, load_checkpoint, save_checkpoint
    soup = load_benchmark("average_checkpoints")
    torch.manual_seed(0)
    for name in ("a", "b"):
        save_checkpoint(BirdSED(create_config("tiny", ["x", "y"])), tmp_path / name)
    save_checkpoint(BirdSED(create_config("tiny", ["x", "z"])), tmp_path / "other")
    assert soup.main(["--out", str(tmp_path / "soup"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    a, b, mixed = (load_checkpoint(tmp_path / n).state_dict() for n in ("a", "b", "soup"))
    head = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert head                                     # two seeds' heads differ: the mean is not either of them
    for k in head:
        torch.testing.assert_close(mixed[k], (a[k] + b[k]) / 2)
    with pytest.raises(SystemExit, match="another network or species list"):
        soup.main(["--out", str(tmp_path / "no"), str(tmp_path / "a"), str(tmp_path / "other")])


def test_recording_events_come_from_one_track_per_recording_as_detect_offline_makes_them(tmp_path):
    """evaluate_default's recording stage computes each recording's track once: its events are detect_offline's,
    and the recording's track maxima are track_scores'."""
    from birdlive.model import load_checkpoint
    from birdlive.streamer.core.offline import detect_offline, framewise_track
    from birdlive.train.cache import AudioCache
    from birdlive.train.evaluation import recording_events, score_recordings, track_scores
    run, recs, _ = tiny_run(tmp_path)
    model = load_checkpoint(run / "best").eval()
    model.cfg.threshold_on, model.cfg.threshold_off = 0.3, 0.2      # a random net: low enough to make events
    xc = [r for r in recs if "/xc/" in r.path]
    cache = AudioCache(tmp_path / "cache", model.cfg.sample_rate)
    scored = score_recordings(model, xc, cache, batch=4)
    rows, t_scores = recording_events(model, scored, cache, also={})
    want = [detect_offline(model, cache.load(r.path), source=r.path) for r in xc]
    assert sum(map(len, want)) > 0
    for row, evs in zip(rows, want, strict=True):
        assert row["events_right"] + row["events_secondary"] + row["events_wrong"] == len(evs)
    np.testing.assert_allclose(t_scores, track_scores(model, xc, cache), rtol=0, atol=1e-6)
    by_hand = [framewise_track(model, cache.load(r.path), hop_s=1.0).max(0) for r in xc]    # the streamer's hop
    np.testing.assert_allclose(t_scores, np.stack(by_hand), rtol=0, atol=1e-6)
