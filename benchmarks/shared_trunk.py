"""A prototype, benchmark only (issue 18): compute the backbone's stem and stages 0-1 once per recording instead
of once per window, and what that changes in replay's scores and costs.

    .venv/bin/python benchmarks/shared_trunk.py [--model model/weights/default] [--run model/weights/default_v3b_run]
        [--max-recordings N] [--repeats 3] [--json benchmarks/results/shared_trunk.json]

Replay scores 5 s windows (501 log-mel frames) every 1 s, so each frame goes through the network 5 times. The
"trunk" (stem + stages 0-1 of tf_efficientnet_lite0: convolutions only, time stride 4, receptive field ±9 log-mel
frames) is cut from the shipped ONNX graph (`onnx.utils.extract_model` at the stage-1 output); the "rest" (stages
2-4, pooling, GRU, head) is the remainder. The trunk graph has a fixed input of 501 frames, TF-"same" padding
baked in: 501 → 251 → 126 frames, trunk frame j centred on log-mel frame 4j (pads 1 and 1 at both stride-2
convolutions, since 501 and 251 are odd). Windows start every 100 frames, so window i's trunk is frames
[25i, 25i + 126) of the recording's trunk. The recording's trunk is computed by running the trunk graph on
501-frame chunks every 480 frames and keeping each chunk's interior (trunk frames 3..122, whose receptive field
never reaches the chunk's zero padding) — 1.04 trunk passes per frame instead of 5. A window's trunk frames
0-2 and 123-125 then see the real neighbouring audio where per-window they saw zero padding: the only source of
difference (the recording's own first and last frames see the same padding both ways). The variant "shared +
window edges" removes it: those 3 + 3 frames are recomputed per window from its first and last 21 log-mel frames
(a copy of the trunk graph with a free time axis: its pads are constants, right for any length ≡ 1 mod 4), so
every window's features, and so its scores, are the per-window ones.

Measured on the test split's Puerto Rico recordings (as evaluate_default.py and replay_hop.py read them), against
the shipped per-window path (`scorer_track` through `OnnxScorer`: numpy log-mel, the full graph):
- trunk features: max |shared - per-window| over interior trunk frames (should be float noise) and edge frames;
- window framewise scores: max |difference| at each of the 50 output positions; the stitched track's;
- recording mAP, top-1 and events right / secondary / wrong at the default thresholds, both ways (paired);
- ONNX Runtime CPU seconds of the network per audio minute, one thread, batch 16 (the least of `--repeats` runs
  of each batch): the full graph per window, the split graphs per window (what splitting alone costs), the
  shared trunk + per-window rest, and that + the window edges' trunk.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch: a spinning pool is slow on a busy CPU

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate_default import REPO, arguments, setup  # noqa: E402
from replay_hop import events_of, groups_of, shown  # noqa: E402

from birdlive.model.checkpoint import graph_path  # noqa: E402
from birdlive.streamer.core.offline import scorer_track, stitch, window_starts  # noqa: E402
from birdlive.streamer.core.onnx_scorer import OnnxScorer  # noqa: E402

TRUNK_OUT = "/backbone/blocks.1/blocks.1.1/Add_output_0"   # stage 1's last block: time stride 4
STRIDE = 4              # log-mel frames per trunk frame
EDGE = 3                # trunk frames at each window edge whose receptive field (±9 log-mel frames) reaches padding
CHUNK_HOP = 480         # log-mel frames between trunk chunks: (126 - 2 * EDGE) * STRIDE
EDGE_SLICE = 21         # log-mel frames whose trunk (6 frames) holds a window edge's EDGE frames exactly: 4·2 + 9 < 21
BATCH = 16


class Timed:
    """ONNX Runtime sessions (as `OnnxScorer` makes them, one thread) whose runs add up CPU seconds per name."""

    def __init__(self, repeats: int):
        self.cpu: dict[str, float] = {}
        self.repeats = repeats

    @staticmethod
    def session(path: Path) -> ort.InferenceSession:
        o = ort.SessionOptions()
        o.log_severity_level = 3
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        o.enable_cpu_mem_arena = False
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        o.intra_op_num_threads = o.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    def run(self, what: str, sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        """The first output of `sess` over x in batches of BATCH; the least CPU time of `repeats` runs counts
        (the machine is shared: the other runs are the noise of its neighbours)."""
        name = sess.get_inputs()[0].name
        best = float("inf")
        for _ in range(self.repeats):
            t0 = time.process_time()
            out = np.concatenate([sess.run(None, {name: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])
            best = min(best, time.process_time() - t0)
        self.cpu[what] = self.cpu.get(what, 0.0) + best
        return out


def split_graph(full: Path, folder: Path) -> tuple[Path, Path, Path]:
    """The shipped graph cut at the trunk's output: trunk (logmel → features), rest (features → framewise), and
    the trunk with a free time axis (its convolutions' pads are constants, right for any length ≡ 1 mod 4)."""
    trunk, rest, trunk_any = folder / "trunk.onnx", folder / "rest.onnx", folder / "trunk_any.onnx"
    onnx.utils.extract_model(str(full), str(trunk), ["logmel"], [TRUNK_OUT])
    onnx.utils.extract_model(str(full), str(rest), [TRUNK_OUT], ["framewise"])
    g = onnx.load(str(trunk))
    g.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "frames"
    g.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "trunk_frames"
    del g.graph.value_info[:]
    onnx.save(g, str(trunk_any))
    return trunk, rest, trunk_any


def edge_trunk(timed: Timed, trunk_any: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    """Each window's first and last EDGE trunk frames as the window alone gives them (zero padding beyond its
    edges), from EDGE_SLICE frames at each end: (windows, C, 2 * EDGE, F')."""
    n = len(windows)
    ends = np.concatenate([windows[:, :, :EDGE_SLICE], windows[:, :, -EDGE_SLICE:]])
    f = timed.run("shared + window edges: edge trunk", trunk_any, ends)
    return np.concatenate([f[:n, :, :EDGE], f[n:, :, -EDGE:]], axis=2)


def recording_mel(scorer: OnnxScorer, wave: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """`scorer_track`'s log-mel of the whole padded recording, its window starts (samples) and real samples."""
    cfg = scorer.cfg
    starts, valid = window_starts(len(wave), cfg.window_samples, cfg.sample_rate)
    n, ctx = starts[-1] + cfg.window_samples, cfg.n_fft // 2
    padded = np.zeros(ctx + n + ctx, np.float32)
    padded[ctx:ctx + min(len(wave), n)] = wave[:n]
    padded[:ctx] = padded[ctx + 1:2 * ctx + 1][::-1]
    (mel,) = scorer.logmel([padded[:n + 2 * ctx]])
    return np.asarray(mel, np.float32), starts, valid


def shared_trunk(timed: Timed, trunk: ort.InferenceSession, mel: np.ndarray, win: int) -> np.ndarray:
    """The recording's trunk (C, (T-1)/4 + 1, F') from 501-frame chunks every CHUNK_HOP frames, interiors kept."""
    total = len(mel)
    assert (total - 1) % STRIDE == 0 and total >= win, total
    chunk_starts = list(range(0, total - win + 1, CHUNK_HOP))
    if chunk_starts[-1] + win < total:
        chunk_starts.append(total - win)           # aligned to the end: (T - 501) is a multiple of 4 too
    chunks = np.stack([mel[s:s + win] for s in chunk_starts])[:, None]
    feats = timed.run("shared trunk", trunk, chunks)                       # (chunks, C, 126, F')
    out = np.empty((feats.shape[1], (total - 1) // STRIDE + 1, feats.shape[3]), np.float32)
    per_chunk = feats.shape[2]
    for s, f in zip(chunk_starts, feats):
        o = s // STRIDE
        lo = 0 if s == 0 else EDGE
        hi = per_chunk if s + win == total else per_chunk - EDGE
        out[:, o + lo:o + hi] = f[:, lo:hi]
    return out


def score_recording(timed: Timed, sessions: dict, scorer: OnnxScorer, wave: np.ndarray, diffs: dict) -> dict:
    """Per-window and shared tracks of one recording; the differences go into `diffs`."""
    cfg = scorer.cfg
    mel, starts, valid = recording_mel(scorer, wave)
    win, mel_hop = cfg.window_samples // cfg.hop_length + 1, cfg.sample_rate // cfg.hop_length
    windows = np.stack([mel[i * mel_hop:i * mel_hop + win] for i in range(len(starts))])[:, None]
    full = timed.run("per-window full graph", sessions["full"], windows)
    per_win_feats = timed.run("per-window split: trunk", sessions["trunk"], windows)
    split = timed.run("per-window split: rest", sessions["rest"], per_win_feats)
    trunk = shared_trunk(timed, sessions["trunk"], mel, win)
    n, step = per_win_feats.shape[2], mel_hop // STRIDE
    shared_feats = np.stack([trunk[:, i * step:i * step + n] for i in range(len(starts))])
    shared = timed.run("shared: rest", sessions["rest"], shared_feats)
    feat_diff = np.abs(shared_feats - per_win_feats).max(axis=(0, 1, 3))             # per trunk position
    edges = edge_trunk(timed, sessions["trunk_any"], windows)
    shared_feats[:, :, :EDGE], shared_feats[:, :, -EDGE:] = edges[:, :, :EDGE], edges[:, :, EDGE:]
    exact = timed.run("shared + window edges: rest", sessions["rest"], shared_feats)
    diffs["edges_trunk"] = max(diffs["edges_trunk"], float(np.abs(shared_feats - per_win_feats).max()))
    diffs["edges_window"] = max(diffs["edges_window"], float(np.abs(exact - full).max()))
    diffs["trunk_interior"] = max(diffs["trunk_interior"], float(feat_diff[EDGE:n - EDGE].max()))
    diffs["trunk_edge"] = max(diffs["trunk_edge"], float(np.r_[feat_diff[:EDGE], feat_diff[n - EDGE:]].max()))
    diffs["split_vs_full"] = max(diffs["split_vs_full"], float(np.abs(split - full).max()))
    diffs["window_position"] = np.maximum(diffs["window_position"], np.abs(shared - full).max(axis=(0, 2)))
    ref, new = stitch(cfg, full, starts, valid), stitch(cfg, shared, starts, valid)
    if not diffs["track_abs"]:          # once: the per-window path here is the shipped one
        assert np.array_equal(ref, scorer_track(scorer, wave)), "the per-window track is not scorer_track's"
    d = np.abs(new - ref)
    diffs["track_max"] = max(diffs["track_max"], float(d.max()))
    diffs["track_abs"].append(d.ravel())
    return {"per_window": ref, "shared": new, "shared_edges": stitch(cfg, exact, starts, valid)}


def recording_figures(ctx, group, tracks: list[dict], which: str, sources: list[str]) -> dict:
    """replay_hop's figures (recording mAP, top-1, events by kind) of one way's tracks."""
    mc = ctx.mc
    scores = np.stack([t[which].max(0) for t in tracks])
    events = [events_of(ctx.model, t[which], s) for t, s in zip(tracks, sources)]
    return {**group.figures(mc, scores, events), "events": [[(e.species, round(e.onset_s, 1)) for e in evs]
                                                            for evs in events], "scores": scores}


def measure(ctx, a) -> dict:
    recs, cache = ctx.pr_test[: a.max_recordings], ctx.cache
    scorer = OnnxScorer.load(a.model, threads=1)
    timed = Timed(a.repeats)
    diffs: dict = {"trunk_interior": 0.0, "trunk_edge": 0.0, "split_vs_full": 0.0, "track_max": 0.0,
                   "edges_trunk": 0.0, "edges_window": 0.0,
                   "window_position": 0.0, "track_abs": []}
    with tempfile.TemporaryDirectory() as tmp:
        trunk, rest, trunk_any = split_graph(graph_path(a.model), Path(tmp))
        sessions = {"full": Timed.session(graph_path(a.model)), "trunk": Timed.session(trunk),
                    "rest": Timed.session(rest), "trunk_any": Timed.session(trunk_any)}
        tracks = []
        for k, r in enumerate(recs):
            tracks.append(score_recording(timed, sessions, scorer, np.asarray(cache.load(r.path), np.float32), diffs))
            print(f"{k + 1}/{len(recs)} {r.path}", file=sys.stderr, flush=True)
    audio_min = sum(len(cache.load(r.path)) for r in recs) / ctx.mc.sample_rate / 60
    group = groups_of(ctx.mc, {"pr_test": recs}, cache, 1)["pr_test"]
    sources = [str(r.path) for r in recs]
    ways = {w: recording_figures(ctx, group, tracks, w, sources) for w in ("per_window", "shared", "shared_edges")}
    pos = diffs["window_position"]
    edge_pos = int(round(0.5 * ctx.mc.out_fps))                 # a window's first and last 0.5 s
    cpu = {k: round(60 * v / (audio_min * 60), 3) for k, v in timed.cpu.items()}
    cpu["shared total"] = round(cpu["shared trunk"] + cpu["shared: rest"], 3)
    cpu["shared + window edges total"] = round(cpu["shared trunk"] + cpu["shared + window edges: edge trunk"]
                                               + cpu["shared + window edges: rest"], 3)
    cpu["per-window split total"] = round(cpu["per-window split: trunk"] + cpu["per-window split: rest"], 3)
    track_abs = np.concatenate(diffs["track_abs"])
    per_w, sh = ways["per_window"], ways["shared"]
    return {
        "model": shown(a.model), "run": shown(a.run), "recordings": len(recs), "audio_min": round(audio_min, 2),
        "exactness": {
            "trunk_features_max_abs_diff_interior": diffs["trunk_interior"],
            "trunk_features_max_abs_diff_edge_3_frames": diffs["trunk_edge"],
            "split_graphs_vs_full_graph_max_abs_diff": diffs["split_vs_full"],
            "window_score_max_abs_diff_by_output_position": [round(float(v), 5) for v in pos],
            "window_score_max_abs_diff_first_last_0.5_s": float(np.r_[pos[:edge_pos], pos[-edge_pos:]].max()),
            "window_score_max_abs_diff_middle_4_s": float(pos[edge_pos:-edge_pos].max()),
            "track_max_abs_diff": diffs["track_max"],
            "track_abs_diff_p99": float(np.percentile(track_abs, 99)),
            "track_abs_diff_mean": float(track_abs.mean()),
            "recording_score_max_abs_diff": float(np.abs(per_w["scores"] - sh["scores"]).max()),
            "with_window_edges_trunk_max_abs_diff": diffs["edges_trunk"],
            "with_window_edges_window_score_max_abs_diff": diffs["edges_window"],
            "with_window_edges_recording_score_max_abs_diff": float(np.abs(per_w["scores"]
                                                                          - ways["shared_edges"]["scores"]).max()),
        },
        "recordings_metrics": {w: {k: v for k, v in f.items() if k not in ("events", "scores")}
                               for w, f in ways.items()},
        "recordings_top1_species_changed": {w: int((per_w["scores"].argmax(1) != f["scores"].argmax(1)).sum())
                                            for w, f in ways.items() if w != "per_window"},
        "recordings_events_changed": {w: sum(x != y for x, y in zip(per_w["events"], f["events"]))
                                      for w, f in ways.items() if w != "per_window"},
        "cpu_s_per_audio_min_onnx_1_thread_batch_16": cpu,
        "speedup_vs_full_graph": {"shared": round(cpu["per-window full graph"] / cpu["shared total"], 3),
                                  "shared + window edges": round(cpu["per-window full graph"]
                                                                 / cpu["shared + window edges total"], 3)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "model" / "weights" / "default"))
    ap.add_argument("--run", default=str(REPO / "model" / "weights" / "default_v3b_run"))
    ap.add_argument("--max-recordings", type=int, default=None, help="the first N PR test recordings")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each batch; the least CPU time counts")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ctx = setup(arguments(["--model", a.model, "--run", a.run, "--out", "/dev/null"]))
    t0 = time.perf_counter()
    res = measure(ctx, a)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["command"] = " ".join(["benchmarks/shared_trunk.py", *sys.argv[1:]])
    res["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
