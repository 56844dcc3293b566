"""The lean runtime: `replay`, `analyze` and `summary` and their outputs work without torch and import none of
the torch extra; a command that needs it says so in one line.

"Without torch" is made real for the child processes: a `sitecustomize` on their PYTHONPATH puts a finder in
front of `sys.meta_path` that answers every import of a torch-extra package as not installed (as in a venv made
with `pip install birdlive`), and at exit writes the names of the modules the process had loaded.
"""
from __future__ import annotations

import os
import textwrap

import pytest

from birdlive.errors import TORCH_EXTRA_MODULES

from tests.common import ROOT, TINY, birdlive, read_events_csv

pytest.importorskip("onnxruntime")
REAL = ROOT / "recordings" / "XC737279.mp3"

BLOCKER = textwrap.dedent(f"""
    import atexit, os, sys

    BLOCKED = {TORCH_EXTRA_MODULES!r}

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())

    def report():
        with open(os.path.join(os.environ["LEAN_REPORT"], f"{{os.getpid()}}.txt"), "w") as f:
            f.write("\\n".join(sorted(sys.modules)))

    atexit.register(report)
""")


@pytest.fixture
def lean(tmp_path):
    """Runs `birdlive ARGS` with the torch extra uninstallable; returns (result, modules the process loaded)."""
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "blocker"),
                                                                      os.environ.get("PYTHONPATH")])),
           "LEAN_REPORT": str(reports)}

    def run(*args):
        for old in reports.iterdir():
            old.unlink()
        r = birdlive(*args, environ=env, cwd=tmp_path)
        loaded = {name for p in reports.iterdir() for name in p.read_text().split()}
        return r, loaded
    return run


def torch_extra(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in TORCH_EXTRA_MODULES}


def test_the_blocker_blocks(lean):
    r, loaded = lean("train", "--help")
    assert r.returncode == 0
    assert loaded and "birdlive.cli.app" in loaded


def test_replay_and_its_outputs_import_no_torch(lean, tmp_path):
    out = tmp_path / "out"
    r, loaded = lean("replay", REAL, "--no-live", "--csv", out / "events.csv", "--clips", out / "clips",
                     "--raven", out / "raven.txt", "--jsonl", out / "events.jsonl", "--plot", out / "plot.png")
    assert r.returncode == 0, r.stderr
    assert not torch_extra(loaded), sorted(torch_extra(loaded))
    assert "onnxruntime" in loaded
    rows = read_events_csv(out / "events.csv")
    assert len(rows) >= 2 and all(row["clip"] for row in rows)     # the warbler, twice, for every default since v3b
    assert (out / "plot.png").stat().st_size > 0
    r, loaded = lean("summary", out / "events.csv")
    assert r.returncode == 0, r.stderr
    assert "Adelaide" in r.stdout and not torch_extra(loaded)


def test_analyze_runs_without_torch(lean, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / REAL.name).symlink_to(REAL)
    r, loaded = lean("analyze", tmp_path / "site", "--out", tmp_path / "results", "--workers", "1",
                     "--no-progress")
    assert r.returncode == 0, r.stderr
    assert not torch_extra(loaded)
    assert len(read_events_csv(tmp_path / "results" / "detections.csv")) >= 2


@pytest.mark.parametrize("args, what", [
    (["train", "--snippets", "x"], "birdlive train"),
    (["evaluate", "x"], "birdlive evaluate"),
    (["export"], "birdlive export"),
    (["export", "--int8"], "birdlive export"),
    (["replay", str(REAL), "--compute", "cpu"], "--compute cpu"),
])
def test_a_command_that_needs_torch_says_so_in_one_line(lean, args, what):
    r, _ = lean(*args)
    assert r.returncode == 1
    assert r.stderr == f"error: {what} needs the torch extra: pip install 'birdlive[torch]'\n"


def test_a_checkpoint_without_a_graph_says_what_to_do(lean):
    r, _ = lean("replay", REAL, "--model", TINY)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "no ONNX graph" in r.stderr and "birdlive export" in r.stderr
