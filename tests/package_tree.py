"""Lays the package out as it is installed — birdlive/ (the root, from base/), birdlive/streamer/, birdlive/cli/,
… — as links under a folder, for the static checkers (import-linter, mypy): they read folders, and the repository
keeps the card's top-level names (streamer/, model/, train/, …) that pyproject's `package-dir` maps.

    python tests/package_tree.py build/package-tree     # then PYTHONPATH / MYPYPATH=build/package-tree
"""
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path) -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(out, ignore_errors=True)
    for package, folder in sorted(mapping.items()):           # the root first: its folder holds the others
        target = out.joinpath(*package.split("."))
        if "." not in package:
            target.mkdir(parents=True)
            for entry in (ROOT / folder).iterdir():
                if entry.name != "__pycache__":
                    (target / entry.name).symlink_to(entry)
        else:
            target.symlink_to(ROOT / folder, target_is_directory=True)


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
