#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh Debian 12 machine (run as root):
# keepalived, iproute2, the PCI ID database, man-page lint, systemd-analyze (rates the
# contrib/systemd unit offline; systemd need not be PID 1), strace and setpriv (run the unit's
# command line under its restrictions), and a virtualenv in .venv holding aws-vrrp-notify
# with its [lab] and [test] extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in keepalived iproute2 pci.ids mandoc groff-base systemd strace util-linux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -m venv --help >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
fi
echo "bootstrap: installing aws-vrrp-notify[lab,test] into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --force-reinstall --no-deps . && .venv/bin/python -m pip install -q '.[lab,test]'
