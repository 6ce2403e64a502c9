"""EC2 request throttling for the lab: one token bucket per action class.

EC2 throttles the calls of an account in a region with token buckets (EC2 API
reference, "Request throttling"): a call takes a token from its class's bucket, or is
answered ``RequestLimitExceeded`` (HTTP 503) when the bucket is empty; buckets refill
at a fixed rate up to their capacity.  Classes modelled here, with EC2's documented
default sizes:

==================  ========  ==============
class               capacity  refill per s
==================  ========  ==============
``ip-assign``       100       5     AssignPrivateIpAddresses, AssignIpv6Addresses
``mutating``        50        5     every other write (routes, Elastic IPs, ...)
``non-mutating``    100       20    Describe*, Get*, List*
``route53``         5         5     every Route 53 call (its documented 5 requests/s)
==================  ========  ==============

A throttled EC2 call is answered ``RequestLimitExceeded`` (HTTP 503), a throttled
Route 53 call ``Throttling`` (HTTP 400, "Rate exceeded"), as each service does.

Not modelled: EC2's separate, smaller bucket for unfiltered DescribeNetworkInterfaces
calls, and per-resource rate limits.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping, Optional

from . import ec2_xml

BUCKETS: dict[str, tuple[float, float]] = {
    "ip-assign": (100, 5.0),
    "mutating": (50, 5.0),
    "non-mutating": (100, 20.0),
    "route53": (5, 5.0),
}
IP_ASSIGN = frozenset({"AssignPrivateIpAddresses", "AssignIpv6Addresses"})
READ_PREFIXES = ("Describe", "Get", "List")


def action_class(action: str, service: str = "ec2") -> str:
    if service == "route53":
        return "route53"
    if action in IP_ASSIGN:
        return "ip-assign"
    if action.startswith(READ_PREFIXES):
        return "non-mutating"
    return "mutating"


class TokenBucket:
    def __init__(self, capacity: float, refill_per_second: float, clock: Callable[[], float]):
        self.capacity, self.refill = capacity, refill_per_second
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.refill)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Throttle:
    """``take(action)`` is False when EC2 would answer RequestLimitExceeded."""

    def __init__(self, buckets: Optional[Mapping[str, tuple[float, float]]] = None,
                 clock: Callable[[], float] = time.monotonic):
        sizes = {**BUCKETS, **(buckets or {})}
        unknown = sorted(set(sizes) - set(BUCKETS))
        if unknown:
            raise ValueError(f"unknown throttling classes {unknown}; known: {sorted(BUCKETS)}")
        self._buckets = {name: TokenBucket(cap, refill, clock) for name, (cap, refill) in sizes.items()}
        self._lock = threading.Lock()

    def take(self, action: str, service: str = "ec2") -> bool:
        with self._lock:
            return self._buckets[action_class(action, service)].take()


THROTTLED_STATUS = 503


def throttled_body() -> bytes:
    return ec2_xml.error_body("RequestLimitExceeded", "Request limit exceeded.")


def throttled_answer(service: str) -> tuple[int, bytes]:
    """(HTTP status, body) of a throttled call of ``service``."""
    if service == "route53":
        from .route53_api import error_body

        return 400, error_body("Throttling", "Rate exceeded")
    return THROTTLED_STATUS, throttled_body()
