"""A transition's time budget, shared by every network call it makes."""

from __future__ import annotations

import time
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Optional


class DeadlineExceeded(Exception):
    pass


class Deadline:
    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = None if seconds is None else self.start + seconds

    def remaining(self) -> float:
        if self.end is None:
            return float("inf")
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def timeout(self, cap: float) -> float:
        """A socket timeout no longer than ``cap`` that ends no later than the deadline."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline of {self.seconds:g}s reached")
        return max(0.05, min(cap, left))

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self.remaining())))
