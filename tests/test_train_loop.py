"""Training end to end on synthetic call types (tiny preset, CPU), evaluation of the result, resume, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from birdlive.model import load_checkpoint
from birdlive.train import AugmentConfig, TrainConfig, train
from birdlive.train.evaluate import RefEvent, evaluate_events, evaluate_model
from birdlive.train.synthetic import CALL_TYPES, make_scene

from common import birdlive

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
    data = write_calls(base / "data", 16, seed=0)
    cfg = TrainConfig(run_dir=str(base / "run"), data=[str(data)], preset="tiny", window_s=2.0, epochs=20,
                      epoch_size=128, batch_size=16, lr=3e-3, val_fraction=0.25, seed=0, workers=1,
                      cache_dir=str(base / "cache"), command="pytest synthetic")
    summary = train(cfg, show_progress=False)
    return base, cfg, summary


def test_synthetic_training_reaches_heldout_map(trained):
    base, cfg, s = trained
    assert s["epochs_done"] == 20 and not s["interrupted"]
    assert s["n_val_groups"] == 16 and s["n_train_groups"] == 48       # 25 % of each species' files
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
    assert [r["epoch"] for r in rows] == list(range(1, 21))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_map"] for r in rows) == pytest.approx(s["val_map"])
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for f in ("best.safetensors", "best.json", "last.safetensors", "last.json", "last.optim.safetensors",
              "last.state.json", "train.json"):
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


def small_run(tmp_path):
    data = write_calls(tmp_path / "data", 3, seed=2, seconds=1.5)
    return dict(data=[str(data)], preset="tiny", window_s=1.0, epoch_size=16, batch_size=8, lr=2e-3,
                val_fraction=0.34, seed=1, cache_dir=str(tmp_path / "cache"),
                augment=AugmentConfig(stretch_prob=0.0, pitch_prob=0.0))


def test_resume_after_time_budget(tmp_path):
    common = small_run(tmp_path)
    first = train(TrainConfig(run_dir=str(tmp_path / "r"), epochs=3, max_minutes=1e-9, **common),
                  show_progress=False)                                  # the budget runs out in epoch 1
    assert first["epochs_done"] == 1 and first["steps"] == 1
    resumed = train(TrainConfig(run_dir=str(tmp_path / "r"), epochs=3), resume=True, show_progress=False)
    assert resumed["epochs_done"] == 3 and resumed["steps"] == 1 + 2 * 2
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    state = json.loads((tmp_path / "r" / "last.state.json").read_text())
    assert state["epoch"] == 3 and state["step"] == 5


def test_interrupted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    from birdlive.train.windows import WindowSet
    common = small_run(tmp_path)
    train(TrainConfig(run_dir=str(tmp_path / "a"), epochs=3, **common), show_progress=False)
    train(TrainConfig(run_dir=str(tmp_path / "b"), epochs=3, **common), show_progress=False)
    original = WindowSet.set_epoch

    def interrupt_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(WindowSet, "set_epoch", interrupt_in_epoch_3)
    cut = train(TrainConfig(run_dir=str(tmp_path / "c"), epochs=3, **common), show_progress=False)
    assert cut["interrupted"] and cut["epochs_done"] == 2
    monkeypatch.setattr(WindowSet, "set_epoch", original)
    train(TrainConfig(run_dir=str(tmp_path / "c"), epochs=3), resume=True, show_progress=False)
    a, b, c = (load_file(str(tmp_path / x / "last.safetensors")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)                     # the runs are deterministic at all
    assert all(torch.equal(a[k], c[k]) for k in a)                     # and stopping + resuming changes nothing


# --------------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def cli():
    from birdlive import train_commands as tc
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


def test_cli_errors_are_one_red_line(tmp_path):
    """Through the real command: each mistake is one `error:` line on stderr and exit status 1."""
    for args, needle in ([["train", tmp_path / "missing", "--run", tmp_path / "run"], "missing: no such file"],
                         [["evaluate", tmp_path, "--model", tmp_path / "nothing"], "no checkpoint"],
                         [["train", tmp_path, "--augment", "lots", "--run", tmp_path / "run"],
                          "unknown augmentation preset"]):
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
    assert res["n_items"] == 16 and res["subset"] == "val"             # only the held-out files
    assert res["macro_map"] == pytest.approx(s["val_map"], abs=0.1)
    assert "macro mAP" in r.output and "false positives" in r.output


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
