#!/usr/bin/env python3
"""Failover convergence in the lab: from a fault on the MASTER to AWS pointing at the backup.

Two real keepalived routers (network namespaces) run the installed aws-vrrp-notify from
their notify lines against the simulated AWS (moto + IMDS at 169.254.169.254), as in
``python -m aws_vrrp_notify.lab demo``.  For each VRRP profile and fault, N runs:

  t0        just before the fault on r1 (priority 150): SIGKILL of keepalived's VRRP
            child + parent ("crash"), or SIGTERM of the parent ("stop")
  detect    r2's keepalived reports MASTER (its notify FIFO, read in this process)
  notify    keepalived starts r2's notify_master (the lab's wrapper logs $EPOCHREALTIME)
  record    the tool has started and recorded MASTER (the state record's ``time``)
  converged every action points to r2: VIP, 0.0.0.0/0 (wan), ::/0 (lan), Elastic IP
            (moto polled every 10 ms, in process, nothing recorded)
  exit      r2's notify_master exits (after verification)

"keepalived" = detect - t0 (VRRP's detection: 3 x advert_int + skew on a crash, the
skew alone on a clean stop); "ours" = converged - notify (the tool from its start to
AWS converged).  Medians over N runs (default 5).  After each run r1 is restarted and
preempts back before the next one.

    sudo .venv/bin/python benchmarks/convergence.py [-n 5] [--json out.json]
         [--profiles v2:1,v3:0.1] [--faults crash,stop]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_vrrp_notify.lab.keepalived import Lab, available, keepalived_binary  # noqa: E402

MAIN_PID = os.getpid()
COLUMNS = ("keepalived", "notify", "record", "ours", "converged", "exit")


def one_run(lab: Lab, fault: str, profile: dict) -> dict:
    time.sleep(0.3)  # a few adverts after settling
    if fault == "crash":
        t0 = lab.kill("r1", signal.SIGKILL)
    else:
        t0 = lab.stop("r1", wait=False)
    converged = lab.wait_aws_points_to("r2", timeout=30, since=t0)
    record = lab.record("r2") or {}
    detect = lab.events("r2", since=t0, state="MASTER")
    end = time.monotonic() + 30
    while True:
        calls = [c for c in lab.notify_calls("r2") if c.start >= t0 and c.command == "master"]
        if calls and calls[0].end is not None or time.monotonic() > end:
            break
        time.sleep(0.01)
    call = calls[0] if calls else None
    final = lab.record("r2") or {}
    sample = {
        "keepalived": detect[0].time - t0 if detect else None,
        "notify": call.start - t0 if call else None,
        "record": record.get("time", t0) - t0 if record.get("state") == "MASTER" else None,
        "converged": converged,
        "exit": call.end - t0 if call and call.end else None,
        "rc": call.rc if call else None,
        "outcome": final.get("outcome") if final.get("seq") == record.get("seq") else record.get("outcome"),
    }
    sample["ours"] = converged - sample["notify"] if sample["notify"] is not None else None
    # restore: r1 back (it preempts), everything settled, before the next run
    if fault == "stop":
        lab.current("r1").proc.wait(timeout=10)
    lab.start_router("r1", **profile)
    lab.wait_settled(timeout=40, master="r1")
    return sample


def _sigterm(signum, frame):
    if os.getpid() != MAIN_PID:  # a forked helper (pyroute2 create_socket): die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--profiles", default="v2:1,v3:0.1",
                    help="comma-separated VERSION:ADVERT_INT (default v2:1,v3:0.1)")
    ap.add_argument("--faults", default="crash,stop", help="comma-separated: crash, stop")
    ap.add_argument("--json", metavar="FILE", default=str(Path(__file__).resolve().parent / "convergence.json"),
                    help="where to write every sample and the medians (default %(default)s)")
    args = ap.parse_args(argv)
    ok, why = available()
    if not ok:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    profiles = []
    for item in args.profiles.split(","):
        v, adv = item.split(":")
        profiles.append({"version": int(v.lstrip("v")), "advert_int": float(adv)})
    faults = [f for f in args.faults.split(",") if f]
    for f in faults:
        if f not in ("crash", "stop"):
            ap.error(f"unknown fault {f!r}")

    signal.signal(signal.SIGTERM, _sigterm)  # clean teardown (with Lab) on SIGTERM too
    results = []
    started = time.time()
    with Lab() as lab:
        for profile in profiles:
            for name in ("r1", "r2"):
                if lab.running(name):
                    lab.stop(name)
            lab.start_router("r1", **profile)
            lab.start_router("r2", **profile)
            lab.wait_settled(timeout=40, master="r1")
            label = f"VRRPv{profile['version']} advert_int {profile['advert_int']:g}"
            for fault in faults:
                samples = []
                for i in range(args.runs):
                    s = one_run(lab, fault, profile)
                    samples.append(s)
                    print(f"{label:24} {fault:5} run {i + 1}: keepalived {s['keepalived']:.3f}s  "
                          f"ours {s['ours']:.3f}s  converged {s['converged']:.3f}s  (rc {s['rc']}, "
                          f"{s['outcome']})", flush=True)
                results.append({"profile": label, **profile, "fault": fault, "samples": samples,
                                "median": {c: median([s[c] for s in samples]) for c in COLUMNS}})
    elapsed = time.time() - started

    print()
    print(f"Failover convergence, medians of {args.runs} runs (seconds from the fault)")
    head = f"{'profile':24} {'fault':6} {'keepalived':>10} {'notify':>8} {'record':>8} {'ours':>8} " \
           f"{'converged':>10} {'exit':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        m = r["median"]
        f = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        print(f"{r['profile']:24} {r['fault']:6} {f(m['keepalived']):>10} {f(m['notify']):>8} "
              f"{f(m['record']):>8} {f(m['ours']):>8} {f(m['converged']):>10} {f(m['exit']):>8}")
    print("keepalived = fault -> backup's keepalived MASTER; notify = fault -> notify_master started; "
          "record = fault -> tool recorded MASTER;\nours = notify_master started -> AWS converged; "
          "converged = fault -> every action on the new master; exit = fault -> notify_master exited")
    kver = subprocess.run([keepalived_binary(), "--version"], capture_output=True, text=True)
    from aws_vrrp_notify import __version__

    out = {"runs": args.runs, "elapsed": elapsed, "results": results,
           "env": {"keepalived": (kver.stderr or kver.stdout).splitlines()[0],
                   "aws-vrrp-notify": __version__, "python": platform.python_version(),
                   "kernel": platform.release(), "cpus": os.cpu_count(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
