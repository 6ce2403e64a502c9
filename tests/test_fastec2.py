"""The standard-library EC2 client (aws_vrrp_notify.fastec2) against botocore.

Every operation is called with both botocore and FastEc2Client, against moto (in this process,
127.0.0.1) or against tiny local servers, and the answers must be the same: response dicts,
error codes, request bodies and SigV4 signatures.  Nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from aws_vrrp_notify import __version__, fastec2
from aws_vrrp_notify.deadline import Deadline
from aws_vrrp_notify.ec2 import READ_KINDS, AwsError, Ec2, error_code, fetch_snapshot
from aws_vrrp_notify.fastec2 import (FastClientError, FastConnectionError, FastCredentialsError,
                                     FastEc2Client, FastParamValidationError, FastReadTimeoutError,
                                     FastResponseParserError, InstanceProfileCredentials, StaticCredentials)

REPO = Path(__file__).resolve().parent.parent
CREDS = ("testing", "testing", None)
BAD = "0000000000000000f"
OPS = tuple(fastec2.METHOD_TO_API_MAPPING)


def strip(response: dict) -> dict:
    out = dict(response)
    out.pop("ResponseMetadata", None)
    return out


def boto_client(url: str, region: str = "eu-west-3", **kw):
    import botocore.session
    from botocore.config import Config

    cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5)
    return botocore.session.Session().create_client(
        "ec2", region_name=region, endpoint_url=url, aws_access_key_id="testing",
        aws_secret_access_key="testing", config=cfg, **kw)


@pytest.fixture
def fast(aws):
    with FastEc2Client(aws.region, aws.url, StaticCredentials("testing", "testing")) as client:
        yield client


@pytest.fixture
def boto(aws):
    return aws.ec2


def both_fail(call_boto, call_fast):
    """Run both, expecting errors; returns (botocore ClientError, FastClientError)."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as eb:
        call_boto()
    with pytest.raises(FastClientError) as ef:
        call_fast()
    return eb.value, ef.value


def outcome(call):
    """("ok", response without metadata) or ("error", code, message, HTTP status)."""
    try:
        return ("ok", strip(call()))
    except Exception as exc:  # noqa: BLE001 - botocore's ClientError or FastClientError
        response = getattr(exc, "response", None)
        if not isinstance(response, dict):
            raise
        return ("error", response["Error"]["Code"], response["Error"]["Message"],
                response["ResponseMetadata"]["HTTPStatusCode"])


def assert_same_error(eb, ef):
    assert ef.response["Error"] == eb.response["Error"]
    assert ef.response["ResponseMetadata"]["HTTPStatusCode"] == eb.response["ResponseMetadata"]["HTTPStatusCode"]
    assert ef.response["ResponseMetadata"].get("RequestId") == eb.response["ResponseMetadata"].get("RequestId")
    assert error_code(ef) == error_code(eb)
    assert ef.operation_name == eb.operation_name


# --------------------------------------------------------------------------- tiny local servers


class Captured(SimpleNamespace):
    """One request seen by RawServer: method, path, headers (lower-case dict), raw_headers, body."""


class RawServer:
    """A minimal HTTP/1.1 (keep-alive) server on 127.0.0.1:0.

    ``handler(conn_no, req_no, request)`` returns ``("respond", status, body[, headers])``,
    ``("reset",)`` (RST, no answer), ``("close",)`` (FIN, no answer) or ``("hang",)``.
    """

    def __init__(self, handler, tls=None):
        self.handler = handler
        self.requests: list = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.tls = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.conns: list = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                n = self.connections
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn, conn_no):
        try:
            if self.tls:
                raw, conn = conn, self.tls.wrap_socket(conn, server_side=True)
                with self.lock:  # close() must shut the wrapped socket down (the raw one is detached)
                    self.conns[self.conns.index(raw)] = conn
            self._serve_plain(conn, conn_no)
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _serve_plain(self, conn, conn_no):
        buf = b""
        req_no = 0
        conn.settimeout(30)
        while not self.stop.is_set():
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            raw = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
            headers = {k.lower(): v for k, v in raw}
            n = int(headers.get("content-length", "0"))
            while len(buf) < n:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:n], buf[n:]
            req_no += 1
            req = Captured(method=method, path=path, headers=headers, raw_headers=raw, body=body,
                           params=dict(urllib.parse.parse_qsl(body.decode())), conn_no=conn_no, req_no=req_no)
            with self.lock:
                self.requests.append(req)
            reply = self.handler(conn_no, req_no, req)
            if reply[0] == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            if reply[0] == "close":
                conn.close()
                return
            if reply[0] == "hang":
                self.stop.wait(30)
                return
            status, payload = reply[1], reply[2]
            extra = reply[3] if len(reply) > 3 else {}
            out = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                   "Content-Type: text/xml;charset=UTF-8", f"Content-Length: {len(payload)}",
                   "Server: AmazonEC2"]
            out += [f"{k}: {v}" for k, v in extra.items()]
            conn.sendall(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
            if extra.get("Connection") == "close":
                conn.close()
                return

    def close(self):
        self.stop.set()
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)  # wakes the serving thread's recv()
                except OSError:
                    pass
                try:
                    c.close()
                except OSError:
                    pass
        for t in self.threads:
            t.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


ADDRESSES_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<DescribeAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
  <addressesSet>
    <item>
      <publicIp>198.51.100.7</publicIp>
      <allocationId>eipalloc-0123456789abcdef0</allocationId>
      <domain>vpc</domain>
      <associationId>eipassoc-0123456789abcdef0</associationId>
      <instanceId>i-0123456789abcdef0</instanceId>
      <networkInterfaceId>eni-0123456789abcdef0</networkInterfaceId>
      <networkInterfaceOwnerId>123456789012</networkInterfaceOwnerId>
      <privateIpAddress>10.0.1.10</privateIpAddress>
      <publicIpv4Pool>amazon</publicIpv4Pool>
      <networkBorderGroup>eu-west-3</networkBorderGroup>
      <tagSet><item><key>Name</key><value>vip</value></item></tagSet>
    </item>
  </addressesSet>
</DescribeAddressesResponse>"""


def ec2_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>req-1234</RequestID></Response>").encode()


def ok_addresses(conn_no, req_no, req):
    return ("respond", 200, ADDRESSES_XML)


def canned_fast(url, **kw):
    kw.setdefault("connect_timeout", 2)
    kw.setdefault("read_timeout", 5)
    return FastEc2Client("eu-west-3", url, StaticCredentials("testing", "testing"), **kw)


# --------------------------------------------------------------------------- model and serialization


def _botocore_model():
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2")


def test_operation_table_matches_botocore_model():
    model = _botocore_model()
    kinds = {"string": "s", "boolean": "b", "integer": "i", "long": "i"}
    for name, (api, members, required, outputs) in fastec2._OPERATIONS.items():
        op = model.operation_model(api)
        expected = {}
        for member, shape in op.input_shape.members.items():
            if shape.type_name == "list":
                kind = "F" if shape.member.type_name == "structure" else "L"
                assert kind == "L" or shape.member.name == "Filter"
            else:
                kind = kinds[shape.type_name]
            loc = shape.serialization.get("queryName") or (
                shape.serialization["name"][:1].upper() + shape.serialization["name"][1:]
                if "name" in shape.serialization else member)
            expected[member] = kind if loc == member else f"{kind}:{loc}"
        assert members == expected, name
        assert tuple(op.input_shape.required_members) == required, name
        out = tuple(s.serialization.get("name", m) for m, s in op.output_shape.members.items()) \
            if op.output_shape else ()
        assert out == outputs, name
    filt = model.shape_for("Filter")
    assert {m: s.serialization.get("name", m) for m, s in filt.members.items()} == {"Name": "Name", "Values": "Value"}


def test_output_tables_match_botocore_model():
    """Every member reachable from the outputs: its XML tag, key and type follow the tables."""
    model = _botocore_model()
    kinds = {"boolean": "b", "integer": "i", "long": "i", "timestamp": "t", "structure": "d", "string": "s"}
    scalars, list_tags, overrides_used, seen = {}, set(), set(), set()

    def walk(shape, container):
        for name, ms in shape.members.items():
            tag = ms.serialization.get("name", name)
            if ms.type_name == "list":
                assert ms.member.serialization.get("name", "member") == "item", (container, tag)
                assert not ms.serialization.get("flattened")
                assert tag in fastec2._LISTS, tag
                if (container, tag) in fastec2._LIST_KEY_OVERRIDES:
                    overrides_used.add((container, tag))
                key = fastec2._LIST_KEY_OVERRIDES.get((container, tag), fastec2._LISTS[tag][0])
                assert key == name, (container, tag)
                assert fastec2._LISTS[tag][1] == kinds[ms.member.type_name], tag
                list_tags.add(tag)
                sub, sub_container = ms.member, tag
            else:
                assert tag[:1].upper() + tag[1:] == name, (tag, name)
                scalars.setdefault(tag, set()).add(kinds[ms.type_name])
                sub, sub_container = ms, tag
            if sub.type_name == "structure" and (sub.name, sub_container) not in seen:
                seen.add((sub.name, sub_container))
                walk(sub, sub_container)

    for api in fastec2.METHOD_TO_API_MAPPING.values():
        op = model.operation_model(api)
        if op.output_shape is not None:
            walk(op.output_shape, api + "Response")
    assert list_tags == set(fastec2._LISTS)
    assert overrides_used == set(fastec2._LIST_KEY_OVERRIDES)
    assert not list_tags & set(scalars)
    assert all(len(k) == 1 for k in scalars.values()), {t: k for t, k in scalars.items() if len(k) > 1}
    by_kind = {}
    for tag, k in scalars.items():
        by_kind.setdefault(next(iter(k)), set()).add(tag)
    assert by_kind["b"] == fastec2._BOOLEANS
    assert by_kind["i"] == fastec2._INTEGERS
    assert by_kind["t"] == fastec2._TIMESTAMPS
    assert by_kind["d"] == fastec2._STRUCTURES
    assert set(by_kind) == {"b", "i", "t", "d", "s"}
    assert not any(t.endswith("Set") for t in by_kind["s"])  # unknown empty ...Set elements become []


def test_method_names_match_botocore():
    client = boto_client("http://127.0.0.1:9")
    fc = canned_fast("http://127.0.0.1:9")
    for name, api in fc.meta.method_to_api_mapping.items():
        assert client.meta.method_to_api_mapping[name] == api
        assert callable(getattr(fc, name)) and callable(getattr(client, name))
    assert set(fc.meta.method_to_api_mapping) == {
        "assign_private_ip_addresses", "replace_route", "create_route", "associate_address",
        "describe_network_interfaces", "describe_route_tables", "describe_subnets", "describe_addresses"}


class _Stop(Exception):
    pass


SERIALIZE_CASES = [
    ("assign_private_ip_addresses", dict(NetworkInterfaceId="eni-1", PrivateIpAddresses=["10.0.1.5", "10.0.1.6"],
                                         AllowReassignment=True)),
    ("assign_private_ip_addresses", dict(AllowReassignment=False, NetworkInterfaceId="eni-1",
                                         PrivateIpAddresses=["10.0.1.5"])),
    ("replace_route", dict(RouteTableId="rtb-1", DestinationCidrBlock="10.9.0.0/16", NetworkInterfaceId="eni-1")),
    ("replace_route", dict(RouteTableId="rtb-1", DestinationIpv6CidrBlock="2001:db8:1::/64",
                           NetworkInterfaceId="eni-1", DryRun=True)),
    ("create_route", dict(RouteTableId="rtb-1", DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId="eni-1",
                          DryRun=False)),
    ("create_route", dict(DestinationIpv6CidrBlock="::/0", RouteTableId="rtb-1", NetworkInterfaceId="eni-1")),
    ("associate_address", dict(AllocationId="eipalloc-1", NetworkInterfaceId="eni-1", PrivateIpAddress="10.0.1.5",
                               AllowReassociation=True, DryRun=False)),
    ("describe_network_interfaces", dict(Filters=[{"Name": "vpc-id", "Values": ["vpc-1", "vpc 2/+&=é"]},
                                                  {"Values": ["10.0.1.5"], "Name": "addresses.private-ip-address"}],
                                         MaxResults=1000, NextToken="tok+/=")),
    ("describe_network_interfaces", dict(NetworkInterfaceIds=["eni-1", "eni-2"], DryRun=True)),
    ("describe_network_interfaces", dict(NetworkInterfaceIds=[], Filters=[])),
    ("describe_route_tables", dict(Filters=[{"Name": "association.subnet-id", "Values": ["subnet-1"]},
                                            {"Name": "association.main", "Values": ["true"]}])),
    ("describe_route_tables", dict(RouteTableIds=["rtb-1"], NextToken="abc", DryRun=True)),
    ("describe_subnets", dict(Filters=[{"Name": "vpc-id", "Values": ["vpc-1"]}], NextToken="x")),
    ("describe_addresses", dict()),
    ("describe_addresses", dict(AllocationIds=["eipalloc-1"], PublicIps=["198.51.100.7"],
                                Filters=[{"Name": "domain", "Values": ["vpc"]}], DryRun=False)),
]


@pytest.fixture(scope="module")
def capturing_botocore():
    """A botocore client whose requests are captured before anything is sent."""
    client = boto_client("http://127.0.0.1:9")
    seen = []

    def hook(request, **kw):
        seen.append(request)
        raise _Stop()

    client.meta.events.register("before-send", hook)
    return client, seen


@pytest.mark.parametrize("operation,params", SERIALIZE_CASES)
def test_request_body_is_botocores(capturing_botocore, operation, params):
    client, seen = capturing_botocore
    with pytest.raises(_Stop):
        getattr(client, operation)(**copy.deepcopy(params))
    request = seen[-1]
    action, body = fastec2.serialize(operation, params)
    assert action == client.meta.method_to_api_mapping[operation]
    sent = request.body.encode("ascii") if isinstance(request.body, str) else request.body  # ASCII: urlencoded
    assert body == sent
    assert request.headers["Content-Type"].decode() == fastec2.CONTENT_TYPE


@pytest.mark.parametrize("operation,params", [
    ("replace_route", dict(DestinationCidrBlock="10.9.0.0/16")),                        # missing RouteTableId
    ("replace_route", dict(RouteTableId="rtb-1", Bogus="x")),                            # unknown parameter
    ("associate_address", dict(AllocationId="eipalloc-1", AllowReassociation="yes")),    # not a bool
    ("assign_private_ip_addresses", dict(NetworkInterfaceId="eni-1", PrivateIpAddresses="10.0.1.5")),
    ("describe_network_interfaces", dict(Filters=[{"Name": "vpc-id", "Values": "vpc-1"}])),
    ("describe_network_interfaces", dict(Filters=[{"Name": "vpc-id", "Value": ["vpc-1"]}])),
    ("describe_network_interfaces", dict(MaxResults="5")),
])
def test_parameter_validation_like_botocore(capturing_botocore, operation, params):
    from botocore.exceptions import ParamValidationError

    client, _ = capturing_botocore
    with pytest.raises(ParamValidationError):
        getattr(client, operation)(**params)
    server_never_called = canned_fast("http://127.0.0.1:9")
    with pytest.raises(FastParamValidationError):
        getattr(server_never_called, operation)(**params)
    assert server_never_called.requests_sent == 0


def test_positional_arguments_rejected_like_botocore():
    with pytest.raises(TypeError):
        canned_fast("http://127.0.0.1:9").describe_addresses({"AllocationIds": ["x"]})


# --------------------------------------------------------------------------- SigV4


def botocore_auth_headers(url, body, region, creds, when, user_agent="x"):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": fastec2.CONTENT_TYPE, "User-Agent": user_agent})
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(Credentials(*creds), "ec2", region).add_auth(request)
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}


@pytest.mark.parametrize("token", [None, "IQoJb3JpZ2luX2VjE//session+token=="])
@pytest.mark.parametrize("url", ["https://ec2.eu-west-3.amazonaws.com", "http://127.0.0.1:8123",
                                 "https://EC2.cn-north-1.amazonaws.com.cn:443", "http://[::1]:8080"])
def test_sigv4_matches_botocore(token, url):
    when = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.timezone.utc)
    creds = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    region = "cn-north-1" if ".cn" in url else "eu-west-3"
    _, body = fastec2.serialize("replace_route", dict(RouteTableId="rtb-1", DestinationIpv6CidrBlock="2001:db8::/64",
                                                      NetworkInterfaceId="eni-1"))
    expected = botocore_auth_headers(url, body, region, creds, when)
    parts = urllib.parse.urlsplit(url)
    host = fastec2._host_header(parts.scheme, parts.hostname, parts.port)
    mine = fastec2.sigv4_headers(host, "/", body, region, creds, when.strftime("%Y%m%dT%H%M%SZ"))
    assert mine["Authorization"] == expected["Authorization"]
    assert mine["X-Amz-Date"] == expected["X-Amz-Date"] == "20240229T235958Z"
    assert mine.get("X-Amz-Security-Token") == expected.get("X-Amz-Security-Token") == token
    signed = "content-type;host;x-amz-date" + (";x-amz-security-token" if token else "")
    assert f"SignedHeaders={signed}," in mine["Authorization"]


@pytest.mark.parametrize("token", [None, "session-token-123"])
def test_signature_on_the_wire_verifies_with_botocore(token):
    with RawServer(ok_addresses) as srv:
        client = FastEc2Client("eu-west-3", srv.url, StaticCredentials("AKID", "SECRET", token))
        client.describe_addresses(AllocationIds=["eipalloc-1"])
        req = srv.requests[-1]
    assert req.method == "POST" and req.path == "/"
    assert req.headers["host"] == f"127.0.0.1:{srv.port}"
    assert req.headers["user-agent"] == f"aws-vrrp-notify/{__version__} fast-ec2"
    assert req.headers["content-type"] == fastec2.CONTENT_TYPE
    assert req.headers.get("x-amz-security-token") == token
    when = datetime.datetime.strptime(req.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    expected = botocore_auth_headers(f"http://{req.headers['host']}{req.path}", req.body, "eu-west-3",
                                     ("AKID", "SECRET", token), when)
    assert req.headers["authorization"] == expected["Authorization"]


# --------------------------------------------------------------------------- against moto: reads


def test_describes_equal_botocore(aws, fast, boto):
    t = aws.topology
    vpc = [{"Name": "vpc-id", "Values": [t.vpc]}]
    r1 = t.instances["r1"]
    cases = [
        ("describe_network_interfaces", dict(Filters=vpc, MaxResults=1000)),
        ("describe_network_interfaces", dict(NetworkInterfaceIds=[r1.eni(0), r1.eni(1)])),
        ("describe_network_interfaces", dict(Filters=[{"Name": "addresses.private-ip-address",
                                                       "Values": [r1.private_ips[0]]}])),
        ("describe_route_tables", dict(Filters=vpc)),
        ("describe_route_tables", dict(Filters=[{"Name": "association.subnet-id", "Values": [t.subnets["lan"]]}])),
        ("describe_route_tables", dict(Filters=vpc + [{"Name": "association.main", "Values": ["true"]}])),
        ("describe_route_tables", dict(RouteTableIds=[t.route_tables["wan"]])),
        ("describe_subnets", dict(Filters=vpc)),
        ("describe_subnets", dict(Filters=[{"Name": "cidr-block", "Values": ["10.0.2.0/24"]}])),
        ("describe_addresses", dict()),
        ("describe_addresses", dict(AllocationIds=[t.eip_alloc])),
        ("describe_addresses", dict(PublicIps=[t.eip_public_ip])),
        ("describe_addresses", dict(Filters=[{"Name": "domain", "Values": ["vpc"]}])),
    ]
    for operation, params in cases:
        rb = getattr(boto, operation)(**copy.deepcopy(params))
        rf = getattr(fast, operation)(**params)
        assert strip(rf) == strip(rb), (operation, params)
        assert rf["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert rf["ResponseMetadata"]["RequestId"] == rb["ResponseMetadata"]["RequestId"]
        hb, hf = rb["ResponseMetadata"]["HTTPHeaders"], rf["ResponseMetadata"]["HTTPHeaders"]
        assert set(hf) == set(hb) and hf["server"] == hb["server"] and hf["content-type"] == hb["content-type"]
    enis = fast.describe_network_interfaces(Filters=vpc)["NetworkInterfaces"]
    assert len(enis) == 6
    eni = next(e for e in enis if e["NetworkInterfaceId"] == r1.eni(0))
    assert eni["Attachment"]["InstanceId"] == r1.instance_id and eni["Attachment"]["DeviceIndex"] == 0
    assert eni["PrivateIpAddresses"][0] == {"PrivateIpAddress": r1.private_ips[0], "Primary": True}
    assert isinstance(eni["Attachment"]["AttachTime"], datetime.datetime)
    assert eni["MacAddress"] == r1.mac(0) and eni["VpcId"] == t.vpc and eni["SubnetId"] == t.subnets["lan"]


def test_snapshot_through_the_tool_is_identical(aws, fast, boto):
    """The tool's own batched reads give the same Snapshot with either client."""
    t = aws.topology
    fast.assign_private_ip_addresses(NetworkInterfaceId=t.instances["r2"].eni(0), PrivateIpAddresses=["10.0.1.60"],
                                     AllowReassignment=True)
    fast.create_route(RouteTableId=t.route_tables["lan"], DestinationIpv6CidrBlock="2001:db8:60::/64",
                      NetworkInterfaceId=t.instances["r2"].eni(0))
    fast.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=t.instances["r2"].eni(0),
                           AllowReassociation=True)
    snap_b = fetch_snapshot(Ec2(boto, Deadline(30)), READ_KINDS, vpc_ids=[t.vpc])
    snap_f = fetch_snapshot(Ec2(fast, Deadline(30)), READ_KINDS, vpc_ids=[t.vpc])
    for kind in ("enis", "route_tables", "subnets", "addresses"):
        assert getattr(snap_f, kind) == getattr(snap_b, kind), (kind, getattr(snap_f, kind), getattr(snap_b, kind))
    assert snap_f.holder_of_ip("10.0.1.60") == t.instances["r2"].eni(0)
    assert snap_f.table_for_subnet(t.subnets["implicit"], t.vpc) == t.route_tables["main"]
    assert snap_f.table_for_subnet(t.subnets["lan"], t.vpc) == t.route_tables["lan"]
    assert snap_f.subnet_id_for("10.0.2.0/24", t.vpc) == t.subnets["wan"]
    assert snap_f.address(t.eip_alloc, None)["NetworkInterfaceId"] == t.instances["r2"].eni(0)
    routes = snap_f.route_table(t.route_tables["lan"])["Routes"]
    v6 = [r for r in routes if r.get("DestinationIpv6CidrBlock") == "2001:db8:60::/64"]
    assert v6 and v6[0]["NetworkInterfaceId"] == t.instances["r2"].eni(0) and v6[0]["State"] == "active"


# --------------------------------------------------------------------------- pagination


_SETS = {"DescribeNetworkInterfaces": "networkInterfaceSet", "DescribeRouteTables": "routeTableSet",
         "DescribeSubnets": "subnetSet"}


def _moto_xml(aws, operation, params) -> bytes:
    """moto's raw XML answer (signed like the client does, sent with http.client)."""
    import http.client

    action, body = fastec2.serialize(operation, params)
    parts = urllib.parse.urlsplit(aws.url)
    host = fastec2._host_header("http", parts.hostname, parts.port)
    headers = {"Content-Type": fastec2.CONTENT_TYPE, "Host": host}
    headers.update(fastec2.sigv4_headers(host, "/", body, aws.region, CREDS))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return data
    finally:
        conn.close()


class Pager:
    """Serves moto's full answers in pages of at most ``page`` items, with nextToken."""

    def __init__(self, answers, page=2):
        self.answers = answers
        self.page = page

    def __call__(self, conn_no, req_no, req):
        action = req.params["Action"]
        root = ET.fromstring(self.answers[action])
        ns = root.tag[1:].partition("}")[0]
        set_el = root.find(f"{{{ns}}}{_SETS[action]}")
        items = list(set_el)
        start = int(req.params.get("NextToken", "0"))
        size = min(self.page, int(req.params.get("MaxResults", "1000")))
        for el in root.findall(f"{{{ns}}}nextToken"):
            root.remove(el)
        set_el.clear()
        for item in items[start:start + size]:
            set_el.append(item)
        if start + size < len(items):
            ET.SubElement(root, f"{{{ns}}}nextToken").text = str(start + size)
        return ("respond", 200, ET.tostring(root, encoding="utf-8"))


def test_pagination_equal_botocore(aws):
    t = aws.topology
    vpc = [{"Name": "vpc-id", "Values": [t.vpc]}]
    ops = (("describe_network_interfaces", "NetworkInterfaces"), ("describe_route_tables", "RouteTables"),
           ("describe_subnets", "Subnets"))
    answers = {fastec2.METHOD_TO_API_MAPPING[op]: _moto_xml(aws, op, {"Filters": vpc}) for op, _ in ops}
    with RawServer(Pager(answers)) as srv:
        bc = boto_client(srv.url)
        fc = canned_fast(srv.url)
        for operation, key in ops:
            full = strip(getattr(aws.ec2, operation)(Filters=vpc))[key]
            token, pages, items = None, 0, []
            while True:
                extra = {"NextToken": token} if token else {}
                rb = getattr(bc, operation)(Filters=vpc, MaxResults=5, **extra)
                rf = getattr(fc, operation)(Filters=vpc, MaxResults=5, **extra)
                assert strip(rf) == strip(rb)
                pages += 1
                items += rf[key]
                token = rf.get("NextToken")
                if not token:
                    break
            assert pages == (len(full) + 1) // 2 and pages >= 2
            assert items == full
            kw = {"MaxResults": 1000} if key == "NetworkInterfaces" else {}
            assert Ec2(fc, Deadline(10)).paginate(operation, key, Filters=vpc, **kw) == \
                Ec2(bc, Deadline(10)).paginate(operation, key, Filters=vpc, **kw) == full
        assert srv.connections == 2  # one keep-alive connection each for botocore and the fast client


# --------------------------------------------------------------------------- against moto: writes


def test_assign_private_ip_addresses(aws, fast, boto):
    t = aws.topology
    eni1, eni2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    params = dict(NetworkInterfaceId=eni1, PrivateIpAddresses=["10.0.1.50"], AllowReassignment=True)
    rf = fast.assign_private_ip_addresses(**params)
    assert aws.who_holds("10.0.1.50") == [eni1]
    rb = boto.assign_private_ip_addresses(**params)  # the same again: same answer
    assert strip(rf) == strip(rb)
    assert rf["NetworkInterfaceId"] == eni1
    assert {"PrivateIpAddress": "10.0.1.50"} in rf["AssignedPrivateIpAddresses"]
    fast.assign_private_ip_addresses(NetworkInterfaceId=eni2, PrivateIpAddresses=["10.0.1.50", "10.0.1.51"],
                                     AllowReassignment=True)
    assert aws.who_holds("10.0.1.50") == [eni2] and aws.who_holds("10.0.1.51") == [eni2]
    eb, ef = both_fail(lambda: boto.assign_private_ip_addresses(NetworkInterfaceId=eni1,
                                                                PrivateIpAddresses=["10.0.1.51"]),
                       lambda: fast.assign_private_ip_addresses(NetworkInterfaceId=eni1,
                                                                PrivateIpAddresses=["10.0.1.51"]))
    assert_same_error(eb, ef)  # held elsewhere, no AllowReassignment


@pytest.mark.parametrize("dest", ["10.9.0.0/16", "2001:db8:9::/64"])
def test_create_and_replace_route(aws, fast, boto, dest):
    t = aws.topology
    key = "DestinationIpv6CidrBlock" if ":" in dest else "DestinationCidrBlock"
    rtb = t.route_tables["lan"]
    eni1, eni2 = t.instances["r1"].eni(0), t.instances["r2"].eni(0)
    # ReplaceRoute of a route that does not exist: the error the tool turns into CreateRoute
    eb, ef = both_fail(lambda: boto.replace_route(RouteTableId=rtb, NetworkInterfaceId=eni1, **{key: dest}),
                       lambda: fast.replace_route(RouteTableId=rtb, NetworkInterfaceId=eni1, **{key: dest}))
    assert_same_error(eb, ef)
    assert error_code(ef) == "InvalidParameterValue" and "no route" in ef.response["Error"]["Message"].lower()
    rf = fast.create_route(RouteTableId=rtb, NetworkInterfaceId=eni1, **{key: dest})
    assert strip(rf) == {"Return": True}
    assert aws.route_target(rtb, dest) == eni1
    # CreateRoute again (EC2: RouteAlreadyExists; moto accepts it): whatever happens, the same
    outcome_b = outcome(lambda: boto.create_route(RouteTableId=rtb, NetworkInterfaceId=eni1, **{key: dest}))
    outcome_f = outcome(lambda: fast.create_route(RouteTableId=rtb, NetworkInterfaceId=eni1, **{key: dest}))
    assert outcome_f == outcome_b
    rf = fast.replace_route(RouteTableId=rtb, NetworkInterfaceId=eni2, **{key: dest})
    assert aws.route_target(rtb, dest) == eni2
    rb = boto.replace_route(RouteTableId=rtb, NetworkInterfaceId=eni2, **{key: dest})
    assert strip(rf) == strip(rb) == {}
    table_b = boto.describe_route_tables(RouteTableIds=[rtb])
    table_f = fast.describe_route_tables(RouteTableIds=[rtb])
    assert strip(table_f) == strip(table_b)
    route = next(r for r in table_f["RouteTables"][0]["Routes"] if r.get(key) == dest)
    assert route["NetworkInterfaceId"] == eni2 and route["Origin"] == "CreateRoute"


def test_associate_address(aws, fast, boto):
    t = aws.topology
    r1, r2 = t.instances["r1"], t.instances["r2"]
    rf = fast.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=r1.eni(0),
                                PrivateIpAddress=r1.private_ips[0], AllowReassociation=True)
    assert list(strip(rf)) == ["AssociationId"] and rf["AssociationId"].startswith("eipassoc-")
    assert aws.eip_association() == (r1.eni(0), r1.private_ips[0])
    addr_b, addr_f = boto.describe_addresses(AllocationIds=[t.eip_alloc]), fast.describe_addresses(
        AllocationIds=[t.eip_alloc])
    assert strip(addr_f) == strip(addr_b)
    a = addr_f["Addresses"][0]
    assert (a["AssociationId"], a["NetworkInterfaceId"], a["PrivateIpAddress"], a["InstanceId"], a["PublicIp"]) == \
        (rf["AssociationId"], r1.eni(0), r1.private_ips[0], r1.instance_id, t.eip_public_ip)
    rb = boto.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=r2.eni(0), AllowReassociation=True)
    assert list(strip(rb)) == list(strip(rf))
    rf = fast.associate_address(AllocationId=t.eip_alloc, NetworkInterfaceId=r1.eni(0), AllowReassociation=True)
    assert aws.eip_association()[0] == r1.eni(0)


def _write_params(t):
    eni = t.instances["r1"].eni(0)
    return {
        "assign_private_ip_addresses": dict(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.70"],
                                            AllowReassignment=True),
        "replace_route": dict(RouteTableId=t.route_tables["lan"], DestinationCidrBlock="10.70.0.0/16",
                              NetworkInterfaceId=eni),
        "create_route": dict(RouteTableId=t.route_tables["lan"], DestinationCidrBlock="10.70.0.0/16",
                             NetworkInterfaceId=eni),
        "associate_address": dict(AllocationId=t.eip_alloc, NetworkInterfaceId=eni, AllowReassociation=True),
        "describe_network_interfaces": dict(Filters=[{"Name": "vpc-id", "Values": [t.vpc]}]),
        "describe_route_tables": dict(Filters=[{"Name": "vpc-id", "Values": [t.vpc]}]),
        "describe_subnets": dict(Filters=[{"Name": "vpc-id", "Values": [t.vpc]}]),
        "describe_addresses": dict(),
    }


@pytest.mark.parametrize("operation", [op for op in OPS if op != "assign_private_ip_addresses"])
def test_dry_run(aws, fast, boto, operation):
    params = dict(_write_params(aws.topology)[operation], DryRun=True)
    eb, ef = both_fail(lambda: getattr(boto, operation)(**params), lambda: getattr(fast, operation)(**params))
    assert_same_error(eb, ef)
    assert error_code(ef) == "DryRunOperation" and ef.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert aws.route_target(aws.topology.route_tables["lan"], "10.70.0.0/16") is None
    assert aws.eip_association() is None


def _bad_params(t):
    eni = t.instances["r1"].eni(0)
    return {
        "assign_private_ip_addresses": dict(NetworkInterfaceId=f"eni-{BAD}", PrivateIpAddresses=["10.0.1.71"]),
        "replace_route": dict(RouteTableId=f"rtb-{BAD}", DestinationCidrBlock="10.71.0.0/16", NetworkInterfaceId=eni),
        "create_route": dict(RouteTableId=f"rtb-{BAD}", DestinationCidrBlock="10.71.0.0/16", NetworkInterfaceId=eni),
        "associate_address": dict(AllocationId=f"eipalloc-{BAD}", NetworkInterfaceId=eni, AllowReassociation=True),
        "describe_network_interfaces": dict(NetworkInterfaceIds=[f"eni-{BAD}"]),
        "describe_route_tables": dict(RouteTableIds=[f"rtb-{BAD}"]),
        "describe_subnets": dict(SubnetIds=[f"subnet-{BAD}"]),
        "describe_addresses": dict(AllocationIds=[f"eipalloc-{BAD}"]),
    }


@pytest.mark.parametrize("operation", OPS)
def test_bad_id_same_error(aws, fast, boto, operation):
    params = _bad_params(aws.topology)[operation]
    eb, ef = both_fail(lambda: getattr(boto, operation)(**params), lambda: getattr(fast, operation)(**params))
    assert_same_error(eb, ef)
    assert "NotFound" in error_code(ef) or error_code(ef).startswith("Invalid")
    # through the tool's wrapper: a non-retryable AwsError with the same code, one attempt
    with pytest.raises(AwsError) as ab:
        Ec2(boto, Deadline(10)).call(operation, **params)
    with pytest.raises(AwsError) as af:
        Ec2(fast, Deadline(10)).call(operation, **params)
    assert (af.value.operation, af.value.code, af.value.message, af.value.attempts) == \
        (ab.value.operation, ab.value.code, ab.value.message, ab.value.attempts) == \
        (fastec2.METHOD_TO_API_MAPPING[operation], error_code(eb), eb.response["Error"]["Message"], 1)


# --------------------------------------------------------------------------- errors and transport


@pytest.mark.parametrize("status,code,message", [
    (503, "RequestLimitExceeded", "Request limit exceeded."),
    (500, "InternalError", "An internal error has occurred"),
    (503, "Unavailable", "The server is overloaded and can&apos;t handle the request."),
    (412, "DryRunOperation", "Request would have succeeded, but DryRun flag is set."),
    (403, "UnauthorizedOperation", "You are not authorized to perform this operation. Encoded &lt;x&gt;"),
])
def test_error_answers_like_botocore(status, code, message):
    with RawServer(lambda c, r, q: ("respond", status, ec2_error(code, message))) as srv:
        eb, ef = both_fail(lambda: boto_client(srv.url).replace_route(
            RouteTableId="rtb-1", DestinationCidrBlock="10.0.0.0/8", NetworkInterfaceId="eni-1"),
            lambda: canned_fast(srv.url).replace_route(
            RouteTableId="rtb-1", DestinationCidrBlock="10.0.0.0/8", NetworkInterfaceId="eni-1"))
    assert_same_error(eb, ef)
    assert ef.response["Error"]["Code"] == code and ef.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert ef.response["ResponseMetadata"]["RequestId"] == "req-1234"
    assert isinstance(ef, fastec2.FastEc2Error) and not isinstance(ef, OSError)
    assert str(ef) == f"An error occurred ({code}) when calling the ReplaceRoute operation: " \
                      f"{ef.response['Error']['Message']}"


@pytest.mark.parametrize("status,body", [(503, b"<html><body>Service Unavailable</body></html"),
                                         (500, b""), (502, b"Bad Gateway"), (504, b"<?xml version='1.0'?><x/>")])
def test_unparseable_error_body(status, body):
    with RawServer(lambda c, r, q: ("respond", status, body)) as srv:
        with pytest.raises(FastClientError) as ef:
            canned_fast(srv.url).describe_addresses()
    assert ef.value.response["Error"]["Code"] == f"HTTP{status}"
    assert ef.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error_code(ef.value) == f"HTTP{status}"


def test_unparseable_success_body():
    with RawServer(lambda c, r, q: ("respond", 200, b"<DescribeAddressesResponse><addressesSet>")) as srv:
        with pytest.raises(FastResponseParserError):
            canned_fast(srv.url).describe_addresses()


def test_canned_answer_parsed_like_botocore():
    with RawServer(ok_addresses) as srv:
        rb = boto_client(srv.url).describe_addresses()
        rf = canned_fast(srv.url).describe_addresses()
    assert strip(rf) == strip(rb)
    assert rf["ResponseMetadata"]["RequestId"] == rb["ResponseMetadata"]["RequestId"]


def test_connection_reset():
    with RawServer(lambda c, r, q: ("reset",)) as srv:
        client = canned_fast(srv.url)
        with pytest.raises(FastConnectionError) as exc:
            client.describe_addresses()
        assert srv.connections == 1  # a fresh connection is not retried
    assert isinstance(exc.value, OSError)
    assert exc.value.operation_name == "DescribeAddresses" and exc.value.endpoint == srv.url
    assert error_code(exc.value) == "FastConnectionError"


def test_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(FastConnectionError) as exc:
        canned_fast(f"http://127.0.0.1:{port}").describe_addresses()
    assert isinstance(exc.value.__cause__, ConnectionRefusedError)


def test_read_timeout():
    with RawServer(lambda c, r, q: ("hang",)) as srv:
        start = time.monotonic()
        with pytest.raises(FastReadTimeoutError):
            canned_fast(srv.url, read_timeout=0.3).describe_addresses()
        assert time.monotonic() - start < 2.5
        srv.stop.set()


def test_server_closes_without_answer():
    with RawServer(lambda c, r, q: ("close",)) as srv:
        with pytest.raises(FastConnectionError):
            canned_fast(srv.url).describe_addresses()


def test_keep_alive_one_connection_per_concurrent_thread():
    with RawServer(ok_addresses) as srv:
        client = canned_fast(srv.url)
        for _ in range(5):
            client.describe_addresses()
        assert srv.connections == 1 and client.connections_opened == 1
        barrier = threading.Barrier(4)
        errors = []

        def worker():
            try:
                barrier.wait()
                for _ in range(5):
                    assert client.describe_addresses()["Addresses"][0]["PublicIp"] == "198.51.100.7"
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert srv.connections <= 4 and len(srv.requests) == 25
        client.close()


def test_dropped_keep_alive_is_reopened_once():
    """The server drops the kept-alive connection when the next request arrives (RST, no answer):
    the request is sent again once, on a new connection."""
    with RawServer(lambda c, r, q: ("reset",) if r > 1 else ("respond", 200, ADDRESSES_XML)) as srv:
        client = canned_fast(srv.url)
        client.describe_addresses()
        client.describe_addresses()
        assert srv.connections == 2 and len(srv.requests) == 3
        assert [(q.conn_no, q.req_no) for q in srv.requests] == [(1, 1), (1, 2), (2, 1)]


def test_dropped_keep_alive_error_surfaces_after_one_retry():
    def handler(conn_no, req_no, req):
        return ("respond", 200, ADDRESSES_XML) if (conn_no, req_no) == (1, 1) else ("reset",)

    with RawServer(handler) as srv:
        client = canned_fast(srv.url)
        client.describe_addresses()
        with pytest.raises(FastConnectionError):
            client.describe_addresses()
        assert srv.connections == 2 and len(srv.requests) == 3


def test_idle_connection_closed_by_server_is_not_used():
    """A keep-alive connection the server closed while idle (FIN) is noticed before use."""
    with RawServer(ok_addresses) as srv:
        client = canned_fast(srv.url)
        client.describe_addresses()
        with srv.lock:
            for c in srv.conns:
                c.shutdown(socket.SHUT_RDWR)
        time.sleep(0.1)
        client.describe_addresses()
        assert srv.connections == 2 and len(srv.requests) == 2


def test_connection_close_answer_is_not_kept():
    with RawServer(lambda c, r, q: ("respond", 200, ADDRESSES_XML, {"Connection": "close"})) as srv:
        client = canned_fast(srv.url)
        client.describe_addresses()
        client.describe_addresses()
        assert srv.connections == 2 and len(srv.requests) == 2


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return str(cert), str(key)


def test_https_with_ca_bundle(tls_cert):
    cert, key = tls_cert
    with RawServer(ok_addresses, tls=(cert, key)) as srv:
        settings = SimpleNamespace(profile=None, role_arn=None, endpoint_url=srv.url)
        env = {"HOME": "/nonexistent", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
               "AWS_CA_BUNDLE": cert}
        client, why = fastec2.client_from_settings(settings, "eu-west-3", environ=env)
        assert client is not None, why
        for _ in range(3):
            assert client.describe_addresses()["Addresses"][0]["AllocationId"] == "eipalloc-0123456789abcdef0"
        assert srv.connections == 1
        with pytest.raises(FastConnectionError) as exc:  # the system's CAs do not know this certificate
            canned_fast(srv.url, ca_bundle="").describe_addresses()
        assert isinstance(exc.value.__cause__, ssl.SSLError)


# --------------------------------------------------------------------------- credentials


class FakeImds:
    def __init__(self, role="vrrp-role", expiration="2030-01-01T12:00:00Z", key="ASIA1"):
        self.role = role
        self.doc = {"Code": "Success", "LastUpdated": "2030-01-01T06:00:00Z", "Type": "AWS-HMAC",
                    "AccessKeyId": key, "SecretAccessKey": "secret1", "Token": "token1", "Expiration": expiration}
        self.paths = []
        self.fail = False

    def __call__(self, path):
        import json

        self.paths.append(path)
        if self.fail:
            raise OSError("metadata service unreachable")
        if path == "meta-data/iam/security-credentials/":
            return self.role + "\n"
        if path == f"meta-data/iam/security-credentials/{self.role}":
            return json.dumps(self.doc)
        raise KeyError(path)


def _epoch(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_instance_profile_credentials_cached_and_refreshed():
    imds = FakeImds()
    now = [_epoch("2030-01-01T11:00:00Z")]
    provider = InstanceProfileCredentials(imds, clock=lambda: now[0])
    assert provider() == ("ASIA1", "secret1", "token1")
    assert imds.paths == ["meta-data/iam/security-credentials/", "meta-data/iam/security-credentials/vrrp-role"]
    assert provider.expiration == _epoch("2030-01-01T12:00:00Z") and provider.role == "vrrp-role"
    now[0] = _epoch("2030-01-01T11:54:59Z")  # 5 min 1 s before: still cached
    assert provider() == ("ASIA1", "secret1", "token1") and len(imds.paths) == 2
    imds.doc.update(AccessKeyId="ASIA2", Token="token2", Expiration="2030-01-01T18:00:00Z")
    now[0] = _epoch("2030-01-01T11:55:01Z")  # within 5 min: refreshed
    assert provider() == ("ASIA2", "secret1", "token2") and len(imds.paths) == 4
    assert provider.expiration == _epoch("2030-01-01T18:00:00Z")
    # a failed refresh keeps credentials that have not expired yet ...
    imds.fail = True
    now[0] = _epoch("2030-01-01T17:58:00Z")
    assert provider() == ("ASIA2", "secret1", "token2")
    # ... but not expired ones
    now[0] = _epoch("2030-01-01T18:00:01Z")
    with pytest.raises(FastCredentialsError):
        provider()


@pytest.mark.parametrize("mutate", [
    lambda m: setattr(m, "role", ""),
    lambda m: m.doc.update(Code="AssumeRoleUnauthorizedAccess"),
    lambda m: m.doc.pop("Token"),
    lambda m: m.doc.update(Expiration="soon"),
    lambda m: setattr(m, "fail", True),
])
def test_instance_profile_credentials_errors(mutate):
    imds = FakeImds()
    mutate(imds)
    with pytest.raises(FastCredentialsError):
        InstanceProfileCredentials(imds)()


def test_instance_profile_credentials_sign_with_token():
    imds = FakeImds(expiration=(datetime.datetime.now(datetime.timezone.utc)
                                + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    with RawServer(ok_addresses) as srv:
        client = FastEc2Client("eu-west-3", srv.url, InstanceProfileCredentials(imds))
        client.describe_addresses()
        client.describe_addresses()
        req = srv.requests[-1]
    assert len(imds.paths) == 2  # fetched once
    assert req.headers["x-amz-security-token"] == "token1"
    assert req.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIA1/")
    when = datetime.datetime.strptime(req.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    expected = botocore_auth_headers(f"http://{req.headers['host']}/", req.body, "eu-west-3",
                                     ("ASIA1", "secret1", "token1"), when)
    assert req.headers["authorization"] == expected["Authorization"]


def test_instance_profile_through_the_tools_imds_client(aws):
    """With the tool's IMDSv2 client against the lab's metadata service, then moto."""
    import json

    from aws_vrrp_notify.imds import ImdsClient

    imds = aws.imds("r1")
    exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    imds.overrides["meta-data/iam/security-credentials"] = "lab-role"
    imds.overrides["meta-data/iam/security-credentials/lab-role"] = json.dumps(
        {"Code": "Success", "AccessKeyId": "ASIALAB", "SecretAccessKey": "labsecret", "Token": "labtoken",
         "Expiration": exp})
    settings = SimpleNamespace(profile=None, role_arn=None, endpoint_url=aws.url)
    client, why = fastec2.client_from_settings(settings, aws.region, environ={"HOME": "/nonexistent"},
                                               imds_get=ImdsClient(endpoint=aws.serve_imds("r1")).get)
    assert why == "instance profile credentials"
    answer = client.describe_route_tables(RouteTableIds=[aws.topology.route_tables["lan"]])
    assert answer["RouteTables"][0]["VpcId"] == aws.topology.vpc
    assert imds.count("GET", "/latest/meta-data/iam/security-credentials") == 2


def test_credentials_from_env():
    assert fastec2.credentials_from_env({}) is None
    assert fastec2.credentials_from_env({"AWS_ACCESS_KEY_ID": "a"}) is None
    assert fastec2.credentials_from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": ""}) is None
    assert fastec2.credentials_from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})() == ("a", "b", None)
    assert fastec2.credentials_from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                                         "AWS_SESSION_TOKEN": "t"})() == ("a", "b", "t")
    assert fastec2.credentials_from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                                         "AWS_SECURITY_TOKEN": "old"})() == ("a", "b", "old")
    assert "b" not in repr(fastec2.credentials_from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}))


def test_no_credentials():
    with pytest.raises(FastCredentialsError):
        FastEc2Client("eu-west-3", "http://127.0.0.1:9", lambda: ("", "", None)).describe_addresses()

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(FastCredentialsError):
        FastEc2Client("eu-west-3", "http://127.0.0.1:9", broken).describe_addresses()


# --------------------------------------------------------------------------- fast path rules


def _settings(**kw):
    base = dict(profile=None, role_arn=None, endpoint_url=None, region=None)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def home(tmp_path):
    (tmp_path / ".aws").mkdir()
    return tmp_path


ENV_CREDS = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"}


@pytest.mark.parametrize("settings,extra,allowed", [
    (_settings(), {}, True),
    (_settings(endpoint_url="http://127.0.0.1:5000"), {}, True),
    (_settings(profile="prod"), {}, False),
    (_settings(role_arn="arn:aws:iam::123456789012:role/x"), {}, False),
    (_settings(), {"AWS_PROFILE": "x"}, False),
    (_settings(), {"AWS_DEFAULT_PROFILE": "x"}, False),
    (_settings(), {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}, False),
    (_settings(), {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/creds"}, False),
    (_settings(), {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:51679/creds"}, False),
    (_settings(), {"AWS_USE_FIPS_ENDPOINT": "true"}, False),
    (_settings(), {"AWS_USE_FIPS_ENDPOINT": "false"}, True),
    (_settings(), {"AWS_USE_DUALSTACK_ENDPOINT": "TRUE"}, False),
    (_settings(), {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}, True),
    (_settings(), {"HTTPS_PROXY": "http://127.0.0.1:3128"}, False),
    (_settings(), {"https_proxy": "http://127.0.0.1:3128"}, False),
    (_settings(), {"HTTP_PROXY": "http://127.0.0.1:3128"}, False),
    (_settings(), {"http_proxy": "http://127.0.0.1:3128"}, False),
    (_settings(), {"AWS_ENDPOINT_URL_EC2": "ftp://x"}, False),
    (_settings(), {"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}, True),
])
def test_fast_path_allowed_rules(home, settings, extra, allowed):
    env = {"HOME": str(home), **ENV_CREDS, **extra}
    ok, reason = fastec2.fast_path_allowed(settings, env)
    assert ok is allowed, reason
    assert reason


def test_fast_path_allowed_files(home):
    s = _settings()
    config, creds = home / ".aws" / "config", home / ".aws" / "credentials"
    base = {"HOME": str(home)}
    assert fastec2.fast_path_allowed(s, base) == (True, "instance profile credentials")
    assert fastec2.fast_path_allowed(s, {**base, **ENV_CREDS}) == (True, "environment credentials")
    config.write_text("")  # empty: fine
    assert fastec2.fast_path_allowed(s, base)[0]
    config.write_text("[default]\nregion = eu-west-3\n")
    assert not fastec2.fast_path_allowed(s, base)[0]
    assert not fastec2.fast_path_allowed(s, {**base, **ENV_CREDS})[0]  # config can set endpoints: conservative
    assert fastec2.fast_path_allowed(s, {**base, **ENV_CREDS, "AWS_CONFIG_FILE": "/dev/null"})[0]
    other = home / "elsewhere.ini"
    other.write_text("[profile x]\n")
    config.unlink()
    assert not fastec2.fast_path_allowed(s, {**base, "AWS_CONFIG_FILE": str(other)})[0]
    assert not fastec2.fast_path_allowed(s, {**base, "AWS_CONFIG_FILE": "~/elsewhere.ini"})[0]
    creds.write_text("[default]\naws_access_key_id = x\n")
    assert not fastec2.fast_path_allowed(s, base)[0]  # botocore would use the file
    assert fastec2.fast_path_allowed(s, {**base, **ENV_CREDS})[0]  # env credentials win
    assert fastec2.fast_path_allowed(s, {**base, "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})[0]
    assert not fastec2.fast_path_allowed(s, {**base, "AWS_SHARED_CREDENTIALS_FILE": str(other)})[0]
    creds.unlink()
    assert not fastec2.fast_path_allowed(s, {**base, "AWS_ACCESS_KEY_ID": "only-half"})[0]
    assert not fastec2.fast_path_allowed(s, {**base, "BOTO_CONFIG": str(other)})[0]
    assert not fastec2.fast_path_allowed(s, {**base, "AWS_CREDENTIAL_FILE": str(other)})[0]
    (home / ".boto").write_text("[Credentials]\n")
    assert not fastec2.fast_path_allowed(s, base)[0]
    assert fastec2.fast_path_allowed(s, {**base, **ENV_CREDS})[0]


@pytest.mark.parametrize("settings_url,env,expected", [
    (None, {}, "https://ec2.eu-west-3.amazonaws.com"),
    (None, {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, "http://127.0.0.1:1"),
    (None, {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:2"},
     "http://127.0.0.1:2"),
    ("http://127.0.0.1:3", {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:2"},
     "http://127.0.0.1:3"),
    (None, {"AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:2", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
     "https://ec2.eu-west-3.amazonaws.com"),
])
def test_endpoint_resolution_matches_botocore(monkeypatch, home, settings_url, env, expected):
    import botocore.session

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    full_env = {"HOME": str(home), **env}
    mine = fastec2.resolve_endpoint(_settings(endpoint_url=settings_url), full_env, "eu-west-3")
    kwargs = {"endpoint_url": settings_url} if settings_url else {}
    theirs = botocore.session.Session().create_client(
        "ec2", region_name="eu-west-3", aws_access_key_id="a", aws_secret_access_key="b", **kwargs).meta.endpoint_url
    assert mine == theirs == expected


@pytest.mark.parametrize("region", ["eu-west-3", "us-east-1", "ap-southeast-7", "mx-central-1", "il-central-1",
                                    "cn-north-1", "cn-northwest-1", "us-gov-west-1", "us-iso-east-1",
                                    "us-isob-east-1", "eu-isoe-west-1", "us-isof-south-1", "eusc-de-east-1"])
def test_default_endpoint_matches_botocore(monkeypatch, region):
    import botocore.session

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    theirs = botocore.session.Session().create_client(
        "ec2", region_name=region, aws_access_key_id="a", aws_secret_access_key="b").meta.endpoint_url
    assert fastec2.default_endpoint(region) == theirs
    assert fastec2.FastEc2Client(region, None, StaticCredentials("a", "b")).meta.endpoint_url == theirs


def test_unknown_partition_left_to_botocore(home):
    assert fastec2.fast_path_allowed(_settings(), {"HOME": str(home)}, region="eu-west-3")[0]
    assert not fastec2.fast_path_allowed(_settings(), {"HOME": str(home)}, region="xx-moon-1")[0]
    assert fastec2.fast_path_allowed(_settings(endpoint_url="http://127.0.0.1:1"), {"HOME": str(home)},
                                     region="xx-moon-1")[0]


def test_client_from_settings(home):
    s = _settings()
    client, why = fastec2.client_from_settings(s, "eu-west-3", environ={"HOME": str(home), **ENV_CREDS,
                                                                        "AWS_SESSION_TOKEN": "tok"})
    assert why == "environment credentials"
    assert client._credentials() == ("AKID", "secret", "tok")
    assert client.meta.endpoint_url == "https://ec2.eu-west-3.amazonaws.com"
    client, why = fastec2.client_from_settings(s, "eu-west-3", environ={"HOME": str(home)})
    assert client is None and "metadata" in why
    client, why = fastec2.client_from_settings(s, "eu-west-3", environ={"HOME": str(home)}, imds_get=FakeImds())
    assert isinstance(client._credentials, InstanceProfileCredentials)
    client, why = fastec2.client_from_settings(_settings(profile="p"), "eu-west-3", environ={"HOME": str(home)})
    assert client is None and "profile" in why
    client, why = fastec2.client_from_settings(
        _settings(endpoint_url="http://127.0.0.1:7"), "cn-north-1",
        environ={"HOME": str(home), **ENV_CREDS, "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:8"},
        connect_timeout=0.5, read_timeout=1.5)
    assert client.meta.endpoint_url == "http://127.0.0.1:7" and client.meta.region_name == "cn-north-1"
    assert (client.connect_timeout, client.read_timeout) == (0.5, 1.5)


# --------------------------------------------------------------------------- no botocore


def _fresh_python(code, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOTO"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)


def test_import_does_not_load_botocore():
    p = _fresh_python("import aws_vrrp_notify.fastec2, sys; "
                      "assert 'botocore' not in sys.modules and 'urllib3' not in sys.modules, "
                      "sorted(m for m in sys.modules if m.startswith(('botocore', 'urllib3')))")
    assert p.returncode == 0, p.stderr


def test_calls_do_not_load_botocore(aws):
    code = """
import sys
from aws_vrrp_notify.fastec2 import FastEc2Client, StaticCredentials, fast_path_allowed, FastClientError
fast_path_allowed(None, {"HOME": "/nonexistent"})
c = FastEc2Client("eu-west-3", sys.argv[1], StaticCredentials("testing", "testing"))
assert c.describe_route_tables(RouteTableIds=[sys.argv[2]])["RouteTables"][0]["RouteTableId"] == sys.argv[2]
try:
    c.describe_addresses(DryRun=True)
except FastClientError as e:
    assert e.response["Error"]["Code"] == "DryRunOperation"
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "boto3", "urllib3", "requests", "certifi"))
assert not bad, bad
"""
    p = _fresh_python(code, aws.url, aws.topology.route_tables["lan"])
    assert p.returncode == 0, p.stderr
    source = (REPO / "aws_vrrp_notify" / "fastec2.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+(botocore|boto3|urllib3)\b", source, re.M)
