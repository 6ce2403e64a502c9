"""fifo mode: keepalived's notify FIFO read by one long-running process."""

from __future__ import annotations

import json
import os
import time

from aws_vrrp_notify.fifo import parse_line
from test_failover import VIP, assign, cfg, ok, record, route


def test_parse_line():
    assert parse_line('INSTANCE "VI_1" MASTER 150') == ("VI_1", "MASTER")
    assert parse_line('GROUP "G 1" BACKUP 0') == ("G 1", "BACKUP")
    assert parse_line("INSTANCE VI_1 FAULT 100") == ("VI_1", "FAULT")
    assert parse_line('INSTANCE "VI_1" MASTER_RX_LOWER_PRI 255') is None
    assert parse_line('VS "10.0.0.1:80" UP') is None
    assert parse_line('INSTANCE "unterminated MASTER 1') is None
    assert parse_line("") is None


def wait_for(predicate, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_fifo_applies_in_order_and_survives_writer_restarts(routers, run_tool, tmp_path):
    aws, r1, topo = routers.cloud, routers.r1, routers.topology
    fifo = tmp_path / "keepalived.fifo"
    os.mkfifo(fifo, 0o600)
    config = cfg(assign()) + ('[groups.VI_2]\n[[groups.VI_2.change-route]]\n'
                              f'subnet = "{topo.subnet_cidrs["wan"]}"\ndestination = "0.0.0.0/0"\ninterface = "eth1"\n')
    proc = run_tool.popen(r1, "-v", "fifo", str(fifo), config=config)
    with open(fifo, "w") as writer:  # keepalived's first life
        writer.write('INSTANCE "VI_1" MASTER 150\n')
        writer.flush()
        assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")])
        writer.write('INSTANCE "VI_1" BACKUP 150\nINSTANCE "NOT_CONFIGURED" MASTER 100\n')
        writer.flush()
        assert wait_for(lambda: (record(run_tool, r1) or {}).get("state") == "BACKUP")
    with open(fifo, "w") as writer:  # keepalived restarted: the reader reopened the FIFO
        writer.write('GROUP "VI_2" MASTER 0\n')
        writer.flush()
        assert wait_for(lambda: aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1"))
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    err = proc.stderr.read()
    assert "NOT_CONFIGURED ignored" in err and "reopening" in err
    assert record(run_tool, r1, "VI_2")["outcome"] == "ok"


def test_burst_is_coalesced_to_the_last_state(routers, run_tool, tmp_path):
    aws, r1 = routers.cloud, routers.r1
    lines = '\n'.join(['INSTANCE "VI_1" MASTER 150', 'INSTANCE "VI_1" BACKUP 150'] * 3) + "\n"
    proc = ok(run_tool(r1, "fifo", config=cfg(assign()), input=lines))
    assert proc.stdout == ""
    rec = record(run_tool, r1)
    assert rec["state"] == "BACKUP" and rec["seq"] == 6
    assert aws.count_actions().get("AssignPrivateIpAddresses", 0) == 0
    assert aws.who_holds(VIP) == []


def test_stdin_mode_applies_and_exits(routers, run_tool):
    aws, r1, topo = routers.cloud, routers.r1, routers.topology
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]))
    ok(run_tool(r1, "fifo", config=config, input='INSTANCE "VI_1" BACKUP 100\nINSTANCE "VI_1" MASTER 150\n'))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert json.loads((run_tool.state_dir(r1) / "groups" / "VI_1.json").read_text())["outcome"] == "ok"


def test_fifo_path_must_exist(routers, run_tool, tmp_path):
    proc = run_tool(routers.r1, "fifo", str(tmp_path / "missing"), config=cfg(assign()))
    assert proc.returncode == 2


def test_stop_lines_written_after_sigterm_are_recorded(routers, run_tool, tmp_path):
    """keepalived signals the FIFO script, then writes its STOP lines."""
    r1 = routers.r1
    fifo = tmp_path / "keepalived.fifo"
    os.mkfifo(fifo, 0o600)
    proc = run_tool.popen(r1, "fifo", str(fifo), config=cfg(assign()))
    with open(fifo, "w") as writer:
        writer.write('INSTANCE "VI_1" BACKUP 100\n')
        writer.flush()
        assert wait_for(lambda: (record(run_tool, r1) or {}).get("state") == "BACKUP")
        proc.terminate()
        time.sleep(0.2)
        writer.write('INSTANCE "VI_1" STOP 100\n')
        writer.flush()
    assert proc.wait(timeout=10) == 0
    assert record(run_tool, r1)["state"] == "STOP"
