"""assign-ipv6-address: an IPv6 virtual IP moved with UnassignIpv6Addresses + AssignIpv6Addresses.

The address is ::100 of the lan subnet's IPv6 /64 (``Topology.vip6``); eth0 of each router is
in that subnet and holds an IPv6 address of its own, which must never move.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from test_consistency import split_brain
from test_failover import cfg, ok, record, route
from test_fifo import start_reader, stop_reader, wait_for, write_lines


def ipv6(ip, interface="eth0", vrf=None):
    text = f'[[groups.VI_1.assign-ipv6-address]]\nip = "{ip}"\ninterface = "{interface}"\n'
    return text + (f'vrf = "{vrf}"\n' if vrf else "")


def holders6(aws, ip):
    """ENI ids of the lab VPC that list ``ip`` in their Ipv6Addresses (read by the harness)."""
    enis = aws.ec2.describe_network_interfaces(Filters=[{"Name": "vpc-id", "Values": [aws.topology.vpc]}])
    return sorted(n["NetworkInterfaceId"] for n in enis["NetworkInterfaces"]
                  if ip in [a["Ipv6Address"] for a in n.get("Ipv6Addresses", [])])


def own_ipv6s(routers):
    """The routers' own IPv6 addresses (the baseline), by ENI: they never move."""
    return {r.instance.eni(i): list(r.instance.ipv6s[i]) for r in routers for i in r.instance.ipv6s}


def ipv6s_now(aws, enis):
    found = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=sorted(enis))["NetworkInterfaces"]
    return {n["NetworkInterfaceId"]: [a["Ipv6Address"] for a in n.get("Ipv6Addresses", [])] for n in found}


def put_vip6_on(aws, eni, vip6):
    """The harness moves the address to ``eni`` (never lagged)."""
    for holder in holders6(aws, vip6):
        aws.ec2.unassign_ipv6_addresses(NetworkInterfaceId=holder, Ipv6Addresses=[vip6])
    if eni:
        aws.ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6Addresses=[vip6])


def imds_ipv6s(router, ifname="eth0"):
    status, body = router.imds.get(f"/latest/meta-data/network/interfaces/macs/{router.mac(ifname)}/ipv6s")
    return body.split() if status == 200 else []


# ============================================================================ failover


def test_moves_back_and_forth_and_touches_no_other_address(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    config = cfg(ipv6(vip6))
    baseline = own_ipv6s(routers)
    proc = ok(run_tool(r1, "-v", "master", "VI_1", config=config))
    assert holders6(aws, vip6) == [r1.eni("eth0")]
    assert "assign-ipv6-address" in proc.stderr and "assigned" in proc.stderr
    for router, other in ((r2, r1), (r1, r2)):
        proc = ok(run_tool(router, "-v", "master", "VI_1", config=config))
        assert holders6(aws, vip6) == [router.eni("eth0")]
        assert f"unassigned from {other.eni('eth0')} first" in proc.stderr
        assert vip6 in imds_ipv6s(router) and vip6 not in imds_ipv6s(other)  # the metadata service agrees
    now = ipv6s_now(aws, baseline)
    assert {eni: [a for a in addrs if a != vip6] for eni, addrs in now.items()} == baseline
    assert record(run_tool, r1)["outcome"] == "ok"
    assert aws.count_actions()["UnassignIpv6Addresses"] == 2


def test_master_twice_unassigns_nothing_the_second_time(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    vip6 = routers.topology.vip6()
    config = cfg(ipv6(vip6))
    ok(run_tool(r1, "master", "VI_1", config=config))
    aws.reset_counts()
    proc = ok(run_tool(r1, "-v", "master", "VI_1", config=config))
    assert holders6(aws, vip6) == [r1.eni("eth0")]
    assert "assigned again (already here)" in proc.stderr
    calls = aws.count_actions()
    assert calls["AssignIpv6Addresses"] == 1 and not calls.get("UnassignIpv6Addresses"), calls


def test_the_address_written_in_another_form_is_the_same_address(routers, run_tool):
    aws, r2 = routers.cloud, routers.r2
    vip6 = routers.topology.vip6()
    spelled = ipaddress.ip_address(vip6).exploded.upper()  # 2A05:D012:...:0100
    put_vip6_on(aws, routers.r1.eni("eth0"), vip6)
    ok(run_tool(r2, "master", "VI_1", config=cfg(ipv6(spelled))))
    assert holders6(aws, vip6) == [r2.eni("eth0")]
    out = json.loads(ok(run_tool(r2, "status", "ha-notification", "--json", config=cfg(ipv6(spelled)))).stdout)
    assert out["ha-notification"]["groups"][0]["actions"][0]["ip"] == vip6


def test_an_address_nobody_holds_is_assigned_without_unassigning(routers, run_tool):
    aws, r2 = routers.cloud, routers.r2
    vip6 = routers.topology.vip6()
    ok(run_tool(r2, "master", "VI_1", config=cfg(ipv6(vip6))))
    assert holders6(aws, vip6) == [r2.eni("eth0")]
    assert not aws.count_actions().get("UnassignIpv6Addresses")


def move_r1_to_r2_through(routers, run_tool, fault_proxy, kind, action, first=None, **config):
    """The address on r1; r2 runs master through a fault proxy that answers ``action`` with
    ``kind`` (400 with an empty body for "status": an error no client retries by itself)."""
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    put_vip6_on(aws, r1.eni("eth0"), vip6)
    proxy = fault_proxy(r2, "ec2")
    proxy.add_fault(kind, status=400, first=first, actions={action})
    proc = run_tool(r2, "-v", "master", "VI_1", config=cfg(ipv6(vip6), **config), env=proxy.env)
    return proc, proxy, vip6


def test_a_failed_assign_after_the_unassign_is_retried(routers, run_tool, fault_proxy):
    proc, proxy, vip6 = move_r1_to_r2_through(routers, run_tool, fault_proxy, "status", "AssignIpv6Addresses",
                                              first=2)
    ok(proc)
    assert holders6(routers.cloud, vip6) == [routers.r2.eni("eth0")]
    assert proxy.injected[("status", "AssignIpv6Addresses")] == 2
    assert proxy.counts["AssignIpv6Addresses"] == 3


def test_an_assign_that_keeps_failing_says_the_address_is_on_no_eni(routers, run_tool, fault_proxy):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    started = time.monotonic()
    proc, proxy, vip6 = move_r1_to_r2_through(routers, run_tool, fault_proxy, "status", "AssignIpv6Addresses",
                                              deadline=3, window=0)
    assert proc.returncode == 1
    assert time.monotonic() - started < 3 + 3  # within the deadline (plus the process's start)
    assert (f"{vip6} was unassigned from {r1.eni('eth0')} but could not be assigned to {r2.eni('eth0')}, "
            "so it is on no ENI now") in proc.stderr
    assert proxy.counts["AssignIpv6Addresses"] > 1  # retried
    assert holders6(aws, vip6) == []
    assert record(run_tool, r2)["outcome"] == "failed"
    config = cfg(ipv6(vip6), deadline=3, window=0)
    proc = run_tool(r2, "check", config=config)
    assert proc.returncode == 2 and "VI_1 CRITICAL" in proc.stdout
    assert f"{vip6} is not assigned to any ENI of the VPC" in proc.stdout
    proc = run_tool(r2, "check", "--repair", config=config)  # without the proxy: repaired
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert holders6(aws, vip6) == [r2.eni("eth0")]


def test_a_denied_assign_fails_at_once_and_says_so(routers, run_tool, fault_proxy):
    proc, proxy, vip6 = move_r1_to_r2_through(routers, run_tool, fault_proxy, "denied", "AssignIpv6Addresses")
    assert proc.returncode == 1
    assert "AssignIpv6Addresses failed: UnauthorizedOperation" in proc.stderr and "on no ENI now" in proc.stderr
    assert proxy.counts["AssignIpv6Addresses"] == 1
    assert holders6(routers.cloud, vip6) == []


def test_a_denied_unassign_leaves_the_address_where_it_was(routers, run_tool, fault_proxy):
    proc, proxy, vip6 = move_r1_to_r2_through(routers, run_tool, fault_proxy, "denied", "UnassignIpv6Addresses")
    assert proc.returncode == 1
    assert "UnassignIpv6Addresses failed: UnauthorizedOperation" in proc.stderr
    assert "on no ENI" not in proc.stderr and proxy.counts["AssignIpv6Addresses"] == 0
    assert holders6(routers.cloud, vip6) == [routers.r1.eni("eth0")]


def test_master_waits_for_the_metadata_service_to_list_the_address(routers, run_tool):
    aws, r2 = routers.cloud, routers.r2
    vip6 = routers.topology.vip6()
    key = f"meta-data/network/interfaces/macs/{r2.mac('eth0')}/ipv6s"
    r2.imds.overrides[key] = "\n".join(r2.instance.ipv6s[0])  # the ENI's own address: not shown yet

    def lift():
        time.sleep(1.0)
        r2.imds.overrides.pop(key, None)

    threading.Thread(target=lift, daemon=True).start()
    start = time.monotonic()
    ok(run_tool(r2, "master", "VI_1", config=cfg(ipv6(vip6))))
    assert time.monotonic() - start >= 1.0
    assert r2.imds.count("GET", f"/latest/{key}") >= 2
    assert holders6(aws, vip6) == [r2.eni("eth0")]


def test_unconfirmed_names_the_metadata_service_entry(aws):
    """What the metadata service's ipv6s says, read over HTTP from the lab's emulator."""
    from aws_vrrp_notify.actions import AssignIpv6Address, LocalEni
    from aws_vrrp_notify.imds import ImdsClient

    r2 = aws.topology.instances["r2"]
    vip6 = aws.topology.vip6()
    action = AssignIpv6Address(ip=vip6, interface="eth0", vrf="main")
    local = LocalEni("eth0", "main", r2.mac(0), r2.eni(0), aws.topology.vpc, r2.subnets[0])
    imds = ImdsClient(endpoint=aws.serve_imds("r2"))
    assert action.unconfirmed(imds, local) == (f"assigned to {r2.eni(0)}, but the metadata service's ipv6s for "
                                              f"{r2.mac(0)} does not list it")
    put_vip6_on(aws, r2.eni(0), vip6)
    assert action.unconfirmed(imds, local) is None
    # device 2 (ens9) has no IPv6 address: its directory has no ipv6s entry at all
    listing = aws.imds("r2").get(f"/latest/meta-data/network/interfaces/macs/{r2.mac(2)}/")
    assert listing[0] == 200 and "interface-id" in listing[1] and "ipv6s" not in listing[1]
    assert imds.ipv6s(r2.mac(2)) == []


# ============================================================================ status, check, permissions


def test_status_and_check(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    config = cfg(ipv6(vip6), window=0)
    ok(run_tool(r1, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    assert ok(run_tool(r1, "status", "ha-notification", config=config)).stdout.splitlines() == [
        "ha-notification", "    group VI_1", f"        assign-ipv6-address {vip6} interface eth0 vrf main"]
    data = json.loads(ok(run_tool(r2, "status", "ha-notification", "--json", config=config)).stdout)
    assert data["ha-notification"]["groups"][0]["actions"] == [
        {"type": "assign-ipv6-address", "ip": vip6, "interface": "eth0", "vrf": "main", "in-sync": False,
         "reason": f"{vip6} is assigned to {r1.eni('eth0')}, not to {r2.eni('eth0')} (eth0)"}]
    assert ok(run_tool(r1, "check", config=config)).stdout.startswith("VI_1 OK: MASTER, 1/1 actions point here")
    assert ok(run_tool(r2, "check", config=config)).stdout.startswith("VI_1 OK: BACKUP")
    put_vip6_on(aws, r2.eni("eth0"), vip6)  # drift behind r1's back
    proc = run_tool(r1, "check", "--json", config=config)
    assert proc.returncode == 2 and json.loads(proc.stdout)["groups"][0]["actions"][0]["in-sync"] is False
    proc = run_tool(r1, "check", "--repair", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert holders6(aws, vip6) == [r1.eni("eth0")]


def _permission_line(proc):
    return next(l for l in proc.stdout.splitlines() if l.startswith("groups.VI_1.assign-ipv6-address[0]: "))


def test_validate_permissions_proves_both_calls_without_changing_anything(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    put_vip6_on(aws, r2.eni("eth0"), vip6)
    before = ipv6s_now(aws, [r1.eni("eth0"), r2.eni("eth0")])
    for router in (r1, r2):  # the address elsewhere, and here
        proc = ok(run_tool(router, "validate", "--permissions", config=cfg(ipv6(vip6))))
        line = _permission_line(proc)
        assert "AssignIpv6Addresses allowed (no-op request" in line, line
        assert "UnassignIpv6Addresses allowed (no-op request" in line, line
    assert ipv6s_now(aws, [r1.eni("eth0"), r2.eni("eth0")]) == before


def test_validate_permissions_names_a_denied_call(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"UnassignIpv6Addresses"})
    proc = run_tool(r1, "validate", "--permissions", config=cfg(ipv6(routers.topology.vip6())), env=proxy.env)
    assert proc.returncode == 1
    line = _permission_line(proc)
    assert "AssignIpv6Addresses allowed" in line and "UnassignIpv6Addresses DENIED: UnauthorizedOperation" in line


def test_validate_permissions_without_an_address_to_reassign(routers, run_tool):
    """ens9 (in a VRF) has no IPv6 address of its own: no no-op request exists for the assign."""
    r1 = routers.r1
    proc = run_tool(r1, "validate", "--permissions", config=cfg(ipv6(routers.topology.vip6(), "ens9", r1.vrf)))
    assert proc.returncode == 1
    assert f"AssignIpv6Addresses NOT PROBED: {r1.eni('ens9')} holds no IPv6 address" in _permission_line(proc)
    assert not routers.cloud.count_actions().get("AssignIpv6Addresses")


# ============================================================================ fifo mode and hand-back


def test_fifo_master_and_reassert(routers, run_tool, tmp_path):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    config = cfg(ipv6(vip6), window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 1\n")
    fifo, proc = start_reader(run_tool, r1, tmp_path, config)
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
    assert holders6(aws, vip6) == [r1.eni("eth0")]
    put_vip6_on(aws, r2.eni("eth0"), vip6)
    assert wait_for(lambda: holders6(aws, vip6) == [r1.eni("eth0")], timeout=10)
    code, err = stop_reader(proc)
    assert code == 0 and "re-asserting" in err


def test_backup_after_master_hands_the_address_back(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    config = cfg(ipv6(vip6), window=0.5)
    ok(run_tool(r2, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    assert wait_for(lambda: holders6(aws, vip6) == [r1.eni("eth0")], timeout=10)
    assert record(run_tool, r2)["outcome"] == "handed-back"


# ============================================================================ split brain and lag


def dual_stack(topo, anchor="ipv6"):
    """The IPv6 VIP and a route, the IPv6 address first (the anchor) or second."""
    from test_failover import VIP, assign

    six = ipv6(topo.vip6())
    wan = route(subnet=topo.subnet_cidrs["wan"])
    return cfg(six, wan) if anchor == "ipv6" else cfg(assign(VIP), six, wan)


def group_holders(aws, topo):
    from test_failover import VIP

    vip4 = aws.who_holds(VIP)
    six = holders6(aws, topo.vip6())
    return {"vip6": six[0] if len(six) == 1 else tuple(six),
            "wan": aws.route_target(topo.route_tables["wan"], "0.0.0.0/0"),
            "vip4": vip4[0] if len(vip4) == 1 else tuple(vip4)}


def owned_by(router, with_vip4):
    return {"vip6": router.eni("eth0"), "wan": router.eni("eth1"), "vip4": router.eni("eth0") if with_vip4 else ()}


def assert_unmixed(aws, topo, routers, results, with_vip4=False):
    aws.settle()
    now = group_holders(aws, topo)
    logs = "\n".join(f"--- {name}: exit {code}\n{err}" for name, (code, err) in results.items())
    assert all(code == 0 for code, _ in results.values()), logs
    assert now in (owned_by(routers.r1, with_vip4), owned_by(routers.r2, with_vip4)), f"{now}\n{logs}"


@pytest.mark.parametrize("anchor", ["ipv6", "vip4"])
@pytest.mark.parametrize("offset", [0.0, 0.05])
def test_split_brain_ends_unmixed(routers, run_tool, anchor, offset):
    aws, topo = routers.cloud, routers.topology
    put_vip6_on(aws, routers.r1.eni("eth0"), topo.vip6())
    results = split_brain(routers, run_tool, dual_stack(topo, anchor), offset=offset)
    assert_unmixed(aws, topo, routers, results, with_vip4=anchor == "vip4")


def test_split_brain_ends_unmixed_under_lag(routers, run_tool, lag_profile):
    aws, topo = routers.cloud, routers.topology
    results = split_brain(routers, run_tool, dual_stack(topo))
    assert_unmixed(aws, topo, routers, results)


def test_failover_and_back_under_lag(routers, run_tool, lag_profile):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    put_vip6_on(aws, r1.eni("eth0"), topo.vip6())
    config = dual_stack(topo)
    for router in (r2, r1):
        proc = ok(run_tool(router, "master", "VI_1", config=config))
        assert "yielding" not in proc.stderr, proc.stderr
    aws.settle()
    assert group_holders(aws, topo) == owned_by(r1, with_vip4=False)


lags = st.sampled_from([0.05, 0.3, 0.8, 1.5])


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ip_lag=lags, route_lag=lags, offset=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       first=st.sampled_from(["r1", "r2", None]))
def test_model_two_instances_interleaved_under_lag(routers, run_tool, lag, ip_lag, route_lag, offset, first):
    """Per-call lags (the unassign and the assign lag alike), a start offset and an initial
    holder are drawn; whatever the interleaving, both exit 0 and the group ends on one instance."""
    aws, topo = routers.cloud, routers.topology
    aws.clear_lag()
    aws.reset_state()
    if first:
        put_vip6_on(aws, routers[first].eni("eth0"), topo.vip6())
        aws.ec2.create_route(RouteTableId=topo.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                             NetworkInterfaceId=routers[first].eni("eth1"))  # the baseline has no such route
    lag({"AssignIpv6Addresses": ip_lag, "UnassignIpv6Addresses": ip_lag, "ReplaceRoute": route_lag,
         "CreateRoute": route_lag, "*": 0.1})
    results = split_brain(routers, run_tool, dual_stack(topo), offset=offset)
    assert_unmixed(aws, topo, routers, results)


def test_the_lab_refuses_an_address_in_use_at_once_under_lag(aws, lag):
    """As EC2 (no reassignment for IPv6): an assign of an address that another ENI holds once
    the accepted writes land is refused when it is made, not answered with success."""
    from botocore.exceptions import ClientError

    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    vip6 = t.vip6()
    put_vip6_on(aws, e1, vip6)
    lag(1.0)
    tool = aws.client(tool=True)
    with pytest.raises(ClientError) as refused:
        tool.assign_ipv6_addresses(NetworkInterfaceId=e2, Ipv6Addresses=[vip6])
    assert refused.value.response["Error"]["Code"] == "InvalidIPAddress.InUse"
    tool.unassign_ipv6_addresses(NetworkInterfaceId=e1, Ipv6Addresses=[vip6])  # accepted, not landed
    tool.assign_ipv6_addresses(NetworkInterfaceId=e2, Ipv6Addresses=[vip6])
    with pytest.raises(ClientError) as refused:  # e2 holds it once the writes land
        tool.assign_ipv6_addresses(NetworkInterfaceId=e1, Ipv6Addresses=[vip6])
    assert refused.value.response["Error"]["Code"] == "InvalidIPAddress.InUse"
    assert holders6(aws, vip6) == [e1]  # nothing landed yet
    aws.settle()
    assert holders6(aws, vip6) == [e2] and not aws.failed_writes()


def test_back_and_forth_with_stale_reads(routers, run_tool, lag):
    """A holder read from a lagging replica (nobody, or the old holder) must not make the
    move fail or yield: the refused assign is retried with a new read."""
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    vip6 = routers.topology.vip6()
    # IPv6 writes show after 0.2 s; a describe call repeated within 2 s (the longest lag set,
    # though no other write is made) may get an earlier answer: up to 2.2 s old in all
    lag({"AssignIpv6Addresses": 0.2, "UnassignIpv6Addresses": 0.2, "*": 2.0}, stale_reads=1.0, seed=5)
    config = cfg(ipv6(vip6), window=2.5)
    for router in (r1, r2, r1, r2):
        proc = ok(run_tool(router, "-v", "master", "VI_1", config=config))
        assert "yielding" not in proc.stderr, proc.stderr
        aws.settle()
        assert holders6(aws, vip6) == [router.eni("eth0")], proc.stderr
    assert aws.stale_reads_served > 0 and not aws.failed_writes()
