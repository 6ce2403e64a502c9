"""End to end: two real keepalived routers (network namespaces) run the installed tool
from their notify lines against the simulated AWS (moto + IMDS at 169.254.169.254).

Every test asserts AWS state (read from moto) against keepalived's own view (its
notify FIFO), and that every notify command keepalived ran exited 0.  VRRPv3 with
advert_int 0.1 keeps them fast; one test runs the production-like advert_int 1.
"""

from __future__ import annotations

import io
import os
import random
import signal
import time

import pytest

from aws_vrrp_notify.lab.__main__ import AwsWatcher, Printer, action_texts
from aws_vrrp_notify.lab.every_action import CLIENT_DESTINATION, RECORD, EveryActionLab
from aws_vrrp_notify.lab.keepalived import VIP, Lab, available
from test_ipv6 import holders6

_ok, _why = available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"keepalived lab unavailable: {_why}")

FAST = {"version": 3, "advert_int": 0.1}


@pytest.fixture
def lab(routers, tmp_path):
    with Lab(routers.cloud, routers, workdir=tmp_path / "lab") as lab_:
        yield lab_


def start_pair(lab, **kw):
    lab.start_router("r1", **kw)
    lab.start_router("r2", **kw)
    assert lab.wait_settled(timeout=20) == "r1", lab.describe()


def assert_aws_on(lab, name):
    """AWS state through the EC2 API (not moto internals): every action points to ``name``."""
    aws, topo, r = lab.cloud, lab.cloud.topology, lab.router(name)
    assert aws.who_holds(VIP) == [r.eni("eth0")], lab.describe()
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r.eni("eth1")
    assert aws.route_target(topo.route_tables["lan"], "::/0") == r.eni("eth0")
    assert aws.eip_association(topo.eip_alloc) == (r.eni("eth0"), VIP)


def assert_every_action_on(lab, name):
    """The demo's group (lab/every_action.py), through the EC2 and Route 53 APIs: everything on ``name``."""
    aws, topo, r = lab.cloud, lab.cloud.topology, lab.router(name)
    assert_aws_on(lab, name)
    assert holders6(aws, topo.vip6()) == [r.eni("eth0")]
    assert aws.route_target(topo.route_tables["lan"], topo.prefix_list) == r.eni("eth0")
    assert len(topo.tagged_route_tables) == 2
    assert [aws.route_target(rtb, CLIENT_DESTINATION) for rtb in topo.tagged_route_tables] == [r.eni("eth0")] * 2
    assert aws.dns_values(RECORD) == [r.addrs["eth0"]]


def assert_notify_ok(lab):
    calls = lab.notify_calls()
    assert calls, "keepalived ran no notify command"
    # keepalived gives its scripts a parent-death SIGTERM: a command running when its
    # keepalived was killed or stopped may end with 143 (128 + SIGTERM)
    bad = [c for c in calls if c.rc != 0 and not (c.rc == 143 and lab.orphaned(c))]
    assert not bad, f"notify commands failed: {bad}\n{lab.describe()}"


CONSISTENCY_WINDOW = 5.0  # the tool's default; the lab's configuration leaves it


def assert_check(lab, expected=None):
    expected = expected or {n: 0 for n in lab.routers}
    if 2 in expected.values():
        # drift within the consistency window of a router's last transition is WARNING
        # "converging", never CRITICAL: look once it has passed
        newest = max(max(r.get("time", 0), r.get("finished", 0)) for r in map(lab.record, expected) if r)
        time.sleep(max(0.0, newest + CONSISTENCY_WINDOW + 0.2 - time.time()))
    for name, code in expected.items():
        proc = lab.check(name)
        assert proc.returncode == code, f"check on {name}: {proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_election_puts_aws_on_the_higher_priority_router(lab):
    start_pair(lab, **FAST)
    assert_aws_on(lab, "r1")
    assert lab.keepalived_state("r2") == "BACKUP"
    assert lab.record("r1")["state"] == "MASTER" and lab.record("r1")["outcome"] == "ok"
    assert lab.record("r2")["state"] == "BACKUP"
    # the tool found its metadata at the real link-local address: keepalived gave it no override
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT" not in lab.keepalived_env("r1")
    with open(f"/proc/{lab.current('r1').proc.pid}/environ", "rb") as fh:
        assert b"AWS_EC2_METADATA_SERVICE_ENDPOINT" not in fh.read()
    assert lab.router("r1").imds.count("PUT", "/latest/api/token") >= 1
    assert_notify_ok(lab)
    assert_check(lab)
    status = lab.status("r1", "ha-notification", "--json")
    assert status.returncode == 0, status.stderr
    assert '"in-sync": true' in status.stdout and '"in-sync": false' not in status.stdout


@pytest.mark.parametrize("fault", ["crash", "stop", "link-down"])
def test_failover_moves_aws_to_the_backup(lab, fault):
    start_pair(lab, **FAST)
    if fault == "crash":
        t0 = lab.kill("r1", signal.SIGKILL)
    elif fault == "stop":
        t0 = lab.stop("r1", wait=False)
    else:
        t0 = lab.link_down("r1")
    took = lab.wait_aws_points_to("r2", timeout=10, since=t0)
    detected = lab.events("r2", since=t0, state="MASTER")[0].time - t0
    assert detected < 1.0 and took < 6, (detected, took)
    assert lab.wait_settled(timeout=20) == "r2"
    assert_aws_on(lab, "r2")
    expected_r1 = {"crash": None, "stop": "STOP", "link-down": "FAULT"}[fault]
    assert lab.keepalived_state("r1") == expected_r1
    assert lab.record("r1")["state"] == (expected_r1 or "MASTER")
    if fault == "crash":
        # keepalived died as MASTER: r1's record still says MASTER, AWS points elsewhere
        assert_check(lab, {"r1": 2, "r2": 0})
        lab.start_router("r1", **FAST)
    elif fault == "stop":
        assert_check(lab)
        lab.current("r1").proc.wait(timeout=30)  # keepalived may still be running its STOP scripts
        lab.start_router("r1", **FAST)
    else:
        assert_check(lab)
        lab.link_up("r1")
    # r1 comes back and preempts (priority 150)
    lab.wait_aws_points_to("r1", timeout=10, since=time.time())
    assert lab.wait_settled(timeout=20) == "r1"
    assert_aws_on(lab, "r1")
    assert_notify_ok(lab)
    assert_check(lab)


def test_the_demos_group_moves_everything_in_one_failover_and_back(routers, tmp_path):
    """Every action type (python -m aws_vrrp_notify.lab demo's group) moves to r2 when r1's
    keepalived crashes and back when it returns; the demo's live view shows each one move."""
    out = io.StringIO()
    with EveryActionLab(routers.cloud, routers, workdir=tmp_path / "lab") as lab:
        watcher = AwsWatcher(lab, Printer(out), action_texts(lab))
        watcher.start()
        try:
            start_pair(lab, **FAST)
            assert_every_action_on(lab, "r1")
            t0 = lab.kill("r1")
            lab.wait_aws_points_to("r2", timeout=10, since=t0)
            assert lab.wait_settled(timeout=20) == "r2"
            assert_every_action_on(lab, "r2")
            lab.start_router("r1", **FAST)
            lab.wait_aws_points_to("r1", timeout=10, since=time.time())
            assert lab.wait_settled(timeout=20) == "r1"
            assert_every_action_on(lab, "r1")
        finally:
            watcher.stop()
        assert_notify_ok(lab)
        view = lab.aws_view()
    assert len(view) == 9  # 8 actions, the tagged one in two tables
    shown = out.getvalue()
    for name in ("r2", "r1"):
        for key in view:
            assert f"AWS: {watcher.text(key, name)}\n" in shown, (key, shown)
        assert f"AWS: all 9 point to {name}\n" in shown
    assert f"AWS: Route 53 {RECORD} A {routers.r2.addrs['eth0']} (r2 eth0)" in shown


def test_startup_race_ends_on_the_final_master(lab):
    lab.start_router("r2", **FAST)                 # the lower priority starts first ...
    lab.wait_state("r2", "MASTER", timeout=10)     # ... becomes MASTER (its notify_master is running)
    lab.start_router("r1", **FAST)                 # ... and is preempted
    assert lab.wait_settled(timeout=20) == "r1"
    assert_aws_on(lab, "r1")
    r2_states = [e.state for e in lab.events("r2")]
    assert r2_states[:3] == ["BACKUP", "MASTER", "BACKUP"], r2_states
    assert any(c.command == "master" for c in lab.notify_calls("r2"))
    assert_notify_ok(lab)
    assert_check(lab)


def test_rapid_flaps_end_with_aws_on_keepalived_master(lab):
    start_pair(lab, **FAST)
    rng = random.Random(int(os.environ.get("AVN_FLAP_SEED", "4")))
    t_end = time.monotonic() + 4
    n = 0
    while time.monotonic() < t_end or n < 6:
        name = rng.choice(["r1", "r1", "r2"])
        if lab.running(name):
            how = rng.choice(["stop", "stop", "crash"])
            lab.stop(name) if how == "stop" else lab.kill(name)
        else:
            lab.start_router(name, **FAST)
        n += 1
        time.sleep(rng.uniform(0.05, 0.6))
    for name in ("r1", "r2"):   # both up at the end: r1 must win
        if not lab.running(name):
            lab.start_router(name, **FAST)
    master = lab.wait_settled(timeout=30, master="r1")   # both up: r1 (150) preempts
    assert lab.masters() == [master]
    assert_aws_on(lab, master)
    assert_notify_ok(lab)
    assert_check(lab)


def test_crash_failover_at_advert_int_1(lab):
    """Production-like timing: VRRPv2, advert_int 1, master_down = 3 x 1 s + skew."""
    start_pair(lab, version=2, advert_int=1)
    time.sleep(0.2)
    t0 = lab.kill("r1")
    took = lab.wait_aws_points_to("r2", timeout=15, since=t0)
    detected = lab.events("r2", since=t0, state="MASTER")[0].time - t0
    assert 2.5 < detected < 4.0, detected
    assert detected < took < detected + 5, (detected, took)
    assert lab.wait_settled(timeout=20) == "r2"
    assert_aws_on(lab, "r2")
    assert_notify_ok(lab)
    assert_check(lab, {"r1": 2, "r2": 0})


def test_keepalived_failover_and_back_under_ec2_lag(lab, lag_profile):
    """Real keepalived, EC2 lagging like the lab's profile: a crash of r1 moves AWS to r2 and
    nothing undoes it; r1's return moves it back. No yield, no hand-back on a stale read."""
    start_pair(lab, **FAST)
    lab.cloud.settle()
    t0 = lab.kill("r1", signal.SIGKILL)
    lab.wait_aws_points_to("r2", timeout=20, since=t0)
    assert lab.wait_settled(timeout=20) == "r2"
    lab.cloud.settle()
    time.sleep(0.5)
    lab.cloud.settle()
    assert_aws_on(lab, "r2")
    log = lab.tool_log("r2")
    assert "yielding" not in log and "handing it back" not in log, log
    lab.start_router("r1", **FAST)
    lab.wait_aws_points_to("r1", timeout=20, since=time.time())
    assert lab.wait_settled(timeout=20) == "r1"
    deadline = time.time() + 30
    while not lab.tools_idle() and time.time() < deadline:
        time.sleep(0.1)
    lab.cloud.settle()
    assert_aws_on(lab, "r1")
    assert "yielding" not in lab.tool_log("r1")
    assert_notify_ok(lab)
