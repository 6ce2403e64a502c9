"""Production-like credentials and endpoints: no keys in the environment (the instance
profile served by the metadata service), a forward proxy, a VPC-endpoint style endpoint-url.

Every test asserts who signed the EC2 requests (the role's key and session token) and the
resulting AWS state or output.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from test_failover import VIP, assign, cfg, ok, record, route
from test_fifo import wait_for

NO_KEYS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}


def signers(cloud, listener=None):
    return {(c.access_key, c.session_token) for c in cloud.calls(listener=listener) if c.action}


def role_credentials(router):
    creds = router.imds.profile.current()
    assert creds.access_key_id.startswith("ASIA") and creds.token
    return {(creds.access_key_id, creds.token)}


def test_master_status_check_with_the_instance_profile(routers, run_tool, lag):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    lag("all-0.5")  # production EC2 is eventually consistent too
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]))
    ok(run_tool(r1, "master", "VI_1", config=config, env=NO_KEYS))
    aws.settle()
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    proc = ok(run_tool(r1, "status", "--json", "ha-notification", config=config, env=NO_KEYS))
    assert all(a["in-sync"] for a in json.loads(proc.stdout)["ha-notification"]["groups"][0]["actions"])
    proc = run_tool(r1, "check", config=config, env=NO_KEYS)
    assert proc.returncode == 0 and proc.stdout.startswith("VI_1 OK"), proc.stdout + proc.stderr
    assert signers(aws) == role_credentials(r1)


def test_fifo_with_the_instance_profile(routers, run_tool, tmp_path):
    """The resident reader keeps botocore's refreshable instance-profile credentials."""
    aws, r1 = routers.cloud, routers.r1
    fifo = tmp_path / "keepalived.fifo"
    os.mkfifo(fifo, 0o600)
    proc = run_tool.popen(r1, "fifo", str(fifo), config=cfg(assign()), env=NO_KEYS)
    with open(fifo, "w") as writer:
        writer.write('INSTANCE "VI_1" MASTER 150\n')
        writer.flush()
        assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
        writer.write('INSTANCE "VI_1" BACKUP 150\nINSTANCE "VI_1" MASTER 150\n')
        writer.flush()
        assert wait_for(lambda: (record(run_tool, r1) or {}).get("seq") == 3
                        and record(run_tool, r1).get("outcome") == "ok")
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert aws.count_actions()["AssignPrivateIpAddresses"] == 2
    assert signers(aws) == role_credentials(r1)


def test_through_a_forward_proxy(routers, run_tool, fault_proxy):
    aws, r1 = routers.cloud, routers.r1
    proxy = fault_proxy(r1, "ec2")
    imds_netloc = r1.imds_url.split("//")[1].split("/")[0]  # the metadata service is never proxied
    env = dict(NO_KEYS, HTTP_PROXY=proxy.url, HTTPS_PROXY=proxy.url, NO_PROXY=imds_netloc)
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign()), env=env))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert proxy.forwarded >= 1 and proxy.counts["AssignPrivateIpAddresses"] == 1
    assert signers(aws) == role_credentials(r1)


@pytest.fixture
def vpce_hosts(routers):
    """/etc/netns/<ns>/hosts: ``ip netns exec`` shows it as /etc/hosts inside the router."""
    r1 = routers.r1
    name = "vpce-0123456789abcdef0-abcdefgh.ec2.eu-west-3.vpce.amazonaws.com"
    directory = Path("/etc/netns") / r1.ns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {name}\n")
    yield name
    shutil.rmtree(directory, ignore_errors=True)


def test_vpc_endpoint_style_endpoint_url(routers, run_tool, vpce_hosts):
    aws, r1 = routers.cloud, routers.r1
    port = r1.moto_url.rsplit(":", 1)[1]
    config = cfg(assign()).replace("[aws]\n", f'[aws]\nendpoint-url = "http://{vpce_hosts}:{port}"\n')
    env = dict(NO_KEYS, AWS_ENDPOINT_URL_EC2=None)
    ok(run_tool(r1, "master", "VI_1", config=config, env=env))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert signers(aws) == role_credentials(r1)
