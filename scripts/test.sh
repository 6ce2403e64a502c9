#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/python -m pytest -q "$@"
# The failover paths once more with botocore's EC2 client instead of the standard-library one:
# both must pass the same tests.
if [ $# -eq 0 ]; then
  echo "== again with AWS_VRRP_NOTIFY_BOTOCORE=1 (botocore's EC2 client)"
  AWS_VRRP_NOTIFY_BOTOCORE=1 .venv/bin/python -m pytest -q tests/test_failover.py tests/test_faults.py \
    tests/test_report.py tests/test_fifo.py
fi
