#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need — Debian packages from .ci/apt-packages.txt (PortAudio, libsndfile, PulseAudio for
# the real-capture test), a virtual environment .venv with birdlive and its test extras — then checks the code
# (ruff; import-linter: the layers; mypy: the types, all configured in pyproject.toml) and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < .ci/apt-packages.txt
if ((${#missing[@]})); then
  SUDO=$([[ $(id -u) == 0 ]] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[test]'

# The static checks read folders: a tree of links lays the package out as it is installed (birdlive/…).
.venv/bin/python tests/package_tree.py build/package-tree
.venv/bin/ruff check --quiet .
PYTHONPATH=build/package-tree .venv/bin/lint-imports --no-cache >/dev/null \
  || PYTHONPATH=build/package-tree .venv/bin/lint-imports --no-cache
MYPYPATH=build/package-tree .venv/bin/mypy --cache-dir build/mypy-cache -p birdlive

exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
