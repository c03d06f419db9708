#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: Debian packages, a .venv at the repository root,
# and the pip packages at the versions pinned in constraints.txt (setup.py gives ranges).
# Idempotent: a second run checks and returns in seconds; a change to setup.py, package.xml or
# constraints.txt reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(libosmesa6 libgl1 python3-venv)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi

stamp=.venv/.sym_mbrl_installed
want=$(cat setup.py package.xml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing pinned Python packages into .venv (torch==2.13.0 CPU build)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, at its pin (2.13.0): resolving it from another package's requirement could pull
  # a CUDA build.
  .venv/bin/python -m pip install --quiet -c constraints.txt torch
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[ros,test,bench]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv)"
