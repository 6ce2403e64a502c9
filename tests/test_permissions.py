"""validate --permissions against endpoints that misbehave: one that ignores DryRun (the
fault proxy's ``ignore-dryrun`` forwards the request without it, so moto carries it out)
and one that denies a describe call. The AWS state after each run is checked too."""

from __future__ import annotations

from test_failover import assign, cfg, eip, ok, route


def _lines(proc) -> dict:
    """{action type and what it names: its line} of validate --permissions' output."""
    return {l.split(": ", 2)[1]: l for l in proc.stdout.splitlines() if l.startswith("groups.")}


def _everything_on_r2(routers, run_tool, config):
    aws, topo, r2 = routers.cloud, routers.topology, routers.r2
    ok(run_tool(r2, "master", "VI_1", config=config))
    rtb = topo.route_tables["wan"]
    assert aws.route_target(rtb, "0.0.0.0/0") == r2.eni("eth1") and aws.eip_association()[0] == r2.eni("eth0")
    return rtb


def test_a_dry_run_carried_out_is_a_failure_naming_the_change(routers, run_tool, fault_proxy):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), eip(allocation_id=topo.eip_alloc))
    rtb = _everything_on_r2(routers, run_tool, config)
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("ignore-dryrun", actions={"ReplaceRoute"})  # only this call: the describes honour DryRun
    proc = run_tool(r1, "validate", "--permissions", config=config, env=proxy.env)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _lines(proc)
    route_line = next(l for k, l in lines.items() if k.startswith("change-route"))
    assert (f"ReplaceRoute NOT A DRY RUN: the endpoint ignored DryRun and carried the request out: route "
            f"0.0.0.0/0 in {rtb} now points to {r1.eni('eth1')} (was {r2.eni('eth1')})") in route_line
    assert "CreateRoute NOT PROBED: the endpoint ignores DryRun (ReplaceRoute was answered as a real request)" \
        in route_line
    assert "NOT PROBED: the endpoint ignores DryRun" in next(l for k, l in lines.items()
                                                             if k.startswith("associate-address"))
    assert "allowed (no-op request" in next(l for k, l in lines.items() if k.startswith("assign-private-ip"))
    # the report is true: the route moved, nothing else did (no write probe after it)
    assert aws.route_target(rtb, "0.0.0.0/0") == r1.eni("eth1")
    assert aws.eip_association()[0] == r2.eni("eth0")
    assert proxy.counts["CreateRoute"] == 0 and proxy.counts["AssociateAddress"] == 0


def test_an_endpoint_ignoring_dry_run_gets_no_write_probe(routers, run_tool, fault_proxy):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), eip(allocation_id=topo.eip_alloc))
    rtb = _everything_on_r2(routers, run_tool, config)
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("ignore-dryrun")
    proc = run_tool(r1, "validate", "--permissions", config=config, env=proxy.env)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ec2:DescribeNetworkInterfaces: allowed, but the endpoint ignored DryRun and answered a real " \
           "request (a read: nothing changed)" in proc.stdout
    lines = _lines(proc)
    for kind in ("change-route", "associate-address"):
        assert "NOT PROBED: the endpoint ignores DryRun (DescribeNetworkInterfaces was answered as a real " \
               "request)" in next(l for k, l in lines.items() if k.startswith(kind))
    assert aws.route_target(rtb, "0.0.0.0/0") == r2.eni("eth1") and aws.eip_association()[0] == r2.eni("eth0")
    assert {a: proxy.counts[a] for a in ("ReplaceRoute", "CreateRoute", "AssociateAddress")} == \
        {"ReplaceRoute": 0, "CreateRoute": 0, "AssociateAddress": 0}


def test_a_denied_describe_stops_no_other_probe(routers, run_tool, fault_proxy):
    topo, r1 = routers.topology, routers.r1
    by_table = route(destination="10.9.0.0/16", route_table=topo.route_tables["lan"], interface="eth0")
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), by_table, eip(allocation_id=topo.eip_alloc))
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"DescribeSubnets"})
    proc = run_tool(r1, "validate", "--permissions", config=config, env=proxy.env)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ec2:DescribeSubnets: DENIED: UnauthorizedOperation" in proc.stdout
    lines = _lines(proc)
    assert len(lines) == 4, proc.stdout  # every action is reported
    by_subnet = lines[f"change-route {topo.subnet_cidrs['wan']} 0.0.0.0/0 interface eth1 vrf main"]
    assert "NOT PROBED: resolving it needs ec2:DescribeSubnets, which failed (above)" in by_subnet
    assert "ReplaceRoute allowed (DryRun); CreateRoute allowed (DryRun)" in \
        lines[f"change-route {topo.route_tables['lan']} 10.9.0.0/16 interface eth0 vrf main"]
    assert "allowed (no-op request" in next(l for k, l in lines.items() if k.startswith("assign-private-ip"))
    assert "allowed (DryRun)" in next(l for k, l in lines.items() if k.startswith("associate-address"))
    assert "ec2:DescribeRouteTables: allowed (DryRun)" in proc.stdout
