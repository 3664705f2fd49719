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
# torch 2.14.1 from PyPI is the CUDA build: about 6.3 GB once installed. A full disk would
# otherwise stop pip halfway with a bare OSError and leave a broken venv behind.
need_gb="${TINLT_SETUP_NEED_GB:-7}"
if [ ! -f "$stamp" ] && [ "$need_gb" != 0 ]; then
  free_kb=$(df -Pk "$VENV" | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
    echo "[setup] error: $(cd "$VENV" && pwd) has $((free_kb / 1024 / 1024)) GB free; installing torch==2.14.1 needs about ${need_gb} GB (free space, or set TINLT_VENV to a venv on a larger disk)" >&2
    exit 1
  fi
fi
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
