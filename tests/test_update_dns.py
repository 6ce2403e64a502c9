"""update-dns: Route 53 records (A, AAAA) that follow the MASTER, end to end.

The tool runs in the router namespaces against the lab's moto, which serves Route 53 on
the same endpoint as EC2 (AWS_ENDPOINT_URL_ROUTE_53); the lab VPC has a private hosted
zone (topology.zone_id, "lab.internal"). Every test asserts the records (and, for the
groups that move an address too, EC2) after the run, and counts Route 53 calls with the
cloud's request log.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from test_consistency import split_brain
from test_failover import VIP, assign, cfg, ok, record

NAME = "vip.lab.internal"


def dns(zone, name=NAME, value="private", interface="eth0", ttl=None, group="VI_1"):
    text = (f'[[groups.{group}.update-dns]]\nzone-id = "{zone}"\nname = "{name}"\nvalue = "{value}"\n'
            f'interface = "{interface}"\n')
    return text + (f"ttl = {ttl}\n" if ttl is not None else "")


def changes(aws):
    """The tool's ChangeResourceRecordSets calls: [{name: value}] per call."""
    out = []
    for call in aws.calls("ChangeResourceRecordSets"):
        n, batch = 1, {}
        while f"Change.{n}.Name" in call.params:
            batch[call.params[f"Change.{n}.Name"]] = call.params.get(f"Change.{n}.Value.1")
            n += 1
        out.append(batch)
    return out


def ip_of(router, ifname="eth0"):
    return router.addrs[ifname]


def test_failover_and_back_moves_the_record(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(dns(topo.zone_id))
    for router in (r1, r2, r1):
        aws.reset_counts()
        proc = ok(run_tool(router, "-v", "master", "VI_1", config=config))
        assert aws.dns_values(NAME) == [ip_of(router)], proc.stderr
        assert aws.dns_record(NAME)["TTL"] == 10
        assert changes(aws) == [{NAME: ip_of(router)}]
        assert "INSYNC" in proc.stderr  # moto answers INSYNC at once: logged, never waited for
        assert aws.count_actions()["GetChange"] == 0
    assert record(run_tool, r1)["outcome"] == "ok"



def test_master_does_not_wait_for_insync(routers, run_tool):
    """Route 53 says PENDING until its name servers have the change (here: a minute);
    master verifies the record by reading it back, logs the change, and exits."""
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    aws.set_route53_sync(60)
    start = time.monotonic()
    proc = ok(run_tool(r1, "-v", "master", "VI_1", config=cfg(dns(topo.zone_id))))
    assert time.monotonic() - start < 10
    assert aws.dns_values(NAME) == [ip_of(r1)]
    change = re.search(rf"upserted {NAME} A {ip_of(r1)} in zone {topo.zone_id} \(change (C\w+) PENDING\)",
                       proc.stderr)
    assert change, proc.stderr
    assert "INSYNC" not in proc.stderr and aws.count_actions()["GetChange"] == 0
    tool = aws.client("route53", tool=True)
    assert tool.get_change(Id=change.group(1))["ChangeInfo"]["Status"] == "PENDING"


def group(topo, **kw):
    """The VIP, and two records of the lab zone: the router's own address and the VIP."""
    return cfg(assign(), dns(topo.zone_id), dns(topo.zone_id, "vip2.lab.internal", VIP), **kw)


def owned_by(aws, router):
    """Whether the VIP and both records of group() point to ``router``."""
    return (aws.who_holds(VIP) == [router.eni("eth0")] and aws.dns_values(NAME) == [ip_of(router)]
            and aws.dns_values("vip2.lab.internal") == [VIP])


def test_one_change_per_zone_and_one_read_per_zone(routers, run_tool, second_zone):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    ipv6 = r1.instance.ipv6s[0][0]
    config = cfg(assign(), dns(topo.zone_id), dns(topo.zone_id, "vip2.lab.internal", VIP),
                 dns(topo.zone_id, "vip6.lab.internal", "ipv6", ttl=60), dns(second_zone, "vip.example.test"),
                 dns(second_zone, "www.example.test", VIP))
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert sorted(changes(aws), key=len) == [
        {"vip.example.test": ip_of(r1), "www.example.test": VIP},
        {NAME: ip_of(r1), "vip2.lab.internal": VIP, "vip6.lab.internal": ipv6}]
    assert aws.dns_values("vip6", "AAAA") == [ipv6] and aws.dns_record("vip6", "AAAA")["TTL"] == 60
    assert aws.route53.list_resource_record_sets(HostedZoneId=second_zone, StartRecordName="www.example.test",
                                                 MaxItems="1")["ResourceRecordSets"][0]["ResourceRecords"] == \
        [{"Value": VIP}]
    for args in (["status", "ha-notification", "--json"], ["check"]):
        aws.reset_counts()
        proc = ok(run_tool(r1, *args, config=config))
        assert aws.count_actions()["ListResourceRecordSets"] == 2, proc.stdout  # one per zone
        assert aws.count_actions()["ChangeResourceRecordSets"] == 0
    assert all(a["in-sync"] for a in json.loads(ok(run_tool(r1, "status", "ha-notification", "--json",
                                                              config=config)).stdout)
               ["ha-notification"]["groups"][0]["actions"])


@pytest.fixture
def second_zone(routers):
    """A public hosted zone besides the lab's private one; removed after the test."""
    r53 = routers.cloud.route53
    zone = r53.create_hosted_zone(Name="example.test.", CallerReference=f"test-{time.time()}")["HostedZone"]["Id"]
    zone = zone.rsplit("/", 1)[-1]
    yield zone
    records = [r for r in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
               if r["Type"] not in ("SOA", "NS")]
    for r in records:
        r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
            {"Action": "DELETE", "ResourceRecordSet": r}]})
    r53.delete_hosted_zone(Id=zone)


def test_status_text_and_json(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = group(topo)
    ok(run_tool(r1, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    aws.reset_counts()
    data = json.loads(ok(run_tool(r1, "status", "ha-notification", "--json", config=config)).stdout)
    actions = data["ha-notification"]["groups"][0]["actions"]
    assert actions[1] == {"type": "update-dns", "zone-id": topo.zone_id, "name": NAME, "value": "private",
                          "interface": "eth0", "vrf": "main", "ttl": 10, "in-sync": True}
    assert actions[2]["value"] == VIP and actions[2]["in-sync"] is True
    data = json.loads(ok(run_tool(r2, "status", "ha-notification", "--json", config=config)).stdout)
    theirs = data["ha-notification"]["groups"][0]["actions"]
    assert [a["in-sync"] for a in theirs] == [False, False, False]
    assert theirs[1]["reason"] == (f"record {NAME} A in zone {topo.zone_id} is {ip_of(r1)} ({r1.eni('eth0')}), "
                                   f"not {ip_of(r2)} ({r2.eni('eth0')}, eth0)")
    assert theirs[2]["reason"].endswith(f"but {VIP} is on {r1.eni('eth0')}, not on {r2.eni('eth0')} (eth0)")
    text = ok(run_tool(r1, "status", "ha-notification", config=config)).stdout.splitlines()
    assert f"        update-dns {NAME} A private zone {topo.zone_id} interface eth0 vrf main" in text
    assert f"        update-dns vip2.lab.internal A {VIP} zone {topo.zone_id} interface eth0 vrf main" in text
    assert not [l for l in ok(run_tool(r2, "status", "ha-notification", config=config)).stdout.splitlines()
                if "update-dns" in l]
    assert aws.count_actions().get("ChangeResourceRecordSets", 0) == 0  # status only reads


def test_check_codes_and_repair(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(dns(topo.zone_id), window=0)
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 3 and proc.stdout.startswith("VI_1 UNKNOWN: no transition recorded")
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert run_tool(r1, "check", config=config).returncode == 0
    aws.route53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": NAME, "Type": "A", "TTL": 300,
                                                   "ResourceRecords": [{"Value": ip_of(r2)}]}}]})
    proc = run_tool(r1, "check", "--json", config=config)
    assert proc.returncode == 2, proc.stdout
    data = json.loads(proc.stdout)
    assert data["groups"][0]["actions"][0]["in-sync"] is False and ip_of(r2) in data["groups"][0]["summary"]
    aws.reset_counts()
    proc = run_tool(r1, "check", "--repair", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert aws.dns_values(NAME) == [ip_of(r1)] and aws.dns_record(NAME)["TTL"] == 10
    assert aws.count_actions()["ChangeResourceRecordSets"] == 1
    aws.route53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": NAME, "Type": "A", "TTL": 60,
                                                   "ResourceRecords": [{"Value": ip_of(r1)}]}}]})
    proc = run_tool(r1, "check", config=config)  # the right address with another TTL is drift too
    assert proc.returncode == 2 and "has TTL 60, not 10" in proc.stdout
    ok(run_tool(r1, "check", "--repair", config=config))
    ok(run_tool(r1, "backup", "VI_1", config=config))  # BACKUP, and the record still points here
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 1 and proc.stdout.startswith("VI_1 WARNING: BACKUP but AWS still points here")
    assert aws.dns_values(NAME) == [ip_of(r1)]  # check never writes


def test_literal_record_follows_the_address_and_public_value(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    aws.ec2.associate_address(AllocationId=topo.eip_alloc, NetworkInterfaceId=r1.eni("eth1"))
    config = cfg(assign(), dns(topo.zone_id, "vip2.lab.internal", VIP),
                 dns(topo.zone_id, "pub.lab.internal", "public", interface="eth1"), window=0)
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.dns_values("pub") == [topo.eip_public_ip] and aws.dns_values("vip2") == [VIP]
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r2.eni("eth0"), PrivateIpAddresses=[VIP],
                                        AllowReassignment=True)
    proc = run_tool(r1, "check", config=config)  # the record is right, the address it names is not here
    assert proc.returncode == 2 and "2/3 actions" not in proc.stdout and "1/3 actions point here" in proc.stdout
    proc = run_tool(r2, "validate", "--permissions", config=config)
    assert "has no public IPv4 address" in proc.stdout and proc.returncode == 1


def test_hand_back_after_backup_gives_the_peer_its_own_address(routers, run_tool):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = group(topo, window=0.5)
    ok(run_tool(r2, "master", "VI_1", config=config))
    assert owned_by(aws, r2)
    ok(run_tool(r2, "backup", "VI_1", config=config))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not owned_by(aws, r1):
        time.sleep(0.1)
    assert owned_by(aws, r1), (aws.who_holds(VIP), aws.dns_values(NAME))
    assert record(run_tool, r2)["outcome"] == "handed-back"


def test_failover_under_lag(routers, run_tool, lag_profile):
    """r1 (dead) holds everything; r2's master exits only once Route 53 shows its records."""
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r1.eni("eth0"), PrivateIpAddresses=[VIP])
    aws.route53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": name, "Type": "A", "TTL": 10,
                                                   "ResourceRecords": [{"Value": value}]}}
        for name, value in ((NAME, ip_of(r1)), ("vip2.lab.internal", VIP))]})
    assert owned_by(aws, r1)
    proc = ok(run_tool(r2, "-v", "master", "VI_1", config=group(topo)))
    assert owned_by(aws, r2), proc.stderr  # no settle(): verified before the exit
    assert "PENDING" in proc.stderr and "INSYNC" not in proc.stderr and "yielding" not in proc.stderr
    assert aws.count_actions()["ChangeResourceRecordSets"] == 1  # the zone's two records in one change


def test_back_and_forth_under_lag(routers, run_tool, lag_profile):
    aws, topo = routers.cloud, routers.topology
    config = group(topo)
    for router in (routers.r1, routers.r2, routers.r1):
        proc = ok(run_tool(router, "master", "VI_1", config=config))
        assert "yielding" not in proc.stderr, proc.stderr
    aws.settle()
    assert owned_by(aws, routers.r1)


def test_split_brain_ends_unmixed_under_lag(routers, run_tool, lag_profile):
    aws, topo = routers.cloud, routers.topology
    results = split_brain(routers, run_tool, group(topo))
    aws.settle()
    logs = "\n".join(f"--- {name}: exit {code}\n{err}" for name, (code, err) in results.items())
    assert all(code == 0 for code, _ in results.values()), logs
    assert owned_by(aws, routers.r1) or owned_by(aws, routers.r2), \
        f"{aws.who_holds(VIP)} {aws.dns_values(NAME)} {aws.dns_values('vip2')}\n{logs}"


def test_split_brain_with_the_record_as_anchor(routers, run_tool, lag):
    """The record first: its holder is the instance whose address it names."""
    aws, topo = routers.cloud, routers.topology
    lag("all-0.5")
    results = split_brain(routers, run_tool, cfg(dns(topo.zone_id), assign()))
    aws.settle()
    assert all(code == 0 for code, _ in results.values()), results
    assert any(aws.who_holds(VIP) == [r.eni("eth0")] and aws.dns_values(NAME) == [ip_of(r)] for r in routers), \
        (aws.who_holds(VIP), aws.dns_values(NAME), results)


def test_check_repair_under_lag(routers, run_tool, lag):
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    lag("ip-1-rest-0.3")
    config = group(topo, window=3.5)  # longer than the longest lag of the profiles (Route 53's)
    ok(run_tool(r1, "master", "VI_1", config=config))
    aws.settle()
    time.sleep(3.6)
    aws.route53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": NAME, "Type": "A", "TTL": 10,
                                                   "ResourceRecords": [{"Value": ip_of(r2)}]}}]})
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 2 and "VI_1 CRITICAL" in proc.stdout
    proc = run_tool(r1, "check", "--repair", config=config)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    aws.settle()
    assert owned_by(aws, r1)


def test_fifo_reasserts_a_record_changed_behind_its_back(routers, run_tool, tmp_path):
    from test_fifo import start_reader, stop_reader, wait_for, write_lines

    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = group(topo, window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 1\n")
    fifo, proc = start_reader(run_tool, r1, tmp_path, config)
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
    assert owned_by(aws, r1)
    aws.route53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": NAME, "Type": "A", "TTL": 10,
                                                   "ResourceRecords": [{"Value": ip_of(r2)}]}}]})
    aws.reset_counts()
    assert wait_for(lambda: aws.dns_values(NAME) == [ip_of(r1)], timeout=10)
    code, err = stop_reader(proc)
    assert code == 0 and "re-asserting" in err
    assert changes(aws)[0] == {NAME: ip_of(r1)}  # only what drifted is written again
    assert aws.count_actions().get("AssignPrivateIpAddresses", 0) == 0


def test_fifo_keeps_the_route53_client_between_events(routers, run_tool, tmp_path):
    """fifo mode makes its Route 53 client once, like its EC2 client: a later MASTER event
    and the re-checks between events fetch no credentials again (each new client would
    fetch the instance profile's from the metadata service)."""
    from test_fifo import stop_reader, wait_for, write_lines

    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    role = r1.imds.profile.role
    fetches = lambda: r1.imds.count("GET", f"/latest/meta-data/iam/security-credentials/{role}")  # noqa: E731
    config = group(topo, window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 1\n")
    fifo = tmp_path / "keepalived.fifo"
    os.mkfifo(fifo, 0o600)
    proc = run_tool.popen(r1, "-v", "fifo", str(fifo), config=config,
                          env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
    assert owned_by(aws, r1)
    assert fetches() == 2  # one EC2 client, one Route 53 client
    aws.route53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": NAME, "Type": "A", "TTL": 10,
                                                   "ResourceRecords": [{"Value": ip_of(r2)}]}}]})
    first_seq = record(run_tool, r1)["seq"]
    aws.reset_counts()  # the metadata service's log too
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, r1) or {}).get("seq", first_seq) > first_seq
                    and record(run_tool, r1).get("outcome") == "ok")
    assert aws.dns_values(NAME) == [ip_of(r1)]
    assert wait_for(lambda: aws.count_actions()["ListResourceRecordSets"] >= 3)  # re-checks read Route 53 too
    code, err = stop_reader(proc)
    assert code == 0, err
    assert aws.count_actions()["ChangeResourceRecordSets"] >= 1
    assert {c.access_key for c in aws.calls() if c.service == "route53"} == {r1.imds.profile.current().access_key_id}
    assert fetches() == 0, err


def test_validate_permissions_proves_route53_without_changing_it(routers, run_tool, fault_proxy):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    config = group(topo)
    ok(run_tool(r1, "master", "VI_1", config=config))
    aws.reset_counts()
    proc = ok(run_tool(r1, "validate", "--permissions", config=config))
    lines = proc.stdout.splitlines()
    assert "route53:ListResourceRecordSets: allowed (read)" in lines
    line = next(l for l in lines if l.startswith("groups.VI_1.update-dns[0]: "))
    assert line.endswith("allowed (an UPSERT of a value that is no address was refused after the IAM check: "
                         "InvalidChangeBatch)")
    probes = aws.calls("ChangeResourceRecordSets")
    assert len(probes) == 2 and {c.params["Change.1.Name"] for c in probes} == {NAME, "vip2.lab.internal"}
    assert owned_by(aws, r1)  # nothing changed
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"ChangeResourceRecordSets"}, first=1)
    proc = run_tool(r1, "validate", "--permissions", config=config,
                    env={**proxy.env, "AWS_ENDPOINT_URL_ROUTE_53": proxy.url})
    assert proc.returncode == 1
    line = next(l for l in proc.stdout.splitlines() if l.startswith("groups.VI_1.update-dns[0]: "))
    assert "DENIED: AccessDenied: User: " in line and f"arn:aws:route53:::hostedzone/{topo.zone_id}" in line
    assert "allowed" in next(l for l in proc.stdout.splitlines() if l.startswith("groups.VI_1.update-dns[1]: "))
    proxy.clear_faults()
    proxy.add_fault("denied", actions={"ListResourceRecordSets"})
    proc = run_tool(r1, "validate", "--permissions", config=config,
                    env={**proxy.env, "AWS_ENDPOINT_URL_ROUTE_53": proxy.url})
    assert proc.returncode == 1
    assert any(l.startswith("route53:ListResourceRecordSets: DENIED: ListResourceRecordSets failed: AccessDenied")
               for l in proc.stdout.splitlines()), proc.stdout
    assert owned_by(aws, r1)


def test_missing_zone(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    config = cfg(dns("ZNOSUCHZONE0123"))
    proc = run_tool(r1, "master", "VI_1", config=config)
    assert proc.returncode == 1 and "NoSuchHostedZone" in proc.stderr, proc.stderr
    proc = run_tool(r1, "validate", "--permissions", config=config)
    assert proc.returncode == 1 and "No hosted zone found with ID: ZNOSUCHZONE0123" in proc.stdout
    assert "hosted zone above does not exist" in proc.stdout
    proc = run_tool(r1, "validate", "--permissions", config=cfg(dns(aws.topology.zone_id, "vip.elsewhere.test")))
    assert proc.returncode == 1 and "is not permitted in zone lab.internal." in proc.stdout, proc.stdout
    assert aws.dns_values("vip") is None


def test_route53_throttling_is_retried(routers, run_tool, fault_proxy):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    aws.set_throttle(True, {"route53": (1, 2.0)})  # far below Route 53's 5 requests/s
    proc = ok(run_tool(r1, "-v", "master", "VI_1", config=group(topo)))
    assert owned_by(aws, r1)
    assert sum(aws.throttled.values()) >= 1, (aws.throttled, proc.stderr)
    aws.set_throttle(False)
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("prior-request", actions={"ChangeResourceRecordSets"}, first=2)
    ok(run_tool(r1, "-vv", "master", "VI_1", config=cfg(dns(topo.zone_id, value="ipv6")),
                env={"AWS_ENDPOINT_URL_ROUTE_53": proxy.url}))
    assert proxy.injected[("prior-request", "ChangeResourceRecordSets")] == 2
    assert proxy.counts["ChangeResourceRecordSets"] == 3
    assert aws.dns_values(NAME, "AAAA") == [r1.instance.ipv6s[0][0]]


def test_route53_endpoint_url_setting(routers, run_tool, fault_proxy):
    """[aws] route53-endpoint-url stands in for AWS_ENDPOINT_URL_ROUTE_53; EC2's endpoint-url
    is never used for Route 53."""
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    ec2_proxy, r53_proxy = fault_proxy(r1, "ec2"), fault_proxy(r1, "ec2")
    config = cfg(dns(topo.zone_id)).replace(
        "[aws]\n", f'[aws]\nendpoint-url = "{ec2_proxy.url}"\nroute53-endpoint-url = "{r53_proxy.url}"\n')
    ok(run_tool(r1, "master", "VI_1", config=config, env={"AWS_ENDPOINT_URL_ROUTE_53": None}))
    assert aws.dns_values(NAME) == [ip_of(r1)]
    assert r53_proxy.counts["ChangeResourceRecordSets"] == 1 and r53_proxy.counts["DescribeNetworkInterfaces"] == 0
    assert ec2_proxy.counts["DescribeNetworkInterfaces"] >= 1 and ec2_proxy.counts["ChangeResourceRecordSets"] == 0


def test_route53_client_signs_for_the_partitions_region(monkeypatch):
    """Route 53 is global: its client signs for us-east-1 (aws partition) from any region, also
    behind a custom endpoint, where botocore alone would sign for the instance's region."""
    from aws_vrrp_notify.config import AwsSettings
    from aws_vrrp_notify.deadline import Deadline
    from aws_vrrp_notify.ec2 import make_client

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_CONFIG_FILE", "/dev/null"), ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")):
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ROUTE_53", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    seen = {}
    for region, url in (("eu-west-3", None), ("eu-west-3", "http://127.0.0.1:9"), ("cn-north-1", None)):
        client = make_client(AwsSettings(route53_endpoint_url=url, endpoint_url="http://127.0.0.1:8"), region,
                             Deadline(5), service="route53")

        def stop(request, **kw):
            seen[(region, url)] = (request.url.split("/2013")[0],
                                   request.headers["Authorization"].decode().split("/")[2])
            raise RuntimeError("sent")

        client.meta.events.register("before-send.route53", stop)
        with pytest.raises(RuntimeError):
            client.list_resource_record_sets(HostedZoneId="Z123")
    assert seen == {("eu-west-3", None): ("https://route53.amazonaws.com", "us-east-1"),
                    ("eu-west-3", "http://127.0.0.1:9"): ("http://127.0.0.1:9", "us-east-1"),
                    ("cn-north-1", None): ("https://route53.amazonaws.com.cn", "cn-northwest-1")}


def test_records_are_read_with_one_call_per_zone(aws):
    """read_records: one ListResourceRecordSets for records near each other in a zone of
    hundreds, a second page only when a configured record lies further."""
    from aws_vrrp_notify.deadline import Deadline
    from aws_vrrp_notify.ec2 import Ec2
    from aws_vrrp_notify.route53 import read_records

    zone = aws.topology.zone_id
    names = [f"h{i:03d}.lab.internal" for i in range(400)]
    for start in range(0, 400, 100):
        aws.route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": {"Name": n, "Type": "A", "TTL": 10,
                                                       "ResourceRecords": [{"Value": "10.0.1.5"}]}}
            for n in names[start:start + 100]]})
    route53 = Ec2(aws.client("route53", tool=True), Deadline(10))
    wanted = [(zone, n, "A") for n in ("h010.lab.internal", "h011.lab.internal", "h200.lab.internal")]
    wanted.append((zone, "h0105.lab.internal", "A"))  # would sit between h010 and h011
    found = read_records(route53, wanted)
    assert aws.count_actions()["ListResourceRecordSets"] == 1
    assert found[wanted[0]]["ResourceRecords"] == [{"Value": "10.0.1.5"}] and found[wanted[3]] is None
    aws.reset_counts()
    far = [(zone, "h010.lab.internal", "A"), (zone, "h390.lab.internal", "A")]
    assert all(read_records(route53, far).values())
    assert aws.count_actions()["ListResourceRecordSets"] == 2


def test_batches_and_the_group_rule():
    from aws_vrrp_notify.actions import AssignPrivateIp, UpdateDns, batches

    def dns_action(name, zone="ZA", value="private"):
        return UpdateDns(zone_id=zone, name=name, value=value, interface="eth0", vrf="main", ttl=10)

    actions = [dns_action("a.x.test"), AssignPrivateIp(ip="10.0.1.5", interface="eth0", vrf="main"),
               dns_action("b.x.test", "ZB"), dns_action("c.x.test"), dns_action("d.x.test", value="10.0.1.5")]
    targets = [a.batch_key and {"zone": getattr(a, "zone_id", None), "eni": "eni-1"} for a in actions]
    assert batches(actions, targets, range(5)) == [[1], [2], [0, 3, 4]]
    assert batches(actions, targets, [3, 2, 1]) == [[3], [2], [1]]
    problems = []
    actions[4].check_group(actions, "groups.G.update-dns[3]", problems)
    assert problems == []
    actions[4].check_group(actions[2:], "groups.G.update-dns[3]", problems)
    assert problems and problems[0].startswith("groups.G.update-dns[3].value: 10.0.1.5 is not an address")


def test_no_route53_client_without_update_dns(routers, run_tool):
    """The Route 53 client is made only when a group has an update-dns action."""
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    for args in (["-vv", "master", "VI_1"], ["-vv", "status", "ha-notification"], ["-vv", "check"]):
        proc = run_tool(r1, *args, config=cfg(assign()))
        assert proc.returncode == 0 and "route53 client" not in proc.stderr, proc.stderr
    assert not [c for c in aws.calls() if c.service == "route53"]
    proc = run_tool(r1, "-vv", "check", config=cfg(assign(), dns(topo.zone_id)))
    assert proc.returncode == 1 and "(route53 client)" in proc.stderr  # MASTER, the record not written yet
    assert aws.count_actions()["ListResourceRecordSets"] == 1
