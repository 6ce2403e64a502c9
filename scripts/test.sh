#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/python -m pytest -q "$@"
