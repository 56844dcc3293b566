"""Replay's hop for file analysis: what scoring 5 s windows every 1, 1.5, 2 or 2.5 s changes, on the test split's
whole recordings (the test xc-puerto-rico recordings of the default model's run, as evaluate_default.py's
recordings stage reads them).

    .venv/bin/python benchmarks/replay_hop.py [--hops 1,1.5,2,2.5] [--noise-minutes 2] \
        [--json benchmarks/results/replay_hop.json]

Per hop, through the streaming path's offline reference (`framewise_track` and the smoother, as `detect_offline`
runs them: the runner's numbers, held equal to it by tests/core):
- recording-level macro mAP and top-1: a recording's score per species is the maximum of the stitched framewise
  track that replay computes (secondary species masked, as in evaluate_default.py);
- events per recording: of the right species, of a secondary species, of a wrong one;
- event timing against hop 1: each hop-1 event matched to the same species' most overlapping event at this hop;
  the median and largest onset and offset shifts, and the hop-1 events with no match;
- events on white, pink and brown noise (`--noise-minutes` each, -30 dBFS): must stay 0;
- windows scored per audio second (1 / hop): the network's share of replay's time;
- a 95 % paired bootstrap interval (1,000 resamples of the recordings) of the recording mAP's change against hop 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate_default import REPO, arguments, setup  # noqa: E402

from birdlive.streamer.core.offline import framewise_track  # noqa: E402
from birdlive.streamer.core.smoother import EventSmoother  # noqa: E402
from birdlive.streamer.core.stream import default_params  # noqa: E402
from birdlive.train.evaluate import clip_metrics  # noqa: E402
from birdlive.train.evaluation import classify_events, recording_windows, top1  # noqa: E402
from birdlive.train.synthetic import noise_check_waves  # noqa: E402


def timing(reference: list, events: list) -> dict:
    """Onset and offset shifts of `events` against `reference` (same species, most overlap)."""
    shifts_on, shifts_off, unmatched = [], [], 0
    for e in reference:
        same = [x for x in events if x.species == e.species and x.source == e.source
                and min(x.offset_s, e.offset_s) > max(x.onset_s, e.onset_s)]
        if not same:
            unmatched += 1
            continue
        best = max(same, key=lambda x: min(x.offset_s, e.offset_s) - max(x.onset_s, e.onset_s))
        shifts_on.append(abs(best.onset_s - e.onset_s))
        shifts_off.append(abs(best.offset_s - e.offset_s))

    def stats(v):
        return {"median_s": float(np.median(v)), "max_s": float(np.max(v))} if v else None
    return {"matched": len(shifts_on), "unmatched": unmatched, "onset": stats(shifts_on),
            "offset": stats(shifts_off)}


def paired_interval(scores: np.ndarray, base: np.ndarray, targets, masks, mc, draws: int = 1000) -> list[float]:
    """95 % interval of recording mAP (this hop) − recording mAP (hop 1), resampling the recordings with
    replacement (the same draw for both hops: a paired bootstrap, seeded)."""
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(draws):
        i = rng.integers(0, len(scores), len(scores))
        a = clip_metrics(scores[i], targets[i], masks[i], mc.labels, mc.threshold_on, mc.names)["macro_map"]
        b = clip_metrics(base[i], targets[i], masks[i], mc.labels, mc.threshold_on, mc.names)["macro_map"]
        diffs.append(a - b)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def events_of(model, track: np.ndarray, source: str) -> list:
    """`detect_offline`'s events from a track already computed."""
    cfg = model.cfg
    smoother = EventSmoother(cfg.labels, cfg.names, cfg.frame_s, default_params(cfg), source=source)
    return smoother.push(track) + smoother.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "model" / "weights" / "default"))
    ap.add_argument("--run", default=str(REPO / "model" / "weights" / "default_run"))
    ap.add_argument("--hops", default="1,1.5,2,2.5")
    ap.add_argument("--noise-minutes", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ctx = setup(arguments(["--model", a.model, "--run", a.run, "--out", "/dev/null"]))
    model, recs, mc = ctx.model, ctx.pr_test, ctx.mc
    rec_items, _, _ = recording_windows(recs, mc.labels, ctx.cache, mc.window_s)
    targets = np.stack([it.target for it in rec_items])
    masks = np.stack([it.mask for it in rec_items])
    waves = [np.asarray(ctx.cache.load(r.path), np.float32) for r in recs]
    noise = noise_check_waves(a.noise_minutes, mc.sample_rate) if a.noise_minutes else []
    audio_s = sum(len(w) for w in waves) / mc.sample_rate
    print(f"{len(recs)} test recordings, {audio_s / 60:.1f} min", file=sys.stderr)
    results, reference, base = {}, None, None
    for hop in [float(h) for h in a.hops.split(",")]:
        tracks = [framewise_track(model, w, hop) for w in waves]
        scores = np.stack([t.max(0) for t in tracks])
        events = [events_of(model, t, r.path) for r, t in zip(recs, tracks)]
        kinds = Counter()
        for r, evs in zip(recs, events):
            kinds.update(classify_events([e.species for e in evs], r.primary, set(r.secondary)))
        flat = [e for evs in events for e in evs]
        reference = reference if reference is not None else flat
        base = base if base is not None else scores
        m = clip_metrics(scores, targets, masks, mc.labels, mc.threshold_on, mc.names)
        results[str(hop)] = {
            "recording_map": m["macro_map"], "recording_top1": top1(scores, recs, mc.labels),
            "events_right": kinds["right"], "events_secondary": kinds["secondary"], "events_wrong": kinds["wrong"],
            "timing_vs_hop_1": timing(reference, flat),
            "noise_events": sum(len(events_of(model, framewise_track(model, x, hop), c)) for c, x in noise),
            "windows_per_audio_s": 1.0 / hop,
            "recording_map_minus_hop_1_95pct": paired_interval(scores, base, targets, masks, mc),
        }
        print(hop, json.dumps(results[str(hop)]), file=sys.stderr, flush=True)
    print(f"{'hop s':>6} {'rec mAP':>8} {'rec top-1':>9} {'right':>6} {'second.':>7} {'wrong':>6} "
          f"{'onset Δ med/max s':>18} {'offset Δ med/max s':>19} {'unmatched':>9} {'noise ev':>8} {'mAP Δ 95 %':>15}")
    for hop, r in results.items():
        t = r["timing_vs_hop_1"]
        on = f"{t['onset']['median_s']:.2f}/{t['onset']['max_s']:.2f}" if t["onset"] else "–"
        off = f"{t['offset']['median_s']:.2f}/{t['offset']['max_s']:.2f}" if t["offset"] else "–"
        print(f"{hop:>6} {r['recording_map']:8.3f} {r['recording_top1']:9.3f} {r['events_right']:6d} "
              f"{r['events_secondary']:7d} {r['events_wrong']:6d} {on:>18} {off:>19} {t['unmatched']:9d} "
              f"{r['noise_events']:8d} {'%+.3f..%+.3f' % tuple(r['recording_map_minus_hop_1_95pct']):>15}")
    if a.json:
        a.json.write_text(json.dumps({"recordings": len(recs), "audio_s": audio_s, "model": a.model,
                                      "hops": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
