#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need — Debian packages from .ci/apt-packages.txt (PortAudio, libsndfile, PulseAudio for
# the real-capture test), a virtual environment .venv with birdlive and its test extras — then runs pytest.
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
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
