"""A detached child process: what keepalived must not wait for (background preparation,
the hand-back after MASTER -> BACKUP, the standby process)."""

from __future__ import annotations

import os


def fork_detached() -> bool:
    """Fork; True in the child, which has its own session and its standard streams on
    /dev/null (keepalived, or a caller reading a pipe, must not wait for it); False in the
    parent, also when the fork failed (only speed or the hand-back is at stake)."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid:
        return False
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    except BaseException:  # the child must never go on as a second copy of its parent
        os._exit(1)
    return True
