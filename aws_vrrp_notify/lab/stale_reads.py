"""Stale reads: a describe call answered, now and then, with what EC2 said earlier.

EC2 serves reads from replicas that may trail the writes.  The lab models that per
question: every answer moto gives to a tool's describe call is kept for ``window``
seconds, keyed by the call's parameters; with probability ``probability`` a call gets,
instead of the fresh answer, one of the answers given to the same call during the
window (the state as it was up to ``window`` seconds ago).  A question asked for the
first time is always answered fresh.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Hashable, Optional

# (HTTP status, headers, body) of one answer
Answer = tuple[int, list, bytes]


class StaleReads:
    def __init__(self, probability: float, window: float, seed: Optional[int] = None):
        if not 0 <= probability <= 1:
            raise ValueError("stale_reads must be a probability between 0 and 1")
        self.probability = probability
        self.window = window
        self.served = 0        # stale answers given
        self._rng = random.Random(seed)
        self._history: dict[Hashable, collections.deque] = {}
        self._lock = threading.Lock()

    def answer(self, question: Hashable, fresh: Answer) -> Answer:
        """The answer to give: ``fresh`` or an earlier answer to ``question`` from the window."""
        now = time.monotonic()
        with self._lock:
            history = self._history.setdefault(question, collections.deque())
            while history and history[0][0] < now - self.window:
                history.popleft()
            earlier = [a for _, a in history]
            if fresh[0] == 200:
                history.append((now, fresh))
            if earlier and self._rng.random() < self.probability:
                self.served += 1
                return self._rng.choice(earlier)
        return fresh


def question_of(action: str, params: dict) -> Hashable:
    """What identifies "the same call": its action and parameters."""
    return action, tuple(sorted(params.items()))
