"""Core failover, end to end: the real tool in router namespaces against moto + fake IMDS.

Every test asserts the resulting AWS state (or that nothing was called), not just exit codes.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

VIP = "10.0.1.100"


def cfg(*actions: str, group: str = "VI_1", deadline: float = 20, prepare: bool = False,
        window: float | None = None) -> str:
    """A configuration; background preparation after BACKUP is off unless a test is about it
    (its detached reads would land in later tests' call counts). ``window``: [aws]
    consistency-window (default: the tool's own)."""
    extra = f"consistency-window = {window}\n" if window is not None else ""
    return (f"[aws]\ndeadline = {deadline}\nprepare = {str(prepare).lower()}\n{extra}[groups.{group}]\n"
            + "\n".join(actions))


def assign(ip=VIP, interface="eth0", vrf=None):
    text = f'[[groups.VI_1.assign-private-ip]]\nip = "{ip}"\ninterface = "{interface}"\n'
    return text + (f'vrf = "{vrf}"\n' if vrf else "")


def route(destination="0.0.0.0/0", interface="eth1", subnet=None, route_table=None, vrf=None):
    where = f'subnet = "{subnet}"' if subnet else f'route-table = "{route_table}"'
    text = f'[[groups.VI_1.change-route]]\n{where}\ndestination = "{destination}"\ninterface = "{interface}"\n'
    return text + (f'vrf = "{vrf}"\n' if vrf else "")


def eip(allocation_id=None, public_ip=None, interface="eth0", private_ip=None):
    key = f'allocation-id = "{allocation_id}"' if allocation_id else f'public-ip = "{public_ip}"'
    text = f'[[groups.VI_1.associate-address]]\n{key}\ninterface = "{interface}"\n'
    return text + (f'private-ip = "{private_ip}"\n' if private_ip else "")


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def record(run_tool, router, group="VI_1"):
    path = run_tool.state_dir(router) / "groups" / f"{group}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_assign_private_ip_moves_back_and_forth(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = cfg(assign())
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    ok(run_tool(r2, "master", "VI_1", config=config))
    assert aws.who_holds(VIP) == [r2.eni("eth0")]
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert record(run_tool, r1)["outcome"] == "ok" and record(run_tool, r1)["state"] == "MASTER"


def test_change_route_by_subnet_cidr_uses_explicit_association(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(route(subnet=topo.subnet_cidrs["wan"]))
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert aws.route_target(topo.route_tables["main"], "0.0.0.0/0") != r1.eni("eth1")
    ok(run_tool(r2, "master", "VI_1", config=config))
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r2.eni("eth1")


def test_change_route_implicit_subnet_falls_back_to_main_table(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    ok(run_tool(r1, "master", "VI_1", config=cfg(route(subnet=topo.subnets["implicit"], destination="10.9.0.0/16"))))
    assert aws.route_target(topo.route_tables["main"], "10.9.0.0/16") == r1.eni("eth1")


def test_change_route_by_table_id_creates_missing_route_and_ipv6(routers, run_tool):
    aws, topo, r2 = routers.cloud, routers.topology, routers.r2
    rtb = topo.route_tables["lan"]
    assert aws.route(rtb, "192.168.0.0/16") is None and aws.route(rtb, "::/0") is None
    config = cfg(route(route_table=rtb, destination="192.168.0.0/16", interface="eth0"),
                 route(route_table=rtb, destination="::/0", interface="eth0"))
    proc = ok(run_tool(r2, "-v", "master", "VI_1", config=config))
    assert aws.route_target(rtb, "192.168.0.0/16") == r2.eni("eth0")
    assert aws.route_target(rtb, "::/0") == r2.eni("eth0")
    assert "created route" in proc.stderr
    assert aws.count_actions()["CreateRoute"] == 2


def test_associate_address_by_allocation_and_public_ip(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign(), eip(allocation_id=topo.eip_alloc, private_ip=VIP))))
    assert aws.eip_association(topo.eip_alloc) == (r1.eni("eth0"), VIP)
    ok(run_tool(r2, "master", "VI_1", config=cfg(eip(public_ip=topo.eip_public_ip))))
    eni, _ = aws.eip_association(topo.eip_alloc)
    assert eni == r2.eni("eth0")


def test_vrf_modelled_as_network_namespace(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign(interface="ens9", vrf=r1.vrf))))
    assert aws.who_holds(VIP) == [r1.eni("ens9")]


def test_master_is_idempotent(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), eip(allocation_id=topo.eip_alloc))
    ok(run_tool(r1, "master", "VI_1", config=config))
    first = (aws.who_holds(VIP), aws.route_target(topo.route_tables["wan"], "0.0.0.0/0"), aws.eip_association())
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert (aws.who_holds(VIP), aws.route_target(topo.route_tables["wan"], "0.0.0.0/0"),
            aws.eip_association()) == first
    assert first[0] == [r1.eni("eth0")] and first[1] == r1.eni("eth1")


def test_warm_master_makes_only_the_mutating_calls(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]))
    ok(run_tool(r1, "master", "VI_1", config=config))
    aws.reset_counts()
    r1.imds.reset()
    ok(run_tool(r1, "master", "VI_1", config=config))
    calls = aws.count_actions()
    writes = {k: v for k, v in calls.items() if not k.startswith("Describe")}
    assert writes == {"AssignPrivateIpAddresses": 1, "ReplaceRoute": 1}
    assert r1.imds.count(prefix="/latest/meta-data/network/interfaces/macs/") <= 2  # local-ipv4s confirmation


def test_stale_cached_route_table_is_resolved_again(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(route(subnet=topo.subnets["wan"], destination="10.8.0.0/16"))
    ok(run_tool(r1, "master", "VI_1", config=config))
    ec2 = aws.ec2
    new = ec2.create_route_table(VpcId=topo.vpc)["RouteTable"]["RouteTableId"]
    assoc = next(a for a in ec2.describe_route_tables(RouteTableIds=[topo.route_tables["wan"]])["RouteTables"][0]
                 ["Associations"] if a.get("SubnetId") == topo.subnets["wan"])
    ec2.replace_route_table_association(AssociationId=assoc["RouteTableAssociationId"], RouteTableId=new)
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.route_target(new, "10.8.0.0/16") == r1.eni("eth1")


def test_notify_mapping(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    config = cfg(assign())
    ok(run_tool(r1, "notify", "INSTANCE", "VI_1", "MASTER", "150", config=config))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    ok(run_tool(r1, "notify", "INSTANCE", "VI_1", "BACKUP", "150", config=config))
    assert record(run_tool, r1)["state"] == "BACKUP"
    assert aws.who_holds(VIP) == [r1.eni("eth0")]  # BACKUP makes no AWS write
    aws.reset_counts()
    proc = ok(run_tool(r1, "-v", "notify", "GROUP", "G_OTHER", "MASTER", "0", config=config))
    assert "ignored" in proc.stderr and aws.count_actions() == {}
    for state in ("FAULT", "STOP"):
        ok(run_tool(r1, "notify", "GROUP", "VI_1", state, "0", config=config))
        assert record(run_tool, r1)["state"] == state
    assert aws.count_actions() == {}


def test_bad_notify_arguments_are_usage_errors(routers, run_tool):
    for args in (["notify", "INSTANCE", "VI_1", "PRIMARY", "100"], ["notify", "HOST", "VI_1", "MASTER"],
                 ["master"], ["notify", "INSTANCE", "VI_1"]):
        proc = run_tool(routers.r1, *args, config=cfg(assign()))
        assert proc.returncode == 2, args
        assert "Usage:" in proc.stderr
    assert routers.cloud.count_actions() == {}


def test_unknown_group_is_a_usage_error(routers, run_tool):
    proc = run_tool(routers.r1, "master", "VI_9", config=cfg(assign()))
    assert proc.returncode == 2
    assert "no group 'VI_9'" in proc.stderr
    assert routers.cloud.count_actions() == {}


def test_not_on_aws_does_nothing(routers, run_tool, tmp_path):
    proc = run_tool(routers.r1, "-v", "master", "VI_1", config=cfg(assign()),
                    env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",
                         "AWS_VRRP_NOTIFY_SYSFS": str(tmp_path)})
    ok(proc)
    assert "not running on AWS" in proc.stderr
    assert routers.cloud.count_actions() == {}
    assert record(run_tool, routers.r1)["outcome"] == "not-on-aws"


def test_ec2_per_dmi_without_imds_is_an_error(routers, run_tool, tmp_path):
    dmi = tmp_path / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("Amazon EC2\n")
    proc = run_tool(routers.r1, "master", "VI_1", config=cfg(assign()),
                    env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",
                         "AWS_VRRP_NOTIFY_SYSFS": str(tmp_path)})
    assert proc.returncode == 1
    assert "this is an EC2 instance (DMI) but the metadata service" in proc.stderr
    assert routers.cloud.count_actions() == {}


def test_unknown_interface_is_a_runtime_error(routers, run_tool):
    proc = run_tool(routers.r1, "master", "VI_1", config=cfg(assign(interface="ens42")))
    assert proc.returncode == 1
    assert "interface ens42 does not exist (vrf main)" in proc.stderr
    assert not [a for a in routers.cloud.count_actions() if not a.startswith("Describe")]
    assert routers.cloud.who_holds(VIP) == []


def test_one_unresolvable_action_does_not_stop_the_others(routers, run_tool):
    """A renamed interface or a released Elastic IP must not keep the VIP from moving."""
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(assign(interface="eth9"), route(subnet=topo.subnet_cidrs["wan"]),
                 eip(public_ip="198.51.100.77"), assign(ip="10.0.1.101"))
    proc = run_tool(r1, "master", "VI_1", config=config)
    assert proc.returncode == 1
    assert "interface eth9 does not exist" in proc.stderr
    assert "no Elastic IP 198.51.100.77" in proc.stderr
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert aws.who_holds("10.0.1.101") == [r1.eni("eth0")]
    rec = record(run_tool, r1)
    assert rec["outcome"] == "failed" and "eth9" in rec["detail"] and "198.51.100.77" in rec["detail"]


def test_dependency_order_is_topological():
    from aws_vrrp_notify.actions import AssignPrivateIp, AssociateAddress, ChangeRoute
    from aws_vrrp_notify.transition import dependency_order

    eip_a = AssociateAddress(allocation_id="eipalloc-1", interface="eth0", private_ip="10.0.1.5", vrf="main")
    eip_b = AssociateAddress(allocation_id="eipalloc-2", interface="eth0", private_ip="10.0.1.6", vrf="main")
    ip_a = AssignPrivateIp(ip="10.0.1.5", interface="eth0", vrf="main")
    ip_b = AssignPrivateIp(ip="10.0.1.6", interface="eth0", vrf="main")
    rt = ChangeRoute(route_table="rtb-1", destination="0.0.0.0/0", interface="eth1", vrf="main")
    actions = [eip_a, eip_b, rt, ip_b, ip_a]
    order = dependency_order(actions, range(len(actions)))
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert order.index(4) < order.index(0) and order.index(3) < order.index(1)
    assert order[:3] == [2, 3, 4]  # independent ones first, in configuration order


def test_missing_vrf_is_a_runtime_error_and_not_created(routers, run_tool):
    name = f"{routers.prefix}-nosuchvrf"
    proc = run_tool(routers.r1, "master", "VI_1", config=cfg(assign(interface="ens9", vrf=name)))
    assert proc.returncode == 1
    assert f"VRF {name} does not exist" in proc.stderr
    assert not os.path.exists(f"/run/netns/{name}")


def test_mac_unknown_to_imds(routers, run_tool):
    r1 = routers.r1
    from aws_vrrp_notify.lab.netns import ip

    ip("link", "set", "eth1", "address", "02:00:00:de:ad:01", ns=r1.ns)
    proc = run_tool(r1, "master", "VI_1", config=cfg(route(subnet=routers.topology.subnet_cidrs["wan"])))
    assert proc.returncode == 1
    assert "does not know MAC 02:00:00:de:ad:01 of interface eth1" in proc.stderr
    assert routers.cloud.route_target(routers.topology.route_tables["wan"], "0.0.0.0/0") != r1.eni("eth1")


def test_imds_token_refresh_after_401(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "imds")  # the first GET answers 401, as with an expired or revoked token
    proxy.add_fault("status", status=401, first=1, methods={"GET"})
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign()), env=proxy.env))
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]
    assert proxy.injected and r1.imds.count("PUT") == 2  # a fresh token after the 401


def test_bad_config_makes_no_aws_or_imds_call(routers, run_tool):
    from pathlib import Path

    corpus = sorted((Path(__file__).parent / "bad_configs").glob("*.toml"))
    assert corpus
    for path in corpus:
        cfgfile = run_tool.tmp / f"bad-{path.name}"
        cfgfile.write_bytes(path.read_bytes())
        os.chmod(cfgfile, 0o600)
        proc = run_tool(routers.r1, "-c", str(cfgfile), "master", "A")
        assert proc.returncode == 2, (path.name, proc.stderr)
        expected = (path.with_suffix(".expected")).read_text().splitlines()
        assert [l.strip() for l in proc.stderr.splitlines()[-len(expected):]] == expected, path.name
    assert routers.cloud.count_actions() == {}
    assert routers.r1.imds.count() == 0


def test_concurrent_master_and_backup_follow_the_last_event(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    config = cfg(assign())
    rng = random.Random(7)
    seq = 0
    for round_ in range(6):
        events = [rng.choice(["master", "backup"]) for _ in range(5)]
        procs = []
        for event in events:
            procs.append(run_tool.popen(r1, event, "VI_1", config=config))
            time.sleep(rng.uniform(0.012, 0.03))  # more than a clock tick: the start order is known
        for p in procs:
            assert p.wait(timeout=60) == 0, p.stderr.read()
        last = record(run_tool, r1)
        assert seq < last["seq"] <= seq + 5  # an event that started before the recorded one is dropped
        seq = last["seq"]
        # the record reflects the event started last, and a superseded master never reports success
        assert last["state"] == events[-1].upper(), (events, last)
        if last["state"] == "MASTER":
            assert last["outcome"] == "ok", last
            assert aws.who_holds(VIP) == [r1.eni("eth0")]


def test_backup_prepares_the_next_master(routers, run_tool):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), prepare=True)
    ok(run_tool(r1, "backup", "VI_1", config=config))
    plan = run_tool.state_dir(r1) / "cache" / "plan-VI_1.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (plan.exists() and plan.stat().st_size > 2):
        time.sleep(0.05)
    assert plan.exists(), "the background preparation wrote no plan"
    time.sleep(0.3)  # let the detached child finish (it makes sure the trimmed model is cached)
    assert not [a for a in aws.count_actions() if not a.startswith("Describe")]  # reads only
    assert aws.who_holds(VIP) == []
    aws.reset_counts()
    ok(run_tool(r1, "master", "VI_1", config=config))
    sequence = [c.action for c in aws.calls()]
    first_reads = sequence.index(next(a for a in sequence if a.startswith("Describe")))
    assert set(sequence[:first_reads]) == {"AssignPrivateIpAddresses", "ReplaceRoute", "CreateRoute"}
    assert first_reads == 3  # the route did not exist yet: ReplaceRoute, then CreateRoute
    assert aws.who_holds(VIP) == [r1.eni("eth0")]


def test_role_arn_and_profile(routers, run_tool):
    """[aws] role-arn (STS AssumeRole, at moto's STS) with the credentials of [aws] profile."""
    aws, r1 = routers.cloud, routers.r1
    shared = run_tool.tmp / "aws-config"
    # with a profile set, botocore takes credentials from the profile, not from the environment
    shared.write_text("[profile ha]\nregion = eu-west-3\naws_access_key_id = HAKEY\naws_secret_access_key = HASECRET\n")
    config = ('[aws]\ndeadline = 20\nprepare = false\nprofile = "ha"\n'
              'role-arn = "arn:aws:iam::123456789012:role/vrrp-failover"\n[groups.VI_1]\n' + assign())
    ok(run_tool(r1, "master", "VI_1", config=config,
                env={"AWS_CONFIG_FILE": str(shared), "AWS_ENDPOINT_URL_STS": r1.moto_url}))
    assert aws.count_actions()["AssumeRole"] >= 1, [(c.action, c.params.get("RoleArn")) for c in aws.calls()]
    assert aws.who_holds(VIP) == [r1.eni("eth0")]


def test_an_event_whose_process_started_earlier_is_not_recorded_after_a_later_one(tmp_path):
    """keepalived forks notify scripts in event order; a slow `master` that reaches the
    state directory after the `backup` that followed it must not be applied."""
    from aws_vrrp_notify.state import StateStore, process_start

    me = process_start()
    assert me and len(me[0]) >= 32 and isinstance(me[1], int)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = StateStore(str(state)).open(create=True)
    assert store.record("VI_1", "BACKUP", started=[me[0], me[1] + 5]) == 1
    assert store.record("VI_1", "MASTER", started=me) is None  # older: ignored
    assert store.read("VI_1")["state"] == "BACKUP"
    assert store.record("VI_1", "MASTER", started=[me[0], me[1] + 5]) == 2  # a tie: order of arrival
    assert store.record("VI_1", "BACKUP", started=["another boot", 0]) == 3
    assert store.record("VI_1", "FAULT") == 4  # fifo mode records without a start time
    store.close()
