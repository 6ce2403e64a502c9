"""Route 53's propagation to its name servers: a change is PENDING for a while, then INSYNC.

Route 53 applies a ChangeResourceRecordSets at once (ListResourceRecordSets shows the new
records) and answers it ``PENDING``; ``GetChange`` says ``INSYNC`` once every name server of
the zone has it, usually within a minute.  moto answers ``INSYNC`` at once, and the same
change id every time.  With ``cloud.set_route53_sync(seconds)`` the lab answers each of the
tool's changes ``PENDING`` with a change id of its own, and ``GetChange`` of that id
``PENDING`` for ``seconds``, then ``INSYNC`` (see docs/lab.md, "Route 53").

A change the consistency model lags (:mod:`.consistency`) is answered there, as before.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from .route53_api import change_info_body, new_change_id, success_body

Answer = tuple  # (HTTP status, headers, body), as lab/cloud.py's


class Propagation:
    """The changes the lab answered PENDING, and when each becomes INSYNC."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._insync_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def changed(self, moto_answer: Answer) -> Answer:
        """moto's answer to an applied change, made PENDING under a change id of its own."""
        status, headers, body = moto_answer
        if status != 200:
            return moto_answer
        change = new_change_id()
        with self._lock:
            self._insync_at[change] = time.monotonic() + self.seconds
        return status, headers, success_body("PENDING", change)

    def get_change(self, change: str) -> Optional[Answer]:
        """GetChange of a change answered here; None for another id (moto answers it)."""
        change = change.rsplit("/", 1)[-1]  # "/change/C..." or "C..."
        with self._lock:
            insync_at = self._insync_at.get(change)
        if insync_at is None:
            return None
        state = "INSYNC" if time.monotonic() >= insync_at else "PENDING"
        return 200, [], change_info_body("GetChangeResponse", change, state)
