"""EC2's eventual consistency in the lab: writes accepted at once, visible ``lag`` seconds later.

A tool's mutating call (one of :data:`LAGGABLE`: EC2's, and Route 53's
ChangeResourceRecordSets) for which a lag is set is validated and answered at once
(:mod:`.ec2_writes`, :mod:`.route53_api`), then replayed into moto ``lag`` seconds later
by a background thread.  Until then describe calls, and the metadata
service (built from moto's state), show the state from before the write.

Writes land in the order EC2 accepted them wherever they touch the same resource (an
ENI, an address, a route table's destination, an Elastic IP): a write is never applied
before an earlier-accepted write that shares a resource with it, even with a shorter
lag.  Writes with nothing in common land independently.

Not lagged: the harness's own calls, ``DryRun`` calls, and calls where EC2 picks the
addresses (``SecondaryPrivateIpAddressCount``, ``Ipv6AddressCount``).

See docs/lab.md for the model as a whole.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

from . import ec2_writes, route53_api

LAGGABLE = ec2_writes.LAGGABLE + route53_api.LAGGABLE
IP_MOVES = ("AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses",
            "UnassignIpv6Addresses")
DNS_CHANGE = "ChangeResourceRecordSets"

# Route 53 changes propagate more slowly than EC2's writes: one and a half times the
# profile's longest EC2 lag.
PROFILES: dict[str, dict[str, float]] = {
    "all-0.5": {"*": 0.5, DNS_CHANGE: 0.75},
    "all-2": {"*": 2.0, DNS_CHANGE: 3.0},
    "ip-2-rest-0.1": {**{a: 2.0 for a in IP_MOVES}, "*": 0.1, DNS_CHANGE: 3.0},
    "ip-1-rest-0.3": {**{a: 1.0 for a in IP_MOVES}, "*": 0.3, DNS_CHANGE: 1.5},
}

LagSpec = Union[None, float, int, str, Mapping[str, float]]


def parse_lag(spec: LagSpec) -> dict[str, float]:
    """A lag per action (``"*"``: every other laggable action) from a profile name, seconds or a mapping.

    Raises ValueError naming what is wrong."""
    if spec is None:
        return {}
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _checked({"*": float(spec)})
    if isinstance(spec, str):
        if spec in PROFILES:
            return dict(PROFILES[spec])
        try:
            return _checked({"*": float(spec)})
        except ValueError:
            raise ValueError(f"lag {spec!r} is neither seconds nor a profile ({', '.join(PROFILES)})") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"lag {spec!r} is neither seconds, a profile nor a mapping of action to seconds")
    return _checked({str(k): float(v) for k, v in spec.items()})


def _checked(lags: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(lags) - set(LAGGABLE) - {"*"})
    if unknown:
        raise ValueError(f"cannot lag {', '.join(unknown)}: laggable actions are {', '.join(LAGGABLE)}")
    bad = sorted(k for k, v in lags.items() if not 0 <= v <= 600)
    if bad:
        raise ValueError(f"lag of {', '.join(bad)} must be between 0 and 600 seconds")
    return lags


def describe_lag(lags: Mapping[str, float]) -> str:
    """``"AssignPrivateIpAddresses 2 s, ... , every other write 0.1 s"`` (or ``"none"``)."""
    if not any(lags.values()):
        return "none"
    parts = [f"{a} {v:g} s" for a, v in sorted(lags.items()) if a != "*"]
    if "*" in lags:
        parts.append(f"{'every other' if parts else 'every'} write {lags['*']:g} s")
    return ", ".join(parts)


@dataclass(order=True)
class PendingWrite:
    """A write EC2 accepted, to be replayed into moto at ``lands_at`` (monotonic seconds)."""
    lands_at: float
    seq: int
    action: str = field(compare=False)
    params: dict = field(compare=False, repr=False)
    replay: Callable[[], tuple[int, bytes]] = field(compare=False, repr=False)
    acceptance: ec2_writes.Acceptance = field(compare=False, repr=False)
    accepted_at: float = field(compare=False, default=0.0)


@dataclass
class FailedWrite:
    """A write accepted with success that moto refused when it landed."""
    action: str
    params: dict
    status: int
    body: str


class Consistency(ec2_writes.PendingView):
    """The queue of accepted writes and the thread that lands them.  Used by :class:`~.cloud.Cloud`."""

    def __init__(self, backend: Callable[[], object], route53_backend: Optional[Callable[[], object]] = None):
        self._backend = backend
        self._route53_backend = route53_backend
        self.lags: dict[str, float] = {}
        self._queue: list[PendingWrite] = []
        self._in_flight: Optional[PendingWrite] = None
        self._associations: dict[str, str] = {}   # associationId answered -> allocation id
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.failures: list[FailedWrite] = []
        self.landed: list[tuple[float, PendingWrite]] = []   # (monotonic time, write), in landing order

    # ------------------------------------------------------------------ configuration
    def set(self, lags: Mapping[str, float]) -> None:
        with self._cond:
            self.lags = dict(lags)

    def lag_of(self, action: Optional[str]) -> float:
        if action not in LAGGABLE:
            return 0.0
        return self.lags.get(action, self.lags.get("*", 0.0))

    def applies_to(self, action: Optional[str], params: Mapping[str, str]) -> bool:
        """Whether this tool request is accepted now and landed later."""
        return (self.lag_of(action) > 0 and params.get("DryRun", "").lower() != "true"
                and not ec2_writes.needs_server_choice(params))

    # ------------------------------------------------------------------ accepting
    def accept(self, action: str, params: dict, replay: Callable[[], tuple[int, bytes]]) -> PendingWrite:
        """Validate and queue a write; returns it (its ``acceptance.body`` is EC2's answer).

        Raises :class:`~.ec2_writes.Rejected` when EC2 would refuse it at once."""
        with self._cond:
            if action in route53_api.LAGGABLE:
                acceptance = route53_api.accept(self._route53_backend(), action, params)
            else:
                acceptance = ec2_writes.accept(self._backend(), action, params, self)
            now = time.monotonic()
            lands_at = now + self.lag_of(action)
            for earlier in self._pending():
                if earlier.acceptance.resources & acceptance.resources:
                    lands_at = max(lands_at, earlier.lands_at)
            write = PendingWrite(lands_at, next(self._seq), action, dict(params), replay, acceptance, now)
            if acceptance.association_id:
                self._associations[acceptance.association_id] = acceptance.allocation_id
            heapq.heappush(self._queue, write)
            self._start()
            self._cond.notify_all()
            return write

    def _pending(self) -> list[PendingWrite]:
        """Accepted writes not landed yet (the one landing now included), in acceptance order."""
        writes = list(self._queue) + ([self._in_flight] if self._in_flight else [])
        return sorted(writes, key=lambda w: w.seq)

    def pending(self) -> list[PendingWrite]:
        with self._cond:
            return self._pending()

    def landings(self) -> list[tuple[float, PendingWrite]]:
        with self._cond:
            return list(self.landed)

    def failed(self) -> list[FailedWrite]:
        with self._cond:
            return list(self.failures)

    # PendingView
    def route_exists(self, rtb: str, destination: str) -> Optional[bool]:
        exists = None
        for w in self._pending():
            if ("route", rtb, destination) in w.acceptance.resources:
                exists = w.action != "DeleteRoute"
        return exists

    def allocation_of(self, association_id: str) -> Optional[str]:
        return self._associations.get(association_id)

    def ipv6_holders(self, ip: str, now: set) -> set:
        held = set(now)
        for w in self._pending():
            if ("ip", ip) in w.acceptance.resources:
                eni = w.params.get("NetworkInterfaceId")
                if w.action == "AssignIpv6Addresses":
                    held.add(eni)
                elif w.action == "UnassignIpv6Addresses":
                    held.discard(eni)
        return held

    # ------------------------------------------------------------------ landing
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._land_forever, name="ec2-consistency", daemon=True)
            self._thread.start()

    def _land_forever(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._queue or self._queue[0].lands_at > time.monotonic()):
                    self._cond.wait(self._queue[0].lands_at - time.monotonic() if self._queue else None)
                if self._closed:
                    return
                write = self._in_flight = heapq.heappop(self._queue)
            try:
                self._land(write)
            finally:
                with self._cond:
                    self._in_flight = None
                    self._cond.notify_all()

    def _land(self, write: PendingWrite) -> None:
        try:
            status, body = write.replay()
        except Exception as exc:  # keep landing later writes whatever happens to one
            status, body = 500, repr(exc).encode()
        with self._cond:
            if status >= 400:
                self.failures.append(FailedWrite(write.action, write.params, status, body.decode("utf-8", "replace")))
                return
            self.landed.append((time.monotonic(), write))
        if write.acceptance.association_id:
            self._adopt_association(write.acceptance)

    def _adopt_association(self, acceptance: ec2_writes.Acceptance) -> None:
        """moto made up its own association id on landing: use the one EC2 answered."""
        for eip in list(self._backend().addresses):
            if acceptance.allocation_id in (eip.allocation_id, eip.public_ip) and eip.eni is not None:
                eip.association_id = acceptance.association_id

    def settle(self, timeout: Optional[float] = None) -> None:
        """Block until every accepted write has landed.  Raises TimeoutError after ``timeout`` s
        (default: the longest lag pending plus 10 s)."""
        with self._cond:
            if timeout is None:
                last = max((w.lands_at for w in self._pending()), default=time.monotonic())
                timeout = max(0.0, last - time.monotonic()) + 10.0
            if not self._cond.wait_for(lambda: not self._queue and self._in_flight is None, timeout):
                raise TimeoutError(f"{len(self._pending())} accepted writes did not land in {timeout:g}s")

    def discard(self) -> list[PendingWrite]:
        """Forget the writes not landed yet (after the one landing now, if any); returns them."""
        with self._cond:
            dropped = sorted(self._queue, key=lambda w: w.seq)
            self._queue.clear()
            self._associations.clear()
            self._cond.wait_for(lambda: self._in_flight is None, 30)
            self.failures.clear()
            self.landed.clear()
            return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
