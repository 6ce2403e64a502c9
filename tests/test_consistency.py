"""EC2's eventual consistency: the tool against a simulated AWS whose writes show late.

Every test runs under each lag profile of the lab (aws_vrrp_notify.lab.consistency.PROFILES):
every write 0.5 s; every write 2 s; IP moves 2 s with the rest 0.1 s; IP moves 1 s with the
rest 0.3 s. The describe calls and the metadata service both lag. Each test asserts the
AWS state once every accepted write has landed (``cloud.settle()``).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from test_failover import VIP, assign, cfg, eip, ok, record, route


def group_config(topo, **kw):
    """The VIP, two routes and the Elastic IP on the VIP: the group of the issue's report."""
    return cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]),
               route(route_table=topo.route_tables["lan"], destination="::/0", interface="eth0"),
               eip(allocation_id=topo.eip_alloc, private_ip=VIP), **kw)


def holders(aws, topo):
    vip = aws.who_holds(VIP)
    assoc = aws.eip_association()
    return {
        "vip": vip[0] if len(vip) == 1 else tuple(vip),
        "wan": aws.route_target(topo.route_tables["wan"], "0.0.0.0/0"),
        "lan6": aws.route_target(topo.route_tables["lan"], "::/0"),
        "eip": assoc[0] if assoc else None,
    }


def owned_by(router):
    e0, e1 = router.eni("eth0"), router.eni("eth1")
    return {"vip": e0, "wan": e1, "lan6": e0, "eip": e0}


def put_group_on(aws, topo, router):
    """The harness (never lagged) points the whole group at ``router``."""
    ec2 = aws.ec2
    ec2.assign_private_ip_addresses(NetworkInterfaceId=router.eni("eth0"), PrivateIpAddresses=[VIP],
                                    AllowReassignment=True)
    for rtb, dest, eni in ((topo.route_tables["wan"], "0.0.0.0/0", router.eni("eth1")),
                           (topo.route_tables["lan"], "::/0", router.eni("eth0"))):
        key = "DestinationIpv6CidrBlock" if ":" in dest else "DestinationCidrBlock"
        try:
            ec2.replace_route(RouteTableId=rtb, NetworkInterfaceId=eni, **{key: dest})
        except Exception:
            ec2.create_route(RouteTableId=rtb, NetworkInterfaceId=eni, **{key: dest})
    ec2.associate_address(AllocationId=topo.eip_alloc, NetworkInterfaceId=router.eni("eth0"),
                          PrivateIpAddress=VIP, AllowReassociation=True)
    assert holders(aws, topo) == owned_by(router)


def test_failover_ends_here_whatever_the_lag(routers, run_tool, lag_profile):
    """The issue's report: r1 (dead) holds everything, r2 runs master; the VIP shows late."""
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    put_group_on(aws, topo, r1)
    proc = ok(run_tool(r2, "master", "VI_1", config=group_config(topo)))
    assert "yielding" not in proc.stderr and "handing it back" not in proc.stderr, proc.stderr
    assert record(run_tool, r2)["outcome"] == "ok"
    aws.settle()
    assert holders(aws, topo) == owned_by(r2), proc.stderr


def back_and_forth(routers, run_tool, config):
    """master on r1, r2, r1 (none may yield); returns once every accepted write has landed."""
    for router in (routers.r1, routers.r2, routers.r1):
        proc = ok(run_tool(router, "master", "VI_1", config=config))
        assert "yielding" not in proc.stderr, proc.stderr
    routers.cloud.settle()


def test_back_and_forth_under_lag(routers, run_tool, lag_profile):
    aws, topo = routers.cloud, routers.topology
    back_and_forth(routers, run_tool, group_config(topo))
    assert holders(aws, topo) == owned_by(routers.r1)


def split_brain(routers, run_tool, config, offset=0.0):
    procs = {}
    for i, r in enumerate(routers):
        if i and offset:
            time.sleep(offset)
        procs[r.name] = run_tool.popen(r, "-v", "master", "VI_1", config=config)
    return {name: (p.wait(timeout=90), p.stderr.read()) for name, p in procs.items()}


def assert_unmixed(aws, topo, routers, results):
    aws.settle()
    now = holders(aws, topo)
    logs = "\n".join(f"--- {name}: exit {code}\n{err}" for name, (code, err) in results.items())
    assert all(code == 0 for code, _ in results.values()), logs
    assert now in (owned_by(routers.r1), owned_by(routers.r2)), f"{now}\n{logs}"
    return now


def test_split_brain_ends_unmixed_under_lag(routers, run_tool, lag_profile):
    aws, topo = routers.cloud, routers.topology
    results = split_brain(routers, run_tool, group_config(topo))
    assert_unmixed(aws, topo, routers, results)


def test_accepted_writes_that_never_show_fail_at_the_deadline(routers, run_tool, lag):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    lag({"AssignPrivateIpAddresses": 30.0, "*": 0.1})
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]),
                                                     deadline=3))
    assert proc.returncode == 1
    assert "accepted writes still do not show" in proc.stderr and VIP in proc.stderr
    assert "yielding" not in proc.stderr
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert record(run_tool, r1)["outcome"] == "failed"


def test_check_repair_under_lag(routers, run_tool, lag_profile):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = group_config(topo, window=2.5)  # as long as the longest lag of the profiles
    ok(run_tool(r1, "master", "VI_1", config=config))
    aws.settle()
    time.sleep(2.6)  # past the window: drift is drift now, not convergence
    aws.ec2.replace_route(RouteTableId=topo.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                          NetworkInterfaceId=r2.eni("eth1"))
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 2 and "VI_1 CRITICAL" in proc.stdout
    proc = run_tool(r1, "check", "--repair", config=config)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # OK, or WARNING converging
    aws.settle()
    assert holders(aws, topo) == owned_by(r1)
    assert run_tool(r1, "check", config=config).returncode in (0, 1)


lags = st.sampled_from([0.05, 0.3, 0.8, 1.5])


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ip_lag=lags, route_lag=lags, eip_lag=lags, offset=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       first=st.sampled_from(["r1", "r2", None]))
def test_model_two_instances_interleaved_under_lag(routers, run_tool, lag, ip_lag, route_lag, eip_lag,
                                                   offset, first):
    """Model-based: per-action lags, a start offset between the two instances and an initial
    owner are drawn; whatever the interleaving of their writes and (stale) reads, both
    exit 0 and the group ends on one instance."""
    aws, topo = routers.cloud, routers.topology
    aws.clear_lag()
    aws.reset_state()
    if first:
        put_group_on(aws, topo, routers[first])
    lag({"AssignPrivateIpAddresses": ip_lag, "ReplaceRoute": route_lag, "CreateRoute": route_lag,
         "AssociateAddress": eip_lag, "*": 0.1})
    results = split_brain(routers, run_tool, group_config(topo), offset=offset)
    assert_unmixed(aws, topo, routers, results)


def test_a_reapplied_write_that_outlives_the_deadline_is_a_clean_failure(routers, run_tool, lag, fault_proxy):
    """Verification re-applies a drifted route whose answer never comes: the transition
    fails at its deadline with a message, recorded, not "failed unexpectedly" forever
    in-progress."""
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    lag(1.0)
    proxy = fault_proxy(r1, "ec2")
    # deadline 12: read timeout 4 s, so the third attempt is still in flight at the deadline
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), deadline=12, window=1)
    proc = run_tool.popen(r1, "master", "VI_1", config=config, env=proxy.env)
    end = time.monotonic() + 5
    while aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") != r1.eni("eth1") and time.monotonic() < end:
        time.sleep(0.02)
    proxy.add_fault("delay", delay=30, actions={"ReplaceRoute"})  # the re-applied write hangs
    aws.ec2.replace_route(RouteTableId=topo.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                          NetworkInterfaceId=r2.eni("eth1"))
    assert proc.wait(timeout=30) == 1
    err = proc.stderr.read()
    assert "MASTER failed: verification:" in err and "unexpectedly" not in err, err
    assert "deadline" in err.splitlines()[-1]
    assert record(run_tool, r1)["outcome"] == "failed"
