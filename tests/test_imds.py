"""The IMDSv2 client against the emulator (over HTTP on loopback) and its environment rules."""

from __future__ import annotations

import pytest

from aws_vrrp_notify.deadline import Deadline
from aws_vrrp_notify.imds import (IPV6_ENDPOINT, ImdsClient, ImdsError, ImdsNotFound, ImdsUnavailable,
                                  dmi_says_ec2, endpoint_from_env)


def test_endpoint_rules_follow_botocore():
    assert endpoint_from_env({}) == "http://169.254.169.254/"
    assert endpoint_from_env({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}) == IPV6_ENDPOINT
    assert endpoint_from_env({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1234",
                              "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}) == "http://127.0.0.1:1234/"
    with pytest.raises(ImdsError, match="expected IPv4 or IPv6"):
        endpoint_from_env({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "ipv5"})


def test_disabled_means_unavailable(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = ImdsClient(endpoint="http://127.0.0.1:9/")
    assert client.available() is False
    with pytest.raises(ImdsUnavailable, match="AWS_EC2_METADATA_DISABLED"):
        client.get("meta-data/instance-id")
    assert client.requests == 0


@pytest.fixture
def imds(aws):
    url = aws.serve_imds("r1")
    return aws.imds("r1"), url, aws.topology.instances["r1"]


def test_token_then_gets(imds):
    server, url, inst = imds
    client = ImdsClient(endpoint=url)
    assert client.get("meta-data/instance-id") == inst.instance_id
    assert client.mac_data(inst.mac(0), "interface-id") == inst.eni(0)
    assert client.identity()["instanceId"] == inst.instance_id
    assert server.count("PUT") == 1 and server.count("GET") == 3  # one token, reused


def test_404_and_401_refresh(imds):
    server, url, inst = imds
    client = ImdsClient(endpoint=url)
    with pytest.raises(ImdsNotFound):
        client.mac_data("02:00:00:de:ad:00", "interface-id")
    server.expire_tokens()
    assert client.get("meta-data/instance-id") == inst.instance_id
    assert server.count("PUT") == 2


def test_no_answer_is_unavailable():
    client = ImdsClient(endpoint="http://127.0.0.1:9/", deadline=Deadline(3))
    assert client.available() is False
    with pytest.raises(ImdsUnavailable, match="did not answer PUT /latest/api/token"):
        client.get("meta-data/instance-id")


def test_dmi(tmp_path):
    assert dmi_says_ec2(str(tmp_path)) is False
    (tmp_path / "class" / "dmi" / "id").mkdir(parents=True)
    (tmp_path / "class" / "dmi" / "id" / "sys_vendor").write_text("Amazon EC2\n")
    assert dmi_says_ec2(str(tmp_path)) is True
    (tmp_path / "class" / "dmi" / "id" / "sys_vendor").write_text("QEMU\n")
    (tmp_path / "hypervisor").mkdir()
    (tmp_path / "hypervisor" / "uuid").write_text("ec2e1916-9099-7caf-fd21-012345abcdef\n")
    assert dmi_says_ec2(str(tmp_path)) is True
