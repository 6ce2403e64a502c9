"""Failover at scale inside EC2's request limits: many routes, throttled like EC2.

The lab throttles the tool's calls with EC2's documented token buckets (writes 50, then 5
per second). A group with 100 routes over 10 route tables must converge with every route
here, without a retry storm (the tool paces itself with the same buckets), and status/check
must keep a constant number of describe calls. How long it takes against what the buckets
allow is measured by benchmarks/scale.py, not asserted here.
"""

from __future__ import annotations

import time

from test_failover import ok, record


def many_routes(topo, tables, per_table, deadline=60):
    lines = [f"[aws]\ndeadline = {deadline}\nprepare = false\nconsistency-window = 1\n[groups.BIG]\n"]
    for t, rtb in enumerate(tables):
        for n in range(per_table):
            lines.append(f'[[groups.BIG.change-route]]\nroute-table = "{rtb}"\n'
                         f'destination = "10.{100 + t}.{n}.0/24"\ninterface = "eth1"\n')
    return "\n".join(lines)


def extra_tables(aws, topo, count):
    ec2 = aws.ec2
    tables = [topo.route_tables["wan"], topo.route_tables["lan"], topo.route_tables["main"]]
    while len(tables) < count:
        tables.append(ec2.create_route_table(VpcId=topo.vpc)["RouteTable"]["RouteTableId"])
    return tables


def point_all(aws, tables, per_table, eni):
    for t, rtb in enumerate(tables):
        for n in range(per_table):
            aws.ec2.create_route(RouteTableId=rtb, DestinationCidrBlock=f"10.{100 + t}.{n}.0/24",
                                 NetworkInterfaceId=eni)


def test_one_hundred_routes_under_ec2_throttling(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    tables = extra_tables(aws, topo, 10)
    point_all(aws, tables, 10, r2.eni("eth1"))
    config = many_routes(topo, tables, 10)
    aws.set_throttle(True)
    try:
        start = time.monotonic()
        proc = ok(run_tool(r1, "master", "BIG", config=config, timeout=120))
        took = time.monotonic() - start
        counts = aws.count_actions()
        throttled = sum(aws.throttled.values())
    finally:
        aws.set_throttle(False)
    wrong = [(rtb, f"10.{100 + t}.{n}.0/24") for t, rtb in enumerate(tables) for n in range(10)
             if aws.route_target(rtb, f"10.{100 + t}.{n}.0/24") != r1.eni("eth1")]
    assert not wrong, wrong
    assert counts["ReplaceRoute"] == 100 + throttled and counts.get("CreateRoute", 0) == 0, (counts, throttled)
    assert throttled <= 5, (throttled, proc.stderr[-2000:])  # paced, not a retry storm
    assert record(run_tool, r1, "BIG")["outcome"] == "ok"
    print(f"100 routes: {took:.1f} s, {throttled} throttled answers")  # the benchmark measures it


def test_status_and_check_read_a_constant_number_of_times(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    tables = extra_tables(aws, topo, 10)
    point_all(aws, tables, 10, r2.eni("eth1"))
    counts = []
    for per_table in (1, 10):
        aws.reset_counts()
        proc = run_tool(r1, "check", config=many_routes(topo, tables, per_table))
        assert proc.returncode == 3  # no transition recorded
        counts.append(sum(aws.count_actions().values()))
    assert counts[0] == counts[1] <= 3, counts
