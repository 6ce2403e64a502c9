"""The lab's Route 53 (aws_vrrp_notify/lab/route53_api.py, consistency.py, throttle.py,
moto_fixes.py): moto serves it on EC2's endpoint; the lab names its REST requests, lags
ChangeResourceRecordSets like EC2's writes, throttles it at 5 requests/s, refuses
what Route 53 refuses and answers changes PENDING until their propagation time
(route53_sync.py)."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from aws_vrrp_notify.lab.route53_api import parse_request


@pytest.fixture(scope="module")
def tool(cloud):
    """A Route 53 client whose calls are the tool's (counted, lagged, throttled)."""
    return cloud.client("route53", tool=True)


def upsert(client, zone, name, value, record_type="A"):
    return client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": name, "Type": record_type, "TTL": 10,
                                                   "ResourceRecords": [{"Value": value}]}}]})


def code_of(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def test_topology_has_a_private_zone_for_the_vpc(aws):
    zone = aws.route53.get_hosted_zone(Id=aws.topology.zone_id)
    assert zone["HostedZone"]["Name"] == "lab.internal." and zone["HostedZone"]["Config"]["PrivateZone"]
    assert zone["VPCs"] == [{"VPCRegion": aws.region, "VPCId": aws.topology.vpc}]


def test_requests_are_named_and_counted(aws, tool):
    zone = aws.topology.zone_id
    upsert(tool, zone, "a.lab.internal", "10.0.1.5")
    tool.list_resource_record_sets(HostedZoneId=zone, StartRecordName="a.lab.internal", StartRecordType="A",
                                   MaxItems="5")
    tool.get_hosted_zone(Id=zone)
    assert aws.count_actions() == {"ChangeResourceRecordSets": 1, "ListResourceRecordSets": 1, "GetHostedZone": 1}
    change, listing, _ = aws.calls()
    assert change.service == "route53" and change.params["Change.1.Value.1"] == "10.0.1.5"
    assert listing.params == {"HostedZoneId": zone, "StartRecordName": "a.lab.internal", "StartRecordType": "A",
                              "MaxItems": "5"}
    assert parse_request("PATCH", "/2013-04-01/unknown", "", b"") == (None, {})
    aws.reset_state()  # the record the test wrote is removed
    assert aws.dns_values("a") is None


def test_invalid_values_are_refused_without_lag(aws, tool):
    with pytest.raises(ClientError) as exc:
        upsert(tool, aws.topology.zone_id, "a.lab.internal", "not-an-address")
    assert code_of(exc) == "InvalidChangeBatch" and "ARRDATAIllegalIPv4Address" in str(exc.value)
    with pytest.raises(ClientError) as exc:
        upsert(tool, aws.topology.zone_id, "a.lab.internal", "10.0.1.5", "AAAA")
    assert "AAAARRDATAIllegalIPv6Address" in str(exc.value)
    with pytest.raises(ClientError) as exc:
        upsert(tool, "ZNOSUCHZONE", "a.lab.internal", "nonsense")
    assert code_of(exc) == "NoSuchHostedZone"  # the zone first, as Route 53
    assert aws.dns_values("a") is None


def test_a_change_is_pending_until_its_propagation_time_then_insync(aws, tool):
    zone = aws.topology.zone_id
    assert upsert(tool, zone, "a.lab.internal", "10.0.1.5")["ChangeInfo"]["Status"] == "INSYNC"  # moto's
    aws.set_route53_sync(0.5)
    first = upsert(tool, zone, "a.lab.internal", "10.0.1.6")["ChangeInfo"]
    second = upsert(tool, zone, "b.lab.internal", "10.0.1.7")["ChangeInfo"]
    assert first["Status"] == second["Status"] == "PENDING" and first["Id"] != second["Id"]
    assert aws.dns_values("a") == ["10.0.1.6"] and aws.dns_values("b") == ["10.0.1.7"]  # applied at once
    assert tool.get_change(Id=first["Id"])["ChangeInfo"]["Status"] == "PENDING"
    time.sleep(0.5)
    assert tool.get_change(Id=first["Id"].rsplit("/", 1)[-1])["ChangeInfo"]["Status"] == "INSYNC"
    assert aws.count_actions()["GetChange"] == 2
    aws.reset_state()  # turns it off
    assert upsert(tool, zone, "a.lab.internal", "10.0.1.8")["ChangeInfo"]["Status"] == "INSYNC"


def test_a_lagged_change_is_pending_then_lands_in_order(aws, lag, tool):
    zone = aws.topology.zone_id
    lag({"ChangeResourceRecordSets": 0.5})
    start = time.monotonic()
    first = upsert(tool, zone, "a.lab.internal", "10.0.1.5")["ChangeInfo"]
    assert first["Status"] == "PENDING" and first["Id"].startswith("/change/C")
    lag({"ChangeResourceRecordSets": 0.1})  # a later change of the same record waits for the first
    upsert(tool, zone, "a.lab.internal.", "10.0.1.6")
    assert time.monotonic() - start < 0.4 and aws.dns_values("a") is None
    assert [w.action for w in aws.pending_writes()] == ["ChangeResourceRecordSets"] * 2
    aws.settle()
    assert aws.dns_values("a") == ["10.0.1.6"] and aws.failed_writes() == []
    assert aws.landed_writes()[0][0] - start >= 0.5


def test_a_lagged_change_is_validated_at_once(aws, lag, tool):
    lag(1.0)
    zone = aws.topology.zone_id
    for name, value, zone_id, code in (("a.lab.internal", "nonsense", zone, "InvalidChangeBatch"),
                                       ("a.elsewhere.test", "10.0.1.5", zone, "InvalidChangeBatch"),
                                       ("a.lab.internal", "10.0.1.5", "ZNOSUCHZONE", "NoSuchHostedZone")):
        with pytest.raises(ClientError) as exc:
            upsert(tool, zone_id, name, value)
        assert code_of(exc) == code
    assert aws.pending_writes() == []


def test_route53_is_throttled_at_five_requests_a_second(aws, tool):
    aws.set_throttle(True)
    answers = []
    for _ in range(8):
        try:
            tool.list_resource_record_sets(HostedZoneId=aws.topology.zone_id, MaxItems="1")
            answers.append("ok")
        except ClientError as exc:
            answers.append(code_of_error(exc))
    assert answers.count("ok") in (5, 6) and set(answers) == {"ok", "Throttling"}, answers
    assert aws.throttled["ListResourceRecordSets"] == answers.count("Throttling")
    aws.set_throttle(False)


def code_of_error(exc) -> str:
    return exc.response["Error"]["Code"] + ("" if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400 else "?")
