"""The state directory: per-group transition records, locks and the plan cache.

Layout (directory 0700, files 0600):
  groups/<group>.json   last recorded transition: state, sequence number, time, outcome
  groups/<group>.lock   per-group lock file (flock(2), held only to record or finish; the
                        kernel releases it when its holder dies, so a killed transition
                        never blocks the next one)
  cache/*.json          resolved facts a later master can reuse (see plan.py)
Records are replaced atomically (write + rename), so readers never need the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import _thread
import time
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

DEFAULT_STATE_DIR = "/run/aws-vrrp-notify"
DEFAULT_CACHE_DIR = "/var/cache/aws-vrrp-notify"  # survives a reboot, unlike /run (botomodel.py)
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
LOCK_TIMEOUT = 10.0


class StateError(Exception):
    pass


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` atomically: readers see the old file or the new one."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = f"{directory}/.tmp-{os.getpid()}-{_thread.get_ident()}-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True))


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class GroupLock:
    """An exclusive flock(2) on a lock file, given up after LOCK_TIMEOUT seconds.

    The same mechanism as filelock's UnixFileLock, without its ~25 ms import: the
    budget of a whole backup transition is 60 ms."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def __enter__(self) -> "GroupLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        end = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > end:
                    os.close(self.fd)
                    raise StateError(f"lock {self.path} still held after {LOCK_TIMEOUT:g}s") from None
                time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class StateStore:
    """The state directory ``root``; ``model_cache`` is the directory that keeps, across
    reboots, the trimmed botocore model (botomodel.cache_root decides whether it is used)."""

    def __init__(self, root: str, model_cache: Optional[str] = None):
        self.root = root
        self.model_cache = model_cache or DEFAULT_CACHE_DIR
        self.groups_dir = os.path.join(root, "groups")
        self.cache_dir = os.path.join(root, "cache")

    def ensure(self) -> "StateStore":
        old = os.umask(0o077)
        try:
            for path in (self.root, self.groups_dir, self.cache_dir):
                try:
                    os.makedirs(path, mode=0o700, exist_ok=True)
                except OSError as exc:
                    raise StateError(f"cannot create state directory {path}: {exc.strerror}") from None
                st = os.stat(path)
                if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                    os.chmod(path, 0o700)
        finally:
            os.umask(old)
        return self

    def _record_path(self, group: str) -> str:
        return os.path.join(self.groups_dir, f"{group}.json")

    def _lock(self, group: str) -> "GroupLock":
        return GroupLock(os.path.join(self.groups_dir, f"{group}.lock"))

    def read(self, group: str) -> Optional[Dict[str, Any]]:
        return _read_json(self._record_path(group))

    def record(self, group: str, state: str) -> int:
        """Record a transition as the group's latest event; returns its sequence number."""
        old = os.umask(0o077)
        try:
            with self._lock(group):
                previous = self.read(group) or {}
                seq = int(previous.get("seq", 0)) + 1
                _write_json_atomic(self._record_path(group), {
                    "group": group, "state": state, "seq": seq, "time": time.time(),
                    "pid": os.getpid(), "outcome": "in-progress" if state == "MASTER" else "recorded",
                })
                return seq
        finally:
            os.umask(old)

    def is_current(self, group: str, seq: int) -> bool:
        record = self.read(group)
        return record is None or record.get("seq") == seq

    def finish(self, group: str, seq: int, outcome: str, detail: str = "") -> bool:
        """Store the outcome of transition ``seq`` unless a later one was recorded meanwhile."""
        old = os.umask(0o077)
        try:
            with self._lock(group):
                record = self.read(group)
                if record is None or record.get("seq") != seq:
                    return False
                record.update(outcome=outcome, detail=detail, finished=time.time())
                _write_json_atomic(self._record_path(group), record)
                return True
        finally:
            os.umask(old)

    # -- cache of resolved facts

    def cache_get(self, name: str) -> Optional[Dict[str, Any]]:
        return _read_json(os.path.join(self.cache_dir, f"{name}.json"))

    def cache_put(self, name: str, data: Dict[str, Any]) -> None:
        old = os.umask(0o077)
        try:
            _write_json_atomic(os.path.join(self.cache_dir, f"{name}.json"), data)
        except OSError:
            pass  # a cache that cannot be written only costs speed
        finally:
            os.umask(old)
