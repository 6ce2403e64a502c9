"""End to end, staying right between transitions: two real keepalived routers, in both
ways keepalived can run the tool (per-event notify commands, and one ``fifo`` reader per
keepalived), after split brains that keepalived reports to one side only.

* A healed partition: the lower-priority r2 took AWS while VRRP was cut; once VRRP
  is back r2 goes BACKUP and r1, which never left MASTER, hears nothing new.  AWS must
  come back to r1 (fifo mode: r1 re-checks AWS every reassert-interval and on
  MASTER_RX_LOWER_PRI; both modes: r2 hands back what still points to it one
  consistency window after MASTER -> BACKUP).
* The start-up race: both routers MASTER for a moment, both running ``master``.
* The router that took AWS in a split brain dies: nobody steps down, so only fifo mode's
  periodic re-check repairs it; per-event mode leaves it to ``check --repair``.
* keepalived's ``MASTER_RX_LOWER_PRI`` (fifo mode) re-checks at once.
* A flap shorter than the tool's start-up: keepalived's order of events must win.

VRRP is cut by :meth:`Lab.partition` (a neighbour entry with a MAC nobody has: the
unicast adverts go nowhere, AWS stays reachable).  Every test asserts AWS state (read
from moto) against keepalived's own view (its notify FIFO).
"""

from __future__ import annotations

import time

import pytest

from aws_vrrp_notify.lab.keepalived import STATES, Lab, available

_ok, _why = available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"keepalived lab unavailable: {_why}")

ADVERT = {"version": 3, "advert_int": 0.2}
REASSERT = 2.0          # [aws] reassert-interval of the routers' tool configuration
WINDOW = 1.0            # [aws] consistency-window
HAND_BACK = WINDOW + 1  # a router gone MASTER -> BACKUP hands back after this (docs/consistency.md)
SLACK = 3.0             # a loaded machine: process start-up, EC2 calls, polling
PARTITION = 4.0
HOLD = max(REASSERT, HAND_BACK) + 1.5   # long enough for one more re-check and any hand-back


def make_lab(routers, tmp_path, mode, reassert=REASSERT, **kw):
    return Lab(routers.cloud, routers, workdir=tmp_path / "lab", mode=mode,
               aws_options={"reassert-interval": reassert, "consistency-window": WINDOW}, **kw)


@pytest.fixture(params=["notify", "fifo"])
def lab(request, routers, tmp_path):
    with make_lab(routers, tmp_path, request.param) as lab_:
        yield lab_


def states(lab, name, since=None):
    """keepalived's state changes of ``name`` (its other FIFO lines left out)."""
    return [e.state for e in lab.events(name, since=since) if e.state in STATES]


def start_r1_master(lab):
    lab.start_routers("r1", "r2", cold=False, **ADVERT)
    assert lab.wait_settled(timeout=20, master="r1") == "r1"


def wait_master_runs_done(lab, *names, timeout=10.0):
    """Until each router's record says MASTER and its run is over (both sides wrote)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        recs = [lab.record(n) or {} for n in names]
        if all(r.get("state") == "MASTER" and r.get("outcome") not in (None, "in-progress") for r in recs):
            return
        time.sleep(0.02)
    raise AssertionError(f"master runs not over after {timeout:g}s\n{lab.describe()}")


def assert_stays_on(lab, name, seconds=HOLD):
    left = lab.aws_leaves(name, seconds)
    assert left is None, f"AWS left {name}: {left}\n{lab.describe()}"


def assert_tools_ok(lab):
    """Every notify command exited 0 (or died with its keepalived); in fifo mode each running
    keepalived's reader still runs; the tool reported no unexpected failure."""
    calls = lab.notify_calls()
    assert calls, "keepalived ran no command"
    bad = [c for c in calls if c.end is not None and c.rc != 0 and not (c.rc == 143 and lab.orphaned(c))]
    assert not bad, f"tool runs failed: {bad}\n{lab.describe()}"
    for name in lab.routers:
        if lab.mode == "fifo" and lab.running(name):
            readers = [c for c in lab.notify_calls(name) if c.command == "fifo" and c.start >= lab.current(name).started]
            assert len(readers) == 1 and readers[0].end is None, (name, readers, lab.describe())
        log = lab.tool_log(name)
        assert "Traceback" not in log and "unexpectedly" not in log, log


def assert_check_ok(lab):
    for name in lab.routers:
        proc = lab.check(name)
        assert proc.returncode == 0, f"check on {name}: {proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_healed_partition_puts_aws_back_on_the_master(lab):
    start_r1_master(lab)
    t_cut = lab.partition()
    lab.wait_state("r2", "MASTER", timeout=5)
    time.sleep(max(0.0, t_cut + PARTITION - time.time()))
    # in fifo mode both sides, each MASTER, re-assert while cut: heal just after r2 took AWS
    lab.wait_aws_points_to("r2", timeout=REASSERT + SLACK)
    t_heal = lab.heal()
    lab.wait_state("r2", "BACKUP", timeout=5)
    took = lab.wait_aws_points_to("r1", timeout=REASSERT + WINDOW + SLACK, since=t_heal)
    assert states(lab, "r1", since=t_cut) == [], "r1 must never leave MASTER"
    assert lab.keepalived_state("r1") == "MASTER" and lab.masters() == ["r1"]
    assert states(lab, "r2", since=t_cut) == ["MASTER", "BACKUP"]
    assert_stays_on(lab, "r1")
    if lab.mode == "notify":
        # nothing tells r1: only r2's hand-back, after MASTER -> BACKUP, can have done it
        rec = lab.record("r2")
        assert rec["state"] == "BACKUP" and rec["outcome"] == "handed-back", rec
        assert lab.router("r1").instance_id in rec["detail"], rec
        assert took >= HAND_BACK - 0.2, took
    assert lab.record("r1")["state"] == "MASTER"
    assert_tools_ok(lab)
    assert_check_ok(lab)


def test_startup_race_with_both_master_ends_on_the_vrrp_master(lab):
    """Both start at once and cannot hear each other: both become MASTER and run `master`
    (a split brain from the first second); then VRRP gets through and r2 steps down."""
    lab.partition()
    t0 = time.time()
    lab.start_routers("r1", "r2", **ADVERT)
    for name in ("r1", "r2"):
        lab.wait_state(name, "MASTER", timeout=5)
    wait_master_runs_done(lab, "r1", "r2")
    lab.heal()
    t_settled = lab.wait_state("r2", "BACKUP", timeout=5)
    lab.wait_aws_points_to("r1", timeout=WINDOW + 10, since=t_settled)
    assert states(lab, "r1", since=t0) == ["BACKUP", "MASTER"]
    assert states(lab, "r2", since=t0) == ["BACKUP", "MASTER", "BACKUP"]
    assert_stays_on(lab, "r1")
    assert_tools_ok(lab)
    assert_check_ok(lab)


def test_startup_race_without_partition_ends_on_the_vrrp_master(lab):
    """The natural race: r2 starts one half advert interval before r1 (cold neighbour
    caches); r2 becomes MASTER first, r1 a moment later (it ignores lower-priority
    adverts), and both run `master` at the same time."""
    for attempt in range(3):
        t0 = time.time()
        lab.start_routers("r2", "r1", stagger=ADVERT["advert_int"] / 2, **ADVERT)
        t_settled = lab.wait_state("r1", "MASTER", timeout=5)
        if "MASTER" in states(lab, "r2", since=t0):
            break
        lab.stop("r1")   # r1 was first after all: no race this time
        lab.stop("r2")
    else:
        pytest.fail(f"r2 never became MASTER before r1 in 3 attempts\n{lab.describe()}")
    t_settled = max(t_settled, lab.wait_state("r2", "BACKUP", timeout=5))
    lab.wait_aws_points_to("r1", timeout=WINDOW + 10, since=t_settled)
    assert states(lab, "r2", since=t0) == ["BACKUP", "MASTER", "BACKUP"]
    assert any(c.command == "master" for c in lab.notify_calls("r2")) or lab.mode == "fifo"
    assert_stays_on(lab, "r1")
    assert lab.wait_settled(timeout=10, master="r1") == "r1"
    assert_tools_ok(lab)
    assert_check_ok(lab)


def test_split_brain_winner_dies(lab):
    """r2 took AWS during a partition and then crashed: r1 stays MASTER and no router
    changes state, so no transition repairs AWS.  fifo mode re-checks every
    reassert-interval; per-event mode leaves it to `check` (CRITICAL) and `check --repair`."""
    start_r1_master(lab)
    lab.partition()
    lab.wait_state("r2", "MASTER", timeout=5)
    lab.wait_aws_points_to("r2", timeout=REASSERT + SLACK)
    t_kill = lab.kill("r2")
    lab.heal()
    if lab.mode == "fifo":
        lab.wait_aws_points_to("r1", timeout=REASSERT + SLACK, since=t_kill)
        assert "re-assert" in lab.tool_log("r1")
    else:
        assert lab.aws_points_to() == "r2"
        proc = lab.check("r1")
        assert proc.returncode == 2, f"{proc.returncode}\n{proc.stdout}{proc.stderr}"
        proc = lab.check("r1", "--repair")
        assert lab.aws_points_to() == "r1", f"{proc.returncode}\n{proc.stdout}{proc.stderr}\n{lab.aws_view()}"
    assert lab.keepalived_state("r1") == "MASTER"
    assert_stays_on(lab, "r1", REASSERT + 1)
    assert_tools_ok(lab)
    proc = lab.check("r1")
    assert proc.returncode == 0, f"{proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_master_rx_lower_pri_rechecks_at_once(routers, tmp_path):
    """fifo mode, periodic re-checks off: keepalived tells the master it heard a
    lower-priority advert (the peer believed it was master), and AWS comes back at once.

    The partition heals one way first (r2's adverts reach r1, r1's still go nowhere), so
    r1 surely hears r2 while r2 is still MASTER; the hand-back of r2 (after its BACKUP)
    cannot be what brings AWS back: r2 is still MASTER when it is back."""
    with make_lab(routers, tmp_path, "fifo", reassert=0) as lab:
        start_r1_master(lab)
        lab.partition()
        lab.wait_state("r2", "MASTER", timeout=5)
        lab.wait_aws_points_to("r2", timeout=SLACK)
        t_heal = lab.heal("r2")
        took = lab.wait_aws_points_to("r1", timeout=SLACK, since=t_heal)
        heard = [e for e in lab.events("r1", since=t_heal) if e.state == "MASTER_RX_LOWER_PRI"]
        assert heard, lab.describe()
        assert lab.keepalived_state("r2") == "MASTER", "AWS must be back before r2 stepped down"
        assert "lower-priority advert" in lab.tool_log("r1")
        lab.heal()
        lab.wait_state("r2", "BACKUP", timeout=5)
        assert states(lab, "r1", since=t_heal) == []
        assert_stays_on(lab, "r1", HAND_BACK + 1)
        assert_tools_ok(lab)
        assert took < SLACK


@pytest.mark.parametrize("mode", ["notify", "fifo"])
def test_flap_shorter_than_the_tools_start_up_ends_on_the_master(routers, tmp_path, mode):
    """A loaded machine: r2 is MASTER for a tenth of a second.  Per-event mode: keepalived
    runs `master` then `backup`, but `master` starts slower (the wrapper delays its exec by
    0.5 s) and reaches the state directory after `backup`.  keepalived's order is what
    counts: AWS must end on r1, the router that stayed VRRP MASTER.  (fifo mode reads the
    two lines in order; the delay does not apply to it.)"""
    with make_lab(routers, tmp_path, mode, tool_delay={"master": 0.5}) as lab:
        start_r1_master(lab)
        t_cut = lab.partition()
        t_master = lab.wait_state("r2", "MASTER", timeout=5)
        lab.heal()
        t_backup = lab.wait_state("r2", "BACKUP", timeout=5)
        assert t_backup - t_master < 0.5, "the flap must end before r2's `master` starts"
        assert states(lab, "r2", since=t_cut) == ["MASTER", "BACKUP"]
        if mode == "notify":
            # keepalived reports BACKUP before it forks the `backup` script: give its start a moment
            end = time.monotonic() + 5
            calls = [c for c in lab.notify_calls("r2") if c.start >= t_cut]
            while len(calls) < 2 and time.monotonic() < end:
                time.sleep(0.05)
                calls = [c for c in lab.notify_calls("r2") if c.start >= t_cut]
            assert [c.command for c in calls] == ["master", "backup"], calls
            end = time.monotonic() + 10
            while calls[0].end is None and time.monotonic() < end:   # the late `master` has done its worst
                time.sleep(0.05)
        lab.wait_aws_points_to("r1", timeout=max(0.0, t_backup + WINDOW + 10 - time.time()), since=t_backup)
        assert_stays_on(lab, "r1")
        assert states(lab, "r1", since=t_cut) == []
        assert_tools_ok(lab)
        assert_check_ok(lab)
