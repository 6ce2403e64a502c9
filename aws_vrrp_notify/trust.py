"""Who may have written what the tool reads: the configuration file and the state directory
must be the running user's (or root's) and writable by nobody else.

Callers check the ``os.stat_result`` of an open descriptor (``fstat``), or of ``lstat``,
so that the object checked is the object used and no symbolic link is followed.
"""

from __future__ import annotations

import os
import stat
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Optional

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"))


def ownership_problem(st: os.stat_result) -> Optional[str]:
    """Why a file or directory with this status could have been written by someone else, or None."""
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        if euid == 0:
            return f"not owned by root but by uid {st.st_uid} (chown root)"
        return f"not owned by you (uid {euid}) or root but by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others (chmod go-w)"
    return None


def file_kind(mode: int) -> str:
    """'a FIFO', 'a character device', ... for a mode that is not a regular file's."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"
