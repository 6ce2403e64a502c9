"""Run moto's server on 127.0.0.1 (ephemeral port) in *this* network namespace, seed it, report.

    python moto_seed.py LATENCY_MS

Also serves the fake IMDSv2 of fake_aws.py, with ``local-ipv4s`` read live from moto (a tool that
verifies an assignment through IMDS sees moto's state).  Applies the project's moto fixes
(``aws_vrrp_notify.lab.moto_fixes``: AllowReassignment really moves the IP, ...) when importable.

Prints one JSON line (ports + the ids it created) on stdout, then serves until stdin is closed or
SIGTERM.  failover.py runs it with ``ip netns exec`` so that the servers listen on the benchmark
namespace's loopback.  LATENCY_MS delays every EC2 request after seeding (real API latency model).
"""
import io
import json
import signal
import sys
import threading
import time
import urllib.parse

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from fake_aws import FakeAWS, Topology

try:
    from aws_vrrp_notify.lab import moto_fixes
    moto_fixes.apply()
    FIXES = "aws_vrrp_notify.lab.moto_fixes"
except Exception as e:  # noqa: BLE001  (the lab module may not exist yet)
    FIXES = f"none ({type(e).__name__}: {e})"

delay = 0.0
recording = False
log = []                       # {"t_recv", "t_sent", "action", "status"} of EC2 calls (perf_counter clock)
log_lock = threading.Lock()
inner = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO", "").startswith("/moto-api"):
        return inner(environ, start_response)
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n) if n else b""
    environ["wsgi.input"] = io.BytesIO(body)
    t_recv = time.perf_counter()
    if delay and recording:
        time.sleep(delay)
    status = []

    def sr(st, headers, exc_info=None):
        status.append(int(st.split()[0]))
        return start_response(st, headers, exc_info)
    out = list(inner(environ, sr))
    if recording:
        action = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
        with log_lock:
            log.append({"t_recv": t_recv, "t_sent": time.perf_counter(), "action": action,
                        "status": status[0] if status else 0})
    return out


srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
port = srv.server_port
ep = f"http://127.0.0.1:{port}"

ec2 = boto3.client("ec2", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
ours = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="10.0.1.10")["NetworkInterface"]
other = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="10.0.1.11")["NetworkInterface"]
ec2.assign_private_ip_addresses(NetworkInterfaceId=other["NetworkInterfaceId"], PrivateIpAddresses=["10.0.1.100"])
rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
ec2.associate_route_table(RouteTableId=rtb, SubnetId=subnet)
ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=other["NetworkInterfaceId"])



class MotoIMDS(FakeAWS):
    """The fake IMDS, but whether the VIP is on our ENI comes from moto's backend."""

    def imds_tree(self):
        eni = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_network_interface(self.topo.eni)
        self.vip_on_us = any(p.get("PrivateIpAddress") == self.topo.vip for p in eni.private_ip_addresses)
        return super().imds_tree()


imds = MotoIMDS(Topology(mac=ours["MacAddress"], eni=ours["NetworkInterfaceId"],
                         other_eni=other["NetworkInterfaceId"], subnet=subnet, vpc=vpc, rtb=rtb,
                         primary_ip="10.0.1.10", vip="10.0.1.100"))
imds_port = imds.start_imds(("127.0.0.1", 0))

delay = float(sys.argv[1]) / 1000.0 if len(sys.argv) > 1 else 0.0
print(json.dumps({"port": port, "imds_port": imds_port, "moto_fixes": FIXES, "vpc": vpc, "subnet": subnet, "rtb": rtb,
                  "eni": ours["NetworkInterfaceId"], "mac": ours["MacAddress"],
                  "other_eni": other["NetworkInterfaceId"], "primary_ip": "10.0.1.10",
                  "vip": "10.0.1.100", "subnet_cidr": "10.0.1.0/24", "vpc_cidr": "10.0.0.0/16"}), flush=True)

OTHER = other["NetworkInterfaceId"]


def commands():
    """stdin: "reset" (VIP and route back on the peer ENI) -> "ok"; "log N" -> JSON list of log[N:]."""
    global recording
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "reset":
            recording = False
            ec2.assign_private_ip_addresses(NetworkInterfaceId=OTHER, PrivateIpAddresses=["10.0.1.100"],
                                            AllowReassignment=True)
            ec2.replace_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=OTHER)
            recording = True
            print("ok", flush=True)
        elif cmd[0] == "log":
            with log_lock:
                print(json.dumps(log[int(cmd[1]):]), flush=True)
        else:
            print("error", flush=True)
    stop.set()


recording = True
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
threading.Thread(target=commands, daemon=True).start()
stop.wait()
imds.stop()
srv.shutdown()
