#!/usr/bin/env bash
# README test command: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${TINLT_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
