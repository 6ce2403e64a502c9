"""change-route to a managed prefix list and on every route table with a tag: failover, back
and forth, split brain (also under the lag profiles), status JSON, check codes and --repair,
fifo re-assertion, validate --permissions. Every test asserts the resulting AWS state.

The lab's tables tagged ``ha-group=VI_1`` are those of the client subnets in two
Availability Zones (topology.tagged_route_tables); lan, wan and main carry no such tag.
"""

from __future__ import annotations

import json
import time

from test_consistency import back_and_forth, split_brain
from test_failover import VIP, assign, cfg, ok, record, route
from test_fifo import start_reader, stop_reader, wait_for, write_lines

TAGGED_DEST = "10.77.0.0/16"


def tagged(tag="ha-group=VI_1", destination=TAGGED_DEST, interface="eth1", group="VI_1"):
    return (f'[[groups.{group}.change-route]]\nroute-table-tag = "{tag}"\ndestination = "{destination}"\n'
            f'interface = "{interface}"\n')


def tagged_targets(aws, topo, destination=TAGGED_DEST):
    return [aws.route_target(rtb, destination) for rtb in topo.tagged_route_tables]


def the_group(topo, **kw):
    """A tagged route (the anchor: several tables), a prefix-list route and the VIP."""
    return cfg(tagged(), route(route_table=topo.route_tables["lan"], destination=topo.prefix_list, interface="eth0"),
               assign(), **kw)


def holders(aws, topo):
    vip = aws.who_holds(VIP)
    return {"tagged": tuple(tagged_targets(aws, topo)), "pl": aws.route_target(topo.route_tables["lan"], topo.prefix_list),
            "vip": vip[0] if len(vip) == 1 else tuple(vip)}


def owned_by(router, topo):
    return {"tagged": (router.eni("eth1"),) * len(topo.tagged_route_tables), "pl": router.eni("eth0"),
            "vip": router.eni("eth0")}


def writes(aws):
    return {k: v for k, v in aws.count_actions().items() if not k.startswith("Describe")}


# ---------------------------------------------------------------- prefix lists


def test_prefix_list_route_moves_back_and_forth(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    rtb, pl = topo.route_tables["wan"], topo.prefix_list
    config = cfg(route(route_table=rtb, destination=pl))
    assert aws.route(rtb, pl) is None
    proc = ok(run_tool(r1, "-v", "master", "VI_1", config=config))
    assert "created route" in proc.stderr
    assert aws.route(rtb, pl) == {"DestinationPrefixListId": pl, "NetworkInterfaceId": r1.eni("eth1"),
                                  "Origin": "CreateRoute", "State": "active"}
    aws.reset_counts()
    ok(run_tool(r2, "master", "VI_1", config=config))
    assert aws.route_target(rtb, pl) == r2.eni("eth1")
    assert writes(aws) == {"ReplaceRoute": 1}
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.route_target(rtb, pl) == r1.eni("eth1")
    assert aws.route(rtb, "0.0.0.0/0") is None  # a prefix list is its own destination
    assert record(run_tool, r1)["outcome"] == "ok"


def test_prefix_list_that_does_not_exist_fails_that_action_only(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(assign(), route(route_table=topo.route_tables["wan"], destination="pl-0123456789abcdef0"))
    proc = run_tool(r1, "master", "VI_1", config=config)
    assert proc.returncode == 1
    assert "InvalidPrefixListID.NotFound" in proc.stderr and "pl-0123456789abcdef0" in proc.stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]


def test_prefix_list_route_check_codes_and_repair(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    rtb, pl = topo.route_tables["lan"], topo.prefix_list
    config = cfg(route(route_table=rtb, destination=pl, interface="eth0"), window=0)
    ok(run_tool(r1, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    assert run_tool(r1, "check", config=config).returncode == 0
    assert run_tool(r2, "check", config=config).returncode == 0
    aws.ec2.replace_route(RouteTableId=rtb, DestinationPrefixListId=pl, NetworkInterfaceId=r2.eni("eth0"))
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 2, proc.stdout
    assert f"route {pl} in {rtb} targets {r2.eni('eth0')}" in proc.stdout
    proc = run_tool(r2, "check", config=config)  # BACKUP, and AWS points here
    assert proc.returncode == 1 and "VI_1 WARNING: BACKUP but AWS still points here" in proc.stdout
    proc = run_tool(r1, "check", "--repair", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert aws.route_target(rtb, pl) == r1.eni("eth0")
    data = json.loads(ok(run_tool(r1, "status", "ha-notification", "--json", config=config)).stdout)
    action = data["ha-notification"]["groups"][0]["actions"][0]
    assert action == {"type": "change-route", "route-table": rtb, "destination": pl, "interface": "eth0",
                      "vrf": "main", "in-sync": True}


# ---------------------------------------------------------------- tagged route tables


def test_every_tagged_table_of_the_vpc_and_only_those(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    ec2 = aws.ec2
    other_value = ec2.create_route_table(VpcId=topo.vpc, TagSpecifications=[{
        "ResourceType": "route-table", "Tags": [{"Key": "ha-group", "Value": "VI_2"}]}])["RouteTable"]["RouteTableId"]
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    other_vpc = ec2.create_route_table(VpcId=default_vpc, TagSpecifications=[{
        "ResourceType": "route-table", "Tags": [{"Key": "ha-group", "Value": "VI_1"}]}])["RouteTable"]["RouteTableId"]
    try:
        config = cfg(tagged())
        proc = ok(run_tool(r1, "-v", "master", "VI_1", config=config))
        assert len(topo.tagged_route_tables) == 2
        assert tagged_targets(aws, topo) == [r1.eni("eth1")] * 2
        for rtb in (other_value, other_vpc, topo.route_tables["lan"], topo.route_tables["wan"],
                    topo.route_tables["main"]):
            assert aws.route(rtb, TAGGED_DEST) is None, rtb
        assert f"created route in {', '.join(topo.tagged_route_tables)}" in proc.stderr
        aws.reset_counts()
        ok(run_tool(r2, "master", "VI_1", config=config))
        assert tagged_targets(aws, topo) == [r2.eni("eth1")] * 2
        assert writes(aws) == {"ReplaceRoute": 2}  # one write per table
        assert aws.count_actions()["DescribeRouteTables"] >= 1
    finally:
        ec2.delete_route_table(RouteTableId=other_vpc)  # reset_state looks after the lab's VPC only


def test_tagged_tables_are_cached_in_the_plan(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(tagged(), assign())
    ok(run_tool(r1, "master", "VI_1", config=config))
    plan = json.loads((run_tool.state_dir(r1) / "cache" / "plan-VI_1.json").read_text())
    assert plan["targets"][0] == {"eni": r1.eni("eth1"), "route_tables": topo.tagged_route_tables}
    aws.reset_counts()
    ok(run_tool(r1, "master", "VI_1", config=config))
    sequence = [c.action for c in aws.calls()]
    first_read = sequence.index(next(a for a in sequence if a.startswith("Describe")))
    assert sorted(sequence[:first_read]) == ["AssignPrivateIpAddresses", "ReplaceRoute", "ReplaceRoute"]
    assert sequence.count("DescribeRouteTables") <= 3  # verification only: one snapshot per pass


def test_a_table_tagged_later_is_found_by_the_next_master(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(tagged(), window=0)
    ok(run_tool(r1, "master", "VI_1", config=config))
    new = aws.ec2.create_route_table(VpcId=topo.vpc, TagSpecifications=[{
        "ResourceType": "route-table", "Tags": [{"Key": "ha-group", "Value": "VI_1"}]}])["RouteTable"]["RouteTableId"]
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 2 and f"no route {TAGGED_DEST} in {new}" in proc.stdout, proc.stdout
    ok(run_tool(r2, "master", "VI_1", config=config))  # r2 has no cached plan
    assert aws.route_target(new, TAGGED_DEST) == r2.eni("eth1")
    ok(run_tool(r1, "master", "VI_1", config=config))  # r1's cached plan misses the new table
    assert [aws.route_target(rtb, TAGGED_DEST) for rtb in topo.tagged_route_tables + [new]] == [r1.eni("eth1")] * 3


def test_no_tagged_table_is_an_error_of_that_action_only(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(tagged(tag="ha-group=nobody"), assign(), route(subnet=topo.subnet_cidrs["wan"]), window=0)
    proc = run_tool(r1, "master", "VI_1", config=config)
    assert proc.returncode == 1
    assert f"no route table of {topo.vpc} has the tag ha-group=nobody" in proc.stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert record(run_tool, r1)["outcome"] == "failed" and "ha-group=nobody" in record(run_tool, r1)["detail"]
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 2 and "ha-group=nobody" in proc.stdout


def test_status_and_check_report_each_table(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(tagged(), window=0)
    first, second = topo.tagged_route_tables
    ok(run_tool(r1, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    data = json.loads(ok(run_tool(r1, "status", "ha-notification", "--json", config=config)).stdout)
    assert data["ha-notification"]["groups"][0]["actions"] == [{
        "type": "change-route", "route-table-tag": "ha-group=VI_1", "destination": TAGGED_DEST,
        "interface": "eth1", "vrf": "main", "in-sync": True,
        "route-tables": [{"route-table": first, "in-sync": True}, {"route-table": second, "in-sync": True}]}]
    assert ok(run_tool(r1, "status", "ha-notification", config=config)).stdout.splitlines()[-1] == \
        f"        change-route tag:ha-group=VI_1 {TAGGED_DEST} interface eth1 vrf main"
    assert [run_tool(r, "check", config=config).returncode for r in (r1, r2)] == [0, 0]

    # the peer takes one table: out of sync on r1 (naming that table only), held in part by r2
    aws.ec2.replace_route(RouteTableId=second, DestinationCidrBlock=TAGGED_DEST, NetworkInterfaceId=r2.eni("eth1"))
    data = json.loads(ok(run_tool(r1, "status", "--json", config=config)).stdout)
    action = data["ha-notification"]["groups"][0]["actions"][0]
    assert action["in-sync"] is False
    assert action["route-tables"] == [
        {"route-table": first, "in-sync": True},
        {"route-table": second, "in-sync": False, "reason": f"route {TAGGED_DEST} in {second} targets "
                                                            f"{r2.eni('eth1')} of another instance or interface"}]
    assert action["reason"] == f"1 of 2 route tables tagged ha-group=VI_1: " + action["route-tables"][1]["reason"]
    assert first not in action["reason"]
    assert ok(run_tool(r1, "status", "ha-notification", config=config)).stdout.splitlines() == [
        "ha-notification", "    group VI_1"]
    proc = run_tool(r1, "check", "--json", config=config)
    assert proc.returncode == 2
    group = json.loads(proc.stdout)["groups"][0]
    assert group["status"] == "CRITICAL" and second in group["summary"] and first not in group["summary"]
    proc = run_tool(r2, "check", config=config)
    assert proc.returncode == 1, proc.stdout
    assert "BACKUP but AWS still points here: change-route tag:ha-group=VI_1" in proc.stdout

    proc = run_tool(r1, "check", "--repair", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tagged_targets(aws, topo) == [r1.eni("eth1")] * 2
    assert run_tool(r2, "check", config=config).returncode == 0


def test_validate_permissions_probes_every_tagged_table(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(tagged(destination=topo.prefix_list))
    proc = ok(run_tool(r1, "validate", "--permissions", config=config))
    line = next(l for l in proc.stdout.splitlines() if l.startswith("groups.VI_1.change-route[0]"))
    for rtb in topo.tagged_route_tables:
        assert f"{rtb}: ReplaceRoute allowed (DryRun); CreateRoute allowed (DryRun)" in line, line
    assert tagged_targets(aws, topo, topo.prefix_list) == [None, None]  # a dry run changes nothing
    probes = [c for c in aws.calls() if c.action in ("ReplaceRoute", "CreateRoute")]
    assert sorted(c.params["RouteTableId"] for c in probes) == sorted(topo.tagged_route_tables * 2)
    assert all(c.params.get("DryRun") == "true" for c in probes)


# ---------------------------------------------------------------- lag, split brain, fifo


def put_group_on(aws, topo, router):
    """The harness (never lagged) points the whole group at ``router``."""
    ec2 = aws.ec2
    ec2.assign_private_ip_addresses(NetworkInterfaceId=router.eni("eth0"), PrivateIpAddresses=[VIP],
                                    AllowReassignment=True)
    ec2.create_route(RouteTableId=topo.route_tables["lan"], DestinationPrefixListId=topo.prefix_list,
                     NetworkInterfaceId=router.eni("eth0"))
    for rtb in topo.tagged_route_tables:
        ec2.create_route(RouteTableId=rtb, DestinationCidrBlock=TAGGED_DEST, NetworkInterfaceId=router.eni("eth1"))
    assert holders(aws, topo) == owned_by(router, topo)


def test_failover_under_lag(routers, run_tool, lag_profile):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    put_group_on(aws, topo, r1)
    proc = ok(run_tool(r2, "master", "VI_1", config=the_group(topo)))
    assert "yielding" not in proc.stderr and "handing it back" not in proc.stderr, proc.stderr
    aws.settle()
    assert holders(aws, topo) == owned_by(r2, topo), proc.stderr


def test_back_and_forth_under_lag(routers, run_tool, lag_profile):
    aws, topo = routers.cloud, routers.topology
    back_and_forth(routers, run_tool, the_group(topo))
    assert holders(aws, topo) == owned_by(routers.r1, topo)


def assert_unmixed(aws, topo, routers, results):
    aws.settle()
    now = holders(aws, topo)
    logs = "\n".join(f"--- {name}: exit {code}\n{err}" for name, (code, err) in results.items())
    assert all(code == 0 for code, _ in results.values()), logs
    assert now in (owned_by(routers.r1, topo), owned_by(routers.r2, topo)), f"{now}\n{logs}"


def test_split_brain_ends_unmixed_under_lag(routers, run_tool, lag_profile):
    """The anchor is the tagged route: its first table decides who keeps the group."""
    aws, topo = routers.cloud, routers.topology
    assert_unmixed(aws, topo, routers, split_brain(routers, run_tool, the_group(topo)))


def test_split_brain_from_a_mixed_start(routers, run_tool, lag):
    """Each instance starts holding one tagged table: still one owner at the end."""
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    first, second = topo.tagged_route_tables
    aws.ec2.create_route(RouteTableId=first, DestinationCidrBlock=TAGGED_DEST, NetworkInterfaceId=r2.eni("eth1"))
    aws.ec2.create_route(RouteTableId=second, DestinationCidrBlock=TAGGED_DEST, NetworkInterfaceId=r1.eni("eth1"))
    lag({"ReplaceRoute": 0.8, "CreateRoute": 0.8, "*": 0.1})
    results = split_brain(routers, run_tool, cfg(tagged(), assign()), offset=0.05)
    aws.settle()
    logs = "\n".join(f"--- {name}: exit {code}\n{err}" for name, (code, err) in results.items())
    assert all(code == 0 for code, _ in results.values()), logs
    owners = {tuple(tagged_targets(aws, topo)), (aws.who_holds(VIP) or [None])[0]}
    assert owners in ({(r1.eni("eth1"),) * 2, r1.eni("eth0")}, {(r2.eni("eth1"),) * 2, r2.eni("eth0")}), \
        f"{owners}\n{logs}"


def test_fifo_reasserts_a_drifted_table(routers, run_tool, tmp_path):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(tagged(), window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 1\n")
    fifo, proc = start_reader(run_tool, r1, tmp_path, config)
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
    assert tagged_targets(aws, topo) == [r1.eni("eth1")] * 2
    second = topo.tagged_route_tables[1]
    aws.ec2.replace_route(RouteTableId=second, DestinationCidrBlock=TAGGED_DEST, NetworkInterfaceId=r2.eni("eth1"))
    assert wait_for(lambda: tagged_targets(aws, topo) == [r1.eni("eth1")] * 2, timeout=10)
    code, err = stop_reader(proc)
    assert code == 0 and "re-asserting" in err and second in err


def test_backup_hands_back_a_table_still_pointing_here(routers, run_tool):
    """MASTER -> BACKUP with only the second table still here: it goes to the peer too."""
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(tagged(), window=0.5)
    first, second = topo.tagged_route_tables
    ok(run_tool(r2, "master", "VI_1", config=config))
    aws.ec2.replace_route(RouteTableId=first, DestinationCidrBlock=TAGGED_DEST, NetworkInterfaceId=r1.eni("eth1"))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    assert wait_for(lambda: tagged_targets(aws, topo) == [r1.eni("eth1")] * 2, timeout=10)
    assert wait_for(lambda: record(run_tool, r2)["outcome"] == "handed-back", timeout=5)
    time.sleep(0.2)
    assert aws.route_target(second, TAGGED_DEST) == r1.eni("eth1")


def test_a_target_not_written_yet_is_no_evidence():
    """After a re-resolution (a table joined the tag), a peer on the new target is drift to
    write over, not a competitor to yield to, until this run has written it."""
    from aws_vrrp_notify.actions import Observation
    from aws_vrrp_notify.transition import DRIFTED, FOREIGN, WriteLedger

    ledger = WriteLedger(window=0)
    peer = Observation(False, "eni-peer", "held by the peer")
    ledger.wrote(0)
    assert ledger.judge(0, peer, time.monotonic(), ["eni-mine"]) == FOREIGN
    ledger.retarget(0)
    assert ledger.judge(0, peer, time.monotonic(), ["eni-mine"]) == DRIFTED
    ledger.wrote(0)
    assert ledger.judge(0, peer, time.monotonic(), ["eni-mine"]) == FOREIGN
