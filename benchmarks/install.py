"""Fresh-venv installs, timed and weighed: the lean runtime (`pip install .`) against the torch extra
(`pip install '.[torch]'`), as a user's first command makes them (pip's download cache may be warm: the time is
then pip's resolving, unpacking and compiling, not the network's).

    python3 benchmarks/install.py [--json benchmarks/results/install.json] [--keep]

Each venv is made with the system's `python3 -m venv` under runs/install/ (git-ignored) and removed afterwards
unless --keep; `runs/install/lean` is what benchmarks/streaming.py runs the lean figures with when it is kept.
Also timed: the lean venv's `birdlive replay` of the shipped recording (the README's demo).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / "runs" / "install"


def log(msg: str) -> None:
    print(f"[install] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> float:
    log(" ".join(map(str, cmd)))
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def size_mib(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def fresh_install(name: str, target: str) -> dict:
    venv = VENVS / name
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    t_venv = run([sys.executable if sys.prefix == sys.base_prefix else "python3", "-m", "venv", str(venv)])
    t_pip = run([str(venv / "bin" / "pip"), "install", "-q", target])
    figs = {"venv_s": t_venv, "pip_s": t_pip, "size_mib": size_mib(venv)}
    figs["demo_s"] = run([str(venv / "bin" / "birdlive"), "replay", "recordings/XC737279.mp3", "--no-live"],
                         stderr=subprocess.DEVNULL)
    log(f"{name}: {figs}")
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the venvs (runs/install/lean, runs/install/torch)")
    ap.add_argument("--only", choices=["lean", "torch"])
    args = ap.parse_args()
    figs = {}
    for name, target in (("lean", "."), ("torch", ".[torch]")):
        if args.only in (None, name):
            figs[name] = fresh_install(name, target)
            if not args.keep:
                shutil.rmtree(VENVS / name)
    for name, f in figs.items():
        print(f"{name:6s} venv {f['venv_s']:5.1f} s  pip install {f['pip_s']:6.1f} s  demo {f['demo_s']:5.1f} s  "
              f"size {f['size_mib']:7.0f} MiB")
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        args.json.write_text(json.dumps({**old, **figs, "date": time.strftime("%Y-%m-%d %H:%M %Z")}, indent=1)
                             + "\n")


if __name__ == "__main__":
    main()
