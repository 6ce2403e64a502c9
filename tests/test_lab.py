"""Tests of the test harness itself: moto fixes, fake IMDS, fault proxy, counting, namespaces."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

VIP = "10.0.1.100"


def tool_client(url, *, attempts=1, read_timeout=10, mode="standard"):
    """A boto3 client that is *not* the harness (its calls are counted)."""
    return boto3.session.Session().client(
        "ec2", endpoint_url=url, region_name="eu-west-3", aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": attempts, "mode": mode}, read_timeout=read_timeout,
                      connect_timeout=2))


def code_of(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


# ============================================================================ moto fixes

def test_moto_fixes_apply_is_idempotent(aws):
    from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
    from moto.ec2.responses.route_tables import RouteTables

    from aws_vrrp_notify.lab import moto_fixes

    assert moto_fixes.is_applied()
    before = (RouteTables.replace_route, ElasticNetworkInterfaces.assign_private_ip_addresses)
    moto_fixes.apply()
    moto_fixes.apply()
    assert (RouteTables.replace_route, ElasticNetworkInterfaces.assign_private_ip_addresses) == before
    r1 = aws.topology.instances["r1"].eni(0)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r1, PrivateIpAddresses=[VIP])
    assert aws.eni_private_ips(r1) == ["10.0.1.11", VIP]


def test_allow_reassignment_moves_the_ip(aws):
    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    ec2 = aws.ec2
    ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    with pytest.raises(ClientError) as ei:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP])
    assert code_of(ei) == "InvalidParameterValue"
    assert aws.who_holds(VIP) == [e1]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP], AllowReassignment=True)
    assert aws.eni_private_ips(e1) == ["10.0.1.11"]
    assert aws.eni_private_ips(e2) == ["10.0.1.12", VIP]
    assert aws.who_holds(VIP) == [e2]
    # idempotent on the holder
    ec2.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP], AllowReassignment=True)
    assert aws.eni_private_ips(e2) == ["10.0.1.12", VIP]
    for bad in ("10.0.1.11", "10.0.9.9"):  # another ENI's primary; outside the subnet
        with pytest.raises(ClientError) as ei:
            ec2.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[bad], AllowReassignment=True)
        assert code_of(ei) == "InvalidParameterValue"
    assert aws.eni_private_ips(e1) == ["10.0.1.11"]


def test_an_ipv6_address_is_on_one_eni_at_most(aws):
    """EC2 has no reassignment for IPv6: AssignIpv6Addresses refuses an address another ENI
    holds (moto let two ENIs hold it), and one outside the subnet; the ipv6-addresses filter works."""
    t = aws.topology
    e1, e2, wan = t.instances["r1"].eni(0), t.instances["r2"].eni(0), t.instances["r2"].eni(1)
    vip6 = t.vip6()
    ec2 = aws.ec2

    def holders(ip):
        flt = [{"Name": "vpc-id", "Values": [t.vpc]}, {"Name": "ipv6-addresses.ipv6-address", "Values": [ip]}]
        return [n["NetworkInterfaceId"] for n in ec2.describe_network_interfaces(Filters=flt)["NetworkInterfaces"]]

    ec2.assign_ipv6_addresses(NetworkInterfaceId=e1, Ipv6Addresses=[vip6])
    ec2.assign_ipv6_addresses(NetworkInterfaceId=e1, Ipv6Addresses=[vip6])  # again on the holder: no change
    with pytest.raises(ClientError) as ei:
        ec2.assign_ipv6_addresses(NetworkInterfaceId=e2, Ipv6Addresses=[vip6.upper()])
    assert code_of(ei) == "InvalidIPAddress.InUse"
    assert holders(vip6) == [e1]
    with pytest.raises(ClientError) as ei:  # the lan subnet's address on an ENI of the wan subnet
        ec2.assign_ipv6_addresses(NetworkInterfaceId=wan, Ipv6Addresses=[vip6.replace("::100", "::102")])
    assert code_of(ei) == "InvalidParameterValue"
    ec2.unassign_ipv6_addresses(NetworkInterfaceId=e1, Ipv6Addresses=[vip6])
    ec2.assign_ipv6_addresses(NetworkInterfaceId=e2, Ipv6Addresses=[vip6])
    assert holders(vip6) == [e2]
    assert holders(t.instances["r1"].ipv6s[0][0]) == [e1]


def test_dryrun_on_route_calls_raises_and_changes_nothing(aws):
    t = aws.topology
    rtb = t.route_tables["wan"]
    e1, e2 = t.instances["r1"].eni(1), t.instances["r2"].eni(1)
    ec2 = aws.ec2
    ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e1)
    calls = [
        lambda: ec2.replace_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e2,
                                  DryRun=True),
        lambda: ec2.create_route(RouteTableId=rtb, DestinationIpv6CidrBlock="::/0", NetworkInterfaceId=e2,
                                 DryRun=True),
        lambda: ec2.delete_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", DryRun=True),
        lambda: ec2.describe_route_tables(RouteTableIds=[rtb], DryRun=True),
    ]
    for call in calls:
        with pytest.raises(ClientError) as ei:
            call()
        assert code_of(ei) == "DryRunOperation"
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert aws.route_target(rtb, "0.0.0.0/0") == e1
    assert aws.route(rtb, "::/0") is None
    # DryRun=False is not a dry run
    ec2.replace_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e2, DryRun=False)
    assert aws.route_target(rtb, "0.0.0.0/0") == e2
    ec2.create_route(RouteTableId=rtb, DestinationIpv6CidrBlock="::/0", NetworkInterfaceId=e2)
    assert aws.route_target(rtb, "::/0") == e2
    assert aws.route_target(rtb, "0::0/0") == e2  # any spelling of the prefix


def test_prefix_list_route_to_an_eni_keeps_its_destination(aws, lag):
    """getmoto/moto#8394: CreateRoute with DestinationPrefixListId and an ENI target lost the
    prefix list, so the route could not be described, replaced or deleted."""
    t = aws.topology
    pl, ec2 = t.prefix_list, aws.ec2
    e1, e2 = t.instances["r1"].eni(1), t.instances["r2"].eni(1)
    lan, wan = t.route_tables["lan"], t.route_tables["wan"]
    for rtb in (lan, wan):  # two at once: moto also filed both under one key ("<rtb>~None")
        ec2.create_route(RouteTableId=rtb, DestinationPrefixListId=pl, NetworkInterfaceId=e1)
    assert aws.route(lan, pl) == {"DestinationPrefixListId": pl, "NetworkInterfaceId": e1,
                                  "Origin": "CreateRoute", "State": "active"}
    ec2.replace_route(RouteTableId=lan, DestinationPrefixListId=pl, NetworkInterfaceId=e2)
    assert (aws.route_target(lan, pl), aws.route_target(wan, pl)) == (e2, e1)
    with pytest.raises(ClientError) as ei:
        ec2.create_route(RouteTableId=lan, DestinationPrefixListId="pl-0123456789abcdef0", NetworkInterfaceId=e1)
    assert code_of(ei) == "InvalidPrefixListID.NotFound"
    tool = aws.client(tool=True)  # a lagged write is refused at once too
    lag(1.0)
    with pytest.raises(ClientError) as ei:
        tool.replace_route(RouteTableId=lan, DestinationPrefixListId="pl-0123456789abcdef0", NetworkInterfaceId=e1)
    assert code_of(ei) == "InvalidPrefixListID.NotFound"
    aws.clear_lag()
    ec2.delete_route(RouteTableId=wan, DestinationPrefixListId=pl)
    assert aws.route(wan, pl) is None and aws.route_target(lan, pl) == e2
    aws.reset_state()
    assert aws.route(lan, pl) is None


def test_associate_address_honours_private_ip(aws):
    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    ec2 = aws.ec2
    ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    with pytest.raises(ClientError) as ei:  # not on that ENI
        ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e2, PrivateIpAddress=VIP)
    assert code_of(ei) == "InvalidParameterValue"
    assert aws.eip_association(t.eip_alloc) is None
    ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e1, PrivateIpAddress=VIP)
    assert aws.eip_association(t.eip_alloc) == (e1, VIP)
    addr = ec2.describe_addresses(AllocationIds=[t.eip_alloc])["Addresses"][0]
    assert addr["InstanceId"] == t.instances["r1"].instance_id
    flt = ec2.describe_addresses(Filters=[{"Name": "private-ip-address", "Values": [VIP]}])["Addresses"]
    assert [a["AllocationId"] for a in flt] == [t.eip_alloc]
    # without PrivateIpAddress: the ENI's primary address
    with pytest.raises(ClientError) as ei:
        ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e2, AllowReassociation=False)
    assert code_of(ei) == "Resource.AlreadyAssociated"
    ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e2, AllowReassociation=True)
    assert aws.eip_association(t.eip_alloc) == (e2, "10.0.1.12")
    old = ec2.describe_network_interfaces(NetworkInterfaceIds=[e1])["NetworkInterfaces"][0]
    assert not old.get("Association"), "stale association left on the previous ENI"
    new = ec2.describe_network_interfaces(NetworkInterfaceIds=[e2])["NetworkInterfaces"][0]
    assert new["Association"]["PublicIp"] == t.eip_public_ip
    # DryRun is checked first and changes nothing
    with pytest.raises(ClientError) as ei:
        ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e1, AllowReassociation=True, DryRun=True)
    assert code_of(ei) == "DryRunOperation"
    assert aws.eip_association(t.eip_alloc) == (e2, "10.0.1.12")


def test_eni_filters(aws):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    aws.ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e1, PrivateIpAddress=VIP)

    def ids(name, *values):
        flt = [{"Name": "vpc-id", "Values": [t.vpc]}, {"Name": name, "Values": list(values)}]
        return sorted(n["NetworkInterfaceId"] for n in
                      aws.ec2.describe_network_interfaces(Filters=flt)["NetworkInterfaces"])

    assert ids("addresses.private-ip-address", VIP) == [e1]
    assert ids("private-ip-address", "10.0.1.11") == [e1]
    assert ids("private-ip-address", "10.0.9.9") == []
    assert ids("attachment.device-index", "2") == sorted(i.eni(2) for i in t.instances.values() if 2 in i.enis)
    assert ids("association.public-ip", t.eip_public_ip) == [e1]
    assert ids("association.allocation-id", t.eip_alloc) == [e1]
    assert ids("mac-address", t.instances["r2"].mac(1)) == [t.instances["r2"].eni(1)]


def test_eip_follows_a_reassigned_private_ip(aws):
    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    aws.ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e1, PrivateIpAddress=VIP)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP], AllowReassignment=True)
    assert aws.eip_association(t.eip_alloc) == (e2, VIP)


def test_reset_state_restores_the_baseline(aws):
    t = aws.topology
    ec2 = aws.ec2
    e1 = t.instances["r1"].eni(0)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP, "10.0.1.101"])
    ec2.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e1, PrivateIpAddress=VIP)
    extra = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.create_route(RouteTableId=t.route_tables["main"], DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e1)
    ec2.create_route(RouteTableId=t.route_tables["lan"], DestinationIpv6CidrBlock="::/0", NetworkInterfaceId=e1)
    assoc = [a for a in ec2.describe_route_tables(RouteTableIds=[t.route_tables["wan"]])["RouteTables"][0]
             ["Associations"] if a.get("SubnetId")][0]
    ec2.disassociate_route_table(AssociationId=assoc["RouteTableAssociationId"])
    aws.reset_state()
    assert aws.count_actions(include_harness=True) == {}
    assert aws.eni_private_ips(e1) == ["10.0.1.11"]
    assert aws.eip_association(t.eip_alloc) is None
    assert extra not in [a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]]
    assert aws.route(t.route_tables["main"], "0.0.0.0/0") is None
    assert aws.route(t.route_tables["lan"], "::/0") is None
    wan = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [t.subnets["wan"]]}])
    assert [r["RouteTableId"] for r in wan["RouteTables"]] == [t.route_tables["wan"]]


# ============================================================================ IMDS

def _imds(base, path, token=None, method="GET", headers=None):
    h = dict(headers or {})
    if token:
        h["X-aws-ec2-metadata-token"] = token
    req = urllib.request.Request(base.rstrip("/") + path, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def _token(base, ttl="60"):
    code, tok = _imds(base, "/latest/api/token", method="PUT",
                      headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert code == 200
    return tok


def test_imds_token_rules(aws):
    base = aws.serve_imds("r1")
    imds = aws.imds("r1")
    iid = aws.topology.instances["r1"].instance_id
    assert _imds(base, "/latest/meta-data/instance-id") == (401, "")
    for ttl in ("0", "21601", "abc"):
        assert _imds(base, "/latest/api/token", method="PUT",
                     headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})[0] == 400
    assert _imds(base, "/latest/api/token", method="PUT")[0] == 400
    assert _imds(base, "/latest/api/token", method="PUT", headers={
        "X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"})[0] == 403
    tok = _token(base)
    assert _imds(base, "/latest/meta-data/instance-id", tok) == (200, iid)
    assert _imds(base, "/latest/meta-data/instance-id", "bogus")[0] == 401
    imds.expire_tokens()
    assert _imds(base, "/latest/meta-data/instance-id", tok)[0] == 401
    tok2 = _token(base)  # refresh
    assert _imds(base, "/latest/meta-data/instance-id", tok2) == (200, iid)
    tok3 = _token(base, "1")
    time.sleep(1.1)
    assert _imds(base, "/latest/meta-data/instance-id", tok3)[0] == 401
    assert ("PUT", "/latest/api/token") in imds.log
    assert imds.log[0] == ("GET", "/latest/meta-data/instance-id")
    assert imds.count("GET", "/latest/meta-data/instance-id") == 6


def test_imds_tree(aws):
    base = aws.serve_imds("r1")
    t = aws.topology
    r1 = t.instances["r1"]
    tok = _token(base)
    get = lambda p: _imds(base, "/latest/" + p, tok)  # noqa: E731
    assert get("meta-data/local-ipv4") == (200, "10.0.1.11")
    assert get("meta-data/mac") == (200, r1.mac(0))
    assert get("meta-data/instance-type") == (200, "c5n.xlarge")
    assert get("meta-data/ami-id")[1].startswith("ami-")
    assert get("meta-data/placement/availability-zone") == (200, "eu-west-3a")
    assert get("meta-data/placement/availability-zone/") == (200, "eu-west-3a")  # botocore's spelling
    assert get("meta-data/placement/region") == (200, "eu-west-3")
    listing = get("meta-data/")[1].splitlines()
    assert "network/" in listing and "instance-id" in listing and "placement/" in listing
    macs = get("meta-data/network/interfaces/macs/")[1].splitlines()
    assert sorted(macs) == sorted(m + "/" for m in r1.macs.values())
    expect = {
        0: ("lan", "10.0.1.11"), 1: ("wan", "10.0.2.11"), 2: ("lan", "10.0.1.21"),
    }
    for idx, (sub, ip) in expect.items():
        p = f"meta-data/network/interfaces/macs/{r1.mac(idx)}/"
        assert get(p + "interface-id") == (200, r1.eni(idx))
        assert get(p + "device-number") == (200, str(idx))
        assert get(p + "local-ipv4s") == (200, ip)
        assert get(p + "subnet-id") == (200, t.subnets[sub])
        assert get(p + "subnet-ipv4-cidr-block") == (200, t.subnet_cidrs[sub])
        assert get(p + "vpc-id") == (200, t.vpc)
        assert get(p + "vpc-ipv4-cidr-block") == (200, "10.0.0.0/16")
        assert get(p + "vpc-ipv4-cidr-blocks") == (200, "10.0.0.0/16")
        assert get(p + "owner-id") == (200, t.account_id)
        assert get(p + "mac") == (200, r1.mac(idx))
    assert get(f"meta-data/network/interfaces/macs/{r1.mac(0)}/ipv6s") == (200, r1.ipv6s[0][0])
    assert get(f"meta-data/network/interfaces/macs/{r1.mac(2)}/ipv6s")[0] == 404
    assert get("meta-data/network/interfaces/macs/02:00:00:00:00:00/interface-id")[0] == 404
    r2mac = t.instances["r2"].mac(0)
    assert get(f"meta-data/network/interfaces/macs/{r2mac}/interface-id")[0] == 404  # another instance's MAC
    assert get("meta-data/nonexistent")[0] == 404
    assert get("meta-data/instance-id/extra")[0] == 404
    doc = json.loads(get("dynamic/instance-identity/document")[1])
    assert {k: doc[k] for k in ("accountId", "architecture", "availabilityZone", "instanceId", "instanceType",
                                "privateIp", "region")} == {
        "accountId": t.account_id, "architecture": "x86_64", "availabilityZone": "eu-west-3a",
        "instanceId": r1.instance_id, "instanceType": "c5n.xlarge", "privateIp": "10.0.1.11",
        "region": "eu-west-3"}
    assert doc["imageId"].startswith("ami-")


def test_imds_reflects_moves_and_overrides(aws):
    t = aws.topology
    r1, r2 = t.instances["r1"], t.instances["r2"]
    b1, b2 = aws.serve_imds("r1"), aws.serve_imds("r2")
    k1, k2 = _token(b1), _token(b2)
    p1 = f"/latest/meta-data/network/interfaces/macs/{r1.mac(0)}/local-ipv4s"
    p2 = f"/latest/meta-data/network/interfaces/macs/{r2.mac(0)}/local-ipv4s"
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r1.eni(0), PrivateIpAddresses=[VIP])
    assert _imds(b1, p1, k1) == (200, f"10.0.1.11\n{VIP}")
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r2.eni(0), PrivateIpAddresses=[VIP],
                                        AllowReassignment=True)
    assert _imds(b1, p1, k1) == (200, "10.0.1.11")
    assert _imds(b2, p2, k2) == (200, f"10.0.1.12\n{VIP}")
    six = f"/latest/meta-data/network/interfaces/macs/{r2.mac(0)}/ipv6s"
    aws.ec2.assign_ipv6_addresses(NetworkInterfaceId=r2.eni(0), Ipv6Addresses=[t.vip6()])
    assert _imds(b2, six, k2) == (200, "\n".join(r2.ipv6s[0] + [t.vip6()]))  # ipv6s, read from moto
    imds = aws.imds("r1")
    imds.overrides["meta-data/instance-id"] = 500
    imds.overrides[p1[len("/latest/"):]] = None
    assert _imds(b1, "/latest/meta-data/instance-id", k1)[0] == 500
    assert _imds(b1, p1, k1)[0] == 404
    imds.reset()
    assert not imds.overrides and not imds.log


def test_imds_works_with_botocore_client(aws):
    from botocore.utils import IMDSFetcher, InstanceMetadataRegionFetcher

    cfg = {"ec2_metadata_service_endpoint": aws.serve_imds("r2"), "ec2_metadata_service_endpoint_mode": None,
           "ec2_metadata_v1_disabled": True}
    assert InstanceMetadataRegionFetcher(config=cfg, timeout=2, num_attempts=1).retrieve_region() == "eu-west-3"
    f = IMDSFetcher(config=cfg, timeout=2, num_attempts=1)
    tok = f._fetch_metadata_token()
    mac = f._get_request("latest/meta-data/mac", None, tok).text
    assert mac == aws.topology.instances["r2"].mac(0)


def test_imds_reads_do_not_count_as_ec2_calls(aws):
    base = aws.serve_imds("r1")
    tok = _token(base)
    for _ in range(3):
        _imds(base, "/latest/dynamic/instance-identity/document", tok)
    assert aws.count_actions(include_harness=True) == {}


# ============================================================================ counting

def test_count_actions(aws):
    c = tool_client(aws.url)
    c.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [aws.topology.vpc]}])
    c.describe_route_tables()
    c.describe_vpcs()
    aws.ec2.describe_vpcs()  # the harness: not counted by default
    assert aws.count_actions() == {"DescribeRouteTables": 2, "DescribeVpcs": 1}
    assert aws.count_actions(include_harness=True) == {"DescribeRouteTables": 2, "DescribeVpcs": 2}
    assert aws.count_actions(listener="root") == {"DescribeRouteTables": 2, "DescribeVpcs": 1}
    assert aws.count_actions(listener="nope") == {}
    calls = aws.calls("DescribeRouteTables")
    assert calls[0].params["Filter.1.Name"] == "vpc-id"
    assert aws.recorded_actions() == {"DescribeRouteTables": 2, "DescribeVpcs": 2}  # moto's own recorder
    aws.reset_counts()
    assert aws.count_actions() == {} and aws.recorded_actions() == {}


def test_request_hook_sees_tool_calls_before_moto(aws):
    seen = []
    e1 = aws.topology.instances["r1"].eni(0)

    def hook(req):
        seen.append((req.action, aws.who_holds(VIP)))  # state before the call is applied

    aws.request_hook = hook
    tool_client(aws.url).assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    aws.request_hook = None
    assert seen == [("AssignPrivateIpAddresses", [])]
    assert aws.who_holds(VIP) == [e1]


# ============================================================================ fault proxy

def test_proxy_throttle_and_500_reach_boto3_as_client_errors(aws, fault_proxy):
    proxy = fault_proxy()
    c = tool_client(proxy.url)
    proxy.add_fault("throttle", first=1)
    with pytest.raises(ClientError) as ei:
        c.describe_vpcs()
    assert code_of(ei) == "RequestLimitExceeded"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    proxy.clear_faults()
    proxy.add_fault("error500", first=1)
    with pytest.raises(ClientError) as ei:
        c.describe_vpcs()
    assert code_of(ei) == "InternalError"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert c.describe_vpcs()["Vpcs"]  # rule exhausted: forwarded
    assert proxy.counts == {"DescribeVpcs": 3}
    assert proxy.injected == {("throttle", "DescribeVpcs"): 1, ("error500", "DescribeVpcs"): 1}
    assert aws.count_actions() == {"DescribeVpcs": 1}  # only the forwarded one reached moto


def test_proxy_reset_and_delay(aws, fault_proxy):
    proxy = fault_proxy()
    proxy.add_fault("reset", first=1)
    with pytest.raises((botocore.exceptions.ConnectionClosedError, botocore.exceptions.EndpointConnectionError)):
        tool_client(proxy.url).describe_vpcs()
    proxy.clear_faults()
    proxy.add_fault("delay", delay=1.0, first=1)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        tool_client(proxy.url, read_timeout=0.3).describe_vpcs()
    c = tool_client(proxy.url)
    t0 = time.monotonic()
    c.describe_vpcs()
    assert time.monotonic() - t0 < 0.5
    proxy.add_fault("drop", first=1, actions="AssignPrivateIpAddresses")
    e1 = aws.topology.instances["r1"].eni(0)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        tool_client(proxy.url).assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    assert aws.who_holds(VIP) == [e1]  # the write happened, the client does not know


def test_proxy_first_n_with_retries_and_action_filter(aws, fault_proxy):
    proxy = fault_proxy()
    proxy.add_fault("throttle", first=1, actions={"DescribeRouteTables"})
    c = tool_client(proxy.url, attempts=3)
    c.describe_vpcs()
    c.describe_route_tables()  # one throttle, then success
    assert proxy.counts == {"DescribeVpcs": 1, "DescribeRouteTables": 2}
    assert proxy.requests == 3
    assert aws.count_actions()["DescribeRouteTables"] == 1  # the throttled attempt never reached moto


def test_proxy_fraction_is_seeded(aws, fault_proxy):
    def pattern(seed):
        proxy = fault_proxy()
        proxy.add_fault("error500", fraction=0.5, seed=seed)
        c = tool_client(proxy.url)
        out = []
        for _ in range(16):
            try:
                c.describe_vpcs()
                out.append(0)
            except ClientError:
                out.append(1)
        return out

    a, b = pattern(7), pattern(7)
    assert a == b and 0 < sum(a) < 16


def test_proxy_in_front_of_imds(aws, fault_proxy):
    base = aws.serve_imds("r1")
    from faultproxy import FaultProxy

    with FaultProxy(base.rstrip("/")) as proxy:
        proxy.add_fault("status", status=401, first=1, methods="GET")
        tok = _token(proxy.url)
        assert _imds(proxy.url, "/latest/meta-data/instance-id", tok)[0] == 401
        assert _imds(proxy.url, "/latest/meta-data/instance-id", tok) == (
            200, aws.topology.instances["r1"].instance_id)
        assert proxy.counts == {"PUT /latest/api/token": 1, "GET /latest/meta-data/instance-id": 2}
    assert aws.imds("r1").count("GET") == 1


# ============================================================================ namespaces

def _links(ns):
    out = subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True, check=True).stdout
    return {ln.split()[0].split("@")[0]: ln.split()[2] for ln in out.splitlines()}


def test_router_namespaces(routers):
    for r in routers:
        links = _links(r.ns)
        assert links["eth0"] == r.mac("eth0") == r.instance.macs[0]
        assert links["eth1"] == r.mac("eth1") == r.instance.macs[1]
        assert "ens9" not in links
        vrf = _links(r.vrf)
        assert vrf["ens9"] == r.mac("ens9") == r.instance.macs[2]
        assert r.vrf == f"{routers.prefix}-{r.name}-blue"
        assert r.eni("ens9") == r.instance.enis[2]
        ss = subprocess.run(["ip", "netns", "exec", r.ns, "ss", "-ltnH"], capture_output=True, text=True).stdout
        ports = {ln.split()[3] for ln in ss.splitlines()}
        assert r.moto_url.split("//")[1] in ports and r.imds_url.split("//")[1].rstrip("/") in ports
        assert "169.254.169.254:80" in ports


PROBE = textwrap.dedent("""
    import json, os, subprocess, sys, urllib.request
    import boto3
    from botocore.utils import IMDSFetcher
    from pyroute2 import IPRoute

    out = {"netns": subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True,
                                   text=True).stdout.strip()}
    with IPRoute() as ipr:
        out["mac"] = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")
    cfg = {"ec2_metadata_service_endpoint": os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
           "ec2_metadata_service_endpoint_mode": None, "ec2_metadata_v1_disabled": True}
    f = IMDSFetcher(config=cfg, timeout=2, num_attempts=1)
    tok = f._fetch_metadata_token()
    out["eni"] = f._get_request(f"latest/meta-data/network/interfaces/macs/{out['mac']}/interface-id",
                                None, tok).text
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    n = ec2.describe_network_interfaces(NetworkInterfaceIds=[out["eni"]])["NetworkInterfaces"][0]
    out["eni_mac"] = n["MacAddress"]
    print(json.dumps(out))
""")


def test_process_in_router_ns_reaches_moto_and_imds(routers, run_tool, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    procs = [run_tool.popen(r, tool=[sys.executable, str(script)], state_dir=False) for r in routers]
    # the same at the link-local address, as on EC2 (inside the router namespace only)
    procs.append(run_tool.popen(routers.r1, tool=[sys.executable, str(script)], state_dir=False,
                                env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://169.254.169.254/"}))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=30)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    for r, out in zip([routers.r1, routers.r2, routers.r1], outs):
        assert out == {"netns": r.ns, "mac": r.mac("eth0"), "eni": r.eni("eth0"), "eni_mac": r.mac("eth0")}
    cloud = routers.cloud
    assert cloud.count_actions(listener=routers.r1.ns) == {"DescribeNetworkInterfaces": 2}
    assert cloud.count_actions(listener=routers.r2.ns) == {"DescribeNetworkInterfaces": 1}
    assert routers.r1.imds.count("PUT") == 2 and routers.r1.imds.count("GET") == 2
    assert routers.r2.imds.count("PUT") == 1 and routers.r2.imds.count("GET") == 1


ECHO = textwrap.dedent("""
    import json, os, stat, sys
    args = sys.argv[1:]
    cfg = args[args.index("-c") + 1] if "-c" in args else None
    print(json.dumps({"argv": args, "env": dict(os.environ),
                      "cfg_mode": oct(stat.S_IMODE(os.stat(cfg).st_mode)) if cfg else None,
                      "cfg": open(cfg).read() if cfg else None}))
    sys.exit(int(os.environ.get("RC", "0")))
""")


def test_run_tool_plumbing(routers, run_tool, tmp_path):
    echo = tmp_path / "echo.py"
    echo.write_text(ECHO)
    r1 = routers.r1
    p = run_tool(r1, "master", "VI_1", config="[groups.VI_1]\n", env={"RC": "3", "AWS_CONFIG_FILE": None},
                 tool=[sys.executable, str(echo)])
    assert p.returncode == 3
    out = json.loads(p.stdout)
    assert out["argv"][0] == "-c" and out["argv"][2] == "--state-dir" and out["argv"][-2:] == ["master", "VI_1"]
    assert out["cfg_mode"] == "0o600" and out["cfg"] == "[groups.VI_1]\n"
    assert os.path.isdir(out["argv"][3])
    env = out["env"]
    assert env["AWS_ENDPOINT_URL_EC2"] == env["AWS_ENDPOINT_URL_ROUTE_53"] == r1.moto_url
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == r1.imds_url
    assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["AWS_SHARED_CREDENTIALS_FILE"] == "/dev/null"
    assert "AWS_CONFIG_FILE" not in env
    assert set(env) <= {"PATH", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_ROUTE_53", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "RC", "LC_CTYPE",
                        "AWS_VRRP_NOTIFY_CACHE_DIR"}
    procs = [run_tool.popen(r, "status", tool=[sys.executable, str(echo)]) for r in routers]
    outs = [json.loads(p.communicate(timeout=20)[0]) for p in procs]
    assert [o["env"]["AWS_ENDPOINT_URL_EC2"] for o in outs] == [r.moto_url for r in routers]
    assert outs[0]["argv"][1] != outs[1]["argv"][1]  # per-router state dirs
    assert stat.S_IMODE(os.stat(outs[0]["argv"][1]).st_mode) == 0o700


def test_fault_proxy_in_router_ns_is_attributed_to_the_router(routers, run_tool, fault_proxy, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    r2 = routers.r2
    ec2p = fault_proxy(r2, "ec2")
    ec2p.add_fault("throttle", first=1)
    imdsp = fault_proxy(r2, "imds")
    p = run_tool(r2, tool=[sys.executable, str(script)], state_dir=False, env={**ec2p.env, **imdsp.env})
    assert p.returncode == 0, p.stderr  # boto3's default retries absorb one throttle
    assert json.loads(p.stdout)["eni"] == r2.eni("eth0")
    assert ec2p.counts == {"DescribeNetworkInterfaces": 2}
    assert routers.cloud.count_actions(listener=r2.ns) == {"DescribeNetworkInterfaces": 1}
    assert imdsp.requests == 2
