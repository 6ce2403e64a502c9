"""``python -m aws_vrrp_notify.lab demo|up``: the lab from one command (root, keepalived).

demo  builds a simulated AWS region (moto + fake IMDSv2) with two router namespaces,
      starts keepalived in both (their notify lines call the installed aws-vrrp-notify,
      whose group moves every kind of thing it can: IPv4 and IPv6 VIPs, subnet routes, a
      prefix-list route, the routes of two tagged tables, an Elastic IP, a Route 53 record;
      see aws_vrrp_notify.lab.every_action),
      shows `aws-vrrp-notify status` on both routers, crashes the master's keepalived,
      prints the failover as it happens with the time from the crash until AWS points
      to the new master, shows `check`, restarts the crashed router (it preempts back),
      and tears everything down.  About 30 s with the default advert_int 1.
      --split-brain then cuts VRRP between the routers for 4 s (AWS stays reachable, so
      both become MASTER and the backup takes AWS), heals it, and shows AWS coming back
      to the router that never left MASTER (and heard nothing new from keepalived).
up    the same lab, left running until Ctrl-C, for poking at it by hand.

--mode fifo has keepalived run one long-lived `aws-vrrp-notify fifo` per router (its
vrrp_notify_fifo_script) instead of a command per event (notify_master/backup/...).
--multi-az runs the pair across two Availability Zones instead (aws_vrrp_notify.lab.multi_az):
routers ra and rb in two subnets, keepalived unicast across them, and an overlay IP (a /32
outside the VPC) routed to the master in the route table of every client subnet.

--lag PROFILE_OR_SECONDS makes the simulated EC2 eventually consistent: the tool's
writes are answered at once and show in describe calls and the metadata service only
that much later (a profile of aws_vrrp_notify.lab.consistency.PROFILES, e.g.
ip-2-rest-0.1, or seconds for every write).  See docs/lab.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Dict, Optional

from .consistency import PROFILES, describe_lag, parse_lag
from .every_action import CLIENT_DESTINATION, CLIENT_SUBNETS, RECORD, EveryActionLab
from .keepalived import GROUP, MODES, STATES, VIP, Event, Lab, LabError, NotifyCall, available
from .multi_az import OVERLAY_VIP, PAIR, MultiAzLab, zone_of

ACTION_TEXT = {
    "assign-private-ip": f"VIP {VIP} on {{r}} eth0",
    "assign-ipv6-address": "IPv6 VIP {vip6} on {r} eth0",
    "change-route wan 0.0.0.0/0": "wan 0.0.0.0/0 -> {r} eth1",
    "change-route lan ::/0": "lan ::/0 -> {r} eth0",
    "associate-address": "Elastic IP -> {r} " + VIP,
}
MULTI_AZ_TEXT = {f"change-route {key} {OVERLAY_VIP}/32": f"{key} {OVERLAY_VIP}/32 -> {{r}} eth0"
                 for key in ("client-a", "client-b")}
# check's exit codes, as the demo explains the dead master's
CHECK_VERDICT = {0: "OK", 1: "WARNING: converging, it is still within the consistency window of its "
                             "last transition; CRITICAL once that has passed", 2: "CRITICAL"}
# An IPv6 address moves in two writes (EC2 cannot reassign it): between them it is on no ENI.
NOBODY_TEXT = {"assign-ipv6-address": "IPv6 VIP {vip6} on no ENI"}


def action_texts(lab: Lab) -> Dict[str, str]:
    """What the live view prints for each entry of lab.aws_view() when it changes router."""
    if isinstance(lab, MultiAzLab):
        return MULTI_AZ_TEXT
    t = lab.cloud.topology
    return {**ACTION_TEXT,
            f"change-route lan {t.prefix_list}": f"lan {t.prefix_list} (prefix list lab-clients) -> {{r}} eth0",
            **{f"change-route {key} {CLIENT_DESTINATION}":
               f"{key} {CLIENT_DESTINATION} (table tagged {t.route_table_tag}) -> {{r}} eth0"
               for key in CLIENT_SUBNETS},
            f"update-dns {RECORD}": f"Route 53 {RECORD} A {{addr}} ({{r}} eth0)"}


class Printer:
    """Timestamped, thread-safe output relative to the start of the demo."""

    def __init__(self, out=sys.stdout):
        self.t0 = time.time()
        self.out = out
        self.lock = threading.Lock()
        self.quiet_tools = False

    def at(self, t: Optional[float], text: str, indent: int = 0) -> None:
        t = time.time() if t is None else t
        with self.lock:
            print(f"[{t - self.t0:6.2f}s] {'  ' * indent}{text}", file=self.out, flush=True)

    def plain(self, text: str = "") -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def block(self, title: str, text: str) -> None:
        with self.lock:
            print(f"          --- {title}", file=self.out)
            for line in text.rstrip("\n").splitlines() or ["(no output)"]:
                print(f"          | {line}", file=self.out)
            self.out.flush()

    # Lab.on_event callback
    def __call__(self, item) -> None:
        if isinstance(item, Event):
            prio = f" (priority {item.priority})" if item.priority is not None else ""
            verb = "is" if item.state in STATES else "reports"
            self.at(item.time, f"{item.router} keepalived: {item.name} {verb} {item.state}{prio}", 1)
        elif isinstance(item, NotifyCall):
            cmd = "aws-vrrp-notify fifo" if item.command == "fifo" else f"aws-vrrp-notify {item.command} {GROUP}"
            if item.end is None:
                self.at(item.start, f"{item.router} keepalived runs: {cmd}", 1)
            else:
                self.at(item.end, f"{item.router} {cmd}: exit {item.rc} after {item.end - item.start:.2f}s", 1)
        elif isinstance(item, tuple) and item[0] == "tool" and not self.quiet_tools:
            line = item[2]
            for prefix in ("aws-vrrp-notify: INFO: ", "aws-vrrp-notify: "):
                if line.startswith(prefix):
                    line = line[len(prefix):]
                    break
            self.at(None, f"{item[1]}   | {line}", 1)


class AwsWatcher(threading.Thread):
    """Polls moto every 10 ms and prints every action that changes router."""

    def __init__(self, lab: Lab, p: Printer, texts: Dict[str, str]):
        super().__init__(name="aws-watch", daemon=True)
        self.lab, self.p, self.texts = lab, p, texts
        self.halt = threading.Event()
        self.last: Dict[str, Optional[str]] = {}
        self.vip6 = lab.cloud.topology.vip6()

    def run(self) -> None:
        while not self.halt.wait(0.01):
            try:
                view = self.lab.aws_view()
            except Exception:
                continue
            now = time.time()
            changed = [k for k, v in view.items() if self.last.get(k, "?") != v]
            for k in changed:
                who = view[k]
                self.p.at(now, f"AWS: {self.text(k, who)}", 1)
            if changed:
                targets = set(view.values())
                if len(targets) == 1 and None not in targets:
                    self.p.at(now, f"AWS: all {len(view)} point to {targets.pop()}", 1)
            self.last = view

    def text(self, key: str, who: Optional[str]) -> str:
        if not who:
            return NOBODY_TEXT.get(key, f"{key}: nobody").format(vip6=self.vip6)
        return self.texts[key].format(r=who, vip6=self.vip6, addr=self.lab.router(who).addrs["eth0"])

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=1)


MAIN_PID = os.getpid()


def _sigterm(signum, frame):
    if os.getpid() != MAIN_PID:
        # a forked helper (pyroute2's create_socket child is ended with SIGTERM): die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise SystemExit(128 + signum)


def _forked_exit() -> None:
    """In a forked helper child (pyroute2), never run the demo's teardown: just leave."""
    if os.getpid() != MAIN_PID:
        os._exit(1)


def _show_status(lab: Lab, p: Printer, name: str, *args: str) -> int:
    proc = lab.status(name, *args)
    p.block(f"ip netns exec {lab.router(name).ns} aws-vrrp-notify status {' '.join(args)}".rstrip()
            + f"   (exit {proc.returncode})", proc.stdout + proc.stderr)
    return proc.returncode


def _show_check(lab: Lab, p: Printer, name: str) -> int:
    proc = lab.check(name)
    p.block(f"{name}: aws-vrrp-notify check   (exit {proc.returncode})", proc.stdout + proc.stderr)
    return proc.returncode


def build(lab: Lab, p: Printer, lag: Dict[str, float]) -> None:
    p.at(None, "building a simulated AWS region (moto + fake IMDSv2) and two router namespaces ...")
    lab.up()
    lab.cloud.set_lag(lag)
    t = lab.cloud.topology
    if isinstance(lab, MultiAzLab):
        _describe_multi_az(lab, p)
    else:
        p.at(None, f"region {t.region}: {t.vpc} 10.0.0.0/16, subnets lan {t.subnet_cidrs['lan']} "
                   f"({t.route_tables['lan']}), wan {t.subnet_cidrs['wan']} ({t.route_tables['wan']})")
        for name, r in lab.routers.items():
            p.at(None, f"{name}: {r.instance_id} in namespace {r.ns}: eth0 {r.addrs['eth0']} ({r.eni('eth0')}), "
                       f"eth1 {r.addrs['eth1']} ({r.eni('eth1')})", 1)
        p.at(None, f"IPv6 VIP {t.vip6()} in lan {t.subnet_ipv6_cidrs['lan']}: EC2 cannot reassign it, the tool "
                   "unassigns it from the holder first", 1)
        p.at(None, f"Elastic IP {t.eip_public_ip} ({t.eip_alloc}) - a fake address, never contacted", 1)
        _describe_more(lab, p)
    p.at(None, "inside each router namespace: its own IMDS at 169.254.169.254:80, the EC2 and Route 53 "
               "APIs on 127.0.0.1 (AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL_ROUTE_53)", 1)
    p.at(None, f"EC2 consistency lag (a write shows in describe calls and IMDS this much later): "
               f"{describe_lag(lag)}", 1)
    first, second = lab.routers
    p.at(None, f"tool configuration (0600): {lab.config_path(first)} (same on {second}):")
    p.plain("          | " + "\n          | ".join(
        line for line in lab.tool_config(first).splitlines() if line and not line.startswith("#")))


def _describe_more(lab: Lab, p: Printer) -> None:
    t = lab.cloud.topology
    p.at(None, f"managed prefix list {t.prefix_list} (lab-clients), routed in lan's table", 1)
    tables = ", ".join(f"{key} {t.route_tables[key]}" for key in CLIENT_SUBNETS)
    p.at(None, f"client subnets in {lab.cloud.az} and {lab.cloud.az_b}, their route tables ({tables}) "
               f"tagged {t.route_table_tag}", 1)
    p.at(None, f"Route 53 private hosted zone {t.zone_name} ({t.zone_id}) of the VPC: record {RECORD}", 1)


def _describe_multi_az(lab: Lab, p: Printer) -> None:
    t = lab.cloud.topology
    p.at(None, f"region {t.region}: {t.vpc} 10.0.0.0/16; overlay IP {OVERLAY_VIP} (outside the VPC's CIDR)")
    for name, r in lab.routers.items():
        subnet = PAIR[name]
        p.at(None, f"{name}: {r.instance_id} in {zone_of(lab.cloud, name)}, subnet {subnet} "
                   f"{t.subnet_cidrs[subnet]}, namespace {r.ns}: eth0 {r.addrs['eth0']} ({r.eni('eth0')})", 1)
    for key in ("client-a", "client-b"):
        p.at(None, f"client subnet {key} {t.subnet_cidrs[key]}: route table {t.route_tables[key]}, "
                   f"tagged {t.route_table_tag}", 1)


def start_pair(lab: Lab, p: Printer, args) -> None:
    first, second = lab.routers
    addrs = " <-> ".join(r.addrs["eth0"] for r in lab.routers.values())
    proto = f"VRRPv{args.vrrp_version} advert_int {args.advert_int:g}s, unicast {addrs}"
    p.at(None, f"starting keepalived in {first} (priority {lab.PRIORITIES[first]}) and {second} "
               f"(priority {lab.PRIORITIES[second]}): {proto}")
    for name in (first, second):
        lab.start_router(name, version=args.vrrp_version, advert_int=args.advert_int)
    p.at(None, f"keepalived.conf of {first}: {lab.current(first).conf}; how it runs the tool:", 1)
    for line in lab.current(first).conf.read_text().splitlines():
        if line.strip().startswith(("notify_master", "vrrp_notify_fifo")):
            p.plain("          | " + line.strip())


def split_brain(lab: Lab, p: Printer, master: str, backup: str, seconds: float = 4.0) -> float:
    """Cut VRRP for ``seconds``, heal; returns the seconds from the heal until AWS is back on ``master``."""
    p.plain(f"\n== split brain: VRRP cut for {seconds:g} s (AWS still reachable), then healed ==")
    t_cut = lab.partition()
    p.at(t_cut, "VRRP cut: each router's neighbour entry for the other now names a MAC nobody has")
    lab.wait_aws_points_to(backup, timeout=30, since=t_cut)
    time.sleep(max(0.0, t_cut + seconds - time.time()))
    t_heal = lab.heal()
    p.at(t_heal, f"VRRP healed: {backup} steps down; {master} never left MASTER and hears nothing new")
    took = lab.wait_aws_points_to(master, timeout=40, since=t_heal)
    lab.wait_settled(timeout=30, master=master)
    p.at(None, f"AWS points back to {master} {took:.3f} s after the heal: {_who_repaired(lab, master, backup)}")
    return took


def _who_repaired(lab: Lab, master: str, backup: str) -> str:
    end = time.monotonic() + 1.0   # the hand-back records its outcome just after its last write
    while time.monotonic() < end:
        record = lab.record(backup) or {}
        if record.get("outcome") == "handed-back":
            return f"{backup} handed it back one consistency window after MASTER -> BACKUP ({record.get('detail')})"
        time.sleep(0.05)
    return f"{master}'s fifo reader re-checked AWS" if lab.mode == "fifo" else "(no hand-back recorded)"


def demo(args) -> int:
    p = Printer()
    p.plain("aws-vrrp-notify lab demo: keepalived on two routers, AWS simulated by moto, one crash.\n")
    lab = None
    watcher = None
    ok = True
    try:
        lab = (MultiAzLab if args.multi_az else EveryActionLab)(on_event=p, mode=args.mode)
        build(lab, p, args.lag)
        watcher = AwsWatcher(lab, p, action_texts(lab))
        watcher.start()
        start_pair(lab, p, args)
        master = lab.wait_settled(timeout=30)
        p.at(None, f"settled: {master} is MASTER and AWS points to it")

        p.plain("\n== aws-vrrp-notify status, run inside each router namespace ==")
        p.quiet_tools = True
        first, second = lab.routers
        _show_status(lab, p, first)
        _show_status(lab, p, second, "ha-notification")
        p.quiet_tools = False

        backup = second if master == first else first
        p.plain(f"\n== crash: SIGKILL {master}'s keepalived (parent and VRRP child) ==")
        time.sleep(0.3)
        t_fault = lab.kill(master)
        p.at(t_fault, f"killed keepalived in {master}")
        took = lab.wait_aws_points_to(backup, timeout=30, since=t_fault)
        seen = lab.events(backup, since=t_fault, state="MASTER")
        calls = [c for c in lab.notify_calls(backup) if c.start >= t_fault and c.command == "master"]
        time.sleep(0.05)
        p.plain("")
        p.at(None, f"FAILOVER: AWS points to {backup} {took:.3f} s after the crash "
                   f"(AWS polled every 10 ms)")
        if seen:
            detect = seen[0].time - t_fault
            p.at(None, f"keepalived on {backup} needed {detect:.3f} s to declare the master dead "
                       f"(3 x advert_int + skew), aws-vrrp-notify {took - detect:.3f} s to move all "
                       f"{len(lab.aws_view())}", 1)
        if calls:
            p.at(None, f"notify_master started {calls[0].start - t_fault:.3f} s after the crash", 1)
        lab.wait_settled(timeout=30)

        p.plain("\n== after the failover ==")
        p.quiet_tools = True
        _show_status(lab, p, backup, "ha-notification")
        codes = {n: _show_check(lab, p, n) for n in (master, backup)}
        p.plain(f"          {master}'s keepalived died while MASTER, so its last record says MASTER while "
                f"AWS points elsewhere:\n          check reports that drift (exit {codes[master]}, "
                f"{CHECK_VERDICT.get(codes[master], 'UNKNOWN')}) - what a cron job would alert on. "
                f"{backup}: exit {codes[backup]}.")
        ok = ok and codes[backup] == 0
        p.quiet_tools = False

        if not args.no_restart:
            p.plain(f"\n== restart {master}'s keepalived: priority 150 preempts {backup} ==")
            lab.start_router(master, version=args.vrrp_version, advert_int=args.advert_int)
            t_start = time.time()
            took = lab.wait_aws_points_to(master, timeout=30, since=t_start)
            lab.wait_settled(timeout=30)
            p.at(None, f"AWS points back to {master} {took:.3f} s after its keepalived started")
            p.quiet_tools = True
            codes = {n: _show_check(lab, p, n) for n in (master, backup)}
            ok = ok and all(c == 0 for c in codes.values())
            p.quiet_tools = False
            if args.split_brain:
                split_brain(lab, p, master, backup)
                p.quiet_tools = True
                codes = {n: _show_check(lab, p, n) for n in (master, backup)}
                ok = ok and all(c == 0 for c in codes.values())
                p.quiet_tools = False
        p.plain("")
    except LabError as exc:
        p.at(None, f"lab error: {exc}")
        ok = False
    except TimeoutError as exc:
        p.at(None, f"FAILED: {exc}")
        ok = False
    except KeyboardInterrupt:
        _forked_exit()
        p.at(None, "interrupted")
        ok = None
    except SystemExit as exc:
        _forked_exit()
        p.at(None, f"terminated (signal {int(exc.code or 0) - 128})")
        ok = None
    finally:
        _forked_exit()
        if watcher is not None:
            watcher.stop()
        if lab is not None:
            lab.on_event = None
            p.at(None, "tearing down: keepalived (by PID), namespaces, servers ...")
            lab.close()
            p.at(None, f"done ({time.time() - p.t0:.1f} s)")
    if ok is None:
        return 130
    return 0 if ok else 1


def up(args) -> int:
    p = Printer()
    lab = None
    try:
        lab = (MultiAzLab if args.multi_az else EveryActionLab)(on_event=p, mode=args.mode)
        build(lab, p, args.lag)
        start_pair(lab, p, args)
        master = lab.wait_settled(timeout=30)
        p.at(None, f"settled: {master} is MASTER and AWS points to it")
        lab.on_event = None
        p.plain("\nThe lab runs until Ctrl-C. Try, in another shell:")
        for name, r in lab.routers.items():
            p.plain(f"  env AWS_ENDPOINT_URL_EC2={r.moto_url} AWS_ENDPOINT_URL_ROUTE_53={r.moto_url} "
                    f"AWS_ACCESS_KEY_ID=testing "
                    f"AWS_SECRET_ACCESS_KEY=testing ip netns exec {r.ns} "
                    f"{' '.join(lab.tool_argv(name, 'status'))}")
        pids = ", ".join(f"{n} {lab.current(n).proc.pid}" for n in lab.routers)
        p.plain(f"  keepalived PIDs: {pids}; configurations and logs in {lab.workdir}")
        signal.pause() if hasattr(signal, "pause") else threading.Event().wait()
    except (KeyboardInterrupt, SystemExit):
        _forked_exit()
    except (LabError, TimeoutError) as exc:
        p.at(None, f"FAILED: {exc}")
        return 1
    finally:
        _forked_exit()
        if lab is not None:
            lab.on_event = None
            p.at(None, "tearing down ...")
            lab.close()
            p.at(None, "done")
    return 0


def lag_argument(text: str) -> Dict[str, float]:
    try:
        return parse_lag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aws_vrrp_notify.lab",
                                     description="The aws-vrrp-notify lab: keepalived routers on a simulated AWS.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("demo", "bring the lab up, crash the master, show the failover, tear down"),
                           ("up", "bring the lab up and keep it running until Ctrl-C")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--advert-int", type=float, default=1.0,
                        help="VRRP advert_int in seconds (default 1; fractions need --vrrp-version 3)")
        sp.add_argument("--vrrp-version", type=int, choices=(2, 3), default=None,
                        help="default: 2 for a whole advert_int, else 3")
        sp.add_argument("--lag", type=lag_argument, default={}, metavar="PROFILE_OR_SECONDS",
                        help="EC2 eventual consistency: the tool's writes show this much later; "
                             f"seconds, or a profile: {', '.join(PROFILES)} (default: none)")
        sp.add_argument("--mode", choices=MODES, default="notify",
                        help="how keepalived runs the tool: a command per event (notify, the default) "
                             "or one long-lived reader of its FIFO (fifo)")
        sp.add_argument("--multi-az", action="store_true",
                        help="the pair across two Availability Zones: an overlay IP routed to the master "
                             "in every client subnet's route table")
        if name == "demo":
            sp.add_argument("--no-restart", action="store_true",
                            help="do not restart the crashed router at the end")
            sp.add_argument("--split-brain", action="store_true",
                            help="at the end, cut VRRP for 4 s and heal it: AWS comes back to the master")
    args = parser.parse_args(argv)
    if getattr(args, "split_brain", False) and args.no_restart:
        parser.error("--split-brain needs both routers: drop --no-restart")
    if args.vrrp_version is None:
        args.vrrp_version = 2 if args.advert_int == int(args.advert_int) else 3
    if args.vrrp_version == 2 and args.advert_int != int(args.advert_int):
        parser.error("VRRPv2 needs a whole --advert-int; use --vrrp-version 3")
    ok, why = available()
    if not ok:
        print(f"the lab cannot run here: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    return demo(args) if args.command == "demo" else up(args)


if __name__ == "__main__":
    sys.exit(main())
