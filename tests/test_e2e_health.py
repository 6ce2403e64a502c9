"""End to end: keepalived's vrrp_script runs `aws-vrrp-notify health` on two real routers.
When r1 (the MASTER, priority 150) loses its path to the EC2 endpoint, its check fails,
its priority drops below r2's and VRRP makes r2 MASTER while r1 is still up; AWS follows.
When the path comes back, r1 takes the group back, and AWS follows again."""

from __future__ import annotations

import time

import pytest

from aws_vrrp_notify.lab.keepalived import Lab, available
from test_e2e_keepalived import FAST, assert_aws_on, assert_notify_ok, start_pair

_ok, _why = available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"keepalived lab unavailable: {_why}")

# fail once -> priority 150 - 60 = 90 < 100: r2 takes over; a run takes at most 2 s (timeout 3)
HEALTH = {"interval": 1, "timeout": 3, "fall": 1, "rise": 1, "weight": -60}


@pytest.fixture
def lab(routers, tmp_path):
    with Lab(routers.cloud, routers, workdir=tmp_path / "lab") as lab_:
        yield lab_


def script_results(lab, name):
    """keepalived's own account of the health script on router ``name``: 'failed', 'succeeded'
    or 'timed out' (health took longer than the script's timeout), in order."""
    log = lab.keepalived_log(name)
    return [word for line in log.splitlines() if "aws_ready" in line
            for word in ("failed", "succeeded", "timed out") if word in line]


def test_unhealthy_master_hands_vrrp_over_before_a_failover_is_needed(lab, fault_proxy):
    r1 = lab.router("r1")
    proxy = fault_proxy(r1, "ec2")                       # r1's only way to the EC2 endpoint
    lab.router_env["r1"] = proxy.env
    lab.track_tool("aws_ready", "health", "VI_1", "--max-age", "1", **HEALTH)
    start_pair(lab, **FAST)
    assert_aws_on(lab, "r1")
    assert lab.keepalived_state("r2") == "BACKUP"

    broken = time.time()
    proxy.add_fault("delay", delay=10)                   # r1's path to EC2 hangs
    took = lab.wait_aws_points_to("r2", timeout=20, since=broken)
    assert lab.wait_settled(timeout=20) == "r2"
    assert_aws_on(lab, "r2")
    # no failover was needed: r1's keepalived never stopped, it stepped down to BACKUP
    assert lab.running("r1") and lab.keepalived_state("r1") == "BACKUP"
    assert [e.state for e in lab.events("r1", since=broken)][:1] == ["BACKUP"]
    assert "failed" in script_results(lab, "r1")
    assert took < 15, took

    restored = time.time()
    proxy.clear_faults()
    lab.wait_aws_points_to("r1", timeout=20, since=restored)
    assert lab.wait_settled(timeout=30) == "r1"          # priority 150 again: r1 preempts
    assert_aws_on(lab, "r1")
    assert lab.keepalived_state("r2") == "BACKUP"
    assert script_results(lab, "r1")[-1] == "succeeded"
    assert "failed" not in script_results(lab, "r2")     # r2's own check passed all along
    assert "timed out" not in script_results(lab, "r1") + script_results(lab, "r2")
    assert_notify_ok(lab)
