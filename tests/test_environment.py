"""validate --environment in the lab: every check passes on a healthy router, and each one
fails (or warns) when the lab breaks what it checks: the configuration file's mode, the state
directory, the metadata PUT (the hop limit), an interface, a permission, the EC2 endpoint,
the API's Date, the source/destination check, the virtual IP's subnet, a peer in another
Availability Zone, an Elastic IP's private address, keepalived's script settings."""

from __future__ import annotations

import json
import os
import time

import pytest

from aws_vrrp_notify.lab.cloud import FAKE_AMI
from test_failover import VIP, assign, cfg, eip, route

SECURE_KEEPALIVED = """global_defs {
    enable_script_security
    script_user root      # comments and "quoted" words are read as keepalived reads them
}
vrrp_script aws_ready {
    script "/usr/bin/aws-vrrp-notify health VI_1"
    interval 5
    weight -50
}
vrrp_instance VI_1 {
    interface eth0
    unicast_peer {
        %s
    }
    track_script {
        aws_ready
    }
}
"""


def full_config(topo, **kw) -> str:
    return cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), eip(allocation_id=topo.eip_alloc, private_ip=VIP),
               **kw)


def validate(run_tool, router, config, *args, env=None, **kw):
    """(process, {(check, subject): finding}) of validate --environment --json."""
    proc = run_tool(router, "validate", "--environment", "--json", *args, config=config, env=env, **kw)
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert report["exit-code"] == proc.returncode, proc.stdout
    return proc, {(c["check"], c["subject"]): c for c in report["checks"]}


def only(findings, check):
    [finding] = [f for (c, _), f in findings.items() if c == check]
    return finding


def statuses(findings):
    return {key: f["status"] for key, f in findings.items()}


def test_a_healthy_router_passes_every_check(routers, run_tool, tmp_path):
    r1, r2, topo = routers.r1, routers.r2, routers.topology
    conf = tmp_path / "keepalived.conf"
    conf.write_text(SECURE_KEEPALIVED % r2.addrs["eth0"])
    proc = run_tool(r1, "validate", "--environment", "--keepalived-conf", conf, config=full_config(topo))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("PASS ") for line in lines[:-1]), proc.stdout
    assert lines[-1].startswith("aws-vrrp-notify validate --environment PASS:")
    checks = {line.split()[1].rstrip(":") for line in lines[:-1]}
    assert {"config-file", "state-dir", "metadata", "interface", "credentials", "ec2-endpoint", "clock",
            "source-dest-check", "assign-private-ip", "peer-subnet", "associate-address", "keepalived"} <= checks
    text = proc.stdout
    assert f"network namespace {r1.ns}" in text                       # where the tool runs
    assert "environment (AWS_ACCESS_KEY_ID): they work: ec2:DescribeNetworkInterfaces" in text
    assert f"direct to 127.0.0.1" in text and "API round trip" in text
    assert f"peer {r2.instance_id} (keepalived's unicast_peer) has {r2.eni('eth0')}" in text
    assert "health tracked by vrrp_script aws_ready" in text
    # it changed nothing, and asked EC2 one thing
    assert routers.cloud.count_actions() == {"DescribeNetworkInterfaces": 1}


def test_json_report_and_exit_status_follow_the_worst_finding(routers, run_tool, tmp_path):
    r1, topo = routers.r1, routers.topology
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n    enable_script_security\n}\n")   # no script_user: a warning
    proc, findings = validate(run_tool, r1, full_config(topo), "--keepalived-conf", conf)
    assert proc.returncode == 1
    warning = findings[("keepalived", str(conf))]
    assert warning["status"] == "WARN" and "no script_user" in warning["reason"]
    assert "script_user root" in warning["fix"]
    assert {f["status"] for k, f in findings.items() if k[0] != "keepalived"} == {"PASS"}


def test_configuration_file_writable_by_others_fails(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    path = run_tool.write_config(r1, full_config(topo))
    os.chmod(path, 0o664)
    proc, findings = validate(run_tool, r1, path)
    assert proc.returncode == 2
    finding = findings[("config-file", str(path))]
    assert finding["status"] == "FAIL" and "writable by group or others" in finding["reason"]
    assert finding["fix"] == f"chmod go-w {path}"
    # the checks that need no configuration still run (with default [aws] settings)
    assert only(findings, "metadata")["status"] == "PASS"
    assert "default [aws] settings" in only(findings, "credentials")["reason"]


def test_state_directory_writable_by_others_fails(routers, run_tool, tmp_path):
    r1, topo = routers.r1, routers.topology
    state = tmp_path / "open-state"
    state.mkdir()
    os.chmod(state, 0o777)
    proc, findings = validate(run_tool, r1, full_config(topo), state_dir=state)
    assert proc.returncode == 2
    finding = findings[("state-dir", str(state))]
    assert finding["status"] == "FAIL" and "writable by group or others" in finding["reason"]


def test_lost_metadata_put_is_the_hop_limit(routers, run_tool, fault_proxy):
    """The token PUT gets no answer while a GET does: what a hop limit of 1 does to a container."""
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "imds")
    proxy.add_fault("delay", delay=30, methods={"PUT"})
    start = time.monotonic()
    proc, findings = validate(run_tool, r1, full_config(topo), env=proxy.env)
    assert time.monotonic() - start < 15
    assert proc.returncode == 2
    finding = only(findings, "metadata")
    assert finding["status"] == "FAIL"
    assert "PUT" in finding["reason"] and "hop limit" in finding["reason"] and f"network namespace {r1.ns}" \
        in finding["reason"]
    assert "--http-put-response-hop-limit" in finding["fix"]
    assert proxy.counts["GET /latest/meta-data/"] >= 1   # the GET without token that tells it apart
    assert all(f["status"] == "FAIL" and "not checked" in f["reason"] for (c, _), f in findings.items()
               if c == "interface")


def test_no_metadata_service_fails_and_says_why(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    proc, findings = validate(run_tool, r1, full_config(topo),
                              env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"})
    assert proc.returncode == 2
    finding = only(findings, "metadata")
    assert finding["status"] == "FAIL" and "no metadata service" in finding["reason"]
    assert "not checked" in only(findings, "credentials")["reason"]


def test_missing_interface_fails(routers, run_tool):
    r1 = routers.r1
    proc, findings = validate(run_tool, r1, cfg(assign(interface="eth7")))
    assert proc.returncode == 2
    finding = findings[("interface", "eth7 (vrf main)")]
    assert finding["status"] == "FAIL" and "eth7 does not exist" in finding["reason"]
    assert findings[("assign-private-ip", f"{VIP} (eth7)")]["reason"].startswith("not checked")


def test_instance_profile_credentials_are_named(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    proc, findings = validate(run_tool, r1, full_config(topo),
                              env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
    assert proc.returncode == 0, proc.stdout
    reason = only(findings, "credentials")["reason"]
    assert reason.startswith(f"instance profile (role {r1.imds.profile.role}): they work")
    [call] = routers.cloud.calls("DescribeNetworkInterfaces")
    assert r1.imds.profile.issued_key(call.access_key) is not None   # signed with the role's key


def test_denied_permission_fails_the_credentials(routers, run_tool, fault_proxy):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"DescribeNetworkInterfaces"})
    proc, findings = validate(run_tool, r1, full_config(topo), env=proxy.env)
    assert proc.returncode == 2
    finding = only(findings, "credentials")
    assert finding["status"] == "FAIL"
    assert "environment (AWS_ACCESS_KEY_ID): ec2:DescribeNetworkInterfaces is denied (UnauthorizedOperation" \
        in finding["reason"]
    assert "contrib/iam/" in finding["fix"]
    assert only(findings, "ec2-endpoint")["status"] == "PASS"   # it answered
    assert only(findings, "clock")["status"] == "PASS"          # from the error's Date
    assert findings[("source-dest-check", f"{r1.eni('eth1')} (eth1)")]["reason"].startswith("not checked")


def test_unreachable_endpoint_fails(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    proc, findings = validate(run_tool, r1, full_config(topo), env={"AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:9"})
    assert proc.returncode == 2
    finding = findings[("ec2-endpoint", "http://127.0.0.1:9")]
    assert finding["status"] == "FAIL" and "TCP connect to 127.0.0.1 port 9" in finding["reason"]
    assert "security group" in finding["fix"]
    assert "not checked" in only(findings, "credentials")["reason"]
    assert "not checked" in only(findings, "clock")["reason"]


def test_endpoint_that_resets_requests_fails(routers, run_tool, fault_proxy):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("reset")
    proc, findings = validate(run_tool, r1, full_config(topo), env=proxy.env)
    assert proc.returncode == 2
    finding = only(findings, "ec2-endpoint")
    assert finding["status"] == "FAIL" and "TCP connects" in finding["reason"] and "request failed" in finding["reason"]


def test_endpoint_through_a_proxy_is_named(routers, run_tool, fault_proxy):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proc, findings = validate(run_tool, r1, full_config(topo), env={"HTTP_PROXY": proxy.url})
    assert proc.returncode == 0, proc.stdout
    assert f"through proxy {proxy.url} at 127.0.0.1" in only(findings, "ec2-endpoint")["reason"]
    assert proxy.forwarded >= 1


@pytest.mark.parametrize("skew", [30.0, -30.0])
def test_clock_off_by_more_than_5_seconds_fails(routers, run_tool, fault_proxy, skew):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2", date_skew=skew)
    proc, findings = validate(run_tool, r1, full_config(topo), env=proxy.env)
    assert proc.returncode == 2
    finding = only(findings, "clock")
    assert finding["status"] == "FAIL"
    side = "behind" if skew > 0 else "ahead of"
    assert f"s {side} AWS" in finding["reason"] and "more than 5 s" in finding["reason"]
    offset = float(finding["reason"].split()[0])
    assert abs(offset - abs(skew)) < 2
    assert "Time Sync" in finding["fix"]


def test_small_clock_offset_passes(routers, run_tool, fault_proxy):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2", date_skew=2.0)
    proc, findings = validate(run_tool, r1, full_config(topo), env=proxy.env)
    assert only(findings, "clock")["status"] == "PASS", proc.stdout


def test_source_dest_check_on_fails(routers, run_tool):
    aws, r1, topo = routers.cloud, routers.r1, routers.topology
    aws.ec2.modify_network_interface_attribute(NetworkInterfaceId=r1.eni("eth1"), SourceDestCheck={"Value": True})
    proc, findings = validate(run_tool, r1, full_config(topo))
    assert proc.returncode == 2
    finding = findings[("source-dest-check", f"{r1.eni('eth1')} (eth1)")]
    assert finding["status"] == "FAIL" and "route 0.0.0.0/0 targets it" in finding["reason"]
    assert finding["fix"].endswith(f"--network-interface-id {r1.eni('eth1')} --no-source-dest-check")
    assert findings[("source-dest-check", f"{r1.eni('eth0')} (eth0)")]["status"] == "PASS"


@pytest.mark.parametrize("ip,expected", [
    ("10.0.2.100", "not in"),                    # the wan subnet's address on a lan interface
    ("10.0.1.12", "the primary address of"),     # r2's eth0
    ("10.0.1.11", "the primary address of"),     # this ENI's own
    ("10.0.1.255", "reserved by AWS"),
])
def test_virtual_ip_outside_its_subnet_or_taken_fails(routers, run_tool, ip, expected):
    r1, r2 = routers.r1, routers.r2
    proc, findings = validate(run_tool, r1, cfg(assign(ip=ip)))
    assert proc.returncode == 2
    finding = findings[("assign-private-ip", f"{ip} (eth0)")]
    assert finding["status"] == "FAIL" and expected in finding["reason"], finding
    if ip == "10.0.1.12":
        assert f"{r2.eni('eth0')} ({r2.instance_id})" in finding["reason"]
    if ip == "10.0.1.11":
        assert "(this instance)" in finding["reason"]


@pytest.fixture
def peer_in_another_az(aws):
    """r3: one more router, in a subnet of another Availability Zone (10.0.4.0/24)."""
    ec2, topo = aws.ec2, aws.topology
    subnet = ec2.create_subnet(VpcId=topo.vpc, CidrBlock="10.0.4.0/24",
                               AvailabilityZone=aws.region + "b")["Subnet"]["SubnetId"]
    inst = ec2.run_instances(ImageId=FAKE_AMI, MinCount=1, MaxCount=1, SubnetId=subnet,
                             PrivateIpAddress="10.0.4.13")["Instances"][0]
    try:
        yield inst["InstanceId"], subnet
    finally:
        ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
        ec2.delete_network_interface(NetworkInterfaceId=inst["NetworkInterfaces"][0]["NetworkInterfaceId"])
        ec2.delete_subnet(SubnetId=subnet)


def test_virtual_ip_that_can_never_reach_a_peer_in_another_az_warns(routers, run_tool, tmp_path, peer_in_another_az):
    r1, topo = routers.r1, routers.topology
    peer, subnet = peer_in_another_az
    conf = tmp_path / "keepalived.conf"
    conf.write_text(SECURE_KEEPALIVED % "10.0.4.13")
    proc, findings = validate(run_tool, r1, full_config(topo), "--keepalived-conf", conf)
    assert proc.returncode == 1, proc.stdout
    finding = findings[("peer-subnet", f"{VIP} (eth0)")]
    assert finding["status"] == "WARN"
    assert f"peer {peer} (keepalived's unicast_peer) has no ENI in {r1.instance.subnets[0]}" in finding["reason"]
    assert f"{subnet} (eu-west-3b)" in finding["reason"] and "can never move" in finding["reason"]
    assert "overlay IP" in finding["fix"] and "change-route" in finding["fix"]
    # without keepalived.conf, the peer is the one instance that mirrors the ENIs configured:
    # r2 has ENIs at r1's device indexes 0 and 1 (eth0, eth1), r3 only at 0 ...
    none = tmp_path / "none.conf"
    proc, findings = validate(run_tool, r1, full_config(topo), "--keepalived-conf", none)
    reason = findings[("peer-subnet", f"{VIP} (eth0)")]["reason"]
    assert reason.startswith(f"peer {routers.r2.instance_id} (the one other instance whose ENIs mirror")
    # ... so with eth0 alone both mirror r1, and none is guessed
    proc, findings = validate(run_tool, r1, cfg(assign()), "--keepalived-conf", none)
    reason = findings[("peer-subnet", f"{VIP} (eth0)")]["reason"]
    assert "no peer instance identified (" in reason and "instances mirror this one's ENIs" in reason, reason


@pytest.mark.parametrize("private_ip,interface,expected", [
    ("10.0.1.150", "eth0", "neither moved by group VI_1 nor held by"),
    (VIP, "ens9", "is moved by the group to interface eth0"),
])
def test_elastic_ip_to_an_address_the_eni_will_not_hold_fails(routers, run_tool, private_ip, interface, expected):
    r1, topo = routers.r1, routers.topology
    vrf = r1.vrf if interface == "ens9" else None
    config = cfg(assign(), eip(allocation_id=topo.eip_alloc, private_ip=private_ip, interface=interface)
                 + (f'vrf = "{vrf}"\n' if vrf else ""))
    proc, findings = validate(run_tool, r1, config)
    assert proc.returncode == 2
    finding = only(findings, "associate-address")
    assert finding["status"] == "FAIL" and expected in finding["reason"], finding


def test_elastic_ip_to_an_address_the_eni_holds_passes(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    config = cfg(assign(), eip(allocation_id=topo.eip_alloc, private_ip=r1.addrs["eth0"]))
    proc, findings = validate(run_tool, r1, config)
    finding = only(findings, "associate-address")
    assert finding["status"] == "PASS" and "is held by" in finding["reason"], proc.stdout


@pytest.mark.parametrize("global_defs,expected", [
    ("", "no enable_script_security"),
    ("enable_script_security", "no user keepalived_script: keepalived runs no notify script"),
    ("enable_script_security\n    script_user nobody-here", "script_user nobody-here (no such user"),
])
def test_keepalived_without_script_security_warns(routers, run_tool, tmp_path, global_defs, expected):
    r1, topo = routers.r1, routers.topology
    main = tmp_path / "keepalived.conf"
    (tmp_path / "conf.d").mkdir()
    main.write_text("include conf.d/*.conf\n")   # followed, relative to the including file
    (tmp_path / "conf.d" / "global.conf").write_text(f"global_defs {{\n    {global_defs}\n}}\n")
    proc, findings = validate(run_tool, r1, full_config(topo), env={"AWS_VRRP_NOTIFY_KEEPALIVED_CONF": main})
    assert proc.returncode == 1, proc.stdout
    finding = findings[("keepalived", str(main))]
    assert finding["status"] == "WARN" and expected in finding["reason"], finding


def test_untracked_health_script_warns(routers, run_tool, tmp_path):
    r1, topo = routers.r1, routers.topology
    conf = tmp_path / "keepalived.conf"
    conf.write_text((SECURE_KEEPALIVED % r1.addrs["eth0"]).replace("aws_ready\n    }", "other\n    }"))
    proc, findings = validate(run_tool, r1, full_config(topo), "--keepalived-conf", conf)
    finding = findings[("keepalived", str(conf))]
    assert finding["status"] == "WARN" and "no vrrp_instance tracks it" in finding["reason"]


def test_region_that_is_not_the_instances_fails(routers, run_tool):
    r1 = routers.r1
    proc, findings = validate(run_tool, r1, '[aws]\nregion = "us-west-2"\n' + cfg(assign())[len("[aws]\n"):])
    assert proc.returncode == 2
    finding = findings[("region", "us-west-2")]
    assert finding["status"] == "FAIL" and "eu-west-3" in finding["reason"]


def test_permissions_too(routers, run_tool, fault_proxy):
    """--environment --permissions: the findings, then the permission probes; a denied write is a failure."""
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"ReplaceRoute"})
    proc = run_tool(r1, "validate", "--environment", "--permissions", config=full_config(topo), env=proxy.env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "aws-vrrp-notify validate --environment PASS" in proc.stdout
    assert "ReplaceRoute DENIED" in proc.stdout
    usage = run_tool(r1, "validate", "--environment", "--permissions", "--json", config=full_config(topo))
    assert usage.returncode == 2 and "Usage:" in usage.stderr


def test_route53_endpoint_is_checked_when_a_group_updates_dns(routers, run_tool):
    from test_update_dns import dns

    r1, topo = routers.r1, routers.topology
    config = cfg(assign()) + dns(topo.zone_id)
    proc, findings = validate(run_tool, r1, config)
    finding = only(findings, "route53-endpoint")
    assert finding["status"] == "PASS" and "API round trip" in finding["reason"], finding
    proc, findings = validate(run_tool, r1, config, env={"AWS_ENDPOINT_URL_ROUTE_53": "http://127.0.0.1:9"})
    assert proc.returncode == 2
    finding = findings[("route53-endpoint", "http://127.0.0.1:9")]
    assert finding["status"] == "FAIL" and "TCP connect to 127.0.0.1 port 9" in finding["reason"]
    assert "route53-endpoint-url" in finding["fix"]
    _, findings = validate(run_tool, r1, cfg(assign()))
    assert not [key for key in findings if key[0] == "route53-endpoint"]  # no update-dns: not checked
