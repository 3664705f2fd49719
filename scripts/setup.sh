#!/usr/bin/env bash
# One-time set-up shared by the README's commands: a virtual environment with tinlt and
# its pinned dependencies, and the Fashion-MNIST files from Debian for the offline demo.
# Safe to re-run: it only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TINLT_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.tinlt-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing tinlt and its dependencies (torch==2.14.1, torchvision==0.29.1; first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ -z "${TINLT_FMNIST:-}" ] && [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "[setup] could not install dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist"
  else
    echo "[setup] Fashion-MNIST is missing. Run: sudo apt-get install dataset-fashion-mnist"
    echo "        (or set TINLT_FMNIST=/folder/with/the/four/IDX/files)"
  fi
fi
