"""[aws] standby = true: backup/fault leave a standby process with botocore imported, and a
per-event master hands its call to it (aws_vrrp_notify/standby.py).

Each test asserts the AWS state the master left, and how the call was carried out (the
standby's debug line on the caller's stderr, the standby's PID, its socket)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from test_failover import VIP, assign, ok, record
from test_fifo import wait_for

HANDED_OVER = "run by the standby process for pid"


def standby_cfg(*actions: str, standby: bool = True) -> str:
    return (f"[aws]\ndeadline = 20\nprepare = false\nstandby = {str(standby).lower()}\n[groups.VI_1]\n"
            + "\n".join(actions))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def start_standby(run_tool, router, config_path: Path) -> int:
    """backup on ``router``; the PID of the standby process it started, once it listens."""
    ok(run_tool(router, "backup", "VI_1", config=config_path))
    state = run_tool.state_dir(router)
    assert wait_for(lambda: (state / "standby.sock").exists()), "backup started no standby process"
    pid = int((state / "standby.lock").read_text().split()[0])
    assert alive(pid)
    return pid


def test_master_is_handed_to_the_standby_that_backup_started(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = run_tool.write_config(r1, standby_cfg(assign()))
    standby = start_standby(run_tool, r1, config)

    proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=config))
    assert HANDED_OVER in proc.stderr
    assert "MASTER done" in proc.stderr  # the transition's own lines reach the caller's stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert record(run_tool, r1)["state"] == "MASTER" and record(run_tool, r1)["outcome"] == "ok"

    # the standby stays for the next failover: r2 takes the VIP, r1 takes it back through it
    ok(run_tool(r2, "master", "VI_1", config=standby_cfg(assign(), standby=False)))
    assert aws.who_holds(VIP) == [r2.eni("eth0")]
    proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=config))
    assert HANDED_OVER in proc.stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert alive(standby)


def test_failures_and_exit_status_come_back_from_the_standby(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    before = aws.who_holds(VIP)
    config = run_tool.write_config(r1, standby_cfg(assign(interface="eth9")))
    start_standby(run_tool, r1, config)

    proc = run_tool(r1, "-vv", "master", "VI_1", config=config)
    assert proc.returncode == 1, proc.stderr
    assert HANDED_OVER in proc.stderr
    assert "eth9" in proc.stderr
    assert aws.who_holds(VIP) == before


def _start_ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2:].split()[19])


def test_the_callers_start_time_orders_the_event(routers, run_tool):
    """keepalived started a BACKUP after this MASTER (its record carries a later start than
    the master process's): the MASTER is older and must not be applied, although the
    standby's child that carries it out was forked after that BACKUP started."""
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    ok(run_tool(r2, "master", "VI_1", config=standby_cfg(assign(), standby=False)))
    config = run_tool.write_config(r1, standby_cfg(assign()))
    start_standby(run_tool, r1, config)

    # the master process starts now and only calls the tool 1 s later (exec keeps its start time)
    tool = " ".join(run_tool.argv(r1, "-vv", "master", "VI_1", config=config, ns=False))
    proc = run_tool.popen(r1, tool=["sh", "-c", f"sleep 1; exec {tool}"], state_dir=False)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    later = _start_ticks(proc.pid) + os.sysconf("SC_CLK_TCK") // 2  # a BACKUP started 0.5 s later
    path = run_tool.state_dir(r1) / "groups" / "VI_1.json"
    backup = {**json.loads(path.read_text()), "state": "BACKUP", "started": [boot_id, later]}
    path.write_text(json.dumps(backup))
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 0, stderr
    assert HANDED_OVER in stderr and "ignored" in stderr
    assert aws.who_holds(VIP) == [r2.eni("eth0")]
    assert record(run_tool, r1)["state"] == "BACKUP"


def test_a_standby_older_than_the_installed_code_ends_and_master_runs_itself(routers, run_tool):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    ok(run_tool(r2, "master", "VI_1", config=standby_cfg(assign(), standby=False)))
    config = run_tool.write_config(r1, standby_cfg(assign()))
    standby = start_standby(run_tool, r1, config)

    installed = Path(sysconfig.get_paths()["purelib"]) / "aws_vrrp_notify" / "__init__.py"  # what the tool runs
    assert installed.is_file()
    times = installed.stat()
    os.utime(installed, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000_000))  # an upgrade
    try:
        proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=config))
    finally:
        os.utime(installed, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert HANDED_OVER not in proc.stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert wait_for(lambda: not alive(standby), 5)
    assert not (run_tool.state_dir(r1) / "standby.sock").exists()


def test_backup_with_standby_turned_off_ends_the_standby(routers, run_tool):
    r1 = routers.r1
    standby = start_standby(run_tool, r1, run_tool.write_config(r1, standby_cfg(assign())))
    ok(run_tool(r1, "backup", "VI_1", config=standby_cfg(assign(), standby=False)))
    assert wait_for(lambda: not alive(standby), 5)
    assert not (run_tool.state_dir(r1) / "standby.sock").exists()


def test_stop_ends_the_standby(routers, run_tool):
    r1 = routers.r1
    config = run_tool.write_config(r1, standby_cfg(assign()))
    standby = start_standby(run_tool, r1, config)
    ok(run_tool(r1, "stop", "VI_1", config=config))
    assert wait_for(lambda: not alive(standby), 5)
    assert not (run_tool.state_dir(r1) / "standby.sock").exists()


def test_one_standby_per_state_directory_and_none_by_default(routers, run_tool):
    r1, r2 = routers.r1, routers.r2
    config = run_tool.write_config(r1, standby_cfg(assign()))
    standby = start_standby(run_tool, r1, config)
    ok(run_tool(r1, "fault", "VI_1", config=config))
    ok(run_tool(r1, "backup", "VI_1", config=config))
    time.sleep(1)
    assert int((run_tool.state_dir(r1) / "standby.lock").read_text().split()[0]) == standby
    pids = subprocess.run(["ip", "netns", "pids", r1.ns], capture_output=True, text=True).stdout.split()
    assert [int(p) for p in pids] == [standby]

    ok(run_tool(r2, "backup", "VI_1", config=standby_cfg(assign(), standby=False)))
    time.sleep(1)
    assert not (run_tool.state_dir(r2) / "standby.sock").exists()


@pytest.mark.parametrize("args", [["-vv", "notify", "INSTANCE", "VI_1", "MASTER", "100"]])
def test_keepalived_generic_notify_is_handed_over_too(routers, run_tool, args):
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    ok(run_tool(r2, "master", "VI_1", config=standby_cfg(assign(), standby=False)))
    config = run_tool.write_config(r1, standby_cfg(assign()))
    start_standby(run_tool, r1, config)
    proc = ok(run_tool(r1, *args, config=config))
    assert HANDED_OVER in proc.stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]


def test_keepalived_failover_through_the_standby(routers, tmp_path):
    """Two real keepalived routers with standby on: r2's BACKUP leaves a standby, r1 crashes,
    and r2's notify_master is carried out by that standby; keepalived's stop ends it."""
    from aws_vrrp_notify.lab.keepalived import VIP as LAB_VIP
    from aws_vrrp_notify.lab.keepalived import Lab, available
    from test_e2e_keepalived import FAST, assert_aws_on, assert_notify_ok

    usable, why = available()
    if not usable:
        pytest.skip(f"keepalived lab unavailable: {why}")
    with Lab(routers.cloud, routers, workdir=tmp_path / "lab", tool_verbose=2,
             aws_options={"standby": True}) as lab:
        lab.start_router("r1", **FAST)
        lab.start_router("r2", **FAST)
        assert lab.wait_settled(timeout=20) == "r1", lab.describe()
        assert_aws_on(lab, "r1")
        sock = lab.state_dir("r2") / "standby.sock"
        assert wait_for(sock.exists), "r2's BACKUP left no standby process"
        standby = int((lab.state_dir("r2") / "standby.lock").read_text().split()[0])

        t0 = lab.kill("r1", signal.SIGKILL)
        lab.wait_aws_points_to("r2", timeout=10, since=t0)
        assert lab.wait_settled(timeout=20) == "r2"
        assert_aws_on(lab, "r2")
        assert routers.cloud.who_holds(LAB_VIP) == [lab.router("r2").eni("eth0")]
        assert HANDED_OVER in lab.tool_log("r2")
        assert_notify_ok(lab)

        lab.stop("r2")
        assert wait_for(lambda: not alive(standby), 10), "keepalived's stop left the standby running"


def test_a_relative_state_directory_works_too(routers, run_tool):
    """The standby runs from / (it must not keep a directory busy): a relative --state-dir
    is made absolute before it starts."""
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    ok(run_tool(r2, "master", "VI_1", config=standby_cfg(assign(), standby=False)))
    config = run_tool.write_config(r1, standby_cfg(assign()))
    ok(run_tool(r1, "backup", "VI_1", config=config, state_dir="relative-state"))
    assert wait_for(lambda: (run_tool.tmp / "relative-state" / "standby.sock").exists())
    proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=config, state_dir="relative-state"))
    assert HANDED_OVER in proc.stderr
    assert aws.who_holds(VIP) == [r1.eni("eth0")]


# ---------------------------------------------------------------- review: the caller's fate, odd callers


def _child_of(pid: int) -> int:
    """The one child process of ``pid`` (the standby's child running a transition)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (task / "children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _master_writing_through_the_standby(router, run_tool, fault_proxy):
    """A master handed to a new standby on ``router``, its AWS write held for 5 s by a proxy:
    (the master process, the standby's PID)."""
    proxy = fault_proxy(router, "ec2")
    config = run_tool.write_config(router, standby_cfg(assign()))
    standby = start_standby(run_tool, router, config)
    proxy.add_fault("delay", delay=5, actions={"AssignPrivateIpAddresses"})
    proc = run_tool.popen(router, "-vv", "master", "VI_1", config=config, env=proxy.env)
    assert wait_for(lambda: proxy.counts["AssignPrivateIpAddresses"] > 0)
    return proc, standby


def test_sigterm_to_the_master_interrupts_the_standbys_child_as_it_would_the_master(routers, run_tool, fault_proxy):
    """keepalived SIGTERMs the master process it started: the transition run for it by the
    standby's child stops and is recorded interrupted, with the status a master exits with."""
    r1 = routers.r1
    proc, _ = _master_writing_through_the_standby(r1, run_tool, fault_proxy)
    proc.terminate()
    assert proc.wait(timeout=10) == 143
    stderr = proc.stderr.read()
    assert HANDED_OVER in stderr and "interrupted by signal 15" in stderr
    rec = record(run_tool, r1)
    assert rec["state"] == "MASTER" and rec["outcome"] == "interrupted"


def test_a_killed_master_process_ends_the_standbys_child(routers, run_tool, fault_proxy):
    """A master process that is gone (SIGKILL) cannot stop its transition: the child that runs
    it for that process stops too, recorded interrupted, instead of writing on unasked."""
    r1 = routers.r1
    proc, standby = _master_writing_through_the_standby(r1, run_tool, fault_proxy)
    child = _child_of(standby)
    proc.kill()
    assert wait_for(lambda: not alive(child), 3)
    rec = record(run_tool, r1)
    assert rec["state"] == "MASTER" and rec["outcome"] == "interrupted"


def test_a_killed_standby_child_is_reported_and_the_master_fails(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proc, standby = _master_writing_through_the_standby(r1, run_tool, fault_proxy)
    os.kill(_child_of(standby), signal.SIGKILL)
    assert proc.wait(timeout=5) == 1
    assert "ended without an exit status" in proc.stderr.read()
    assert record(run_tool, r1)["outcome"] != "ok"
    assert alive(standby)


def test_a_large_environment_is_handed_over_whole(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    config = run_tool.write_config(r1, standby_cfg(assign()))
    start_standby(run_tool, r1, config)
    big = {f"BIG_{i}": "x" * 100_000 for i in range(4)}  # more than a socket buffer
    started = time.monotonic()
    proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=config, env=big))
    assert HANDED_OVER in proc.stderr
    assert time.monotonic() - started < 1.5
    assert aws.who_holds(VIP) == [r1.eni("eth0")]


@pytest.mark.parametrize("standby", [True, False])
def test_odd_environment_bytes_and_closed_streams(routers, run_tool, standby):
    """keepalived may start a script with a standard stream closed (Python then has None for
    it), and an environment value need not be UTF-8: master does its work either way, handed
    over only when all three streams are there to hand."""
    aws, r1 = routers.cloud, routers.r1
    config = run_tool.write_config(r1, standby_cfg(assign(), standby=standby))
    if standby:
        start_standby(run_tool, r1, config)
    tool = " ".join(run_tool.argv(r1, "-vv", "master", "VI_1", config=config, ns=False))
    env = {**run_tool.env(r1), "ODD": "caf\udce9"}  # bytes b"caf\xe9", not UTF-8
    for redirect in ("", "<&-", ">&-", "2>&-", "<&- >&- 2>&-"):  # closed: master runs itself
        aws.reset_state()
        out = subprocess.run(["ip", "netns", "exec", r1.ns, "sh", "-c", f"exec {tool} {redirect}"],
                             env={k: os.fsencode(v) for k, v in env.items()}, capture_output=True, timeout=60)
        assert out.returncode == 0, (redirect, out.stderr)
        assert aws.who_holds(VIP) == [r1.eni("eth0")], redirect
        assert (HANDED_OVER.encode() in out.stderr) == (standby and not redirect)


def test_a_killed_master_with_stdout_closed_leaves_no_transition_running(routers, run_tool, fault_proxy):
    """With fd 1 closed, the master's socket to the standby is fd 1: handed over as the
    child's stdout, the child would hold the caller's side itself and never see it end."""
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    config = run_tool.write_config(r1, standby_cfg(assign()))
    standby = start_standby(run_tool, r1, config)
    proxy.add_fault("delay", delay=5, actions={"AssignPrivateIpAddresses"})
    tool = " ".join(run_tool.argv(r1, "master", "VI_1", config=config, ns=False))
    proc = run_tool.popen(r1, tool=["sh", "-c", f"exec {tool} >&-"], state_dir=False, env=proxy.env)
    assert wait_for(lambda: proxy.counts["AssignPrivateIpAddresses"] > 0)
    proc.kill()
    assert wait_for(lambda: not any((t / "children").read_text().split()
                                    for t in Path(f"/proc/{standby}/task").iterdir()), 3)
    assert record(run_tool, r1)["state"] == "MASTER"


def test_a_standby_that_does_not_answer_is_asked_once(routers, run_tool):
    """A stopped (or stuck) standby accepts connections but answers none: the first master
    runs itself after the hand-over timeout, later ones at once, and the standby, once it
    goes on, ends without carrying out the call it was too late for."""
    aws, r1, r2 = routers.cloud, routers.r1, routers.r2
    config = run_tool.write_config(r1, standby_cfg(assign()))
    standby = start_standby(run_tool, r1, config)
    os.kill(standby, signal.SIGSTOP)
    try:
        for most_seconds in (5.0, 1.5):
            ok(run_tool(r2, "master", "VI_1", config=standby_cfg(assign(), standby=False)))
            started = time.monotonic()
            proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=config))
            assert time.monotonic() - started < most_seconds
            assert HANDED_OVER not in proc.stderr
            assert aws.who_holds(VIP) == [r1.eni("eth0")]
        assert "did not answer within 2s" in proc.stderr or most_seconds == 1.5
    finally:
        os.kill(standby, signal.SIGCONT)
    assert wait_for(lambda: not alive(standby), 5)
    assert record(run_tool, r1)["outcome"] == "ok"
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
