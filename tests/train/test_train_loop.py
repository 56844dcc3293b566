"""Training end to end on synthetic call types (tiny preset, CPU), evaluation of the result, the step schedule,
stopping (SIGTERM, kill -9) and resuming bit for bit, starting from other weights, CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from birdlive.model import BirdSED, create_config, load_checkpoint, save_checkpoint
from birdlive.train import TrainConfig, train
from birdlive.train.loop import STATE, init_weights, lr_at, steps_for_budget
from birdlive.train.evaluate import RefEvent, evaluate_events, evaluate_model
from birdlive.train.synthetic import CALL_TYPES, make_scene

from tests.common import BIRDLIVE, birdlive, load_benchmark

pytestmark = pytest.mark.training

SR = 32000


def write_calls(root, n_per: int, seed: int, seconds: float = 3.0):
    """Folder per call type; each file: 1-2 calls of its type in field-like noise, random SNR and level."""
    rng = np.random.default_rng(seed)
    for kind in CALL_TYPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_per):
            calls = [(kind, float(rng.uniform(0.1, seconds - 0.8)))]
            if rng.random() < 0.5:
                calls.append((kind, float(rng.uniform(0.1, seconds - 0.8))))
            w, _ = make_scene(seconds, SR, calls, snr_db=float(rng.uniform(3, 15)),
                              noise_rms=0.02 * float(rng.uniform(0.5, 2)), rng=rng)
            sf.write(root / kind / f"{kind}_{i:02d}.wav", w, SR)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    # 32 files a type and 320 steps: seeds 0-2 reach held-out mAP 0.93-1.0 and top-1 1.0 on this CPU kind
    # (AVX2, no AVX-512). With 16 files and 160 steps they gave 0.88-0.92, and seed 0 fell under 0.9 on a CPU
    # other than the one it was written on: a recipe at the edge of its threshold, not a margin.
    data = write_calls(base / "data", 32, seed=0)
    cfg = TrainConfig(run_dir=str(base / "run"), data=[str(data)], preset="tiny", window_s=2.0, epochs=40,
                      epoch_size=128, batch_size=16, lr=3e-3, val_fraction=0.25, seed=0, workers=1,
                      cache_dir=str(base / "cache"), command="pytest synthetic")
    summary = train(cfg, show_progress=False)
    return base, cfg, summary


def test_synthetic_training_reaches_heldout_map(trained):
    base, cfg, s = trained
    assert s["steps"] == s["total_steps"] == 40 * 128 // 16 and not s["interrupted"]
    assert s["n_val_groups"] == 32 and s["n_train_groups"] == 96       # 25 % of each species' files
    assert s["val_map"] >= 0.9, s                                      # held out by file, best epoch
    model = load_checkpoint(cfg.run_dir)                               # a run folder loads RUN/best
    assert model.cfg.labels == sorted(CALL_TYPES) and model.cfg.window_s == 2.0
    extra = model.cfg.extra
    assert extra["training"]["split_seed"] == 0 and extra["training"]["command"] == "pytest synthetic"
    assert extra["heldout"]["macro_map"] == pytest.approx(s["val_map"])
    # files never seen, made with another seed: evaluated through the `birdlive evaluate` path
    test = write_calls(base / "test", 6, seed=1)
    res = evaluate_model(model, [str(test)], cache_dir=base / "cache")
    assert res["n_items"] == 24 and res["macro_map"] >= 0.9, res["macro_map"]
    assert res["top1"] >= 0.75


def test_run_folder_has_split_logs_and_curves(trained):
    base, cfg, s = trained
    run = base / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["seed"] == 0 and not set(split["train"]) & set(split["val"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 321, 8))          # step 0: the untrained model
    assert rows[0]["train_loss"] is None and rows[-1]["train_loss"] < rows[1]["train_loss"]
    assert all(a["cpu_s"] <= b["cpu_s"] and a["windows"] < b["windows"] for a, b in zip(rows, rows[1:]))
    assert max(r["val_map"] for r in rows) == pytest.approx(s["val_map"])
    assert all(r["val_rec_map"] == pytest.approx(r["val_map"]) for r in rows)   # no snippets: every item a file
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for f in ("best.safetensors", "best.json", "last.safetensors", "last.json", STATE, "train.json"):
        assert (run / f).is_file(), f


def test_events_and_noise_check_on_the_trained_model(trained):
    base, cfg, s = trained
    model = load_checkpoint(cfg.run_dir)
    rng = np.random.default_rng(5)
    waves, ref = {}, []
    for i in range(3):
        calls = [(CALL_TYPES[(i + j) % 4], 1.0 + 2.5 * j) for j in range(4)]
        w, truth = make_scene(12.0, SR, calls, snr_db=12, rng=rng)
        waves[f"scene{i}"] = w
        ref += [RefEvent(f"scene{i}", k, a, b) for k, a, b in truth]
    res = evaluate_events(model, ref, waves, onset_tolerance=1.0)
    assert res["n_reference"] == 12 and res["n_estimated"] > 0
    assert res["tp"] >= 3                                              # weak labels only: localisation is coarse
    from birdlive.train.evaluate import noise_false_positives
    fp = noise_false_positives(model, minutes=0.5)
    assert set(fp["events"]) == {"white", "pink", "brown"} and fp["total"] <= 6


def small_run(tmp_path, **kw):
    data = write_calls(tmp_path / "data", 3, seed=2, seconds=1.5)
    common = dict(data=[str(data)], preset="tiny", window_s=1.0, epoch_size=16, batch_size=8, lr=2e-3,
                  val_fraction=0.34, seed=1, cache_dir=str(tmp_path / "cache"), threads=1)
    return {**common, **kw}


def test_learning_rate_is_a_function_of_the_step():
    lrs = [lr_at(s, 100, 10, 1.0, floor=0.1) for s in range(120)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up to the peak
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55)   # cosine: halfway at half
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100:] == pytest.approx([0.1] * 20)                           # the floor, flat after the end
    assert steps_for_budget(600, 0.5, 10.0, 100) == 1000                    # 0.5 s a step + 0.1 s validation


def test_validation_reports_the_whole_recordings_apart_from_the_composed_windows(monkeypatch):
    """val_map pools every item; val_rec_* see the recordings alone (the first `n_val_files` items), so a model
    that names the recordings right and the composed windows wrong shows it."""
    from types import SimpleNamespace

    from birdlive.train import loop
    from birdlive.train.windows import EvalItem

    def item(target, mask=(1, 1, 1)):
        return EvalItem("x", np.zeros((1, 8), np.float32), np.array(target, np.float32), np.array(mask, np.float32))
    items = [item((1, 0, 0)), item((0, 1, 1)), item((0, 0, 1), (1, 0, 1)),     # recordings (the 2nd: two species)
             item((1, 0, 0)), item((0, 1, 0))]                                  # composed windows
    scores = np.array([[.9, .1, .2], [.1, .2, .8], [.1, .9, .7],   # recordings: the 2nd's top is its co-label,
                       [.1, .8, .2], [.9, .1, .1]], np.float32)    # the 3rd's top is masked (a background species)
    peaks = scores.copy()
    peaks[0] = [.2, .6, .1]                                        # the first recording's track peaks on b
    monkeypatch.setattr(loop, "predict_items_and_peaks", lambda *a, **k: (scores, peaks))
    monkeypatch.setattr(loop, "inference_copy", lambda model: model)
    model = SimpleNamespace(train=lambda: None, cfg=SimpleNamespace(threshold_on=0.5))
    data = SimpleNamespace(val_items=items, n_val_files=3, labels=["a", "b", "c"], names=["A", "B", "C"])
    row = loop.validate(model, data, SimpleNamespace(batch_size=4), "cpu")
    assert row["val_rec_map"] == pytest.approx(1.0) and row["val_map"] < 0.9
    assert row["val_rec_top1"] == pytest.approx(2 / 3)           # the masked top is not one of its own
    assert row["val_rec_track_top1"] == pytest.approx(1 / 3)     # the framewise peaks judge apart
    assert row["val_rec_track_map"] < 1.0


def test_framewise_peaks_are_the_highest_frame_of_each_species_over_an_items_windows():
    from birdlive.model import BirdSED, create_config
    from birdlive.train.windows import EvalItem, predict_items, predict_items_and_peaks
    torch.manual_seed(0)
    model = BirdSED(create_config("tiny", ["a", "b", "c"]))
    rng = np.random.default_rng(0)
    items = [EvalItem(str(k), rng.normal(0, 0.1, (n, 32000)).astype(np.float32), None, None)
             for k, n in enumerate((1, 3))]
    clip, peaks = predict_items_and_peaks(model, items, batch_size=2)
    with torch.no_grad():
        out = model(torch.from_numpy(items[1].windows))
    assert np.allclose(peaks[1], out["framewise"].amax((0, 1)).numpy(), atol=1e-6)
    assert np.allclose(clip[1], out["clipwise"].amax(0).numpy(), atol=1e-6)
    assert np.array_equal(clip, predict_items(model, items, batch_size=2))

    class ClipwiseOnly(torch.nn.Module):       # as the gate's output ensemble: no framewise output
        cfg = model.cfg

        def forward(self, x):
            return {"clipwise": model(x)["clipwise"]}
    assert np.array_equal(clip, predict_items(ClipwiseOnly(), items, batch_size=2))


def weights(run):
    return load_file(str(run / "last.safetensors"))


class SteppedClock:
    """The training loop's wall clock, advancing 10 ms per reading: a time budget then gives the same
    steps on an idle and on a loaded machine (the real step time is replaced by `STEP_S`)."""
    STEP_S = 0.25

    def __init__(self):
        self.now = 1_000_000.0

    def __getattr__(self, name):                                            # perf_counter, sleep, …: the real ones
        return getattr(time, name)

    def time(self) -> float:
        self.now += 0.01
        return self.now


def test_time_budget_becomes_steps_once_and_resume_keeps_the_schedule(tmp_path, monkeypatch):
    import birdlive.train.loop as loop
    monkeypatch.setattr(loop, "time", SteppedClock())
    monkeypatch.setattr(loop, "measure_step_s", lambda *a: SteppedClock.STEP_S)
    first = train(TrainConfig(run_dir=str(tmp_path / "r"), max_minutes=0.1, **small_run(tmp_path)),
                  show_progress=False)
    saved = json.loads((tmp_path / "r" / "train.json").read_text())
    timing = saved["timing"]
    assert saved["total_steps"] == first["total_steps"] > 2 and timing["step_s"] > 0 and timing["val_s"] > 0
    left = 0.1 * 60 - timing["setup_s"]                                     # what was left after measuring
    assert abs(first["total_steps"] - steps_for_budget(left, timing["step_s"], timing["val_s"], 2)) <= 1
    # resumed with another budget: the same schedule, continued (or already complete) — never re-stretched
    again = train(TrainConfig(run_dir=str(tmp_path / "r"), max_minutes=30.0), resume=True, show_progress=False)
    assert again["total_steps"] == first["total_steps"] and again["steps"] == first["total_steps"]
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == first["total_steps"]
    assert rows[-1]["lr"] == pytest.approx(lr_at(first["total_steps"] - 1, first["total_steps"],
                                                 max(1, int(0.05 * first["total_steps"])), 2e-3))


def terminate_during_step(monkeypatch, n: int):
    """The training process sends itself SIGTERM (as `kill PID` would) during its n-th optimizer step; returns
    the step as it was, for the caller to put back before resuming."""
    from birdlive.train.loop import Stepper
    original, calls = Stepper.__call__, []

    def terminated(self, batch, lr):
        calls.append(lr)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, lr)

    monkeypatch.setattr(Stepper, "__call__", terminated)
    return original


def test_sigterm_stops_after_a_step_and_resume_is_bit_identical(tmp_path, monkeypatch):
    from birdlive.train.loop import Stepper
    common = small_run(tmp_path, max_steps=10, checkpoint_minutes=60.0, keep_every=3)
    train(TrainConfig(run_dir=str(tmp_path / "a"), **common), show_progress=False)
    original = terminate_during_step(monkeypatch, 4)
    cut = train(TrainConfig(run_dir=str(tmp_path / "c"), **common), show_progress=False)
    assert cut["interrupted"] and cut["steps"] == 4                         # the step in flight finished
    monkeypatch.setattr(Stepper, "__call__", original)
    resumed = train(TrainConfig(run_dir=str(tmp_path / "c")), resume=True, show_progress=False)
    assert resumed["steps"] == 10 and not resumed["interrupted"]
    a, c = weights(tmp_path / "a"), weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)                          # stopping + resuming changes nothing
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8, 10]
    # --keep-every 3, kept across the resume: the validations at or past steps 3, 6 and 9
    assert sorted(p.name for p in (tmp_path / "c").glob("step*.json")) == ["step10.json", "step4.json", "step6.json"]
    assert json.loads((tmp_path / "c" / "step6.json").read_text())["extra"]["training"]["step"] == 6
    kept = load_file(str(tmp_path / "c" / "step10.safetensors"))
    assert all(torch.equal(a[k], kept[k]) for k in a)


def test_kill_9_loses_only_the_steps_since_the_last_save(tmp_path):
    """A real `birdlive train` process killed with SIGKILL while it trains (state saved every step), resumed by the
    command line: the weights at the end are those of a run never interrupted."""
    from safetensors import safe_open
    common = small_run(tmp_path, max_steps=24, epoch_size=64, checkpoint_minutes=0.0)
    train(TrainConfig(run_dir=str(tmp_path / "whole"), **common), show_progress=False)
    args = [common["data"][0], "--preset", "tiny", "--window", "1", "--epoch-size", "64", "--batch-size", "8",
            "--lr", "2e-3", "--max-steps", "24", "--val-fraction", "0.34", "--seed", "1", "--cache-dir",
            common["cache_dir"], "--threads", "1", "--checkpoint-minutes", "0", "--run", str(tmp_path / "cut"),
            "--keep-every", "12", "--snippet-share", "0.3"]     # neither changes a weight (no snippets here)
    proc = subprocess.Popen([*BIRDLIVE, "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state, deadline = tmp_path / "cut" / STATE, time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with safe_open(str(state), "pt") as f:
        killed_at = json.loads(f.metadata()["birdlive_state"])["step"]
    assert 0 < killed_at < 24                                               # it was killed mid-run
    resumed = birdlive("train", "--run", tmp_path / "cut", "--resume", "--threads", "1")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 24
    kept = json.loads((tmp_path / "cut" / "train.json").read_text())
    assert kept["keep_every"] == 12 and kept["snippet_share"] == 0.3          # the command line's, kept by --resume
    assert (tmp_path / "cut" / "step24.safetensors").is_file()
    a, c = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_init_copies_matching_tensors_and_the_head_rows_of_shared_species(tmp_path):
    src = BirdSED(create_config("tiny", ["a", "b", "c"])).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    save_checkpoint(src, tmp_path / "src")
    model = BirdSED(create_config("tiny", ["b", "x", "c"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said = init_weights(model, str(tmp_path / "src"))
    assert "2 of 3 species" in said and "4 tensors" in said
    mine, theirs = model.state_dict(), src.state_dict()
    for k in mine:
        if k.startswith("head."):
            assert torch.equal(mine[k][[0, 2]], theirs[k][[1, 2]])          # b and c: their rows
            assert torch.equal(mine[k][1], before[k][1])                    # x: new, as initialised
        elif k in theirs and not k.endswith("num_batches_tracked"):
            assert torch.equal(mine[k], theirs[k]), k


def test_frozen_stages_keep_their_weights_and_the_rest_trains(tmp_path):
    from birdlive.train.loop import freeze_early
    run = train(TrainConfig(run_dir=str(tmp_path / "a"), **small_run(tmp_path, max_steps=3)), show_progress=False)
    frozen = train(TrainConfig(run_dir=str(tmp_path / "f"), freeze=2, init=str(tmp_path / "a" / "last"),
                               **small_run(tmp_path, max_steps=3, seed=2)), show_progress=False)
    assert frozen["steps"] == run["steps"] == 3
    start, end = load_file(str(tmp_path / "a" / "last.safetensors")), weights(tmp_path / "f")
    stem = [k for k in end if k.startswith(("frontend.bn0.weight", "frontend.bn0.bias", "backbone.conv_stem.",
                                            "backbone.bn1.weight", "backbone.bn1.bias", "backbone.blocks.0."))]
    assert all(torch.equal(start[k], end[k]) for k in stem if "running" not in k and "num_batches" not in k)
    assert not torch.equal(start["backbone.blocks.1.0.conv_pw.weight"], end["backbone.blocks.1.0.conv_pw.weight"])
    with pytest.raises(Exception, match="EfficientNet or MobileNet"):
        freeze_early(BirdSED(create_config("tiny", ["a"], backbone="resnet10t", feature_index=2)), 2)


def test_resume_without_state_starts_from_init_weights(tmp_path):
    common = small_run(tmp_path, max_steps=4)
    first = train(TrainConfig(run_dir=str(tmp_path / "a"), **common), show_progress=False)
    second = train(TrainConfig(run_dir=str(tmp_path / "b"), init=str(tmp_path / "a" / "best"), **common),
                   resume=True, show_progress=False)                        # no state in b: starts from a's best
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["val_map"] == pytest.approx(first["val_map"])
    extra = load_checkpoint(tmp_path / "b" / "last").cfg.extra["training"]
    assert extra["init"].startswith(str(tmp_path / "a" / "best")) and second["steps"] == 4


# --------------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def cli():
    from birdlive.cli import train_commands as tc
    app = typer.Typer()
    app.command("train")(tc.train)
    app.command("evaluate")(tc.evaluate)
    app.command("augment-demo")(tc.augment_demo)
    return app


def test_cli_augment_demo_writes_wav_and_png(tmp_path, cli):
    data = write_calls(tmp_path / "data", 1, seed=3)
    a, b = data / "trill" / "trill_00.wav", data / "upsweep" / "upsweep_00.wav"
    r = CliRunner().invoke(cli, ["augment-demo", str(a), str(b), "--out", str(tmp_path / "demo"), "--window", "2"])
    assert r.exit_code == 0, r.output
    assert "trill, upsweep" in r.output
    x, sr = sf.read(tmp_path / "demo" / "mix.wav")
    assert sr == SR and len(x) == 2 * SR and np.abs(x).max() > 0
    assert (tmp_path / "demo" / "mix.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_train_options_reach_the_config(tmp_path, cli, monkeypatch):
    """Each --no-X switches off its augmentation and no other; the ranges and the composer's tempo arrive."""
    import birdlive.train
    seen = {}

    def fake_train(cfg, resume, console):
        seen["cfg"] = cfg
        return {"val_map": None, "interrupted": False, "steps": 0, "total_steps": 0, "time_s": 0.0, "cpu_s": 0.0,
                "best_step": 0, "best": "-"}
    monkeypatch.setattr(birdlive.train, "train", fake_train)
    base = ["train", str(tmp_path), "--run", str(tmp_path / "run"), "--gain", "-30,6", "--snr", "5,15",
            "--note-gap", "0.01,0.6", "--pitch", "1"]
    r = CliRunner().invoke(cli, base + ["--no-mix", "--no-eq", "--no-specaug"])
    assert r.exit_code == 0, r.output
    aug, default = seen["cfg"].augment, birdlive.train.AugmentConfig.preset("all")
    assert aug.gain_db == (-30.0, 6.0) and aug.snr_db == (5.0, 15.0) and aug.pitch_semitones == 1.0
    assert aug.mix_prob == 0.0 and aug.eq_prob == 0.0 and not aug.specaugment
    assert default.mix_prob > 0 and default.eq_prob > 0 and default.specaugment
    for kept in ("noise_prob", "stretch_prob", "pitch_prob", "field_background_prob", "distance_prob", "reverb_prob"):
        assert getattr(aug, kept) == getattr(default, kept) > 0, kept
    assert seen["cfg"].composer.tempo_gap_s == (0.01, 0.6)
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 0 and seen["cfg"].augment.specaugment and seen["cfg"].augment.mix_prob > 0


def test_cli_errors_are_one_red_line(tmp_path):
    """Through the real command: each mistake is one `error:` line on stderr and exit status 1."""
    for args, needle in ([["train", tmp_path / "missing", "--run", tmp_path / "run"], "missing: no such file"],
                         [["evaluate", tmp_path, "--model", tmp_path / "nothing"], "no checkpoint"],
                         [["train", tmp_path, "--augment", "lots", "--run", tmp_path / "run"],
                          "unknown augmentation preset"],
                         [["train", tmp_path, "--init", tmp_path / "nothing", "--run", tmp_path / "run"],
                          "no checkpoint there"],
                         [["train", tmp_path, "--max-steps", "0", "--run", tmp_path / "run"], "must be positive"],
                         [["train", tmp_path, "--keep-every", "-5", "--run", tmp_path / "run"], "--keep-every"],
                         [["train", tmp_path, "--snippet-share", "1.5", "--run", tmp_path / "run"],
                          "between 0 and 1"],
                         [["train", tmp_path, "--teacher", tmp_path / "nothing", "--run", tmp_path / "run"],
                          "--teacher"],
                         [["train", tmp_path, "--distill", "2", "--run", tmp_path / "run"], "--distill"]):
        r = birdlive(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr


def test_cli_evaluate_writes_table_and_json(trained, cli):
    base, cfg, s = trained
    out = base / "eval.json"
    r = CliRunner().invoke(cli, ["evaluate", str(base / "data"), "--model", cfg.run_dir, "--split",
                                 str(base / "run" / "split.json"), "--noise-minutes", "0.2", "--json", str(out),
                                 "--cache-dir", str(base / "cache")])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["n_items"] == 32 and res["subset"] == "val"             # only the held-out files
    assert res["macro_map"] == pytest.approx(s["val_map"], abs=0.1)
    assert "macro mAP" in r.output and "false positives" in r.output


def test_run_validation_puts_a_checkpoint_on_its_runs_yardstick(trained):
    """benchmarks/run_validation.py on the run's best gives the figure the run logged for it, and leaves the
    run's folder as it was."""
    base, cfg, s = trained
    module = load_benchmark("run_validation")
    before = {p.name: p.stat().st_mtime_ns for p in (base / "run").iterdir()}
    out = base / "run_validation.json"
    assert module.main(["--run", cfg.run_dir, "--models", str(base / "run" / "best"), "--out", str(out)]) == 0
    row = json.loads(out.read_text())[str(base / "run" / "best")]
    assert row["val_map"] == pytest.approx(s["val_map"], abs=1e-6)
    assert {p.name: p.stat().st_mtime_ns for p in (base / "run").iterdir()} == before


def test_cli_evaluate_event_f1_from_strong_labels(trained, cli, tmp_path):
    base, cfg, s = trained
    rng = np.random.default_rng(8)
    rows = ["file,species,onset,offset"]
    for i, kind in enumerate(CALL_TYPES):
        (tmp_path / "scenes" / kind).mkdir(parents=True)
        w, truth = make_scene(8.0, SR, [(kind, 1.0), (kind, 5.0)], snr_db=12, rng=rng)
        sf.write(tmp_path / "scenes" / kind / f"scene{i}.wav", w, SR)
        rows += [f"scenes/{kind}/scene{i}.wav,{k},{a:.3f},{b:.3f}" for k, a, b in truth]
    (tmp_path / "strong.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "scenes"), "--model", cfg.run_dir, "--strong",
                                 str(tmp_path / "strong.csv"), "--onset-tolerance", "1.0", "--noise-minutes", "0",
                                 "--json", str(out), "--cache-dir", str(base / "cache")])
    assert r.exit_code == 0, r.output
    ev = json.loads(out.read_text())["events"]
    assert ev["n_files"] == 4 and ev["n_reference"] == 8 and ev["n_estimated"] > 0
    assert ev["tp"] >= 2 and "events (onset ±1 s)" in r.output


# ------------------------------------------------------------------------------------------ GPU recipe

def test_gpu_recipe_packs_and_trains_on_cpu(tmp_path, capsys):
    """The recipe end to end with a tiny budget: pack (Opus, the split's train and validation groups only, the
    split and the layouts' tables rewritten for the packed files), the device command, and training from the pack
    into --out with another run's recipe."""
    recipe = load_benchmark("gpu_recipe")
    rng = np.random.default_rng(4)
    xc, rows = tmp_path / "xc", ["filepath,label,common_name,also"]
    for kind in CALL_TYPES[:3]:
        (xc / kind).mkdir(parents=True)
        for i in range(4):
            w, _ = make_scene(6.0, 44100, [(kind, 1.0), (kind, 4.0)], snr_db=12, rng=rng)
            sf.write(xc / kind / f"XC{i}{kind}.wav", w, 44100)
            rows.append(f"{kind}/XC{i}{kind}.wav,{kind},{kind.title()},")
    (xc / "metadata.csv").write_text("\n".join(rows) + "\n")
    alberta, rows = tmp_path / "alberta", ["file,localization_event_id,final_label"]   # the Alberta layout
    (alberta / "clips").mkdir(parents=True)
    for bird in range(4):
        w, _ = make_scene(8.0, SR, [(CALL_TYPES[3], 4.0)], snr_db=12, rng=rng)
        sf.write(alberta / "clips" / f"{bird}_oven.wav", w, SR)
        rows.append(f"clips/{bird}_oven.wav,e{bird},{bird}")
    (alberta / "labels.csv").write_text("\n".join(rows) + "\n")
    snip = write_calls(tmp_path / "snip", 2, seed=5, seconds=1.0)
    for kind in CALL_TYPES:                                   # runs from the file names: <species>_runRRRR_IIIII
        for i, f in enumerate(sorted((snip / kind).iterdir())):
            f.rename(f.with_name(f"{kind}_run{i:04d}_{i:05d}.wav"))
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "hiss.wav", 0.01 * rng.standard_normal(3 * SR).astype(np.float32), SR)
    pack = tmp_path / "pack"
    recipe.main(["pack", "--out", str(pack), "--data", str(xc), str(alberta), "--snippets", str(snip), "--noise-dir",
                 str(tmp_path / "noise"), "--species", "", "--holdout", "", "--val-fraction", "0.25",
                 "--test-fraction", "0.25", "--preset", "tiny", "--init", "", "--cap-max", "4",
                 "--cache-dir", str(tmp_path / "cache"), "--no-wheels"])
    split = json.loads((pack / "split.json").read_text())
    packed = sorted(p.relative_to(pack / "xc").as_posix() for p in (pack / "xc").rglob("*.ogg"))
    assert len(packed) == 3 * 3 and split["test"] == []                  # one test recording per species stays
    assert sorted(g.split(":", 1)[1] for g in split["train"] + split["val"] if g.startswith("xc:")) == packed
    assert all(sf.info(str(pack / "xc" / p)).duration <= 4.1 for p in packed)   # cut to the loudest 4 s
    clips = sorted(p.name for p in (pack / "alberta" / "clips").glob("*.ogg"))   # whole: their song's time is known
    assert clips and all(sf.info(str(pack / "alberta" / "clips" / c)).duration > 7.9 for c in clips)
    listed = [row.split(",")[0] for row in (pack / "alberta" / "labels.csv").read_text().splitlines()[1:]]
    assert sorted(listed) == [f"clips/{c}" for c in clips]
    assert (pack / "noise" / "hiss.ogg").is_file() and (pack / "snip" / "snippets.csv").is_file()
    capsys.readouterr()
    recipe.main(["command"])
    call = json.loads(capsys.readouterr().out)
    assert call["carry"] == ["runs/gpu-pack"] and "--out $OUT" in call["command"] and len(call["command"]) < 2000
    # --recipe: the augmentations and teacher of a run's train.json; the data, split and schedule the pack's
    torch.manual_seed(0)
    save_checkpoint(BirdSED(create_config("tiny", sorted(CALL_TYPES))), tmp_path / "teacher")
    learnt = TrainConfig(run_dir="elsewhere", data=["not/packed"], preset="tiny", teacher=str(tmp_path / "teacher"),
                         distill=0.3, lr=9.0)
    learnt.augment.gain_db = (-30.0, 3.0)
    (tmp_path / "train.json").write_text(json.dumps(learnt.to_dict()))
    with pytest.raises(SystemExit, match="preset tiny; the pack's is lite0"):
        recipe.with_recipe(TrainConfig(run_dir="r", preset="lite0"), str(tmp_path / "train.json"), None)
    out = tmp_path / "out"
    recipe.main(["train", "--pack", str(pack), "--out", str(out), "--run", str(tmp_path / "run"), "--cache",
                 str(tmp_path / "cache2"), "--max-steps", "3", "--batch", "4", "--val-every", "2", "--workers", "0",
                 "--threads", "1", "--device", "cpu", "--recipe", str(tmp_path / "train.json")])
    assert sorted(p.name for p in out.iterdir()) == sorted(recipe.RESULTS)
    trained = json.loads((out / "train.json").read_text())
    assert (trained["teacher"], trained["distill"], trained["augment"]["gain_db"]) == (
        str(tmp_path / "teacher"), 0.3, [-30.0, 3.0])
    assert trained["lr"] == 3e-3 and trained["split_file"] == str(pack / "split.json")
    model = load_checkpoint(out / "best")
    assert model.cfg.labels == sorted([*CALL_TYPES, "ovenbird"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]
