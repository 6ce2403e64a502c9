"""The state directory: per-group transition records, locks and the plan cache.

Layout (directory 0700, files 0600):
  groups/<group>.json   last recorded transition: state, sequence number, time, outcome
  groups/<group>.lock   per-group lock file (flock(2), held only to record or finish; the
                        kernel releases it when its holder dies, so a killed transition
                        never blocks the next one)
  cache/*.json          resolved facts a later master can reuse (see plan.py), and the
                        decoded configuration (config.py)
Records are replaced atomically (write + rename), so readers never need the lock.

What is read here decides what root does to AWS, so the directory and its groups/ and
cache/ must be the running user's (or root's) and writable by nobody else (trust.py).
Each is opened once without following symbolic links and checked through its descriptor;
every file below is then reached relative to that descriptor (openat), so renaming or
replacing a path afterwards cannot redirect a read or a write.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import _thread
import time
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

from .logsetup import log
from .trust import file_kind, ownership_problem

DEFAULT_STATE_DIR = "/run/aws-vrrp-notify"
DEFAULT_CACHE_DIR = "/var/cache/aws-vrrp-notify"  # survives a reboot, unlike /run (botomodel.py)
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
LOCK_TIMEOUT = 10.0
MAX_RECORD_SIZE = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MISSING = object()
EVENT_PROCESS = "self"  # /proc entry of the process whose start orders the event (standby.py)
_CACHE_FDS: Dict[str, int] = {}  # state directory -> checked descriptor of its cache/ (trusted_cache_dir)


def state_dir(explicit: Optional[str]) -> str:
    """--state-dir as given, else AWS_VRRP_NOTIFY_STATE_DIR, else the default."""
    if explicit is not None:
        return explicit
    return os.environ.get("AWS_VRRP_NOTIFY_STATE_DIR") or DEFAULT_STATE_DIR


class StateError(Exception):
    """The state directory cannot be used (exit status 1)."""


class UnsafeStateDir(StateError):
    """A state directory that someone else could have written: refused like an unsafe
    configuration file (exit status 2)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"refusing state directory {path}: {reason}")


class CorruptRecord(Exception):
    pass


# ---------------------------------------------------------------- checked directories


def _open_checked_dir(name: str, path: str, dir_fd: Optional[int] = None) -> int:
    """Open directory ``name`` (``path`` for messages) without following a symlink; check its owner."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise UnsafeStateDir(path, "it is a symbolic link (not followed)") from None
            raise UnsafeStateDir(path, "not a directory") from None
        raise
    st = os.fstat(fd)
    problem = ownership_problem(st)
    if problem:
        os.close(fd)
        raise UnsafeStateDir(path, problem)
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        try:  # readable by others: records are private
            os.fchmod(fd, 0o700)
        except OSError:
            pass
    return fd


def _dir(name: str, path: str, dir_fd: Optional[int], create: bool) -> Optional[int]:
    """The checked descriptor of a state (sub)directory; None when it is missing and not created."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create state directory {path}: {exc.strerror}") from None
    try:
        return _open_checked_dir(name, path, dir_fd)
    except FileNotFoundError:
        if create:  # removed between mkdir and open
            raise StateError(f"cannot create state directory {path}: it keeps disappearing") from None
        return None
    except OSError as exc:
        raise StateError(f"cannot open state directory {path}: {exc.strerror}") from None


def trusted_cache_dir(root: str) -> Optional[str]:
    """A path to ``root``'s checked cache/ for code that only takes paths (botocore's loader):
    through the descriptor, so the directory checked is the directory used; None when
    ``root`` was not opened by this process."""
    fd = _CACHE_FDS.get(root)
    if fd is None or not os.path.isdir("/proc/self/fd"):
        return None
    return f"/proc/self/fd/{fd}"


# ---------------------------------------------------------------- files under a checked directory


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove whatever sits at ``name`` (a corrupt record may be a directory, a FIFO, a link)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        import shutil

        shutil.rmtree(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _write_atomic_at(dir_fd: int, name: str, text: str, mode: int = 0o600) -> None:
    """Replace ``name`` under ``dir_fd`` with ``text`` atomically: readers see the old or the new."""
    tmp = f".tmp-{os.getpid()}-{_thread.get_ident()}-{name}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    except FileExistsError:  # left by a killed process whose PID was reused
        _remove_entry(dir_fd, tmp)
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
        try:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except (IsADirectoryError, NotADirectoryError):  # a directory squats the name
            _remove_entry(dir_fd, name)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` atomically (a file of the operator's choice: --prometheus)."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_atomic_at(dir_fd, name, text, mode)
    finally:
        os.close(dir_fd)


def _read_json_at(dir_fd: int, name: str) -> Any:
    """The JSON value in ``name``; MISSING when there is no such file; CorruptRecord otherwise."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise CorruptRecord(reason) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptRecord(f"not a regular file but {file_kind(st.st_mode)}")
        if st.st_size > MAX_RECORD_SIZE:
            raise CorruptRecord(f"larger than {MAX_RECORD_SIZE} bytes")
        raw = os.read(fd, MAX_RECORD_SIZE + 1)
    except OSError as exc:
        raise CorruptRecord(exc.strerror) from None
    finally:
        os.close(fd)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptRecord(f"not JSON ({str(exc)[:80]})") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _valid_record(data: Any) -> Dict[str, Any]:
    """The record, or CorruptRecord saying what is wrong with it."""
    if not isinstance(data, dict):
        raise CorruptRecord(f"a JSON {type(data).__name__}, not an object")
    seq = data.get("seq")
    if type(seq) is not int or not 0 <= seq < 1 << 62:
        raise CorruptRecord(f"sequence number {_short(seq)} is not a non-negative integer")
    if data.get("state") not in STATES:
        raise CorruptRecord(f"state {_short(data.get('state'))} is not one of {', '.join(STATES)}")
    return data


# ---------------------------------------------------------------- locks


class GroupLock:
    """An exclusive flock(2) on a lock file, given up after LOCK_TIMEOUT seconds.

    The same mechanism as filelock's UnixFileLock, without its ~25 ms import: the
    budget of a whole backup transition is 60 ms."""

    def __init__(self, dir_fd: int, name: str, path: str):
        self.dir_fd = dir_fd
        self.name = name
        self.path = path
        self.fd = -1

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        for attempt in (1, 2):
            try:
                fd = os.open(self.name, flags, 0o600, dir_fd=self.dir_fd)
            except OSError as exc:
                if attempt == 1 and exc.errno in (errno.ELOOP, errno.EISDIR):
                    _remove_entry(self.dir_fd, self.name)
                    continue
                raise StateError(f"cannot lock {self.path}: {exc.strerror}") from None
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
            if attempt == 1:
                _remove_entry(self.dir_fd, self.name)
        raise StateError(f"cannot lock {self.path}: not a regular file")

    def __enter__(self) -> "GroupLock":
        self.fd = self._open()
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


# ---------------------------------------------------------------- event order


def process_start() -> Optional[List[Any]]:
    """[boot id, start time in clock ticks since boot] of this process, or of the ``master``
    process a standby child runs for (EVENT_PROCESS); None if unknown.

    keepalived forks its notify scripts in the order of its events; the kernel's start
    time keeps that order even when a script is slow to get going (a loaded machine)."""
    try:
        with open(f"/proc/{EVENT_PROCESS}/stat", "rb") as fh:
            data = fh.read()
        ticks = int(data[data.rindex(b")") + 2:].split()[19])  # field 22, starttime
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return [fh.read().strip(), ticks]
    except (OSError, ValueError, IndexError):
        return None


def started_before(ours: Optional[List[Any]], recorded: Any) -> bool:
    """True when our process started strictly before the one that recorded ``recorded``
    (same boot only; a tie, or anything unknown, keeps the order of arrival)."""
    if not ours or not isinstance(recorded, list) or len(recorded) != 2:
        return False
    return recorded[0] == ours[0] and isinstance(recorded[1], int) and recorded[1] > ours[1]


# ---------------------------------------------------------------- the store


class StateStore:
    """The state directory ``root``; ``model_cache`` is the directory that keeps, across
    reboots, the trimmed botocore model (botomodel.cache_root decides whether it is used)."""

    def __init__(self, root: str, model_cache: Optional[str] = None):
        self.root = root
        self.model_cache = model_cache or DEFAULT_CACHE_DIR
        self.groups_dir = os.path.join(root, "groups")
        self.cache_dir = os.path.join(root, "cache")
        self._fds: Optional[Tuple[Optional[int], Optional[int]]] = None  # groups/, cache/

    def open(self, create: bool) -> "StateStore":
        """Check the directory and keep descriptors of groups/ and cache/; with ``create``,
        make what is missing (0700). Raises UnsafeStateDir or StateError."""
        if self._fds is not None:
            if not create or (None not in self._fds and not self._removed()):
                return self
            # opened again; the old descriptors stay open, another thread may be using one
        if not self.root:
            raise UnsafeStateDir("''", "an empty path (give --state-dir PATH)")
        made = None
        if create:
            try:
                os.makedirs(self.root, mode=0o700, exist_ok=True)
            except OSError as exc:
                made = exc
        root_fd = _dir(self.root, self.root, None, create=False)
        if root_fd is None:
            if create:
                reason = made.strerror if made is not None else "it keeps disappearing"
                raise StateError(f"cannot create state directory {self.root}: {reason}")
            self._fds = (None, None)
            return self
        groups = None
        try:
            groups = _dir("groups", self.groups_dir, root_fd, create)
            cache = _dir("cache", self.cache_dir, root_fd, create)
        except StateError:
            if groups is not None:
                os.close(groups)
            raise
        finally:
            os.close(root_fd)
        self._fds = (groups, cache)
        if cache is not None:
            _CACHE_FDS[self.root] = cache
        return self

    def close(self) -> None:
        """Give the directory descriptors back (a process that opens many stores: the tests)."""
        for fd in self._fds or ():
            if fd is not None:
                os.close(fd)
        if self._fds and _CACHE_FDS.get(self.root) == self._fds[1]:
            del _CACHE_FDS[self.root]
        self._fds = None

    def _removed(self) -> bool:
        """The directories were deleted under a long-running reader (fifo): open them again."""
        return any(os.fstat(fd).st_nlink == 0 for fd in self._fds or () if fd is not None)

    def ensure(self) -> "StateStore":
        return self.open(create=True)

    def _groups_fd(self, create: bool) -> Optional[int]:
        self.open(create)
        return self._fds[0]  # type: ignore[index]

    def _cache_fd(self) -> Optional[int]:
        self.open(create=False)
        return self._fds[1]  # type: ignore[index]

    def _record_name(self, group: str) -> str:
        return f"{group}.json"

    def _record_path(self, group: str) -> str:
        return os.path.join(self.groups_dir, self._record_name(group))

    def _read_record(self, group: str) -> Optional[Dict[str, Any]]:
        """The group's record, None when there is none; CorruptRecord when it is unusable."""
        fd = self._groups_fd(create=False)
        if fd is None:
            return None
        data = _read_json_at(fd, self._record_name(group))
        return None if data is MISSING else _valid_record(data)

    def read(self, group: str) -> Optional[Dict[str, Any]]:
        """The group's last recorded transition; None when there is none or it is corrupt (logged)."""
        try:
            return self._read_record(group)
        except CorruptRecord as exc:
            log.warning("state record %s is corrupt (%s); ignored", self._record_path(group), exc)
            return None

    def record(self, group: str, state: str, started: Optional[List[Any]] = None) -> Optional[int]:
        """Record a transition as the group's latest event; returns its sequence number.

        ``started`` (process_start()): when the recording process was started. keepalived
        starts its notify scripts in the order of its events, but a script that starts
        slowly can reach this point after the next one: an event whose process started
        before the recorded event's is older and is not recorded (None is returned)."""
        fd = self._groups_fd(create=True)
        assert fd is not None
        with GroupLock(fd, f"{group}.lock", os.path.join(self.groups_dir, f"{group}.lock")):
            try:
                previous = self._read_record(group) or {}
            except CorruptRecord as exc:
                log.warning("state record %s is corrupt (%s); replaced", self._record_path(group), exc)
                previous = {}
            if started_before(started, previous.get("started")):
                return None
            seq = previous.get("seq", 0) + 1
            record = {"group": group, "state": state, "seq": seq, "time": time.time(),
                      "pid": os.getpid(), "outcome": "in-progress" if state == "MASTER" else "recorded"}
            if started:
                record["started"] = started
            self._write(fd, group, record)
            return seq

    def _write(self, fd: int, group: str, record: Dict[str, Any]) -> None:
        try:
            _write_atomic_at(fd, self._record_name(group), json.dumps(record, sort_keys=True))
        except OSError as exc:
            raise StateError(f"cannot write {self._record_path(group)}: {exc.strerror}") from None

    def is_current(self, group: str, seq: int) -> bool:
        try:
            record = self._read_record(group)
        except CorruptRecord:
            return True  # nothing later was recorded (a later record replaces the corrupt one)
        return record is None or record.get("seq") == seq

    def finish(self, group: str, seq: int, outcome: str, detail: str = "") -> bool:
        """Store the outcome of transition ``seq`` unless a later one was recorded meanwhile."""
        fd = self._groups_fd(create=True)
        assert fd is not None
        with GroupLock(fd, f"{group}.lock", os.path.join(self.groups_dir, f"{group}.lock")):
            try:
                record = self._read_record(group)
            except CorruptRecord:
                return False
            if record is None or record.get("seq") != seq:
                return False
            record.update(outcome=outcome, detail=detail, finished=time.time())
            self._write(fd, group, record)
            return True

    # -- cache of resolved facts

    def cache_get(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            fd = self._cache_fd()
            data = MISSING if fd is None else _read_json_at(fd, f"{name}.json")
        except (CorruptRecord, StateError):
            return None
        return data if isinstance(data, dict) else None

    def cache_put(self, name: str, data: Dict[str, Any]) -> None:
        try:
            fd = self._cache_fd()
            if fd is not None:
                _write_atomic_at(fd, f"{name}.json", json.dumps(data))
        except (OSError, StateError, TypeError, ValueError, RecursionError):
            pass  # a cache that cannot be written only costs speed (TOML dates are not JSON)

    def has_cache(self, name: str) -> bool:
        """A non-empty cache entry exists (a cheap check: one stat)."""
        try:
            fd = self._cache_fd()
            return fd is not None and os.stat(f"{name}.json", dir_fd=fd, follow_symlinks=False).st_size > 2
        except (OSError, StateError):
            return False
