"""Failover under faults, races and hostile input: real processes through a fault proxy."""

from __future__ import annotations

import os
import random
import stat
import threading
import time

import pytest

from test_failover import VIP, assign, cfg, eip, ok, record, route


def test_throttled_then_succeeds(routers, run_tool, fault_proxy):
    aws, topo, r1 = routers.cloud, routers.topology, routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("throttle", first=3)
    proxy.add_fault("error500", first=1)
    proxy.add_fault("reset", first=1)
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign(), route(subnet=topo.subnet_cidrs["wan"])), env=proxy.env))
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert sum(proxy.injected.values()) == 5


def test_persistent_throttling_gives_up_at_the_deadline(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("throttle", actions={"AssignPrivateIpAddresses"})
    start = time.monotonic()
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), deadline=3), env=proxy.env)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert elapsed < 3 + 2.0, elapsed  # process start-up + the deadline, never much later
    line = next(l for l in proc.stderr.splitlines() if "FAILED" in l)
    assert "assign-private-ip 10.0.1.100" in line and "AssignPrivateIpAddresses" in line
    assert "RequestLimitExceeded" in line
    attempts = proxy.injected[("throttle", "AssignPrivateIpAddresses")]
    assert attempts >= 3 and f"({attempts} attempts)" in line
    assert routers.cloud.who_holds(VIP) == []
    assert record(run_tool, r1)["outcome"] == "failed"


def test_hung_endpoint_cannot_hold_the_transition(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("delay", delay=30, actions={"AssignPrivateIpAddresses"})
    start = time.monotonic()
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), deadline=2), env=proxy.env)
    assert proc.returncode == 1
    assert time.monotonic() - start < 2 + 2.0
    assert "deadline" in proc.stderr


def test_lost_answer_of_a_write_is_retried_idempotently(routers, run_tool, fault_proxy):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("drop", first=1, actions={"ReplaceRoute"})
    ok(run_tool(r1, "master", "VI_1", config=cfg(route(subnet=topo.subnet_cidrs["wan"])), env=proxy.env))
    assert routers.cloud.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")


def test_imds_faults_are_retried(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "imds")
    proxy.add_fault("status", status=500, first=1)
    proxy.add_fault("reset", first=1)
    proxy.add_fault("status", status=503, first=3, paths=("/latest/meta-data/network",))
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign()), env=proxy.env))
    assert sum(proxy.injected.values()) == 5
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]


def test_broken_imds_is_an_error_not_a_silent_no_op(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "imds")
    proxy.add_fault("status", status=503)
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign()), env=proxy.env)
    assert proc.returncode == 1
    assert "HTTP 503" in proc.stderr
    assert routers.cloud.count_actions() == {}


def test_slow_imds_is_bounded_by_the_deadline(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "imds")
    proxy.add_fault("delay", delay=20, paths=("/latest/meta-data/network",))
    start = time.monotonic()
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), deadline=2), env=proxy.env)
    assert proc.returncode == 1
    assert time.monotonic() - start < 2 + 2.0


def test_assignment_is_confirmed_through_imds(routers, run_tool):
    r1 = routers.r1
    key = f"meta-data/network/interfaces/macs/{r1.mac('eth0')}/local-ipv4s"
    r1.imds.overrides[key] = r1.addrs["eth0"]  # EC2's remap is asynchronous: not visible yet

    def lift():
        time.sleep(1.0)
        r1.imds.overrides.pop(key, None)

    threading.Thread(target=lift, daemon=True).start()
    start = time.monotonic()
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign())))
    assert time.monotonic() - start >= 1.0
    assert r1.imds.count("GET", f"/latest/{key}") >= 2


def test_unconfirmed_assignment_is_reported(routers, run_tool):
    r1 = routers.r1
    key = f"meta-data/network/interfaces/macs/{r1.mac('eth0')}/local-ipv4s"
    r1.imds.overrides[key] = r1.addrs["eth0"]
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), deadline=2))
    assert proc.returncode == 1
    assert "does not list it" in proc.stderr and "local-ipv4s" in proc.stderr


# ---------------------------------------------------------------- races


def test_many_interleavings_follow_the_last_event(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    config = cfg(assign())
    rng = random.Random(11)
    for _ in range(8):
        events = [rng.choice(["master", "backup", "fault"]) for _ in range(rng.randint(2, 6))]
        procs = []
        for event in events:
            procs.append(run_tool.popen(r1, event, "VI_1", config=config))
            time.sleep(rng.uniform(0, 0.05))
        assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
        last = record(run_tool, r1)
        if last["state"] == "MASTER":
            assert last["outcome"] == "ok"
            assert aws.who_holds(VIP) == [r1.eni("eth0")]
        else:
            assert last["outcome"] == "recorded"


def test_backup_supersedes_a_master_in_flight(routers, run_tool, fault_proxy):
    aws, r1, topo = routers.cloud, routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("delay", delay=1.0, actions={"AssignPrivateIpAddresses"})
    config = cfg(assign(), eip(allocation_id=topo.eip_alloc, private_ip=VIP))
    master = run_tool.popen(r1, "-v", "master", "VI_1", config=config, env=proxy.env)
    deadline = time.monotonic() + 10
    while proxy.counts["AssignPrivateIpAddresses"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    ok(run_tool(r1, "backup", "VI_1", config=config))
    assert master.wait(timeout=30) == 0
    err = master.stderr.read()
    assert "superseded" in err
    assert proxy.counts["AssociateAddress"] == 0  # no write started after the BACKUP was recorded
    assert record(run_tool, r1)["state"] == "BACKUP"
    assert aws.eip_association(topo.eip_alloc) is None


def test_killed_transition_does_not_block_the_next(routers, run_tool, fault_proxy):
    aws, r1 = routers.cloud, routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("delay", delay=30, first=1, actions={"AssignPrivateIpAddresses"})
    config = cfg(assign())
    stuck = run_tool.popen(r1, "master", "VI_1", config=config, env=proxy.env)
    while proxy.counts["AssignPrivateIpAddresses"] == 0:
        time.sleep(0.01)
    # also hold the group's lock file as the killed process might have: flock dies with its owner
    lock = run_tool.state_dir(r1) / "groups" / "VI_1.lock"
    stuck.kill()
    stuck.wait()
    start = time.monotonic()
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert time.monotonic() - start < 10
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert lock.exists()


def test_other_groups_do_not_wait(routers, run_tool, fault_proxy):
    aws, r1, topo = routers.cloud, routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("delay", delay=4, actions={"ReplaceRoute"})
    config = (cfg(route(subnet=topo.subnet_cidrs["wan"]), deadline=20)
              + '[groups.VI_2]\n[[groups.VI_2.assign-private-ip]]\nip = "10.0.1.100"\ninterface = "eth0"\n')
    slow = run_tool.popen(r1, "master", "VI_1", config=config, env=proxy.env)
    while proxy.counts["ReplaceRoute"] == 0:
        time.sleep(0.01)
    start = time.monotonic()
    ok(run_tool(r1, "master", "VI_2", config=config, env=proxy.env))
    assert time.monotonic() - start < 3.5
    assert slow.poll() is None  # VI_1 is still waiting on its slow write
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert slow.wait(timeout=30) == 0


def _split_brain_round(routers, run_tool, config, proxies):
    procs = {r.name: run_tool.popen(r, "-vv", "master", "VI_1", config=config, env=proxies[r.name].env)
             for r in routers}
    results = {name: (p.wait(timeout=60), p.stderr.read()) for name, p in procs.items()}
    return results


@pytest.mark.parametrize("jitter", [False, True])
def test_split_brain_never_ends_mixed(routers, run_tool, fault_proxy, jitter):
    aws, topo = routers.cloud, routers.topology
    proxies = {}
    for r in routers:
        proxies[r.name] = fault_proxy(r, "ec2")
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), route(route_table=topo.route_tables["lan"],
                                                                       destination="::/0", interface="eth0"),
                 window=0)  # moto shows writes at once here; tests/test_consistency.py lags them
    for round_ in range(6):
        if jitter:
            for i, p in enumerate(proxies.values()):
                p.clear_faults()
                p.add_fault("delay", delay=random.Random(round_ * 2 + i).uniform(0.0, 0.15),
                            fraction=0.5, seed=round_ * 10 + i)
        results = _split_brain_round(routers, run_tool, config, proxies)
        assert all(code == 0 for code, _ in results.values()), "\n".join(f"{k}: {v[0]}\n{v[1]}" for k, v in results.items())
        for name, (code, err) in results.items():  # shown by pytest when the round fails
            print(f"--- round {round_} {name} exit {code}\n{err}")
        holders = {aws.who_holds(VIP)[0] if aws.who_holds(VIP) else None,
                   aws.route_target(topo.route_tables["wan"], "0.0.0.0/0"),
                   aws.route_target(topo.route_tables["lan"], "::/0")}
        owner = next((r for r in routers if r.eni("eth0") in holders), None)
        assert owner is not None
        assert holders == {owner.eni("eth0"), owner.eni("eth1")}, (round_, holders, "\n".join(
            f"{k}: {v[0]}\n{v[1]}" for k, v in results.items()))
        for r in routers:
            if r is not owner and "another instance owns the group" in results[r.name][1]:
                check = run_tool(r, "check", config=config)
                assert check.returncode == 2, check.stdout
                assert "VI_1 CRITICAL" in check.stdout


# ---------------------------------------------------------------- security


def test_state_directory_and_files_are_private(routers, run_tool):
    r1 = routers.r1
    state = run_tool.tmp / "fresh-state"
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign()), state_dir=state))
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for root, dirs, files in os.walk(state):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o600, f


def test_insecure_config_file_is_refused(routers, run_tool):
    path = run_tool.tmp / "open.toml"
    path.write_text(cfg(assign()))
    os.chmod(path, 0o666)
    proc = run_tool(routers.r1, "-c", str(path), "master", "VI_1")
    assert proc.returncode == 2
    assert "writable by group or others" in proc.stderr
    assert routers.cloud.count_actions() == {}


def test_no_secret_in_verbose_logs(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("throttle", first=2)
    env = {**proxy.env, "AWS_SECRET_ACCESS_KEY": "SeCrEtKeY0123456789", "AWS_SESSION_TOKEN": "SeSsIoNtOkEn987"}
    proc = ok(run_tool(r1, "-vvv", "master", "VI_1", config=cfg(assign()), env=env))
    assert "attempt" in proc.stderr  # the verbose run did log the retries
    for secret in ("SeCrEtKeY0123456789", "SeSsIoNtOkEn987", "AQAEA", "Signature=", "Authorization"):
        assert secret not in proc.stderr
    state = run_tool.state_dir(r1)
    for root, _, files in os.walk(state):
        for f in files:
            text = open(os.path.join(root, f), errors="replace").read()
            assert "SeCrEtKeY" not in text and "AQAEA" not in text


def test_no_shell_is_invoked():
    import pathlib

    source = "\n".join(p.read_text() for p in pathlib.Path(__file__).parent.parent.joinpath(
        "aws_vrrp_notify").glob("*.py"))
    for needle in ("shell=True", "os.system(", "os.popen(", "subprocess"):
        assert needle not in source, needle



def test_sigterm_during_master_is_recorded(routers, run_tool, fault_proxy):
    """keepalived SIGTERMs its running notify scripts when it stops."""
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("delay", delay=5, actions={"AssignPrivateIpAddresses"})
    proc = run_tool.popen(r1, "master", "VI_1", config=cfg(assign()), env=proxy.env)
    while proxy.counts["AssignPrivateIpAddresses"] == 0:
        time.sleep(0.01)
    proc.terminate()
    assert proc.wait(timeout=10) == 143
    rec = record(run_tool, r1)
    assert rec["state"] == "MASTER" and rec["outcome"] == "interrupted"
    assert "interrupted" in proc.stderr.read()


def test_late_write_of_the_yielding_instance_is_handed_back(routers, run_tool, fault_proxy):
    """r2's route write lands after r1 (which took the anchor) has verified and exited."""
    aws, topo, r1, r2 = routers.cloud, routers.topology, routers.r1, routers.r2
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]))
    slow = fault_proxy(r2, "ec2")
    slow.add_fault("delay", delay=2.5, actions={"ReplaceRoute", "CreateRoute"})
    loser = run_tool.popen(r2, "-v", "master", "VI_1", config=config, env=slow.env)
    while slow.counts["ReplaceRoute"] + slow.counts["CreateRoute"] == 0:
        time.sleep(0.01)
    while aws.who_holds(VIP) != [r2.eni("eth0")]:
        time.sleep(0.01)
    ok(run_tool(r1, "master", "VI_1", config=config))  # takes the anchor, verifies, exits
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert loser.wait(timeout=30) == 0
    err = loser.stderr.read()
    assert "another instance owns the group" in err and "handing it back" in err
    assert aws.who_holds(VIP) == [r1.eni("eth0")]
    assert aws.route_target(topo.route_tables["wan"], "0.0.0.0/0") == r1.eni("eth1")
    assert record(run_tool, r2)["outcome"] == "yielded"
