"""health [GROUP...] in the lab: ready on a healthy router with at most one AWS call per run
(none while a good answer is cached), not ready within 2 s whatever breaks (the EC2 endpoint
hanging, the metadata PUT lost, the credentials gone or denied, an interface missing), a
failure never cached, no lock taken, syslog told of each change, botocore left unimported
while the cache is fresh; and check --prometheus exports the verdict."""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import pytest

from aws_vrrp_notify.__main__ import HealthCall, parse_fast
from aws_vrrp_notify.config import parse
from aws_vrrp_notify.keepalived_conf import read_keepalived_conf

from test_failover import assign, cfg, ok, route
from test_hardening import Syslog
from test_report import parse_prometheus

WITHIN = 2.0  # seconds, whatever the network does (process start included)
# the tool, reporting after its line which heavy modules it imported
PROBE = ("import sys; from aws_vrrp_notify.__main__ import main; rc = main(sys.argv[1:]); "
         "print('IMPORTED', sorted(m for m in ('botocore', 'click') if m in sys.modules)); sys.exit(rc)")
# the tool with its syslog socket moved to argv[1]
SYSLOG = ("import sys; import aws_vrrp_notify.logsetup as l; l.SYSLOG_SOCKET = sys.argv[1]; "
          "from aws_vrrp_notify.__main__ import main; sys.exit(main(sys.argv[2:]))")


@pytest.fixture
def config(routers, run_tool):
    topo = routers.topology
    return run_tool.write_config(routers.r1, cfg(assign(), route(subnet=topo.subnet_cidrs["wan"])))


def health(run_tool, router, config, *args, env=None, **kw):
    start = time.monotonic()
    proc = run_tool(router, "health", *args, config=config, env=env, **kw)
    took = time.monotonic() - start
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 1, proc.stdout   # one line, always
    return proc, took


def test_ready_with_one_aws_call_then_none_while_cached(routers, run_tool, config):
    aws, r1 = routers.cloud, routers.r1
    proc, _ = health(run_tool, r1, config, "VI_1")
    assert proc.returncode == 0 and proc.stdout.startswith(f"ready: VI_1: 2 ENI(s) of {r1.instance_id}"), proc.stdout
    [call] = aws.calls("DescribeNetworkInterfaces")
    assert {v for k, v in call.params.items() if k.startswith("NetworkInterfaceId.")} == {r1.eni("eth0"), r1.eni("eth1")}
    for _ in range(2):   # cached: no AWS call at all
        proc, _ = health(run_tool, r1, config)
        assert proc.returncode == 0 and "EC2 answered 0 s ago" in proc.stdout, proc.stdout
    assert aws.count_actions() == {"DescribeNetworkInterfaces": 1}
    proc, _ = health(run_tool, r1, config, "--max-age", "0")
    assert proc.returncode == 0 and aws.count_actions() == {"DescribeNetworkInterfaces": 2}


def test_hung_ec2_endpoint_is_not_ready_within_2_seconds_and_never_cached(routers, run_tool, config, fault_proxy):
    aws, r1 = routers.cloud, routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("delay", delay=30)
    proc, took = health(run_tool, r1, config, "VI_1", env=proxy.env)
    assert proc.returncode == 1 and took < WITHIN, (took, proc.stdout)
    assert proc.stdout.startswith(f"not ready: VI_1: ") and f"EC2 endpoint {proxy.url}" in proc.stdout, proc.stdout
    assert proxy.counts["DescribeNetworkInterfaces"] == 1   # one AWS call, no retry
    proxy.clear_faults()
    proc, _ = health(run_tool, r1, config, "VI_1", env=proxy.env)
    assert proc.returncode == 0, proc.stdout     # the failure was not cached: EC2 was asked again
    assert proxy.counts["DescribeNetworkInterfaces"] == 2


def test_refused_ec2_endpoint_is_not_ready(routers, run_tool, config):
    proc, took = health(run_tool, routers.r1, config, env={"AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:9"})
    assert proc.returncode == 1 and "EC2 endpoint http://127.0.0.1:9" in proc.stdout and took < WITHIN


def test_lost_metadata_put_is_not_ready_within_2_seconds(routers, run_tool, config, fault_proxy):
    r1 = routers.r1
    ok(run_tool(r1, "health", config=config))    # a good EC2 answer is cached: the metadata service still counts
    proxy = fault_proxy(r1, "imds")
    proxy.add_fault("delay", delay=30, methods={"PUT"})
    proc, took = health(run_tool, r1, config, env=proxy.env)
    assert proc.returncode == 1 and took < WITHIN, (took, proc.stdout)
    assert proc.stdout.startswith("not ready: VI_1: ") and "metadata service" in proc.stdout


@pytest.mark.parametrize("cached", [True, False])
def test_instance_without_a_role_is_not_ready(routers, run_tool, config, cached):
    r1 = routers.r1
    no_keys = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    ok(run_tool(r1, "health", config=config, env=no_keys))   # signed with the instance profile
    r1.imds.overrides["meta-data/iam/security-credentials"] = None   # the role is detached
    proc, took = health(run_tool, r1, config, *(() if cached else ("--max-age", "0")), env=no_keys)
    assert proc.returncode == 1 and took < WITHIN, proc.stdout
    assert "credentials" in proc.stdout
    if cached:
        assert "no instance profile" in proc.stdout and routers.cloud.count_actions() == \
            {"DescribeNetworkInterfaces": 1}


def test_denied_describe_is_not_ready(routers, run_tool, config, fault_proxy):
    proxy = fault_proxy(routers.r1, "ec2")
    proxy.add_fault("denied", actions={"DescribeNetworkInterfaces"})
    proc, _ = health(run_tool, routers.r1, config, env=proxy.env)
    assert proc.returncode == 1 and "credentials: ec2:DescribeNetworkInterfaces: UnauthorizedOperation" in proc.stdout


@pytest.mark.parametrize("text,expected", [
    (cfg(assign(interface="eth7")), "interface eth7 does not exist"),
    (cfg(assign()).replace("groups.VI_1", "groups.VI_2"), "no group VI_1 in"),
    ("[groups.VI_1]\n", "configuration error in"),
])
def test_what_a_transition_could_not_resolve_is_not_ready(routers, run_tool, text, expected):
    proc, _ = health(run_tool, routers.r1, run_tool.write_config(routers.r1, text), "VI_1")
    assert proc.returncode == 1 and expected in proc.stdout, proc.stdout
    assert routers.cloud.count_actions() == {}


def test_takes_no_lock_a_transition_waits_for(routers, run_tool, config):
    r1 = routers.r1
    ok(run_tool(r1, "backup", "VI_1", config=config))
    lock = run_tool.state_dir(r1) / "groups" / "VI_1.lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)   # as a transition in progress holds it
        proc, took = health(run_tool, r1, config, "VI_1")
    finally:
        os.close(fd)
    assert proc.returncode == 0 and took < WITHIN, proc.stdout


def test_cached_run_imports_neither_botocore_nor_click(routers, run_tool, config):
    r1 = routers.r1
    probe = [sys.executable, "-c", PROBE]
    first = run_tool(r1, "health", "VI_1", config=config, tool=probe)
    assert first.returncode == 0 and "IMPORTED ['botocore']" in first.stdout, first.stdout + first.stderr
    start = time.monotonic()
    again = run_tool(r1, "health", "VI_1", config=config, tool=probe)
    took = time.monotonic() - start
    assert again.returncode == 0 and "IMPORTED []" in again.stdout, again.stdout
    assert took < 1.0, took   # about 70 ms on an idle machine


def test_syslog_hears_of_each_change_only(routers, run_tool, config, fault_proxy, tmp_path):
    r1 = routers.r1
    log = Syslog(tmp_path / "log.sock")
    proxy = fault_proxy(r1, "ec2")
    tool = [sys.executable, "-c", SYSLOG, log.path]
    try:
        codes = []
        for broken in (False, False, True, True, False):
            if broken:
                proxy.add_fault("reset")
            else:
                proxy.clear_faults()
            codes.append(run_tool(r1, "health", "--max-age", "0", config=config, env=proxy.env, tool=tool).returncode)
        lines = [line for line in log.lines() if "health:" in line]
    finally:
        log.sock.close()
    assert codes == [0, 0, 1, 1, 0]
    assert len(lines) == 3, lines
    assert "health: ready: VI_1" in lines[0] and "health: not ready: VI_1" in lines[1] and "ready" in lines[2]
    assert "WARNING" in lines[1] and f"EC2 endpoint {proxy.url}" in lines[1]


def test_check_prometheus_exports_the_verdict(routers, run_tool, fault_proxy, tmp_path):
    r1, topo = routers.r1, routers.topology
    # a short deadline: check retries the reset connections until it passes
    config = run_tool.write_config(r1, cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), deadline=3))
    ok(run_tool(r1, "master", "VI_1", config=config))
    prom = tmp_path / "avn.prom"
    ok(run_tool(r1, "check", "--prometheus", prom, config=config))
    assert parse_prometheus(prom.read_text())["aws_vrrp_notify_health_ready"] == 1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("reset")
    proc = run_tool(r1, "check", "--prometheus", prom, config=config, env=proxy.env,
                    state_dir=run_tool.state_dir(r1))
    samples = parse_prometheus(prom.read_text())
    assert proc.returncode == 3 and samples["aws_vrrp_notify_health_ready"] == 0


def test_contrib_example_tracks_health_of_a_configured_group():
    keepalived = Path(__file__).resolve().parent.parent / "contrib" / "keepalived"
    conf = read_keepalived_conf(str(keepalived / "health.conf"))
    assert conf.health_scripts == ("aws_ready",) and conf.tracked_scripts == ("aws_ready",)
    assert conf.script_security and conf.script_user == "root" and conf.unicast_peers == ("10.0.1.11",)
    [command] = re.findall(r'^\s*script\s+"([^"]+)"', (keepalived / "health.conf").read_text(), re.M)
    call = parse_fast(command.split()[1:])
    assert isinstance(call, HealthCall) and call.groups == ("VI_1",)   # no click: the fast path
    groups = parse(tomllib.loads((keepalived / "config.toml").read_text()), "config.toml").groups
    assert set(call.groups) <= set(groups)
