"""`birdlive train`, `evaluate`, `calibrate`, `augment-demo`, `export`: thin wrappers over `birdlive.train` and
`birdlive.model.export`. Each needs the torch extra and says so in one line where it is missing.

Registered by app.py: app.command("train")(train), app.command("evaluate")(evaluate),
app.command("calibrate")(calibrate), app.command("augment-demo")(augment_demo), app.command("export")(export).
"""
from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import List, NoReturn, Optional

import typer

from birdlive.errors import needs_torch


@functools.cache
def _console():
    """rich's Console, made on first use: importing rich at module level cost every command, `replay` included,
    about 30 ms of its start-up (this module is imported to register its commands)."""
    from rich.console import Console
    return Console()


def _fail(msg: str) -> NoReturn:
    """A bad option: `birdlive.cli.main` prints the one `error:` line and exits 1, as for every command."""
    from birdlive.errors import OptionError
    raise OptionError(msg)


def _range(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        _fail(f"--{name} wants two numbers like 0,20, not {text!r}")
    if lo > hi:
        _fail(f"--{name}: {lo} > {hi}")
    return lo, hi


def train(
    data: List[Path] = typer.Argument(None, help="Recording datasets: species folders, a BirdCLEF train.csv, or a "
                                               "xeno-canto folder with metadata.csv (weak labels, energy crops)."),
    run: Path = typer.Option(Path("runs/train"), "--run", "-o", help="Run folder: checkpoints, split, logs, state."),
    snippets: List[Path] = typer.Option([], "--snippets", help="Short-call sets (species folders) composed into "
                                                               "windows with strong labels; repeatable."),
    noise_dir: Optional[Path] = typer.Option(None, "--noise-dir", help="Real background noise files for augmentation."),
    species: Optional[str] = typer.Option(None, "--species", help="Only these species: comma-separated labels or "
                                                                  "common names, or a file with one per line."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="JSON of files never trained on: 'exclude' (in "
                                           "no split), 'noise' (never a training background)."),
    preset: str = typer.Option("cpu", "--preset", help="Model preset: tiny, cpu, lite0, lite2, full."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from these weights when the run has no state: "
                                       "a checkpoint (matching tensors; the head for the species it knows) or "
                                       "'imagenet' (the backbone)."),
    freeze: int = typer.Option(0, "--freeze", help="Train no weights of the first N stages (1: the input "
                               "BatchNorm and the stem; each more: one backbone block); for an --init imagenet "
                               "backbone: cheaper steps."),
    guide: Optional[str] = typer.Option(None, "--guide", help="A checkpoint of our own (STEM) that scores the "
                                        "training recordings once (RUN/guide.npz): crops around the calls it hears, "
                                        "and background species it hears as soft targets."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="A checkpoint of our own (STEM) whose clipwise "
                                          "and framewise scores of each training window the network also learns "
                                          "(distillation), for every species both know."),
    distill: float = typer.Option(0.5, "--distill", help="With --teacher: the teacher's share of the loss, 0-1."),
    window: float = typer.Option(5.0, "--window", help="Training window, seconds."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps in the run (the learning-rate "
                                            "schedule's length)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget. A new run turns it "
                                                "into steps once, from a measured step time; with --resume it only "
                                                "bounds this session (the schedule stays)."),
    validations: int = typer.Option(30, "--validations", "--epochs", help="Validations in the run, when neither "
                                    "--max-steps nor --max-minutes is given (--epochs: the old name)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", "--epoch-size", help="Training windows between "
                                            "validations (default: one per training file and snippet run; "
                                            "--epoch-size: the old name)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up + cosine by step)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of each species' groups for validation."),
    test_fraction: float = typer.Option(0.0, "--test-fraction", help="Share of each species' groups kept for test "
                                        "figures only (never trained on, never used to choose)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Use this split.json instead of making one."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, the windows and the weights."),
    augment: str = typer.Option("all", "--augment", help="Augmentation set: all, none, mix, noise."),
    no_mix: bool = typer.Option(False, "--no-mix"),
    no_noise: bool = typer.Option(False, "--no-noise"),
    no_stretch: bool = typer.Option(False, "--no-stretch"),
    no_pitch: bool = typer.Option(False, "--no-pitch"),
    no_specaug: bool = typer.Option(False, "--no-specaug"),
    no_field_background: bool = typer.Option(False, "--no-field-background", help="Composed windows over noise "
                                             "only, not over quiet stretches of the training recordings."),
    no_distance: bool = typer.Option(False, "--no-distance", help="No low-pass and attenuation of composed calls."),
    no_reverb: bool = typer.Option(False, "--no-reverb", help="No impulse responses on composed calls."),
    no_eq: bool = typer.Option(False, "--no-eq", help="No random microphone EQ on the log-mel."),
    snr: str = typer.Option("0,20", "--snr", help="Noise SNR range in dB (whole window)."),
    gain: Optional[str] = typer.Option(None, "--gain", help="Random overall gain range in dB, like -30,6 (whole "
                                       "window; default: the augmentation set's, -12,6): a recorder's level varies "
                                       "by tens of dB."),
    note_gap: Optional[str] = typer.Option(None, "--note-gap", help="Seconds between the notes of a composed "
                                           "snippet sequence, like 0.01,0.6: one steady tempo per sequence, drawn "
                                           "log-uniformly (fast trills as often as spaced calls); default: each gap "
                                           "drawn alone, uniform in 0.05-0.6."),
    snippet_share: Optional[float] = typer.Option(None, "--snippet-share", help="Share of training windows "
                                                  "composed from --snippets, the rest cut from the recordings "
                                                  "(default 0.5 with both)."),
    pitch: float = typer.Option(0.5, "--pitch", help="Pitch shift range, ± semitones."),
    frame_weight: float = typer.Option(0.5, "--frame-weight", help="Weight of the framewise loss."),
    checkpoint_minutes: float = typer.Option(2.0, "--checkpoint-minutes", help="Save the resumable state at least "
                                             "this often (and at every validation)."),
    keep_every: Optional[int] = typer.Option(None, "--keep-every", help="Also keep the weights every N steps "
                                             "(at the validation that reaches it) as RUN/stepN, to gate later; "
                                             "0: none; with --resume the run's setting unless given."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (and parallel decoding)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: cores - 1)."),
    val_max_windows: int = typer.Option(24, "--val-max-windows", help="Windows scored per validation file."),
    val_composed: Optional[int] = typer.Option(None, "--val-composed", help="Composed validation windows from "
                                               "held-out snippet runs (default 4 per species)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    no_amp: bool = typer.Option(False, "--no-amp", help="No mixed precision on CUDA."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Decoded-audio cache (default "
                                                                       "~/.cache/birdlive)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run from its saved state (or start "
                                                        "it, from --init, when there is none)."),
):
    """Train a detector; keeps RUN/best (by validation macro mAP) for `birdlive replay --model RUN/best`."""
    needs_torch("birdlive train")
    if not resume and not data and not snippets:
        _fail("give at least one dataset (DATA or --snippets), or --resume")
    _check_train_paths(list(data or []) + list(snippets) + [x for x in (noise_dir, holdout, split) if x],
                       init, {"guide": guide, "teacher": teacher})
    if not 0.0 <= distill <= 1.0:
        _fail(f"--distill must be between 0 and 1, not {distill:g}")
    for value, name in ((max_steps, "max-steps"), (max_minutes, "max-minutes")):
        if value is not None and value <= 0:
            _fail(f"--{name} must be positive, not {value:g}")
    if snippet_share is not None and not 0.0 <= snippet_share <= 1.0:
        _fail(f"--snippet-share must be between 0 and 1, not {snippet_share:g}")
    if keep_every is not None and keep_every < 0:
        _fail(f"--keep-every must be 0 (keep none) or a number of steps, not {keep_every}")
    from birdlive.train import TrainConfig  # torch: once the options are known good
    from birdlive.train import train as run_training
    off = {"mix_prob": no_mix, "noise_prob": no_noise, "stretch_prob": no_stretch, "pitch_prob": no_pitch,
           "field_background_prob": no_field_background, "distance_prob": no_distance, "reverb_prob": no_reverb,
           "eq_prob": no_eq}
    aug = _train_augment(augment, snr, gain, pitch, [f for f, flag in off.items() if flag], not no_specaug)
    composer = _train_composer(note_gap)
    wanted = None
    if species:
        sp = Path(species)
        wanted = ([x.strip() for x in sp.read_text().splitlines() if x.strip()] if sp.is_file()
                  else [x.strip() for x in species.split(",") if x.strip()])
    cfg = TrainConfig(run_dir=str(run), species=wanted, data=[str(p) for p in data or []],
                      snippets=[str(p) for p in snippets], noise_dir=str(noise_dir) if noise_dir else None,
                      holdout=str(holdout) if holdout else None, preset=preset, init=init, freeze=freeze,
                      guide=guide, teacher=teacher, distill=distill, window_s=window, snippet_share=snippet_share,
                      epochs=validations, epoch_size=val_every, max_steps=max_steps, max_minutes=max_minutes,
                      batch_size=batch_size, lr=lr, val_fraction=val_fraction, test_fraction=test_fraction,
                      split_file=str(split) if split else None, seed=seed, frame_weight=frame_weight,
                      checkpoint_minutes=checkpoint_minutes, keep_every=keep_every, workers=workers,
                      threads=threads, val_max_windows=val_max_windows, val_composed=val_composed, device=device,
                      amp=not no_amp, cache_dir=str(cache_dir) if cache_dir else None, augment=aug,
                      composer=composer,
                      command="birdlive " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    s = run_training(cfg, resume=resume, console=_console())
    figs = f"val mAP {s['val_map']:.3f}" if s["val_map"] is not None else "no validation score"
    _console().print(f"[green]{'stopped' if s['interrupted'] else 'done'}[/]: step {s['steps']} of {s['total_steps']}, "
                  f"{s['time_s']:.0f} s, {s['cpu_s'] / 3600:.2f} CPU-h; best at step {s['best_step']} ({figs}) "
                  f"→ {s['best']}")
    if s["interrupted"]:
        raise typer.Exit(130)


def _check_train_paths(paths: list[Path], init: Optional[str], checkpoints: dict[str, Optional[str]]) -> None:
    """One error line for a data path, an --init or a --guide/--teacher checkpoint that is not there."""
    for p in paths:
        if not p.exists():
            _fail(f"{p}: no such file or folder")
    if init and init != "imagenet" and not (Path(init).is_dir() or Path(init + ".json").is_file()
                                            or Path(init).is_file()):
        _fail(f"--init {init}: no checkpoint there (give STEM of STEM.safetensors + STEM.json, or 'imagenet')")
    for name, stem in checkpoints.items():
        if stem and not Path(stem + ".json").is_file() and not (Path(stem).is_dir() or Path(stem).is_file()):
            _fail(f"--{name} {stem}: no checkpoint there (give STEM of STEM.safetensors + STEM.json)")


def _train_augment(augment: str, snr: str, gain: Optional[str], pitch: float, off: list[str], specaugment: bool):
    """The augmentation set `augment` with train's range options, the probabilities in `off` set to 0."""
    from birdlive.train import AugmentConfig
    aug = AugmentConfig.preset(augment)     # our errors (OptionError, TrainError, …) reach `main` as one line
    aug.snr_db = _range(snr, "snr")
    if gain is not None:
        aug.gain_db = _range(gain, "gain")
    aug.pitch_semitones = pitch
    for field in off:
        setattr(aug, field, 0.0)
    aug.specaugment = aug.specaugment and specaugment
    return aug


def _train_composer(note_gap: Optional[str]):
    from birdlive.train import ComposerConfig
    composer = ComposerConfig()
    if note_gap is not None:
        composer.tempo_gap_s = _range(note_gap, "note-gap")
        if composer.tempo_gap_s[0] <= 0:
            _fail(f"--note-gap: gaps must be positive, not {note_gap!r}")
    return composer


def evaluate(
    data: List[Path] = typer.Argument(..., help="Datasets to score (any layout train reads)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Checkpoint (STEM, RUN folder); default: "
                                                                     "the shipped model."),
    split: Optional[Path] = typer.Option(None, "--split", help="A run's split.json: score only its held-out files."),
    subset: str = typer.Option("val", "--subset", help="With --split: val or train."),
    strong: Optional[Path] = typer.Option(None, "--strong", help="Strong labels CSV (file, species, onset, offset) "
                                                                 "for event-based F1."),
    onset_tolerance: float = typer.Option(0.5, "--onset-tolerance", help="Event onset tolerance, seconds."),
    offset_tolerance: Optional[float] = typer.Option(None, "--offset-tolerance", help="Also require offsets within "
                                                     "max(this, 20 % of the event); default onsets only."),
    noise_minutes: float = typer.Option(1.0, "--noise-minutes", help="Minutes of white, pink and brown noise each "
                                                                     "for the false-positive check (0: skip)."),
    noise_dbfs: float = typer.Option(-30.0, "--noise-dbfs", help="Level of that noise, dBFS RMS."),
    hop: Optional[float] = typer.Option(None, "--hop", help="Window hop, seconds (default half a window)."),
    max_windows: Optional[int] = typer.Option(None, "--max-windows", help="At most this many windows per file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full results here."),
    rows: int = typer.Option(20, "--rows", help="Species rows in the table (worst first)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
    device: str = typer.Option("cpu", "--device"),
):
    """Per-species AP, macro mAP, F1 at the model threshold, top-1, worst species; event F1; noise false positives."""
    needs_torch("birdlive evaluate")
    from birdlive.model import DEFAULT_CHECKPOINT, load_for_inference
    from birdlive.train.evaluate import evaluate_model, fmt, results_table, write_json
    net = load_for_inference(model or DEFAULT_CHECKPOINT, device)
    for p in list(data) + [x for x in (split, strong) if x]:
        if not p.exists():
            _fail(f"{p}: no such file or folder")
    res = evaluate_model(net, [str(d) for d in data], split=str(split) if split else None, subset=subset,
                         cache_dir=cache_dir, hop_s=hop, max_windows=max_windows,
                         strong=str(strong) if strong else None, onset_tolerance=onset_tolerance,
                         offset_tolerance=offset_tolerance, noise_minutes=noise_minutes, noise_dbfs=noise_dbfs,
                         device=device)
    res["model"] = str(model or DEFAULT_CHECKPOINT)
    _console().print(results_table(res, rows))
    if res.get("skipped_species"):
        _console().print(f"[yellow]skipped files of {len(res['skipped_species'])} species the model does not know[/]")
    if "events" in res:
        ev = res["events"]
        _console().print(f"events (onset ±{ev['onset_tolerance']:g} s): F1 {fmt(ev['f1'])}  P {fmt(ev['precision'])}  "
                      f"R {fmt(ev['recall'])}  ({ev['n_reference']} reference, {ev['n_estimated']} detected)")
    if "noise_fp" in res:
        nf = res["noise_fp"]
        per = ", ".join(f"{c} {n}" for c, n in nf["events"].items())
        _console().print(f"false positives on {nf['minutes_each']:g} min each of pure noise at {nf['dbfs']:g} dBFS: "
                      f"{nf['total']} events ({per})")
    if json_out:
        write_json(res, json_out)
        _console().print(f"results → {json_out}")


def calibrate(
    data: List[Path] = typer.Argument(None, help="The recording datasets the model was trained on (as given to "
                                               "train); only their validation files are used."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Checkpoint (STEM, RUN folder); default: "
                                                                     "the shipped model."),
    snippets: List[Path] = typer.Option([], "--snippets", help="The short-call sets it was trained on; held-out "
                                                               "runs give composed validation windows."),
    split: Optional[Path] = typer.Option(None, "--split", help="The training run's split.json (default: the one "
                                         "beside the checkpoint, else rebuilt from the seed the checkpoint records)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write a new checkpoint STEM (weights copied) with "
                                                                 "the thresholds."),
    in_place: bool = typer.Option(False, "--in-place", help="Write the thresholds into the checkpoint's own JSON."),
    floor: Optional[float] = typer.Option(None, "--floor", help="Lowest on threshold (default: the checkpoint's "
                                                                "global on, checked noise-safe)."),
    min_positives: int = typer.Option(3, "--min-positives", help="Fewer validation positives: the global pair."),
    beta: float = typer.Option(1.0, "--beta", help="F-beta the thresholds maximise: 1 weighs recall as much as "
                               "precision (the default model v3), 0.5 twice less (v2)."),
    noise_dir: Optional[Path] = typer.Option(None, "--noise-dir", help="Also choose the global pair: the best "
                                             "F-beta with no event on coloured noise and this folder's backgrounds."),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="With --noise-dir: the hold-out JSON whose "
                                           "noise files are kept for the test (not used here)."),
    composed: int = typer.Option(4, "--composed-per-species", help="Composed validation windows per snippet "
                                                                   "species (training validation used 4)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the thresholds as a --thresholds CSV."),
    report: Optional[Path] = typer.Option(None, "--report", help="Per-species details as JSON."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: cores - 1)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir"),
):
    """Per-species on/off thresholds from the model's validation split (best F-beta per species; see
    birdlive/train/calibrate.py), written into the checkpoint's JSON (--in-place) or a copy (--out)."""
    needs_torch("birdlive calibrate")
    from birdlive.model import DEFAULT_CHECKPOINT, load_for_inference
    from birdlive.model.checkpoint import checkpoint_paths, load_config
    from birdlive.streamer.core.thresholds import write_thresholds
    from birdlive.train.cache import AudioCache
    from birdlive.train.augment import NoiseBank
    from birdlive.train.calibrate import (calibrate as run_calibration, noise_items, record_for, validation_items,
                                          validation_recordings, write_calibrated)
    from birdlive.train.datasets import Holdout
    from birdlive.train.evaluate import write_json
    from birdlive.train.threads import cpu_threads
    if (out is None) == (not in_place):
        _fail("say where the thresholds go: --out STEM (a new checkpoint) or --in-place")
    if not data and not snippets:
        _fail("give the datasets the model was trained on (DATA and/or --snippets)")
    if beta <= 0:
        _fail(f"--beta must be positive, not {beta:g}")
    if floor is not None and noise_dir:
        _fail("--floor or --noise-dir, not both: with --noise-dir the chosen global on threshold is the floor")
    for p in list(data or []) + list(snippets) + [p for p in (split, noise_dir, holdout) if p]:
        if not p.exists():
            _fail(f"{p}: no such file or folder")
    path = model or DEFAULT_CHECKPOINT
    _refuse_writing_over_checkpoints({"report": report, "csv": csv_out}, [path] + ([out] if out else []))
    net = load_for_inference(path)
    beside = checkpoint_paths(path)[1].parent / "split.json"
    split = split or (beside if beside.is_file() else None)
    recs, snippet_paths, info = validation_recordings(net.cfg, [str(d) for d in data or []],
                                                      [str(d) for d in snippets], str(split) if split else None)
    seed = info["split"]["seed"]
    cache = AudioCache(cache_dir, net.cfg.sample_rate)
    items = validation_items(net.cfg, recs, snippet_paths, cache, composed, seed)
    n_rec = sum(not it.composed for it in items)
    _console().print(f"{len(items)} validation items ({n_rec} recordings, {len(items) - n_rec} composed windows) "
                  f"from {info['split']['n_val_groups_found']} validation groups")
    noise = None
    if noise_dir:
        files = Holdout.load(holdout).training_noise(NoiseBank.from_dir(noise_dir).files, noise_dir)
        noise = noise_items(net.cfg, files, cache, seed=seed)
        _console().print(f"global pair: chosen with {len(noise)} noise items (coloured noise, {len(files)} files)")
    with cpu_threads(threads):
        table, summary = run_calibration(net, items, floor, min_positives, noise=noise, beta=beta)
    command = "birdlive " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = record_for(summary, info, command, n_rec, len(items) - n_rec, seed)
    written = write_calibrated(path, net.cfg, table, record, out)
    if csv_out:
        write_thresholds(csv_out, load_config(written))
    if report:
        write_json(summary, report)
    rng = summary["on_range"]
    if "global" in summary:
        _console().print(f"global pair: on {summary['global']['on']:g} / off {summary['global']['off']:g}")
    _console().print(f"{summary['n_calibrated']} of {summary['n_species']} species calibrated "
                  f"({summary['n_raised']} raised above {summary['floor']:g}"
                  + (f", on {rng[0]:g}–{rng[1]:g}" if rng else "") + f"), the others keep the global pair "
                  f"({', '.join(f'{n} {r}' for r, n in summary['reasons'].items() if r != 'calibrated')}) → {written}")


def _refuse_writing_over_checkpoints(outputs: dict[str, Optional[Path]], stems: list[Path]) -> None:
    """A side output (`--report X.json` beside `--out X`) must not replace a checkpoint's own files: the report
    would become the checkpoint's JSON, and nothing would say so until the model failed to load."""
    from birdlive.model.checkpoint import checkpoint_paths, derived_graph_paths
    own = {f.resolve(): stem for stem in stems for f in (*checkpoint_paths(stem), *derived_graph_paths(stem))}
    for option, p in outputs.items():
        if p is not None and p.resolve() in own:
            _fail(f"--{option} {p} would write over a file of the checkpoint {own[p.resolve()]}; give it another "
                  f"name")


def augment_demo(
    file_a: Path = typer.Argument(..., help="First recording."),
    file_b: Path = typer.Argument(..., help="Second recording (another species)."),
    out: Path = typer.Option(Path("augment-demo"), "--out", "-o", help="Folder for mix.wav and mix.png."),
    window: float = typer.Option(5.0, "--window"),
    seed: int = typer.Option(0, "--seed"),
    noise_dir: Optional[Path] = typer.Option(None, "--noise-dir"),
    augment: str = typer.Option("all", "--augment", help="all, none, mix, noise."),
    model: Optional[Path] = typer.Option(None, "--model", help="Use this checkpoint's frontend for the picture."),
):
    """Write one training-style mixture of FILE_A and FILE_B (WAV) and the log-mel the model sees (PNG)."""
    needs_torch("birdlive augment-demo")
    from birdlive.train import AugmentConfig
    from birdlive.train.demo import augment_demo as run_demo
    for p in (file_a, file_b):
        if not p.is_file():
            _fail(f"{p}: no such file")
    aug = AugmentConfig.preset(augment)
    res = run_demo(file_a, file_b, out, window_s=window, seed=seed, augment=aug,
                   noise_dir=str(noise_dir) if noise_dir else None, model=str(model) if model else None)
    a = res["applied"]
    _console().print(f"labels {', '.join(a['labels'])}; B at {a['b']['gain_db']:+.1f} dB"
                  + (f", SNR {a['snr_db']:.1f} dB" if "snr_db" in a else "")
                  + f" → {res['wav']}, {res['png']}")


def finetune(
    db: Path = typer.Option(..., "--db", help="The detection database with the reviews (`birdlive serve`)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model the detections came from (default: "
                                        "the embedded one); training starts from it."),
    run: Path = typer.Option(Path("runs/site"), "--run", "-o", help="Where the new checkpoint goes (RUN/best: "
                             "`--model RUN` takes it) with finetune.json."),
    steps: int = typer.Option(300, "--steps", min=1, help="Optimizer steps (full batch) on the reviews."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: torch's)."),
):
    """Learn from the reviews: confirmed and relabelled events as positives, rejected ones as negatives, the rest of
    their recordings as background; kept only if better on reviews held out for validation. Per-site
    thresholds from the reviews too."""
    needs_torch("birdlive finetune")
    from birdlive.model import DEFAULT_CHECKPOINT
    from birdlive.train.finetune import finetune as run_finetune
    result = run_finetune(db, model or DEFAULT_CHECKPOINT, run, threads=threads, steps=steps)
    print(result.line(), file=sys.stderr, flush=True)
    if result.replaced:
        print(f"new model: --model {run}", file=sys.stderr, flush=True)


def export(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Checkpoint (STEM, STEM.safetensors or a "
                                         "training run folder); default: the embedded model."),
    int8: bool = typer.Option(False, "--int8", help="Also STEM.int8.onnx: the backbone in int8 (ONNX Runtime's "
                              "static quantisation), which --compute auto/onnx then run."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="--int8's calibration audio: a folder of "
                                             "recordings (or a text file listing them) like those the model will "
                                             "hear; default for the embedded model: its validation recordings."),
):
    """Write the checkpoint's network as an ONNX graph, STEM.onnx beside it: replay, listen and analyze then run
    on ONNX Runtime without torch (--compute auto on a CPU, or --compute onnx)."""
    needs_torch("birdlive export")
    if calibrate is not None and not int8:
        _fail("--calibrate is for --int8")
    import torch

    from birdlive.model import DEFAULT_CHECKPOINT, load_checkpoint
    from birdlive.model.export import export_onnx
    from birdlive.model.quantize import calibration_for, export_int8
    files = calibration_for(model or DEFAULT_CHECKPOINT, calibrate) if int8 else []   # checked before the export
    torch.set_num_threads(1)        # one example batch is traced: more threads only cost start-up
    out = export_onnx(load_checkpoint(model or DEFAULT_CHECKPOINT), model or DEFAULT_CHECKPOINT)
    _console().print(f"wrote {out}")
    if int8:
        _console().print(f"wrote {export_int8(model or DEFAULT_CHECKPOINT, files)}")
