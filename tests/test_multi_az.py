"""A pair across two Availability Zones: routers "ra" (AZ a) and "rb" (AZ b) in two subnets,
keepalived unicast across them, and an overlay IP (a /32 outside the VPC) routed to the
master's ENI in every client subnet's route table (aws_vrrp_notify.lab.multi_az).

Real keepalived elects across the subnets and moves the overlay route on a crash; the tool
alone fails over, goes back and forth and survives a split brain under every lag profile;
status, check, check --repair and fifo mode report and repair the overlay route.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from conftest import kill_namespace_processes, router_namespaces
from test_consistency import split_brain
from test_failover import cfg, ok, record
from test_fifo import start_reader, stop_reader, wait_for, write_lines

OVERLAY = "172.16.100.1/32"


@pytest.fixture(scope="module")
def _pair_net(cloud):
    from aws_vrrp_notify.lab.multi_az import build_multi_az_routers

    with router_namespaces(lambda nets: build_multi_az_routers(cloud, nets)) as (_, routers):
        yield routers


@pytest.fixture
def pair(_pair_net, aws):
    yield _pair_net
    kill_namespace_processes(*(r.ns for r in _pair_net.values()))


def overlay(topo, **kw):
    from aws_vrrp_notify.lab.multi_az import overlay_config

    return cfg(overlay_config(topo), **kw)


def targets(aws):
    return [aws.route_target(rtb, OVERLAY) for rtb in aws.topology.tagged_route_tables]


def owned_by(router, aws):
    return [router.eni("eth0")] * len(aws.topology.tagged_route_tables)


def test_the_pair_is_in_two_zones_and_subnets(pair, run_tool, aws):
    ra, rb = pair["ra"], pair["rb"]
    zones = {name: json.loads(ok(run_tool(r, "status", "instance", "--json")).stdout)["instance"]
             ["availability-zone"] for name, r in pair.items()}
    assert zones == {"ra": aws.az, "rb": aws.az_b}
    assert ra.instance.subnets[0] != rb.instance.subnets[0]
    assert not ipaddress.ip_network(OVERLAY).subnet_of(ipaddress.ip_network(aws.topology.vpc_cidr))


def test_keepalived_moves_the_overlay_route_across_zones(pair, aws, tmp_path):
    """Unicast VRRP crosses the subnets (one MASTER), and a crash moves the route in both
    client tables to the other zone's router."""
    from aws_vrrp_notify.lab.multi_az import MultiAzLab

    with MultiAzLab(aws, routers=pair, workdir=tmp_path / "lab") as lab:
        for name in ("ra", "rb"):
            lab.start_router(name)
        assert lab.wait_settled(timeout=30) == "ra"
        assert targets(aws) == owned_by(pair["ra"], aws)
        assert lab.masters() == ["ra"]
        t_kill = lab.kill("ra")
        took = lab.wait_aws_points_to("rb", timeout=20, since=t_kill)
        lab.wait_settled(timeout=30, master="rb")
        assert targets(aws) == owned_by(pair["rb"], aws)
        assert took < 15, lab.describe()
        assert lab.check("rb").returncode == 0, lab.check("rb").stdout
        lab.start_router("ra")  # priority 150 preempts
        lab.wait_aws_points_to("ra", timeout=20)
        assert lab.wait_settled(timeout=30) == "ra"
        assert [lab.check(n).returncode for n in ("ra", "rb")] == [0, 0]


def test_failover_under_lag(pair, run_tool, aws, lag_profile):
    ra, rb = pair["ra"], pair["rb"]
    for rtb in aws.topology.tagged_route_tables:
        aws.ec2.create_route(RouteTableId=rtb, DestinationCidrBlock=OVERLAY, NetworkInterfaceId=ra.eni("eth0"))
    proc = ok(run_tool(rb, "master", "VI_1", config=overlay(aws.topology)))
    assert "yielding" not in proc.stderr, proc.stderr
    aws.settle()
    assert targets(aws) == owned_by(rb, aws)


def test_back_and_forth_and_split_brain_under_lag(pair, run_tool, aws, lag_profile):
    ra, rb = pair["ra"], pair["rb"]
    config = overlay(aws.topology)
    for router in (ra, rb, ra):
        ok(run_tool(router, "master", "VI_1", config=config))
    aws.settle()
    assert targets(aws) == owned_by(ra, aws)

    class Pair(dict):
        def __iter__(self):
            return iter(self.values())

    results = split_brain(Pair(pair), run_tool, config)
    aws.settle()
    logs = "\n".join(f"--- {name}: exit {code}\n{err}" for name, (code, err) in results.items())
    assert all(code == 0 for code, _ in results.values()), logs
    assert targets(aws) in (owned_by(ra, aws), owned_by(rb, aws)), logs


def test_status_check_and_repair(pair, run_tool, aws):
    ra, rb = pair["ra"], pair["rb"]
    config = overlay(aws.topology, window=0)
    first, second = aws.topology.tagged_route_tables
    ok(run_tool(ra, "master", "VI_1", config=config))
    ok(run_tool(rb, "backup", "VI_1", config=config))
    assert [run_tool(r, "check", config=config).returncode for r in (ra, rb)] == [0, 0]
    group = json.loads(ok(run_tool(ra, "status", "ha-notification", "--json", config=config)).stdout
                       )["ha-notification"]["groups"][0]
    assert group["state"] == "MASTER" and group["actions"][0]["in-sync"] is True
    assert [t["route-table"] for t in group["actions"][0]["route-tables"]] == [first, second]

    aws.ec2.replace_route(RouteTableId=first, DestinationCidrBlock=OVERLAY, NetworkInterfaceId=rb.eni("eth0"))
    proc = run_tool(ra, "check", config=config)
    assert proc.returncode == 2 and first in proc.stdout and second not in proc.stdout, proc.stdout
    assert run_tool(rb, "check", config=config).returncode == 1
    proc = run_tool(ra, "check", "--repair", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert targets(aws) == owned_by(ra, aws)


def test_fifo_reasserts_the_overlay_route(pair, run_tool, aws, tmp_path):
    ra, rb = pair["ra"], pair["rb"]
    config = overlay(aws.topology, window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 1\n")
    fifo, proc = start_reader(run_tool, ra, tmp_path, config)
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, ra) or {}).get("outcome") == "ok")
    for rtb in aws.topology.tagged_route_tables:
        aws.ec2.replace_route(RouteTableId=rtb, DestinationCidrBlock=OVERLAY, NetworkInterfaceId=rb.eni("eth0"))
    assert wait_for(lambda: targets(aws) == owned_by(ra, aws), timeout=10)
    code, err = stop_reader(proc)
    assert code == 0 and "re-asserting" in err


def test_demo_multi_az(_pair_net):
    """python -m aws_vrrp_notify.lab demo --multi-az: its own simulated region, one crash."""
    proc = subprocess.run([sys.executable, "-m", "aws_vrrp_notify.lab", "demo", "--multi-az", "--advert-int", "0.1",
                           "--no-restart"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "unicast 10.0.20.11 <-> 10.0.21.12" in out and "overlay IP 172.16.100.1" in out
    assert "AWS: all 2 point to ra" in out and "FAILOVER: AWS points to rb" in out
    assert "client-a 172.16.100.1/32 -> rb eth0" in out and "client-b 172.16.100.1/32 -> rb eth0" in out
