#!/usr/bin/env bash
# README main command: set up, then train TIN's best recipe and the benchmark's strongest
# baseline on Fashion-MNIST-LT with the offline pretrained towers, and print the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${TINLT_VENV:-.venv}/bin/tinlt" demo "$@"
