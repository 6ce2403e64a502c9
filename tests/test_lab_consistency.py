"""The lab's EC2 model: eventual consistency, instance-profile credentials, real denial
texts and request throttling (aws_vrrp_notify/lab/consistency.py, credentials.py,
throttle.py, tests/faultproxy.py)."""

from __future__ import annotations

import calendar
import ipaddress
import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from aws_vrrp_notify.lab.consistency import PROFILES, describe_lag, parse_lag

VIP = "10.0.1.100"


@pytest.fixture(scope="module")
def tool(cloud):
    """An EC2 client whose calls are the tool's (counted, lagged, throttled)."""
    return cloud.client(tool=True)


def code_of(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def message_of(exc_info) -> str:
    return exc_info.value.response["Error"]["Message"]


def imds_get(base: str, path: str) -> tuple[int, str]:
    req = urllib.request.Request(base + "latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = urllib.request.urlopen(req, timeout=5).read().decode()
    req = urllib.request.Request(base + "latest/" + path, headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def local_ipv4s(aws, name: str, index: int = 0) -> list[str]:
    mac = aws.topology.instances[name].mac(index)
    code, body = imds_get(aws.serve_imds(name), f"meta-data/network/interfaces/macs/{mac}/local-ipv4s")
    assert code == 200
    return body.splitlines()


# ============================================================================ profiles

def test_lag_specs_and_profiles():
    assert parse_lag(0.5) == {"*": 0.5} and parse_lag("2") == {"*": 2.0} and parse_lag(None) == {}
    assert parse_lag("ip-2-rest-0.1") == PROFILES["ip-2-rest-0.1"]
    for action in ("AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses",
                   "UnassignIpv6Addresses"):
        assert PROFILES["ip-2-rest-0.1"][action] == 2.0 and PROFILES["ip-1-rest-0.3"][action] == 1.0
    assert PROFILES["ip-2-rest-0.1"]["*"] == 0.1 and PROFILES["ip-1-rest-0.3"]["*"] == 0.3
    assert PROFILES["all-0.5"]["*"] == 0.5 and PROFILES["all-2"]["*"] == 2.0
    for lags in PROFILES.values():  # Route 53 propagates more slowly than EC2 applies its writes
        assert lags["ChangeResourceRecordSets"] > max(v for k, v in lags.items() if k != "ChangeResourceRecordSets")
    with pytest.raises(ValueError, match="neither seconds nor a profile"):
        parse_lag("slow")
    with pytest.raises(ValueError, match="cannot lag DescribeRouteTables"):
        parse_lag({"DescribeRouteTables": 1})
    with pytest.raises(ValueError, match="between 0 and 600"):
        parse_lag(-1)
    with pytest.raises(ValueError, match="neither seconds, a profile nor a mapping"):
        parse_lag(True)
    assert describe_lag({}) == "none" and describe_lag({"*": 0.5}) == "every write 0.5 s"
    assert describe_lag({"ReplaceRoute": 2.0, "*": 0.1}) == "ReplaceRoute 2 s, every other write 0.1 s"


def test_each_profile_schedules_its_lags(lag_profile, aws, tool):
    """Writes are due lag-of-their-action after acceptance (checked on the queue, not waited for)."""
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    tool.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    tool.create_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e1)
    due = {w.action: w.lands_at - w.accepted_at for w in aws.pending_writes()}
    lags = PROFILES[lag_profile]
    assert due["AssignPrivateIpAddresses"] == pytest.approx(lags.get("AssignPrivateIpAddresses", lags["*"]))
    assert due["CreateRoute"] == pytest.approx(lags["*"])
    aws.reset_state()
    assert aws.pending_writes() == []


# ============================================================================ lag

def test_write_is_answered_at_once_and_shows_after_the_lag(aws, lag, tool):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    lag({"AssignPrivateIpAddresses": 0.4})
    start = time.monotonic()
    answer = tool.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP], AllowReassignment=True)
    assert time.monotonic() - start < 0.3
    assert answer["NetworkInterfaceId"] == e1
    assert answer["AssignedPrivateIpAddresses"] == [{"PrivateIpAddress": VIP}]
    # accepted, counted as the tool made it, not visible yet: describe calls and IMDS alike
    assert aws.count_actions() == {"AssignPrivateIpAddresses": 1}
    assert aws.who_holds(VIP) == []
    assert VIP not in local_ipv4s(aws, "r1")
    assert [w.action for w in aws.pending_writes()] == ["AssignPrivateIpAddresses"]
    aws.settle()
    landed_at = aws.landed_writes()[0][0]
    assert landed_at - start >= 0.4
    assert aws.who_holds(VIP) == [e1]
    assert local_ipv4s(aws, "r1") == ["10.0.1.11", VIP]
    assert aws.pending_writes() == [] and aws.failed_writes() == []
    assert aws.count_actions() == {"AssignPrivateIpAddresses": 1}


def test_ipv6_moves_lag_in_imds(aws, lag, tool):
    t = aws.topology
    r1 = t.instances["r1"]
    subnet = ipaddress.ip_network(t.subnet_ipv6_cidrs["lan"])
    new = str(subnet.network_address + 0x1234)
    lag({"AssignIpv6Addresses": 0.3, "UnassignIpv6Addresses": 0.3})
    mac = r1.mac(0)
    path = f"meta-data/network/interfaces/macs/{mac}/ipv6s"
    answer = tool.assign_ipv6_addresses(NetworkInterfaceId=r1.eni(0), Ipv6Addresses=[new])
    assert answer["AssignedIpv6Addresses"] == [new] and answer["NetworkInterfaceId"] == r1.eni(0)
    assert imds_get(aws.serve_imds("r1"), path)[1].splitlines() == r1.ipv6s[0]
    aws.settle()
    assert imds_get(aws.serve_imds("r1"), path)[1].splitlines() == r1.ipv6s[0] + [new]
    answer = tool.unassign_ipv6_addresses(NetworkInterfaceId=r1.eni(0), Ipv6Addresses=[new])
    assert answer["UnassignedIpv6Addresses"] == [new]
    assert new in imds_get(aws.serve_imds("r1"), path)[1].splitlines()
    aws.settle()
    assert imds_get(aws.serve_imds("r1"), path)[1].splitlines() == r1.ipv6s[0]


def test_every_laggable_write_answers_like_ec2_and_lands(aws, lag, tool):
    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    wan = t.route_tables["wan"]
    lag(0.2)
    assert tool.create_route(RouteTableId=wan, DestinationCidrBlock="10.9.0.0/16", NetworkInterfaceId=e1)["Return"]
    tool.replace_route(RouteTableId=wan, DestinationCidrBlock="10.9.0.0/16", NetworkInterfaceId=e2)
    tool.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP], AllowReassignment=True)
    assoc = tool.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=e2, PrivateIpAddress=VIP,
                                   AllowReassociation=True)["AssociationId"]
    assert re.fullmatch(r"eipassoc-[0-9a-f]{17}", assoc)
    tool.modify_network_interface_attribute(NetworkInterfaceId=e2, SourceDestCheck={"Value": True})
    assert aws.route_target(wan, "10.9.0.0/16") is None and aws.eip_association() is None
    aws.settle()
    assert aws.failed_writes() == []
    assert aws.route_target(wan, "10.9.0.0/16") == e2
    assert aws.eip_association() == (e2, VIP)
    address = aws.ec2.describe_addresses(AllocationIds=[t.eip_alloc])["Addresses"][0]
    assert address["AssociationId"] == assoc  # the id EC2 answered is the one it describes
    assert aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[e2])["NetworkInterfaces"][0]["SourceDestCheck"]
    tool.disassociate_address(AssociationId=assoc)
    tool.delete_route(RouteTableId=wan, DestinationCidrBlock="10.9.0.0/16")
    tool.unassign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP])
    tool.modify_network_interface_attribute(NetworkInterfaceId=e2, SourceDestCheck={"Value": False})
    assert aws.eip_association() == (e2, VIP)
    aws.settle()
    assert aws.failed_writes() == []
    assert aws.eip_association() is None and aws.route(wan, "10.9.0.0/16") is None and aws.who_holds(VIP) == []


def test_writes_to_one_resource_land_in_acceptance_order(aws, lag, tool):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    lan = t.route_tables["lan"]
    lag({"AssignPrivateIpAddresses": 0.4, "UnassignPrivateIpAddresses": 0.05, "CreateRoute": 0.3,
         "ReplaceRoute": 0.05})
    tool.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    tool.unassign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    tool.create_route(RouteTableId=lan, DestinationCidrBlock="10.8.0.0/16", NetworkInterfaceId=e1)
    e2 = t.instances["r2"].eni(0)
    tool.replace_route(RouteTableId=lan, DestinationCidrBlock="10.8.0.0/16", NetworkInterfaceId=e2)
    # a write on another resource does not wait for them
    lag({"AssignPrivateIpAddresses": 0.4, "UnassignPrivateIpAddresses": 0.05, "CreateRoute": 0.05,
         "ReplaceRoute": 0.05})
    tool.create_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e1)
    time.sleep(0.2)
    assert aws.route_target(t.route_tables["wan"], "0.0.0.0/0") == e1
    assert aws.route(lan, "10.8.0.0/16") is None and aws.who_holds(VIP) == []
    aws.settle()
    assert aws.failed_writes() == []
    landed = [w for _, w in aws.landed_writes()]
    assert [w.action for w in landed if w.params.get("RouteTableId") == lan] == ["CreateRoute", "ReplaceRoute"]
    assert [w.action for w in landed if "PrivateIpAddress.1" in w.params] == ["AssignPrivateIpAddresses",
                                                                              "UnassignPrivateIpAddresses"]
    assert aws.who_holds(VIP) == []  # the unassign, accepted last, wins
    assert aws.route_target(lan, "10.8.0.0/16") == e2


def test_moving_an_ip_orders_with_the_other_holder(aws, lag, tool):
    """An address moved away from an ENI and back lands in that order even across ENIs."""
    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    lag({"AssignPrivateIpAddresses": 0.3})
    tool.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP], AllowReassignment=True)
    lag({"AssignPrivateIpAddresses": 0.05})
    tool.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP], AllowReassignment=True)
    assert aws.who_holds(VIP) == [e1]
    aws.settle()
    assert aws.who_holds(VIP) == [e1] and aws.failed_writes() == []
    assert [w.params["NetworkInterfaceId"] for _, w in aws.landed_writes()] == [e2, e1]


@pytest.mark.parametrize("call, params, code, text", [
    ("assign_private_ip_addresses", {"NetworkInterfaceId": "eni-0123456789abcdef0", "PrivateIpAddresses": [VIP]},
     "InvalidNetworkInterfaceID.NotFound", "eni-0123456789abcdef0"),
    ("assign_private_ip_addresses", {"NetworkInterfaceId": "r1", "PrivateIpAddresses": ["10.0.9.9"]},
     "InvalidParameterValue", "does not fall within the subnet's address range"),
    ("replace_route", {"RouteTableId": "rtb-0123456789abcdef0", "DestinationCidrBlock": "0.0.0.0/0",
                       "NetworkInterfaceId": "r1"}, "InvalidRouteTableID.NotFound", "rtb-0123456789abcdef0"),
    ("replace_route", {"RouteTableId": "wan", "DestinationCidrBlock": "10.7.0.0/16", "NetworkInterfaceId": "r1"},
     "InvalidParameterValue", "There is no route defined for '10.7.0.0/16'"),
    ("create_route", {"RouteTableId": "wan", "DestinationCidrBlock": "0.0.0.0/0",
                      "NetworkInterfaceId": "eni-0123456789abcdef0"},
     "InvalidNetworkInterfaceID.NotFound", "eni-0123456789abcdef0"),
    ("associate_address", {"AllocationId": "eipalloc-0123456789abcdef0", "NetworkInterfaceId": "r1"},
     "InvalidAllocationID.NotFound", "eipalloc-0123456789abcdef0"),
    ("delete_route", {"RouteTableId": "wan", "DestinationCidrBlock": "10.7.0.0/16"},
     "InvalidRoute.NotFound", "10.7.0.0/16"),
])
def test_invalid_writes_fail_at_once_as_moto_says(aws, lag, tool, call, params, code, text):
    t = aws.topology
    names = {"r1": t.instances["r1"].eni(0), "wan": t.route_tables["wan"]}
    params = {k: names.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
    with pytest.raises(ClientError) as unlagged:  # moto's own answer (nothing changes)
        getattr(tool, call)(**params)
    lag(0.5)
    start = time.monotonic()
    with pytest.raises(ClientError) as lagged:
        getattr(tool, call)(**params)
    assert time.monotonic() - start < 0.3
    assert (code_of(lagged), message_of(lagged)) == (code_of(unlagged), message_of(unlagged))
    assert code_of(lagged) == code and text in message_of(lagged)
    assert lagged.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert aws.pending_writes() == []


def test_replace_route_sees_pending_creates_and_deletes(aws, lag, tool):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    wan = t.route_tables["wan"]
    aws.ec2.create_route(RouteTableId=wan, DestinationCidrBlock="0.0.0.0/0", GatewayId=t.igw)
    lag(0.3)
    tool.create_route(RouteTableId=wan, DestinationCidrBlock="10.6.0.0/16", NetworkInterfaceId=e1)
    tool.replace_route(RouteTableId=wan, DestinationCidrBlock="10.6.0.0/16", NetworkInterfaceId=e1)  # pending: fine
    tool.delete_route(RouteTableId=wan, DestinationCidrBlock="0.0.0.0/0")
    with pytest.raises(ClientError) as ei:
        tool.replace_route(RouteTableId=wan, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e1)
    assert code_of(ei) == "InvalidParameterValue" and "There is no route defined for '0.0.0.0/0'" in message_of(ei)
    assert aws.route(wan, "0.0.0.0/0") is not None  # the delete has not landed
    aws.settle()
    assert aws.route(wan, "0.0.0.0/0") is None and aws.route_target(wan, "10.6.0.0/16") == e1


def test_state_dependent_refusal_is_reported_on_landing(aws, lag, tool):
    """What EC2 decides against other writes' state is decided when the write lands."""
    t = aws.topology
    e1, e2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    lag(0.1)
    tool.assign_private_ip_addresses(NetworkInterfaceId=e2, PrivateIpAddresses=[VIP])
    aws.settle()
    [failed] = aws.failed_writes()
    assert failed.action == "AssignPrivateIpAddresses" and failed.status == 400 and "is in use" in failed.body
    assert aws.who_holds(VIP) == [e1]


def test_harness_and_dry_run_calls_are_not_lagged(aws, lag, tool):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    lag(5)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    assert aws.who_holds(VIP) == [e1]
    with pytest.raises(ClientError) as ei:
        tool.replace_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                                            NetworkInterfaceId=e1, DryRun=True)
    assert code_of(ei) == "DryRunOperation"
    assert aws.pending_writes() == []


def test_reset_state_drops_pending_writes_and_the_lag(aws, lag, tool):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    lag(0.3, stale_reads=0.5)
    tool.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    assert aws.count_actions() == {"AssignPrivateIpAddresses": 1}
    aws.reset_state()
    assert aws.pending_writes() == [] and aws.lag == {} and aws.count_actions() == {}
    time.sleep(0.4)
    assert aws.who_holds(VIP) == [] and aws.landed_writes() == []
    tool.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])
    assert aws.who_holds(VIP) == [e1]  # no lag any more


def test_stale_reads_return_an_earlier_answer_within_the_window(aws, lag, tool):
    t = aws.topology
    e1 = t.instances["r1"].eni(0)
    lag(0.5, stale_reads=1.0, seed=3)

    def holders():
        flt = [{"Name": "addresses.private-ip-address", "Values": [VIP]}, {"Name": "vpc-id", "Values": [t.vpc]}]
        return [n["NetworkInterfaceId"] for n in tool.describe_network_interfaces(Filters=flt)["NetworkInterfaces"]]

    assert holders() == []
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=e1, PrivateIpAddresses=[VIP])  # harness: at once
    assert holders() == []  # the replica still says what it said before
    assert aws.stale_reads_served == 1
    time.sleep(0.6)  # out of the window: only the fresh answer is left... once it was given
    assert holders() == [e1]


# ============================================================================ credentials

def test_imds_serves_instance_profile_credentials(aws):
    base = aws.serve_imds("r1")
    profile = aws.imds("r1").profile
    assert imds_get(base, "meta-data/iam/") == (200, "info\nsecurity-credentials/")
    assert imds_get(base, "meta-data/iam/security-credentials/") == (200, profile.role)
    info = json.loads(imds_get(base, "meta-data/iam/info")[1])
    assert info["Code"] == "Success"
    assert info["InstanceProfileArn"] == f"arn:aws:iam::{aws.account_id}:instance-profile/{profile.role}"
    doc = json.loads(imds_get(base, f"meta-data/iam/security-credentials/{profile.role}")[1])
    assert set(doc) == {"Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC"
    assert re.fullmatch(r"ASIA[A-Z0-9]{16}", doc["AccessKeyId"]) and len(doc["Token"]) > 500
    expires, updated = (calendar.timegm(time.strptime(doc[k], "%Y-%m-%dT%H:%M:%SZ"))
                        for k in ("Expiration", "LastUpdated"))
    assert expires - updated == 3600 and expires - time.time() > 300  # served well before expiry
    again = json.loads(imds_get(base, f"meta-data/iam/security-credentials/{profile.role}")[1])
    assert again["AccessKeyId"] == doc["AccessKeyId"]  # the same until close to expiry


def test_imds_credentials_rotate_before_they_expire(aws):
    base = aws.serve_imds("r1")
    profile = aws.imds("r1").profile
    path = f"meta-data/iam/security-credentials/{profile.role}"
    profile.ttl = 0.8  # served ones are replaced once less than a quarter of that remains
    profile.rotate()
    first = json.loads(imds_get(base, path)[1])["AccessKeyId"]
    time.sleep(0.65)
    second = json.loads(imds_get(base, path)[1])
    assert second["AccessKeyId"] != first
    assert profile.issued_key(first) is not None and profile.issued_key(second["AccessKeyId"]) is not None
    aws.reset_state()
    assert profile.ttl == profile.default_ttl


def test_botocore_signs_ec2_calls_with_the_role_credentials(aws, monkeypatch):
    """No keys anywhere: botocore's chain ends at the metadata service (served on 127.0.0.1)."""
    import botocore.session

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws.serve_imds("r1"))
    profile = aws.imds("r1").profile

    def signed_call():
        session = botocore.session.Session()
        client = session.create_client("ec2", region_name=aws.region, endpoint_url=aws.url)
        client.describe_route_tables(RouteTableIds=[aws.topology.route_tables["wan"]])
        assert session.get_credentials().method == "iam-role"
        return aws.calls("DescribeRouteTables")[-1]

    req = signed_call()
    creds = profile.current()
    assert (req.access_key, req.session_token) == (creds.access_key_id, creds.token)
    assert req.access_key.startswith("ASIA")
    rotated = profile.rotate()
    req = signed_call()
    assert (req.access_key, req.session_token) == (rotated.access_key_id, rotated.token)
    assert aws.imds("r1").count("GET", "/latest/meta-data/iam/security-credentials/") >= 2


def test_requests_record_static_keys_too(aws, tool):
    tool.describe_vpcs()
    req = aws.calls("DescribeVpcs")[-1]
    assert req.access_key == "testing" and req.session_token is None


# ============================================================================ denial text

def test_denied_answer_is_ec2s_text(aws, fault_proxy):
    import boto3
    from botocore.config import Config

    t = aws.topology
    proxy = fault_proxy(principal=f"arn:aws:sts::{aws.account_id}:assumed-role/vrrp-failover/i-0fedcba987654321f")
    proxy.add_fault("denied")
    client = boto3.session.Session().client(
        "ec2", endpoint_url=proxy.url, region_name=aws.region, aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))
    who = f"User: arn:aws:sts::{aws.account_id}:assumed-role/vrrp-failover/i-0fedcba987654321f is not authorized"
    arn = f"arn:aws:ec2:{aws.region}:{aws.account_id}"
    calls = [
        (lambda: client.replace_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                                      NetworkInterfaceId=t.instances["r1"].eni(0)),
         "ReplaceRoute", f"{arn}:route-table/{t.route_tables['wan']}"),
        (lambda: client.assign_private_ip_addresses(NetworkInterfaceId=t.instances["r1"].eni(0),
                                                    PrivateIpAddresses=[VIP]),
         "AssignPrivateIpAddresses", f"{arn}:network-interface/{t.instances['r1'].eni(0)}"),
        (lambda: client.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=t.instances["r1"].eni(0)),
         "AssociateAddress", f"{arn}:elastic-ip/{t.eip_alloc}"),
    ]
    for call, action, resource in calls:
        with pytest.raises(ClientError) as ei:
            call()
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert code_of(ei) == "UnauthorizedOperation"
        assert re.fullmatch(
            re.escape(f"You are not authorized to perform this operation. {who} to perform: ec2:{action} "
                      f"on resource: {resource} because no identity-based policy allows the ec2:{action} action. "
                      "Encoded authorization failure message: ") + r"[A-Za-z0-9_-]{900,}", message_of(ei))
    with pytest.raises(ClientError) as ei:
        client.describe_route_tables()
    assert message_of(ei) == (f"You are not authorized to perform this operation. {who} to perform: "
                              "ec2:DescribeRouteTables because no identity-based policy allows the "
                              "ec2:DescribeRouteTables action")
    assert aws.count_actions() == {}  # nothing reached EC2


# ============================================================================ throttling

def test_token_buckets_follow_ec2s_sizes():
    from aws_vrrp_notify.lab.throttle import Throttle, action_class

    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    assert [action_class(a) for a in ("AssignIpv6Addresses", "ReplaceRoute", "UnassignPrivateIpAddresses",
                                      "DescribeAddresses")] == ["ip-assign", "mutating", "mutating", "non-mutating"]
    for action, capacity, refill in (("ReplaceRoute", 50, 5), ("AssignPrivateIpAddresses", 100, 5),
                                     ("DescribeNetworkInterfaces", 100, 20)):
        assert sum(throttle.take(action) for _ in range(capacity + 10)) == capacity
        if action == "ReplaceRoute":
            assert throttle.take("CreateRoute") is False  # one bucket for every mutating action
        now[0] += 1.0
        assert sum(throttle.take(action) for _ in range(capacity)) == refill
    with pytest.raises(ValueError, match="unknown throttling classes"):
        Throttle({"writes": (1, 1)})


def test_throttled_calls_get_request_limit_exceeded(aws, tool):
    t = aws.topology
    aws.set_throttle(True, buckets={"non-mutating": (2, 4.0), "mutating": (1, 0.01)})
    tool.describe_route_tables(RouteTableIds=[t.route_tables["wan"]])
    tool.describe_route_tables(RouteTableIds=[t.route_tables["wan"]])
    with pytest.raises(ClientError) as ei:
        tool.describe_route_tables(RouteTableIds=[t.route_tables["wan"]])
    assert code_of(ei) == "RequestLimitExceeded"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    aws.ec2.describe_route_tables()  # the harness is never throttled
    e1 = t.instances["r1"].eni(0)
    aws.ec2.create_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0", GatewayId=t.igw)
    tool.replace_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=e1)
    with pytest.raises(ClientError):
        tool.replace_route(RouteTableId=t.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                           NetworkInterfaceId=t.instances["r2"].eni(0))
    assert aws.route_target(t.route_tables["wan"], "0.0.0.0/0") == e1  # the throttled write changed nothing
    assert aws.throttled == {"DescribeRouteTables": 1, "ReplaceRoute": 1}
    assert aws.count_actions() == {"DescribeRouteTables": 3, "ReplaceRoute": 2}  # attempts, throttled included
    sts = aws.client("sts", tool=True)
    for _ in range(3):
        sts.get_caller_identity()  # EC2's buckets are EC2's
    time.sleep(0.3)
    tool.describe_route_tables(RouteTableIds=[t.route_tables["wan"]])  # refilled
    aws.reset_state()
    assert aws.throttled == {}
    for _ in range(3):
        tool.describe_route_tables(RouteTableIds=[t.route_tables["wan"]])  # off after a reset


# ============================================================================ lab CLI

def test_lab_cli_rejects_a_bad_lag():
    proc = subprocess.run([sys.executable, "-m", "aws_vrrp_notify.lab", "demo", "--lag", "soon"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--lag: lag 'soon' is neither seconds nor a profile (all-0.5, all-2, ip-2-rest-0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tool_without_keys_signs_with_the_role_of_its_instance(routers, run_tool):
    """The IMDS emulator inside the router namespace is enough for the tool's credentials."""
    r1 = routers.r1
    config = ('[aws]\ndeadline = 20\nprepare = false\n[groups.VI_1]\n'
              f'[[groups.VI_1.assign-private-ip]]\nip = "{VIP}"\ninterface = "eth0"\n')
    proc = run_tool(r1, "master", "VI_1", config=config,
                    env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
    assert proc.returncode == 0, proc.stderr
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]
    creds = r1.imds.profile.current()
    signers = {(c.access_key, c.session_token) for c in routers.cloud.calls() if c.action}
    assert signers == {(creds.access_key_id, creds.token)}
