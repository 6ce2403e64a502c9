"""keepalived transitions: record, and on MASTER apply a group's actions under one deadline.

Ordering: every transition is recorded first (a sequence number per group, under the
group's lock). A MASTER transition checks before every AWS write that it is still the
group's latest event; once a later one is recorded it starts no further write and exits 0.
Different groups never share a lock.

Resolution is per action: an action that cannot be resolved (a missing interface, a
released Elastic IP) is reported and the others are still applied.

Verification under eventual consistency (docs/consistency.md): EC2's describe calls and
the metadata service may show the state from before our own writes for up to
``[aws] consistency-window`` seconds. A read only counts as evidence about an action
when it cannot predate our last write to it: it started a whole window after that write
was accepted, or we had already seen our write and two reads in a row show otherwise.
Until then a difference is "pending" and we wait. With evidence:

* the group's anchor (its first usable action) held by another instance: yield (exit 0,
  no further write, logged), then hand back whatever our own late writes took from it;
* any other action pointing elsewhere while we hold the anchor: apply it again.

MASTER succeeds once every action was seen in sync (and the metadata service lists each
assigned address), twice, a settle interval apart; it fails (exit 1) when its accepted
writes still do not show at the deadline.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FuturesTimeout
from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Tuple

from . import EXIT_FAILED, EXIT_OK
from .actions import Observation, ResolveError, batches, held_by
from .config import Config, Group
from .deadline import Deadline, DeadlineExceeded
from .ec2 import AwsError, Ec2, Superseded, fetch_snapshot
from .imds import ImdsClient, ImdsError, dmi_says_ec2
from .observe import observe_actions
from .actions import STALE_CODES
from .plan import (Plan, PlanError, drop_cached_targets, ec2_client, load_cached_targets, other_clients,
                   resolve_locals, resolve_targets, save_targets)
from .botomodel import keep_trimmed_model
from .state import StateStore

from .logsetup import log

SETTLE_MIN = 0.05
SETTLE_MAX = 1.0
IMDS_CONFIRM_INTERVAL = 0.25
POLL_MIN = 0.1
POLL_MAX = 0.5
MAX_PARALLEL_WRITES = 16  # = botocore's connection pool (ec2.make_client): more would only queue
FOREIGN_READS = 2  # reads in a row that must disagree after we saw our own write

# What one read says about one action, judged against our own writes.
IN_SYNC, PENDING, DRIFTED, FOREIGN = "in-sync", "pending", "drifted", "foreign"


class Yielded(Exception):
    """Another instance holds the group's anchor action (on evidence newer than our writes)."""


Outcome = namedtuple("Outcome", "action ok detail seconds")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def on_aws(imds: ImdsClient) -> Optional[bool]:
    """True: IMDS answers. False: not an EC2 instance. None: EC2 per DMI but no IMDS (an error)."""
    if imds.available():
        return True
    return None if dmi_says_ec2() else False


class WriteLedger:
    """When each of our writes was accepted, and whether a later read showed it.

    This is what tells a stale read (it may predate our write) from evidence."""

    def __init__(self, window: float):
        self.window = window
        self.written_at: Dict[int, float] = {}
        self.seen_at: Dict[int, float] = {}
        self.disagreeing: Dict[int, int] = {}
        self.retargeted: set = set()  # resolved again to a target we have not written yet
        self.longest_lag = 0.0
        self._lock = threading.Lock()

    def wrote(self, index: int) -> None:
        with self._lock:
            self.written_at[index] = time.monotonic()
            self.seen_at.pop(index, None)
            self.disagreeing.pop(index, None)
            self.retargeted.discard(index)

    def retarget(self, index: int) -> None:
        """The action now resolves to another target (a route table joined the tag, a subnet
        changed tables): what its new target shows is no evidence until we wrote it."""
        with self._lock:
            self.retargeted.add(index)

    def judge(self, index: int, observation: Observation, read_start: float, ours: Sequence[str]) -> str:
        written = self.written_at.get(index)
        if not observation.in_sync and written is not None and index in self.retargeted:
            return DRIFTED
        if observation.in_sync:
            self.disagreeing.pop(index, None)
            if written is not None and index not in self.seen_at and read_start >= written:
                self.seen_at[index] = read_start
                self.longest_lag = max(self.longest_lag, read_start - written)
            return IN_SYNC
        if written is not None and read_start < written + self.window:
            if index not in self.seen_at:
                return PENDING  # this read may predate our write
            self.disagreeing[index] = self.disagreeing.get(index, 0) + 1
            if self.disagreeing[index] < FOREIGN_READS:
                return PENDING  # one read after ours may still come from a lagging replica
        holder = observation.holder
        return FOREIGN if holder and holder not in ours else DRIFTED

    def settled(self, index: int, now: float) -> bool:
        """Our last write to ``index`` has shown, or is too old to be still on its way."""
        written = self.written_at.get(index)
        return written is None or index in self.seen_at or now >= written + self.window

    def settle_interval(self, slowest_write: float) -> float:
        """How long to watch after everything showed: the writes' own lag, at least."""
        quick = min(SETTLE_MAX, max(SETTLE_MIN, 2 * slowest_write))
        return max(quick, min(self.window, self.longest_lag))


class MasterRun:
    def __init__(self, config: Config, group: Group, store: StateStore, seq: int, warm=None):
        self.warm = warm  # fifo mode: clients kept between transitions
        self.config = config
        self.group = group
        self.store = store
        self.seq = seq
        self.deadline = Deadline(config.aws.deadline)
        self.imds = ImdsClient(deadline=self.deadline)
        self.ec2: Optional[Ec2] = None
        self.plan: Optional[Plan] = None
        self.slowest_write = 0.0
        self.ledger = WriteLedger(config.aws.consistency_window)
        self.snapshot = None
        self._last: Dict[int, Observation] = {}
        self._unconfirmed: Dict[int, str] = {}
        self._lock = threading.Lock()
        self.only: Optional[List[int]] = None  # re-assert: write only these (the drifted ones)
        self.purpose = "MASTER"

    def still_current(self) -> bool:
        return self.store.is_current(self.group.name, self.seq)

    @property
    def anchor(self) -> int:
        """The group's first usable action: its holder owns the group in a split brain."""
        assert self.plan is not None
        return self.plan.usable()[0]

    # -- steps

    def prepare(self) -> None:
        actions = self.group.actions
        locals_, errors = resolve_locals(self.imds, self.store, actions)
        self.plan = Plan(actions=actions, locals=locals_, errors=errors)
        if not self.plan.usable():
            return
        if self.warm is not None:
            client, others = self.warm.client_for(self), self.warm.others_for(self)
        else:
            client = ec2_client(self.config, self.imds, self.store, self.deadline)
            others = other_clients(self.config, self.imds, self.store, self.deadline)
        self.ec2 = Ec2(client, self.deadline, self.still_current, clients=others)
        log.debug("EC2 client ready")
        if not load_cached_targets(self.store, self.group.name, self.plan):
            resolve_targets(self.ec2, self.plan)
            save_targets(self.store, self.group.name, self.plan)

    def apply_unit(self, unit: List[int]) -> str:
        """Write one action, or several with one call of their type's apply_batch (actions.batches)."""
        assert self.plan is not None and self.ec2 is not None
        start = time.monotonic()
        try:
            if len(unit) == 1:
                detail = self._apply_resolving_stale(unit[0], self.plan.actions[unit[0]], self.plan.targets[unit[0]])
            else:
                items = [(self.plan.actions[i], self.plan.targets[i]) for i in unit]
                detail = type(items[0][0]).apply_batch(self.ec2, items)
            for i in unit:
                self.ledger.wrote(i)
            return detail
        finally:
            with self._lock:
                self.slowest_write = max(self.slowest_write, time.monotonic() - start)

    def _apply_resolving_stale(self, index: int, action, target) -> str:
        assert self.plan is not None and self.ec2 is not None
        try:
            return action.apply(self.ec2, target)
        except AwsError as exc:
            if not (self.plan.from_cache and exc.code in STALE_CODES):
                raise
        log.info("group %s: cached %s is stale, resolving again", self.group.name, action.describe())
        drop_cached_targets(self.store, self.group.name)
        snap = fetch_snapshot(self.ec2, action.resolve_reads(), vpc_ids=self.plan.vpc_ids())
        try:
            target = action.resolve(self.plan.locals[index], snap)
        except ResolveError as err:
            raise PlanError(str(err)) from None
        self.plan.targets[index] = target
        return action.apply(self.ec2, target)

    def apply_all(self, indexes: Sequence[int]) -> Dict[int, Future]:
        """Apply the given actions concurrently, each after the actions it depends on; actions
        written with one call (actions.batches) share its future."""
        assert self.plan is not None
        actions = self.plan.actions
        futures: Dict[int, Future] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_WRITES, len(indexes))),
                                  thread_name_prefix="apply")

        def run(unit: List[int], deps: List[Future]) -> str:
            for dep in deps:
                dep.exception()  # wait; a failed dependency does not stop this one
            return self.apply_unit(unit)

        for unit in batches(actions, self.plan.targets, dependency_order(actions, indexes)):
            deps = [futures[j] for j in futures if any(actions[i].depends_on(actions[j]) for i in unit)]
            future = pool.submit(run, unit, deps)
            futures.update(dict.fromkeys(unit, future))
        pool.shutdown(wait=False)
        return futures

    def reapply(self, indexes: Sequence[int]) -> None:
        for i in indexes:
            log.info("group %s: %s drifted (%s), applying again", self.group.name,
                     self.plan.actions[i].describe(), self._last[i].reason)
        for future in self.apply_all(indexes).values():
            try:
                future.result(timeout=max(0.01, self.deadline.remaining()))
            except FuturesTimeout:
                raise DeadlineExceeded("a write made during verification was still unanswered "
                                       "at the deadline") from None

    def observe(self, extra_kinds: Sequence[str] = ()) -> Tuple[float, Dict[int, Observation]]:
        """One batched read of every usable action; returns when the read started and what it saw."""
        assert self.plan is not None and self.ec2 is not None
        usable = self.plan.usable()
        read_start = time.monotonic()
        self.snapshot, seen = observe_actions(
            self.ec2, [self.plan.actions[i] for i in usable], [self.plan.locals[i] for i in usable],
            known=[self.plan.targets[i] for i in usable], extra_kinds=extra_kinds)
        observations: Dict[int, Observation] = {}
        for i, found in zip(usable, seen):
            if found.target != self.plan.targets[i]:
                log.info("group %s: %s now resolves to %s (was %s)", self.group.name,
                         self.plan.actions[i].describe(), found.target, self.plan.targets[i])
                self.plan.targets[i] = found.target
                self.ledger.retarget(i)
                drop_cached_targets(self.store, self.group.name)
            observations[i] = found.observation
        self._last = observations
        return read_start, observations

    def judge(self) -> Dict[int, str]:
        assert self.plan is not None
        read_start, observations = self.observe()
        ours = self.plan.eni_ids()
        return {i: self.ledger.judge(i, o, read_start, ours) for i, o in observations.items()}

    def verify(self) -> None:
        """Watch AWS until the group is confirmed here, re-applying drift, or yield (see module doc)."""
        assert self.plan is not None
        confirmed_at: Optional[float] = None
        poll = POLL_MIN
        log.debug("verifying")
        while True:
            if not self.still_current():
                raise Superseded("verification")
            verdicts = self.judge()
            anchor = verdicts[self.anchor]
            if anchor == FOREIGN:
                raise Yielded(f"{self.plan.actions[self.anchor].describe()} is held by "
                              f"{self._last[self.anchor].holder}")
            if anchor == IN_SYNC:
                redo = [i for i, v in verdicts.items() if v in (DRIFTED, FOREIGN)]
            else:
                redo = [self.anchor] if anchor == DRIFTED else []
            if redo:
                confirmed_at = None
                self.reapply(redo)
                poll = POLL_MIN
                continue
            pending = [i for i, v in verdicts.items() if v != IN_SYNC]
            if not pending:
                self._unconfirmed = self.unconfirmed()
                pending = list(self._unconfirmed)
            if pending:
                confirmed_at = None
                if self.deadline.remaining() <= poll:
                    raise DeadlineExceeded(self._not_showing(pending))
                time.sleep(poll)
                poll = min(POLL_MAX, poll * 1.5)
                continue
            settle = self.ledger.settle_interval(self.slowest_write)
            now = time.monotonic()
            if confirmed_at is not None and now - confirmed_at >= settle:
                return
            if confirmed_at is None:
                confirmed_at = now
            if settle >= self.deadline.remaining():
                return  # seen in sync; no time left to watch for a competitor's late writes
            time.sleep(min(settle, POLL_MAX * 2))

    def _not_showing(self, pending: Sequence[int]) -> str:
        assert self.plan is not None
        parts = []
        unconfirmed = self._unconfirmed  # as last read: reading again at the deadline could only time out
        for i in pending:
            action = self.plan.actions[i]
            if i in unconfirmed and self._last[i].in_sync:
                parts.append(f"{action.describe()}: {unconfirmed[i]}")
            else:
                parts.append(f"{action.describe()}: {self._last[i].reason or 'not in sync'}")
        return (f"accepted writes still do not show at the {self.deadline.seconds:g}s deadline: "
                + "; ".join(parts))

    def hand_back(self) -> None:
        """After yielding: give the owner back what our late writes took from it.

        A write of ours that lands after the owner made its last check would leave the group
        mixed once both have exited. So the instance that yields waits until each of its own
        writes has shown (or is older than the consistency window), looks again, and
        re-points any action still on its own ENIs to the owner's ENI at the same device
        index (HA pairs mirror their ENI layouts). Without such an ENI it only logs the
        drift, which `check` reports."""
        assert self.plan is not None
        while not all(self.ledger.settled(i, time.monotonic()) for i in self.plan.usable()):
            if self.deadline.remaining() <= POLL_MAX:
                break
            self.judge()
            time.sleep(POLL_MAX)
        _, observations = self.observe(extra_kinds=("enis",))
        enis = self.snapshot.enis
        owner = _instance_of(enis, observations[self.anchor].holder)
        ours = set(self.plan.eni_ids())
        for i, observation in observations.items():
            mine = held_here(observation, ours)
            if mine is None:
                continue
            action = self.plan.actions[i]
            twin = twin_eni(enis, owner, mine)
            if twin is None:
                log.error("group %s: %s still points here but the owner %s has no ENI at the same device "
                          "index; left as is (check reports it)", self.group.name, action.describe(), owner)
                continue
            log.warning("group %s: %s landed after the owner's check: handing it back to %s of %s",
                        self.group.name, action.describe(), twin, owner)
            action.apply(self.ec2, dict(self.plan.targets[i], eni=twin))

    def unconfirmed(self) -> Dict[int, str]:
        """What the metadata service does not show yet of the applied actions, by index."""
        assert self.plan is not None
        missing = {}
        for i in self.plan.usable():
            why = self.plan.actions[i].unconfirmed(self.imds, self.plan.locals[i])
            if why:
                missing[i] = why
        return missing


def dependency_order(actions: Sequence, indexes: Sequence[int]) -> List[int]:
    """``indexes`` ordered so that every action comes after those it depends on (topological;
    configuration order among independent ones). A dependency cycle keeps configuration order."""
    remaining = list(indexes)
    ordered: List[int] = []
    while remaining:
        ready = [i for i in remaining
                 if not any(actions[i].depends_on(actions[j]) for j in remaining if j != i)]
        if not ready:  # a cycle: cannot happen with today's action types; never hang on one
            ordered.extend(remaining)
            break
        ordered.extend(ready)
        remaining = [i for i in remaining if i not in ready]
    return ordered


def held_here(observation: Observation, ours) -> Optional[str]:
    """The first of our ENIs the observed action points to (an action with several targets
    may point here with some of them only), or None."""
    return next((e for e in held_by(observation) if e in ours), None)


def _instance_of(enis: Dict[str, dict], eni_id: Optional[str]) -> Optional[str]:
    return (enis.get(eni_id or "", {}).get("Attachment") or {}).get("InstanceId")


def twin_eni(enis: Dict[str, dict], owner: Optional[str], our_eni: Optional[str]) -> Optional[str]:
    """The ENI of instance ``owner`` at the device index ``our_eni`` has on our instance."""
    index = (enis.get(our_eni or "", {}).get("Attachment") or {}).get("DeviceIndex")
    twins = [e["NetworkInterfaceId"] for e in enis.values()
             if owner and (e.get("Attachment") or {}).get("InstanceId") == owner
             and (e.get("Attachment") or {}).get("DeviceIndex") == index]
    return twins[0] if len(twins) == 1 else None


def run_master(config: Config, group: Group, store: StateStore) -> int:
    from .state import process_start

    seq = store.record(group.name, "MASTER", started=process_start())
    if seq is None:
        log.info("group %s: MASTER ignored: keepalived started a later event's script before this one's "
                 "(the later event was recorded first); no AWS write", group.name)
        return EXIT_OK
    _record_interruption(store, group.name, seq)
    return run_master_seq(config, group, store, seq)


def _record_interruption(store: StateStore, group: str, seq: int) -> None:
    """keepalived SIGTERMs running notify scripts when it stops: say so in the record."""
    import signal

    def interrupted(signum: int, frame: object) -> None:
        log.warning("group %s: MASTER interrupted by signal %d (keepalived stopping?)", group, signum)
        try:
            store.finish(group, seq, "interrupted", f"signal {signum}")
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)


def run_master_seq(config: Config, group: Group, store: StateStore, seq: int, warm=None) -> int:
    """Apply ``group`` as its recorded MASTER transition ``seq``, all within the deadline."""
    return run_under_deadline(MasterRun(config, group, store, seq, warm))


def run_under_deadline(run: MasterRun) -> int:
    """Run a MasterRun in a worker thread; whatever the network does, it ends at the deadline."""
    name = run.group.name
    result: Dict[str, object] = {}

    def work() -> None:
        try:
            result["code"] = master_body(run)
        except BaseException as exc:  # reported below, never lost
            result["error"] = exc

    worker = threading.Thread(target=work, name="master", daemon=True)
    worker.start()
    worker.join(timeout=run.deadline.remaining() + 0.5)
    if worker.is_alive():
        return _failed(run, f"deadline of {run.config.aws.deadline:g}s reached")
    if "error" in result:
        exc = result["error"]
        log.error("group %s: MASTER failed unexpectedly: %s", name, _failure_text(exc))  # type: ignore[arg-type]
        run.store.finish(name, run.seq, "failed", f"unexpected: {_failure_text(exc)}")  # type: ignore[arg-type]
        return EXIT_FAILED
    return int(result["code"])  # type: ignore[arg-type]


def _failed(run: MasterRun, detail: str) -> int:
    log.error("group %s: MASTER failed: %s", run.group.name, detail)
    run.store.finish(run.group.name, run.seq, "failed", detail)
    return EXIT_FAILED


def master_body(run: MasterRun) -> int:
    """The MASTER transition's steps: presence, resolution, writes, verification."""
    log.debug("group %s: MASTER transition %d recorded", run.group.name, run.seq)
    early = _check_presence(run)
    if early is not None:
        return early
    try:
        run.prepare()
    except (PlanError, ImdsError, AwsError, DeadlineExceeded) as exc:
        return _failed(run, str(exc))
    except Superseded:
        return _superseded(run)
    assert run.plan is not None
    log.debug("plan ready%s", " (cached)" if run.plan.from_cache else "")
    outcomes, superseded = _apply_usable(run)
    if superseded:
        return _superseded(run)
    failed = [o for o in outcomes if not o.ok]
    applied = [o for o in outcomes if o.ok]
    if not applied:
        return _failed(run, "; ".join(f"{o.action.describe()}: {o.detail}" for o in failed))
    code = _verify(run)
    if code is not None:
        return code
    if failed:
        return _failed(run, "; ".join(f"{o.action.describe()}: {o.detail}" for o in failed))
    save_targets(run.store, run.group.name, run.plan)
    keep_trimmed_model(run.store)
    log.info("group %s: %s done, %d action(s) in sync, %s", run.group.name, run.purpose,
             len(run.plan.usable()), _ms(run.deadline.elapsed()))
    run.store.finish(run.group.name, run.seq, "ok")
    return EXIT_OK


def _check_presence(run: MasterRun) -> Optional[int]:
    """Exit status when this is no AWS instance or the metadata service fails; None to go on."""
    name = run.group.name
    try:
        presence = on_aws(run.imds)
    except ImdsError as exc:
        return _failed(run, str(exc))
    if presence is False:
        log.info("group %s: not running on AWS (no instance metadata service), nothing to do", name)
        run.store.finish(name, run.seq, "not-on-aws")
        return EXIT_OK
    if presence is None:
        return _failed(run, f"this is an EC2 instance (DMI) but the metadata service at {run.imds.endpoint} "
                            "does not answer (IMDSv2 disabled, hop limit, or firewall?)")
    return None


def _apply_usable(run: MasterRun) -> Tuple[List[Outcome], bool]:
    """Write every usable action; report one line per action (unresolvable ones included)."""
    assert run.plan is not None
    started = time.monotonic()
    outcomes: Dict[int, Outcome] = {i: Outcome(run.plan.actions[i], False, f"not applied: {why}", 0.0)
                                    for i, why in run.plan.errors.items()}
    superseded = False
    usable = run.plan.usable()
    futures = run.apply_all([i for i in usable if run.only is None or i in run.only])
    for i, future in sorted(futures.items()):
        action = run.plan.actions[i]
        try:
            detail = future.result(timeout=max(0.01, run.deadline.remaining()))
            outcomes[i] = Outcome(action, True, f"{detail} ({run.plan.targets[i]['eni']})",
                                  time.monotonic() - started)
        except Superseded:
            superseded = True
            outcomes[i] = Outcome(action, False, "not applied: superseded", time.monotonic() - started)
        except FuturesTimeout:
            outcomes[i] = Outcome(action, False, f"not finished at the {run.deadline.seconds:g}s deadline",
                                  time.monotonic() - started)
        except Exception as exc:  # every failure is reported, none stops the others
            outcomes[i] = Outcome(action, False, _failure_text(exc), time.monotonic() - started)
    for i, o in sorted(outcomes.items()):
        (log.info if o.ok else log.error)("group %s: %s: %s in %s", run.group.name, o.action.describe(),
                                         o.detail if o.ok else f"FAILED: {o.detail}", _ms(o.seconds))
        if not o.ok:  # verify only what was written: a failed write is reported, never waited for
            run.plan.errors.setdefault(i, o.detail)
    return [o for _, o in sorted(outcomes.items())], superseded


def _verify(run: MasterRun) -> Optional[int]:
    """Verification and its outcomes; None when the group is confirmed here."""
    name = run.group.name
    try:
        run.verify()
    except Yielded as exc:
        log.warning("group %s: another instance owns the group (%s); yielding", name, exc)
        run.store.finish(name, run.seq, "yielded", str(exc))
        try:
            run.hand_back()
        except (Superseded, AwsError, ImdsError, PlanError, DeadlineExceeded) as err:
            log.error("group %s: could not check what this instance still holds: %s", name, _failure_text(err))
        return EXIT_OK
    except Superseded:
        return _superseded(run)
    except (AwsError, ImdsError, PlanError, DeadlineExceeded) as exc:
        return _failed(run, f"verification: {_failure_text(exc)}")
    return None


def _superseded(run: MasterRun) -> int:
    log.info("group %s: MASTER superseded by a later transition; stopped without further writes",
             run.group.name)
    return EXIT_OK


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, DeadlineExceeded):
        return str(exc) or "deadline reached"
    return str(exc) or type(exc).__name__


def repair_group(config: Config, group: Group, store: StateStore) -> int:
    """check --repair: re-apply a group recorded MASTER, as the transition it recorded."""
    record = store.read(group.name) or {}
    if record.get("state") != "MASTER":
        return EXIT_OK
    log.info("group %s: recorded MASTER but drifted: repairing", group.name)
    return run_under_deadline(MasterRun(config, group, store, int(record.get("seq", 0))))


def reassert_groups(config: Config, groups: Sequence[Group], store: StateStore, warm=None,
                    take_over: bool = False) -> int:
    """Re-apply what drifted in groups recorded MASTER: one batched read for all of them, then
    one run per drifted group (writing only its drifted actions, then verifying as a MASTER
    does). Groups within the consistency window of their last transition are left to it,
    unless ``take_over`` (keepalived's MASTER_RX_LOWER_PRI: the peer believed it was master)."""
    from .report import observe_groups

    deadline = Deadline(config.aws.deadline)
    imds = ImdsClient(deadline=deadline)
    if not imds.available():
        return EXIT_OK
    names = {g.name for g in groups}
    client = warm.client_with(config, imds, store, deadline) if warm is not None else None
    others = warm.others_with(config, imds, store, deadline) if warm is not None else None
    code = EXIT_OK
    for report in observe_groups(config, store, imds, deadline, names=names, client=client, others=others):
        record = store.read(report.name) or {}
        if record.get("state") != "MASTER" or report.error or report.in_sync:
            if report.error:
                log.warning("group %s: cannot re-check AWS: %s", report.name, report.error)
            continue
        if report.converging and not take_over:
            continue
        drifted = [i for i, a in enumerate(report.actions) if not a.in_sync]
        reasons = "; ".join(report.actions[i].reason for i in drifted)
        log.warning("group %s: recorded MASTER but AWS drifted (%s): re-asserting", report.name, reasons)
        run = MasterRun(config, config.groups[report.name], store, int(record.get("seq", 0)), warm)
        run.only, run.purpose = drifted, "re-assert"
        if run_under_deadline(run) != EXIT_OK:
            code = EXIT_FAILED
    return code


def release_delay(config: Config) -> float:
    """After MASTER -> BACKUP, wait until every write either side made can have shown."""
    return config.aws.consistency_window + 1.0


def release_group(config: Config, group: Group, store: StateStore, seq: int) -> None:
    """After MASTER -> BACKUP: hand to the peer whatever of the group still points here.

    keepalived reports BACKUP when a higher-priority master is heard, so after a brief split
    brain (a partition, or both routers starting at once) the peer is MASTER and may have
    been told nothing new, while AWS still points here. The peer is the one other instance
    with an ENI in the same subnet at the same device index as each of this group's ENIs
    (HA pairs mirror their layouts); without exactly one such instance nothing is written
    and `check` reports the drift. Any later transition of the group stops it."""
    run = MasterRun(config, group, store, seq)
    run.purpose = "hand-back"
    if not run.imds.available():
        return
    run.prepare()
    if run.plan is None or not run.plan.usable() or run.ec2 is None:
        return
    _, observations = run.observe(extra_kinds=("enis",))
    ours = set(run.plan.eni_ids())
    here = {i: held_here(o, ours) for i, o in observations.items() if held_here(o, ours)}
    if not here:
        return
    enis = run.snapshot.enis
    peer = peer_instance(enis, [run.plan.locals[i].eni_id for i in run.plan.usable()])
    if peer is None:
        log.error("group %s: BACKUP but AWS still points here, and no single peer instance mirrors this "
                  "instance's ENIs; left as is (check reports it)", group.name)
        return
    for i in sorted(here):
        action = run.plan.actions[i]
        twin = twin_eni(enis, peer, here[i])
        if twin is None:
            continue
        log.warning("group %s: BACKUP but %s still points here: handing it to %s of %s (the VRRP master)",
                    group.name, action.describe(), twin, peer)
        try:
            action.apply(run.ec2, dict(run.plan.targets[i], eni=twin))
        except Superseded:
            return
    store.finish(group.name, seq, "handed-back", f"to {peer}")


def peer_instance(enis: Dict[str, dict], our_enis: Sequence[str]) -> Optional[str]:
    """The one other instance with an ENI in the same subnet at the same device index as each
    of ``our_enis``; None when there is no such instance or more than one."""
    ours = [enis.get(e) for e in our_enis]
    if not ours or any(e is None for e in ours):
        return None
    self_id = _instance_of(enis, our_enis[0])
    candidates = None
    for eni in ours:
        index = (eni.get("Attachment") or {}).get("DeviceIndex")
        matching = {_instance_of(enis, e["NetworkInterfaceId"]) for e in enis.values()
                    if e.get("SubnetId") == eni.get("SubnetId")
                    and (e.get("Attachment") or {}).get("DeviceIndex") == index}
        matching.discard(self_id)
        matching.discard(None)
        candidates = matching if candidates is None else candidates & matching
    return next(iter(candidates)) if candidates and len(candidates) == 1 else None


def prepare_group(config: Config, group: Group, store: StateStore) -> None:
    """Resolve and cache a group's plan and the trimmed model, making no AWS write."""
    run = MasterRun(config, group, store, seq=-1)
    run.still_current = lambda: False  # type: ignore[method-assign]  # any write would be refused
    if run.imds.available():
        run.prepare()
        keep_trimmed_model(run.store)
