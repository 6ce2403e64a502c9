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
    assert parse_line('INSTANCE "VI_1" MASTER_RX_LOWER_PRI 255') == ("VI_1", "MASTER_RX_LOWER_PRI")
    assert parse_line('INSTANCE "VI_1" MASTER_PRIORITY 100') == ("VI_1", "MASTER_PRIORITY")
    assert parse_line('INSTANCE "VI_1" SOMETHING_NEW 100') is None
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


def write_lines(fifo, *lines):
    with open(fifo, "w") as writer:
        writer.write("".join(f"{line}\n" for line in lines))


def start_reader(run_tool, router, tmp_path, config):
    fifo = tmp_path / "keepalived.fifo"
    os.mkfifo(fifo, 0o600)
    return fifo, run_tool.popen(router, "-v", "fifo", str(fifo), config=config)


def stop_reader(proc):
    proc.terminate()
    code = proc.wait(timeout=10)
    return code, proc.stderr.read()


def test_reassert_takes_back_what_drifted_between_events(routers, run_tool, tmp_path):
    """keepalived says nothing when the peer took AWS during a brief split brain: fifo mode
    re-checks the groups recorded MASTER every reassert-interval."""
    aws, r1, r2, topo = routers.cloud, routers.r1, routers.r2, routers.topology
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), window=0.5).replace(
        "[aws]\n", "[aws]\nreassert-interval = 1\n")
    fifo, proc = start_reader(run_tool, r1, tmp_path, config)
    write_lines(fifo, 'INSTANCE "VI_1" MASTER 150')
    assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r2.eni("eth0"), PrivateIpAddresses=[VIP],
                                        AllowReassignment=True)
    aws.ec2.replace_route(RouteTableId=topo.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                          NetworkInterfaceId=r2.eni("eth1"))
    assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")]
                    and aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1"), timeout=10)
    assert proc.poll() is None
    code, err = stop_reader(proc)
    assert code == 0 and "re-asserting" in err


def test_master_rx_lower_pri_rechecks_at_once(routers, run_tool, tmp_path):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = cfg(assign(), window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 0\n")
    fifo, proc = start_reader(run_tool, r1, tmp_path, config)
    with open(fifo, "w") as writer:
        writer.write('INSTANCE "VI_1" MASTER 150\n')
        writer.flush()
        assert wait_for(lambda: (record(run_tool, r1) or {}).get("outcome") == "ok")
        aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r2.eni("eth0"), PrivateIpAddresses=[VIP],
                                            AllowReassignment=True)
        time.sleep(1.5)
        assert aws.who_holds(VIP) == [r2.eni("eth0")]  # re-checking is off: nothing happens by itself
        writer.write('INSTANCE "VI_1" MASTER_RX_LOWER_PRI 150\n')
        writer.flush()
        assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")], timeout=10)
    code, err = stop_reader(proc)
    assert "lower-priority advert" in err


def test_backup_after_master_hands_back_what_still_points_here(routers, run_tool, tmp_path):
    """MASTER -> BACKUP (the peer is the VRRP master): one consistency window later whatever
    still points here goes to the peer's mirrored ENI."""
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = cfg(assign(), window=0.5).replace("[aws]\n", "[aws]\nreassert-interval = 0\n")
    fifo, proc = start_reader(run_tool, r2, tmp_path, config)
    with open(fifo, "w") as writer:
        writer.write('INSTANCE "VI_1" MASTER 100\n')
        writer.flush()
        assert wait_for(lambda: aws.who_holds(VIP) == [r2.eni("eth0")])
        writer.write('INSTANCE "VI_1" BACKUP 100\n')
        writer.flush()
        assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")], timeout=10)
    code, err = stop_reader(proc)
    assert "handing it to" in err and record(run_tool, r2)["outcome"] == "handed-back"


def test_per_event_backup_after_master_hands_back(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = cfg(assign(), window=0.5)
    ok(run_tool(r2, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    assert aws.who_holds(VIP) == [r2.eni("eth0")]  # the exit does not wait for the hand-back
    assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")], timeout=10)
    assert wait_for(lambda: record(run_tool, r2)["outcome"] == "handed-back", timeout=5)  # written after


def test_backup_without_a_preceding_master_hands_nothing(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = cfg(assign(), window=0.5)
    aws.ec2.assign_private_ip_addresses(NetworkInterfaceId=r2.eni("eth0"), PrivateIpAddresses=[VIP],
                                        AllowReassignment=True)
    ok(run_tool(r2, "backup", "VI_1", config=config))  # keepalived starting: nothing was taken
    time.sleep(2.5)
    assert aws.who_holds(VIP) == [r2.eni("eth0")]


def test_an_error_in_one_event_does_not_end_the_reader(routers, run_tool, tmp_path):
    """A full state file system while recording MASTER: logged, the reader goes on."""
    import subprocess

    aws, r1 = routers.cloud, routers.r1
    small = tmp_path / "small"
    small.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        state = small / "state"
        config = cfg(assign(), window=0.5)
        fifo = tmp_path / "keepalived.fifo"
        os.mkfifo(fifo, 0o600)
        proc = run_tool.popen(r1, "fifo", str(fifo), config=config, state_dir=state)
        with open(fifo, "w") as writer:
            writer.write('INSTANCE "VI_1" BACKUP 100\n')
            writer.flush()
            assert wait_for(lambda: (state / "groups" / "VI_1.json").exists())
            filler = small / "filler"
            with open(filler, "wb") as fh:
                try:
                    fh.write(b"x" * 1024 * 1024)
                except OSError:
                    pass
            writer.write('INSTANCE "VI_1" MASTER 100\n')
            writer.flush()
            time.sleep(1)
            assert proc.poll() is None and aws.who_holds(VIP) == []
            filler.unlink()
            writer.write('INSTANCE "VI_1" MASTER 100\n')
            writer.flush()
            assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")], timeout=10)
        code, err = stop_reader(proc)
        assert "No space left" in err
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_config_the_parser_chokes_on_keeps_the_previous_one(routers, run_tool, tmp_path):
    aws, r1 = routers.cloud, routers.r1
    path = run_tool.write_config(r1, cfg(assign(), window=0.5))
    fifo = tmp_path / "keepalived.fifo"
    os.mkfifo(fifo, 0o600)
    proc = run_tool.popen(r1, "fifo", str(fifo), config=path)
    with open(fifo, "w") as writer:
        writer.write('INSTANCE "VI_1" BACKUP 100\n')
        writer.flush()
        assert wait_for(lambda: (record(run_tool, r1) or {}).get("state") == "BACKUP")
        path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
        writer.write('INSTANCE "VI_1" MASTER 100\n')
        writer.flush()
        assert wait_for(lambda: aws.who_holds(VIP) == [r1.eni("eth0")], timeout=10)
    code, err = stop_reader(proc)
    assert code == 0 and "keeping the previous one" in err
