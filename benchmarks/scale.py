#!/usr/bin/env python3
"""Failover at scale inside EC2's request limits (lab; needs root for the namespaces).

One group with N change-route actions over 10 route tables moves from r2 to r1 while the
lab throttles the tool like EC2 (token buckets: writes 50, refilled at 5 per second;
describe calls 100, 20 per second). What the buckets allow is the floor: N writes take
max(0, N - 50) / 5 seconds after the first 50. Reported per N, in one run:

  converged   from the start of ``master`` to the last route pointing at r1 (the time of
              the last accepted ReplaceRoute)
  exit        ``master`` exits (verification included)
  floor       what the buckets allow; ratio = converged / floor (target <= 1.2)
  throttled   RequestLimitExceeded answers the tool received (a retry storm shows here)

Next to F5's Cloud Failover Extension's published figures (5 s for up to 100 routes, 15 s
for 200 throttled, 90 s for 500).

    sudo .venv/bin/python benchmarks/scale.py [--routes 100,200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

F5 = {100: "5 s", 200: "15 s (throttled)", 500: "90 s"}
BURST, REFILL = 50, 5.0
TABLES = 10


def floor_seconds(n: int) -> float:
    return max(0, n - BURST) / REFILL


def config_text(tables, per_table) -> str:
    lines = ["[aws]\ndeadline = 120\nprepare = false\nconsistency-window = 1\n[groups.BIG]\n"]
    for t, rtb in enumerate(tables):
        for n in range(per_table):
            lines.append(f'[[groups.BIG.change-route]]\nroute-table = "{rtb}"\n'
                         f'destination = "10.{100 + t}.{n}.0/24"\ninterface = "eth1"\n')
    return "\n".join(lines)


def run(cloud, routers, n: int, work: Path) -> dict:
    topo = cloud.topology
    r1, r2 = routers["r1"], routers["r2"]
    cloud.reset_state()
    ec2 = cloud.ec2
    tables = [topo.route_tables["wan"], topo.route_tables["lan"], topo.route_tables["main"]]
    while len(tables) < TABLES:
        tables.append(ec2.create_route_table(VpcId=topo.vpc)["RouteTable"]["RouteTableId"])
    per_table = n // TABLES
    for t, rtb in enumerate(tables):
        for k in range(per_table):
            ec2.create_route(RouteTableId=rtb, DestinationCidrBlock=f"10.{100 + t}.{k}.0/24",
                             NetworkInterfaceId=r2.eni("eth1"))
    cfg = work / f"scale-{n}.toml"
    cfg.write_text(config_text(tables, per_table))
    os.chmod(cfg, 0o600)
    state = work / f"state-{n}"
    state.mkdir(mode=0o700)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
           "AWS_VRRP_NOTIFY_CACHE_DIR": str(work / "model-cache"), **r1.env()}
    cloud.reset_counts()
    cloud.set_throttle(True)
    start = time.time()
    proc = subprocess.run(["ip", "netns", "exec", r1.ns, str(Path(sys.executable).parent / "aws-vrrp-notify"),
                           "-c", str(cfg), "--state-dir", str(state), "master", "BIG"],
                          env=env, capture_output=True, text=True, timeout=300)
    exited = time.time() - start
    cloud.set_throttle(False)
    throttled = sum(cloud.throttled.values())
    writes = [c.time for c in cloud.calls("ReplaceRoute")]
    wrong = sum(1 for t, rtb in enumerate(tables) for k in range(per_table)
                if cloud.route_target(rtb, f"10.{100 + t}.{k}.0/24") != r1.eni("eth1"))
    converged = max(writes) - start if writes else float("nan")
    floor = floor_seconds(n)
    return {"routes": n, "exit_code": proc.returncode, "converged_s": round(converged, 2),
            "exit_s": round(exited, 2), "floor_s": floor,
            "ratio": round(converged / floor, 3) if floor else None, "throttled": throttled,
            "wrong_routes": wrong, "f5": F5.get(n, "")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", default="100,200")
    parser.add_argument("--json")
    args = parser.parse_args()
    from aws_vrrp_notify.lab import netns
    from aws_vrrp_notify.lab.cloud import Cloud
    from aws_vrrp_notify.lab.routers import build_routers

    ok, why = netns.available()
    if not ok:
        print(f"needs network namespaces (root): {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="avn-scale-"))
    os.chmod(work, 0o700)
    cloud = Cloud().start()
    nets = netns.Netns()
    results = []
    try:
        cloud.build_topology()
        routers = build_routers(cloud, nets)
        for n in (int(x) for x in args.routes.split(",")):
            results.append(run(cloud, routers, n, work))
    finally:
        nets.cleanup()
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'routes':>6} {'converged s':>12} {'exit s':>7} {'floor s':>8} {'ratio':>6} {'throttled':>9}  "
          f"{'target':<8} F5 CFE")
    failed = False
    for r in results:
        ok_ratio = r["ratio"] is None or r["ratio"] <= 1.2
        good = ok_ratio and r["exit_code"] == 0 and r["wrong_routes"] == 0
        failed |= not good
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['routes']:>6} {r['converged_s']:>12.1f} {r['exit_s']:>7.1f} {r['floor_s']:>8.1f} {ratio:>6} "
              f"{r['throttled']:>9}  {'PASS' if good else 'FAIL':<8} {r['f5']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
