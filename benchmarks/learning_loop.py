"""The learning loop as a site lives it: detections → a birder's reviews → `birdlive finetune` → better events.

The site: ../shared/data/ovenbird-alberta, 400 ten-second clips from autonomous recorders in one boreal forest
(13 microphone arrays, Alberta, May–July 2016), each with one Ovenbird song at 3.5–6.5 s. The embedded model never
trained on these recordings (its Ovenbird came from the essential set's snippets), and on them it mostly hears a
Puerto Rican warbler.

1. `birdlive replay --db` of every clip with the embedded model (clips in the order they were recorded).
2. The site's first three quarters (by recording time, 300 clips) are the season the birder reviews: for
   N = 25, 50, 100 (or as many detections as those clips have, if fewer), a copy of that database where the
   first N detections are reviewed, as the labels say a birder would: an event over the song (3.5–6.5 s) is
   confirmed when it says Ovenbird and relabelled to Ovenbird when it does not; an event elsewhere is rejected
   unless it says Ovenbird (another Ovenbird may sing there: the labels cannot tell, so it stays unreviewed).
   Then `birdlive finetune --db … --run …` (2 threads).
3. The last quarter (100 clips, the same for every N) replayed with the model before and after. Right events:
   Ovenbird over the song; wrong events: any other species; an Ovenbird elsewhere in a clip is neither (counted
   apart: another Ovenbird, or a false one). Precision = right / (right + wrong), recall = clips with a right
   event / clips.

    python benchmarks/learning_loop.py --work /tmp/loop        # writes benchmarks/results/learning_loop.md
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from birdlive.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT.parent / "shared" / "data" / "ovenbird-alberta"
SONG = (3.5, 6.5)
SPECIES = "ovenbird"
BIRDLIVE = [sys.executable, "-m", "birdlive"]
REVIEWED_SHARE = 0.75       # of the site's clips, in recording order: the season reviewed; the rest is the test


def elsewhere_recordings() -> list[str]:
    """Recordings with no Ovenbird, from other places: what a site model does away from its site."""
    data = ROOT.parent / "shared" / "data"
    return [str(ROOT / "recordings" / "XC737279.mp3"), str(data / "soundscapes-na" /
            "Recording_1_Segment_07-snippet.flac"), *sorted(map(str, (data / "xc-north-america").glob("*/*.ogg")))]


def site_clips() -> list[str]:
    with open(SITE / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["event_timestamp"], r["file"]))
    return [str(SITE / r["file"]) for r in rows]


def run(args: list[str]) -> float:
    """A birdlive command; its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([*BIRDLIVE, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"birdlive {' '.join(args[:3])} failed: {r.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def replay(clips: list[str], out: Path, model: str | None = None, db: Path | None = None) -> list[dict]:
    if not out.exists():
        with atomic_path(out, durable=False) as part:    # a run cut short leaves no half CSV to append to
            args = ["replay", *clips, "--csv", str(part), "--no-live", "-j", "2", "--compute", "cpu"]
            args += ["--model", model] if model else []
            args += ["--db", str(db)] if db else []
            run(args)
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def over_song(e) -> bool:
    return float(e["onset_s"]) < SONG[1] and float(e["offset_s"]) > SONG[0]


def verdict(e) -> tuple[str, str | None] | None:
    if over_song(e):
        return ("confirm", None) if e["species"] == SPECIES else ("relabel", SPECIES)
    return None if e["species"] == SPECIES else ("reject", None)


def ovenbirds(events: list[dict]) -> int:
    return sum(e["species"] == SPECIES for e in events)


def score(events: list[dict], clips: list[str]) -> dict:
    wanted = set(clips)
    events = [e for e in events if e["source"] in wanted]
    right = [e for e in events if e["species"] == SPECIES and over_song(e)]
    wrong = [e for e in events if e["species"] != SPECIES]
    found = {e["source"] for e in right}
    elsewhere = [e for e in events if e["species"] == SPECIES and not over_song(e)]
    return {"clips": len(clips), "right": len(right), "wrong": len(wrong), "elsewhere": len(elsewhere),
            "precision": len(right) / max(1, len(right) + len(wrong)), "recall": len(found) / max(1, len(clips))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[25, 50, 100])
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    clips = site_clips()
    order = {c: i for i, c in enumerate(clips)}
    base_db = a.work / "base.sqlite"
    t0 = time.perf_counter()
    base = replay(clips, a.work / "base.csv", db=base_db)
    with sqlite3.connect(base_db) as conn:
        conn.row_factory = sqlite3.Row
        detections = sorted(conn.execute("SELECT id, source, species, onset_s, offset_s FROM events"),
                            key=lambda e: (order[e["source"]], e["onset_s"]))
    first_test = int(len(clips) * REVIEWED_SHARE)
    rest = clips[first_test:]
    reviewable = [e for e in detections if order[e["source"]] < first_test]
    results = {"site": str(SITE.relative_to(ROOT.parent)), "clips": len(clips), "detections": len(detections),
               "reviewable": len(reviewable), "rest_clips": len(rest), "before": score(base, rest), "runs": {}}
    away = elsewhere_recordings()
    results["elsewhere_recordings"] = len(away)
    results["before"]["ovenbirds_elsewhere"] = ovenbirds(replay(away, a.work / "away-base.csv"))
    for n in sorted({min(n, len(reviewable)) for n in a.n}):
        db = a.work / f"reviews-{n}.sqlite"
        for stale in a.work.glob(f"reviews-{n}.sqlite*"):
            stale.unlink()
        with sqlite3.connect(base_db) as src, sqlite3.connect(db) as dst:
            src.backup(dst)                     # the WAL's rows too (a file copy could miss them)
        reviewed = review(db, reviewable[:n])
        ft_run = a.work / f"site-{n}"
        if (ft_run / "cpu_s.txt").exists():        # finetuned before (a rerun for the table): not again
            cpu = float((ft_run / "cpu_s.txt").read_text())
        else:
            shutil.rmtree(ft_run, ignore_errors=True)
            cpu = run(["finetune", "--db", str(db), "--model", str(ROOT / "model" / "weights" / "default"),
                       "--run", str(ft_run), "--threads", "2"])
            (ft_run / "cpu_s.txt").write_text(f"{cpu}\n")
        report = json.loads((ft_run / "finetune.json").read_text())
        after = score(replay(rest, a.work / f"after-{n}.csv", model=str(ft_run)), rest) if report["replaced"] \
            else results["before"]
        after["ovenbirds_elsewhere"] = (ovenbirds(replay(away, a.work / f"away-{n}.csv", model=str(ft_run)))
                                        if report["replaced"] else results["before"]["ovenbirds_elsewhere"])
        results["runs"][n] = {"reviews": reviewed, "finetune_cpu_min": cpu / 60, "finetune": report,
                              "after": after}
        print(n, json.dumps(results["runs"][n]["after"]), f"{cpu / 60:.1f} CPU-min", file=sys.stderr, flush=True)
    results["wall_min"] = (time.perf_counter() - t0) / 60
    (a.work / "results.json").write_text(json.dumps(results, indent=1))
    write_table(results, ROOT / "benchmarks" / "results" / "learning_loop.md")


def review(db: Path, detections: list) -> dict:
    from birdlive.streamer.sinks.database import add_review, connect
    counts: dict[str, int] = {}
    conn = connect(db)
    for e in detections:
        v = verdict(e)
        if v is None:
            counts["unreviewable"] = counts.get("unreviewable", 0) + 1
            continue
        add_review(conn, e["id"], v[0], "simulated", v[1])
        counts[v[0]] = counts.get(v[0], 0) + 1
    conn.close()
    return counts


def write_table(r: dict, path: Path) -> None:
    b = r["before"]
    lines = [f"# The learning loop on {r['site']}", "",
             f"`python benchmarks/learning_loop.py --work DIR`: {r['clips']} clips, {r['detections']} detections by "
             f"the embedded model, {r['reviewable']} of them in the reviewed season (the first "
             f"{r['clips'] - r['rest_clips']} clips by recording time); reviews of its first N detections; events "
             f"counted on the last {r['rest_clips']} clips.", "",
             "| reviews | verdicts | right events | wrong events | Ovenbird elsewhere in a clip | precision | "
             f"recall (clips) | Ovenbirds on {r['elsewhere_recordings']} recordings from elsewhere | "
             "finetune CPU-min | wrong decisions on held-out reviews (reviews) | replaced |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| 0 (embedded model) | | {b['right']} | {b['wrong']} | {b['elsewhere']} | {b['precision']:.2f} | "
             f"{b['recall']:.2f} | {b['ovenbirds_elsewhere']} | | | |"]
    for n, x in r["runs"].items():
        a, f = x["after"], x["finetune"]
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(x["reviews"].items()))
        lines.append(f"| {n} | {verdicts} | {a['right']} | {a['wrong']} | {a['elsewhere']} | {a['precision']:.2f} | "
                     f"{a['recall']:.2f} | {a['ovenbirds_elsewhere']} "
                     f"| {x['finetune_cpu_min']:.1f} | {f['errors_before']} → {f['errors_after']} "
                     f"({f['val_reviews']}) | {'yes' if f['replaced'] else 'no'} |")
    lines += ["", f"N stops at {r['reviewable']}: the embedded model makes no more detections in the reviewed season. "
              "Right events: Ovenbird over the labelled song; wrong: any other species; an Ovenbird elsewhere in a "
              "clip is neither (another Ovenbird, or a false one: the labels cannot tell). The last-but-three "
              "column replays XC737279, the Pennsylvania soundscape and the 59 xc-north-america recordings (no "
              "Ovenbird in any): the site model calls Ovenbird on other audio, because no review says where it is "
              "absent (`finetune` warns of that).", "",
              f"This run: {r['wall_min']:.0f} min wall on a shared 2-core machine (outputs of an earlier run in "
                  f"--work are reused)."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
