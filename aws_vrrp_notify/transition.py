"""keepalived transitions: record, and on MASTER apply a group's actions under one deadline.

Ordering: every transition is recorded first (a sequence number per group, under the
group's lock). A MASTER transition checks before every AWS write that it is still the
group's latest event; once a later one is recorded it starts no further write and exits 0.
Different groups never share a lock.

Split brain: after writing, MASTER verifies. The instance holding the group's first
action (the anchor) re-applies whatever else drifted; an instance that finds the anchor
on another ENI yields (no further write, exit 0, logged) so the group never ends mixed.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FuturesTimeout
from collections import namedtuple
from typing import Dict, List, Optional, Sequence

from . import EXIT_FAILED, EXIT_OK
from .actions import Observation, ResolveError, reads_for
from .config import Config, Group
from .deadline import Deadline, DeadlineExceeded
from .ec2 import AwsError, Ec2, Superseded, fetch_snapshot
from .imds import ImdsClient, ImdsError, dmi_says_ec2
from .plan import (Plan, PlanError, STALE_CODES, drop_cached_targets, ec2_client, load_cached_targets,
                   resolve_locals, resolve_targets, save_targets)
from .botomodel import keep_trimmed_model
from .state import StateStore

from .logsetup import log

SETTLE_MIN = 0.05
SETTLE_MAX = 1.0
IMDS_CONFIRM_INTERVAL = 0.25


class Yielded(Exception):
    """Another instance holds the group's anchor action."""


Outcome = namedtuple("Outcome", "action ok detail seconds")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def on_aws(imds: ImdsClient) -> Optional[bool]:
    """True: IMDS answers. False: not an EC2 instance. None: EC2 per DMI but no IMDS (an error)."""
    if imds.available():
        return True
    return None if dmi_says_ec2() else False


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
        self.snapshot = None
        self._lock = threading.Lock()

    def still_current(self) -> bool:
        return self.store.is_current(self.group.name, self.seq)

    # -- steps

    def prepare(self) -> None:
        actions = self.group.actions
        locals_ = resolve_locals(self.imds, self.store, actions)
        self.plan = Plan(actions=actions, locals=locals_)
        if self.warm is not None:
            client = self.warm.client_for(self)
        else:
            client = ec2_client(self.config, self.imds, self.store, self.deadline)
        self.ec2 = Ec2(client, self.deadline, self.still_current)
        log.debug("EC2 client ready")
        if not load_cached_targets(self.store, self.group.name, self.plan):
            try:
                resolve_targets(self.ec2, self.plan)
            except ResolveError as exc:
                raise PlanError(str(exc)) from None
            save_targets(self.store, self.group.name, self.plan)

    def apply_one(self, index: int) -> str:
        assert self.plan is not None and self.ec2 is not None
        action, target = self.plan.actions[index], self.plan.targets[index]
        start = time.monotonic()
        try:
            return action.apply(self.ec2, target)
        except AwsError as exc:
            if not (self.plan.from_cache and exc.code in STALE_CODES):
                raise
            log.info("group %s: cached %s is stale (%s), resolving again", self.group.name,
                     action.describe(), exc.code)
            drop_cached_targets(self.store, self.group.name)
            snap = fetch_snapshot(self.ec2, action.resolve_reads(), vpc_ids=self.plan.vpc_ids())
            try:
                target = action.resolve(self.plan.locals[index], snap)
            except ResolveError as err:
                raise PlanError(str(err)) from None
            self.plan.targets[index] = target
            return action.apply(self.ec2, target)
        finally:
            with self._lock:
                self.slowest_write = max(self.slowest_write, time.monotonic() - start)

    def apply_all(self, indexes: Sequence[int]) -> Dict[int, Future]:
        """Apply the given actions concurrently, each after the actions it depends on."""
        assert self.plan is not None
        actions = self.plan.actions
        futures: Dict[int, Future] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, len(indexes)), thread_name_prefix="apply")

        def run(i: int, deps: List[Future]) -> str:
            for dep in deps:
                dep.exception()  # wait; a failed dependency does not stop this one
            return self.apply_one(i)

        ordered = sorted(indexes, key=lambda i: sum(actions[i].depends_on(actions[j]) for j in indexes))
        for i in ordered:
            deps = [futures[j] for j in ordered if j in futures and actions[i].depends_on(actions[j])]
            futures[i] = pool.submit(run, i, deps)
        pool.shutdown(wait=False)
        return futures

    def observe(self, extra_kinds: Sequence[str] = ()) -> List[Observation]:
        assert self.plan is not None and self.ec2 is not None
        kinds = tuple(reads_for(self.plan.actions, "observe")) + tuple(extra_kinds)
        snap = self.snapshot = fetch_snapshot(self.ec2, kinds, vpc_ids=self.plan.vpc_ids())
        observations = []
        for i, (action, local) in enumerate(zip(self.plan.actions, self.plan.locals)):
            try:
                fresh = action.resolve(local, snap) if action.resolve_reads() else self.plan.targets[i]
            except ResolveError:
                fresh = self.plan.targets[i]
            if fresh != self.plan.targets[i]:
                log.info("group %s: %s now resolves to %s (was %s)", self.group.name,
                         action.describe(), fresh, self.plan.targets[i])
                self.plan.targets[i] = fresh
                drop_cached_targets(self.store, self.group.name)
            observations.append(action.observe(snap, self.plan.targets[i]))
        return observations

    def verify(self) -> None:
        """Re-apply drift until two observations a settle interval apart agree, or yield.

        AssignPrivateIpAddresses is asynchronous on EC2: the group is only confirmed once
        the metadata service's local-ipv4s also lists each assigned address."""
        assert self.plan is not None
        confirmed = False
        log.debug("verifying")
        while True:
            if not self.still_current():
                raise Superseded("verification")
            observations = self.observe()
            anchor = observations[0]
            if not anchor.in_sync and anchor.holder and anchor.holder not in self.plan.eni_ids():
                raise Yielded(f"{self.plan.actions[0].describe()} is held by {anchor.holder}")
            drifted = [i for i, o in enumerate(observations) if not o.in_sync]
            if drifted:
                confirmed = False
                for i in drifted:
                    log.info("group %s: %s drifted (%s), applying again", self.group.name,
                             self.plan.actions[i].describe(), observations[i].reason)
                for i, future in self.apply_all(drifted).items():
                    future.result(timeout=self.deadline.remaining() or 0.01)
                if self.deadline.expired():
                    raise DeadlineExceeded("verification did not converge before the deadline")
                continue
            unlisted = self.unlisted_in_imds()
            if unlisted:
                if self.deadline.remaining() <= IMDS_CONFIRM_INTERVAL:
                    ip, local = unlisted[0]
                    raise DeadlineExceeded(f"{ip} assigned to {local.eni_id}, but the metadata service's "
                                           f"local-ipv4s for {local.mac} did not list it before the deadline")
                time.sleep(IMDS_CONFIRM_INTERVAL)
                continue
            if confirmed:
                return
            confirmed = True
            settle = min(SETTLE_MAX, max(SETTLE_MIN, 2 * self.slowest_write))
            if settle >= self.deadline.remaining():
                return
            time.sleep(settle)

    def hand_back(self) -> None:
        """After yielding: give the owner back what our late writes took from it.

        A write of ours still in flight when the owner made its last check can land after
        it, leaving the group mixed once both have exited. So the instance that yields
        looks again, after a settle interval, and re-points any action still on its own
        ENIs to the owner's ENI at the same device index (HA pairs mirror their ENI
        layouts). Without such an ENI it only logs the drift, which `check` reports."""
        assert self.plan is not None
        time.sleep(min(SETTLE_MAX, max(SETTLE_MIN, 2 * self.slowest_write), self.deadline.remaining()))
        observations = self.observe(extra_kinds=("enis",))
        enis = self.snapshot.enis
        owner = (enis.get(observations[0].holder or "", {}).get("Attachment") or {}).get("InstanceId")
        ours = set(self.plan.eni_ids())
        for i, (action, observation) in enumerate(zip(self.plan.actions, observations)):
            if observation.holder not in ours:
                continue
            index = (enis.get(observation.holder, {}).get("Attachment") or {}).get("DeviceIndex")
            twins = [e["NetworkInterfaceId"] for e in enis.values()
                     if owner and (e.get("Attachment") or {}).get("InstanceId") == owner
                     and (e.get("Attachment") or {}).get("DeviceIndex") == index]
            if len(twins) != 1:
                log.error("group %s: %s still points here but the owner %s has no ENI at device index %s; "
                          "left as is (check reports it)", self.group.name, action.describe(), owner, index)
                continue
            target = dict(self.plan.targets[i], eni=twins[0])
            log.warning("group %s: %s landed after the owner's check: handing it back to %s of %s",
                        self.group.name, action.describe(), twins[0], owner)
            action.apply(self.ec2, target)

    def unlisted_in_imds(self) -> List:
        from .actions import AssignPrivateIp

        assert self.plan is not None
        missing = []
        for action, local in zip(self.plan.actions, self.plan.locals):
            if isinstance(action, AssignPrivateIp) and action.ip not in self.imds.local_ipv4s(local.mac):
                missing.append((action.ip, local))
        return missing


def run_master(config: Config, group: Group, store: StateStore) -> int:
    seq = store.record(group.name, "MASTER")
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
    run = MasterRun(config, group, store, seq, warm)
    name = group.name
    result: Dict[str, object] = {}

    def work() -> None:
        try:
            result["code"] = _master_body(run)
        except BaseException as exc:  # reported by the waiting thread
            result["error"] = exc

    worker = threading.Thread(target=work, name="master", daemon=True)
    worker.start()
    worker.join(timeout=run.deadline.remaining() + 0.5)
    if worker.is_alive():
        detail = f"deadline of {config.aws.deadline:g}s reached"
        log.error("group %s: MASTER failed: %s", name, detail)
        store.finish(name, seq, "failed", detail)
        return EXIT_FAILED
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return int(result["code"])  # type: ignore[arg-type]


def _master_body(run: MasterRun) -> int:
    name, store, seq = run.group.name, run.store, run.seq
    log.debug("group %s: MASTER transition %d recorded", name, seq)
    try:
        presence = on_aws(run.imds)
    except ImdsError as exc:
        log.error("group %s: MASTER failed: %s", name, exc)
        store.finish(name, seq, "failed", str(exc))
        return EXIT_FAILED
    if presence is False:
        log.info("group %s: not running on AWS (no instance metadata service), nothing to do", name)
        store.finish(name, seq, "not-on-aws")
        return EXIT_OK
    if presence is None:
        detail = (f"this is an EC2 instance (DMI) but the metadata service at {run.imds.endpoint} "
                  "does not answer (IMDSv2 disabled, hop limit, or firewall?)")
        log.error("group %s: MASTER failed: %s", name, detail)
        store.finish(name, seq, "failed", detail)
        return EXIT_FAILED
    try:
        run.prepare()
    except (PlanError, ImdsError, AwsError, DeadlineExceeded) as exc:
        log.error("group %s: MASTER failed: %s", name, exc)
        store.finish(name, seq, "failed", str(exc))
        return EXIT_FAILED
    except Superseded:
        return _superseded(run)
    assert run.plan is not None
    log.debug("plan ready%s", " (cached)" if run.plan.from_cache else "")
    started = time.monotonic()
    futures = run.apply_all(range(len(run.plan.actions)))
    outcomes: List[Outcome] = []
    superseded = False
    for i, future in sorted(futures.items()):
        action = run.plan.actions[i]
        try:
            detail = future.result(timeout=max(0.01, run.deadline.remaining()))
            outcomes.append(Outcome(action, True, f"{detail} ({run.plan.targets[i]['eni']})",
                                    time.monotonic() - started))
        except Superseded:
            superseded = True
            outcomes.append(Outcome(action, False, "not applied: superseded", time.monotonic() - started))
        except FuturesTimeout:
            outcomes.append(Outcome(action, False, f"not finished at the {run.deadline.seconds:g}s deadline",
                                    time.monotonic() - started))
        except Exception as exc:  # every failure is reported, none stops the others
            outcomes.append(Outcome(action, False, _failure_text(exc), time.monotonic() - started))
    for o in outcomes:
        (log.info if o.ok else log.error)("group %s: %s: %s in %s", name, o.action.describe(),
                                         o.detail if o.ok else f"FAILED: {o.detail}", _ms(o.seconds))
    if superseded:
        return _superseded(run)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        store.finish(name, seq, "failed", "; ".join(f"{o.action.describe()}: {o.detail}" for o in failed))
        return EXIT_FAILED
    try:
        run.verify()
    except Yielded as exc:
        log.warning("group %s: another instance owns the group (%s); yielding", name, exc)
        store.finish(name, seq, "yielded", str(exc))
        try:
            run.hand_back()
        except (Superseded, AwsError, ImdsError, PlanError, DeadlineExceeded) as err:
            log.error("group %s: could not check what this instance still holds: %s", name, _failure_text(err))
        return EXIT_OK
    except Superseded:
        return _superseded(run)
    except (AwsError, ImdsError, PlanError, DeadlineExceeded) as exc:
        log.error("group %s: MASTER verification failed: %s", name, _failure_text(exc))
        store.finish(name, seq, "failed", f"verification: {_failure_text(exc)}")
        return EXIT_FAILED
    save_targets(store, name, run.plan)
    keep_trimmed_model(store)
    log.info("group %s: MASTER done, %d action(s) in sync, %s", name, len(outcomes),
             _ms(run.deadline.elapsed()))
    store.finish(name, seq, "ok")
    return EXIT_OK


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
    run = MasterRun(config, group, store, int(record.get("seq", 0)))
    return _master_body(run)


def prepare_group(config: Config, group: Group, store: StateStore) -> None:
    """Resolve and cache a group's plan and the trimmed model, making no AWS write."""
    run = MasterRun(config, group, store, seq=-1)
    run.still_current = lambda: False  # type: ignore[method-assign]  # any write would be refused
    if run.imds.available():
        run.prepare()
        keep_trimmed_model(store)
