"""The state directory: per-group transition records, locks and the plan cache.

Layout (directory 0700, files 0600):
  groups/<group>.json   last recorded transition: state, sequence number, time, outcome
  groups/<group>.lock   per-group lock (filelock), held only to record or finish
  cache/*.json          resolved facts a later master can reuse (see plan.py)
Records are replaced atomically (write + rename), so readers never need the lock.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, Optional

DEFAULT_STATE_DIR = "/run/aws-vrrp-notify"
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
LOCK_TIMEOUT = 10.0


class StateError(Exception):
    pass


def _write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class StateStore:
    def __init__(self, root: str):
        self.root = root
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

    def _lock(self, group: str):
        from filelock import FileLock

        return FileLock(os.path.join(self.groups_dir, f"{group}.lock"), timeout=LOCK_TIMEOUT, mode=0o600)

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
