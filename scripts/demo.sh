#!/usr/bin/env bash
# The lab demo (about 30 s, needs root): a simulated AWS region (moto + fake IMDSv2) and two
# router namespaces running real keepalived, whose notify lines call aws-vrrp-notify. It
# crashes the MASTER's keepalived, prints the failover as it happens with the time until AWS
# points to the new master, shows status/check, restarts the crashed router, tears down.
# Options go to the demo, e.g. scripts/demo.sh --advert-int 0.1
set -euo pipefail
cd "$(dirname "$0")/.."
# keepalived refuses notify scripts under group/world-writable directories
chmod go-w . 2>/dev/null || true
scripts/bootstrap.sh
exec .venv/bin/python -m aws_vrrp_notify.lab demo "$@"
