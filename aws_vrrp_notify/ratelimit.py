"""Client-side pacing that mirrors EC2's request token buckets.

EC2 throttles each account and region with token buckets per class of call (documented
defaults: address assignments 100 / 5 per s, other writes 50 / 5 per s, describe calls
100 / 20 per s) and answers RequestLimitExceeded once a bucket is empty. A group with a
hundred routes that fires them all at once gets fifty answered and fifty refused, and a
retry storm on top. So every call first reserves a token in the same kind of bucket here:
the first calls go at once, later ones wait for their turn, and a throttled answer (the
account's bucket is shared with other tools, or its limits differ) empties ours, so that
everybody waits for the refill instead of retrying into it.

One set of buckets per process: a fifo reader's transitions share them.
"""

from __future__ import annotations

import threading
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Tuple

BUCKETS: "Dict[str, Tuple[float, float]]" = {  # class -> (capacity, refill per second)
    "ip-assign": (100, 5.0),
    "mutating": (50, 5.0),
    "non-mutating": (100, 20.0),
    "route53": (5, 5.0),  # Route 53: five requests per second per account
}
IP_ASSIGN = frozenset({"AssignPrivateIpAddresses", "AssignIpv6Addresses", "UnassignIpv6Addresses"})
READ_PREFIXES = ("Describe", "Get", "List")


def rate_class(api_name: str, service: str = "ec2") -> str:
    if service == "route53":
        return "route53"
    if api_name in IP_ASSIGN:
        return "ip-assign"
    if api_name.startswith(READ_PREFIXES):
        return "non-mutating"
    return "mutating"


class TokenBucket:
    """A bucket that hands out reservations: a call that finds it empty learns how long to
    wait for its token (the bucket may go below zero: the calls queue up in order)."""

    def __init__(self, capacity: float, refill_per_second: float):
        self.capacity = capacity
        self.rate = refill_per_second
        self._tokens = float(capacity)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self) -> float:
        """Take a token; returns how many seconds to wait before using it."""
        with self._lock:
            self._refill()
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def give_back(self) -> None:
        """A reservation that will not be used (the deadline came first)."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + 1)

    def drain(self) -> None:
        """The service said it is empty: nothing left until the refill."""
        with self._lock:
            self._refill()
            self._tokens = min(self._tokens, 0.0)


_buckets: "Dict[str, TokenBucket]" = {}
_lock = threading.Lock()


def bucket(api_name: str, service: str = "ec2") -> TokenBucket:
    name = rate_class(api_name, service)
    with _lock:
        if name not in _buckets:
            _buckets[name] = TokenBucket(*BUCKETS[name])
        return _buckets[name]
