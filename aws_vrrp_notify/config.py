"""TOML configuration file -> typed, validated objects.

Every problem names the file and the key path (``groups.VI_1.change-route[0].destination``);
all problems of a file are reported at once. Nothing here touches AWS, IMDS or netlink.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .schema import (MAIN_VRF, Field, Frozen, _describe, boolean, consistency_window_seconds,  # noqa: F401
                     deadline_seconds, endpoint_url, escape_controls, key_text, profile_name, read_table,
                     reassert_interval_seconds, region_name, role_arn)
from .trust import file_kind, ownership_problem

DEFAULT_CONFIG_PATH = "/etc/aws-vrrp-notify/config.toml"
DEFAULT_DEADLINE = 30.0
DEFAULT_CONSISTENCY_WINDOW = 5.0
DEFAULT_REASSERT_INTERVAL = 10.0
MAX_FILE_SIZE = 1 << 20
MAX_DEPTH = 32  # a valid file nests 6 levels (groups.NAME.action[i].key)
MAX_GROUP_NAME = 128


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, path: str, problems: Sequence[str]):
        self.path = path
        self.problems = list(problems)
        super().__init__("\n".join(f"{path}: {p}" for p in self.problems))


class AwsSettings(Frozen):
    """[aws]; ``prepare``: backup/fault/stop resolve in the background what the next master needs;
    ``standby``: backup/fault keep a standby process with botocore imported (standby.py)."""

    __slots__ = ("region", "endpoint_url", "profile", "role_arn", "deadline", "prepare",
                 "consistency_window", "reassert_interval", "route53_endpoint_url", "standby")

    def __init__(self, region: Optional[str] = None, endpoint_url: Optional[str] = None,
                 profile: Optional[str] = None, role_arn: Optional[str] = None,
                 deadline: float = DEFAULT_DEADLINE, prepare: bool = True,
                 consistency_window: float = DEFAULT_CONSISTENCY_WINDOW,
                 reassert_interval: float = DEFAULT_REASSERT_INTERVAL,
                 route53_endpoint_url: Optional[str] = None, standby: bool = False):
        self._set(region=region, endpoint_url=endpoint_url, profile=profile, role_arn=role_arn,
                  deadline=deadline, prepare=prepare, consistency_window=consistency_window,
                  reassert_interval=reassert_interval, route53_endpoint_url=route53_endpoint_url,
                  standby=standby)


AWS_FIELDS = (
    Field("region", region_name),
    Field("endpoint-url", endpoint_url),
    Field("profile", profile_name),
    Field("role-arn", role_arn),
    Field("deadline", deadline_seconds, DEFAULT_DEADLINE),
    Field("prepare", boolean, True),
    Field("consistency-window", consistency_window_seconds, DEFAULT_CONSISTENCY_WINDOW),
    Field("reassert-interval", reassert_interval_seconds, DEFAULT_REASSERT_INTERVAL),
    Field("route53-endpoint-url", endpoint_url),
    Field("standby", boolean, False),
)


class Group(Frozen):
    """A keepalived group and its actions (actions.Action instances, in file order)."""

    __slots__ = ("name", "actions")

    def __init__(self, name: str, actions: Tuple[Any, ...]):
        self._set(name=name, actions=tuple(actions))


class Config(Frozen):
    __slots__ = ("path", "aws", "groups")

    def __init__(self, path: str, aws: Optional[AwsSettings] = None, groups: Optional[Mapping[str, Group]] = None):
        self._set(path=path, aws=aws or AwsSettings(), groups=dict(groups or {}))

    def __hash__(self) -> int:
        return hash((self.path, self.aws))

    def group(self, name: str) -> Optional[Group]:
        return self.groups.get(name)


_GROUP_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_GROUP_CHARS = _GROUP_FIRST | frozenset(".:@+-")


def _check_group_name(name: str) -> Optional[str]:
    if len(name) > MAX_GROUP_NAME:
        return f"group name is longer than {MAX_GROUP_NAME} characters"
    if not name or name[0] not in _GROUP_FIRST or not set(name) <= _GROUP_CHARS:
        return (f"group name {_describe(name)} may only contain letters, digits and _ . : @ + - "
                "and must not start with . or -")
    return None


def parse(data: Mapping[str, Any], path: str) -> Config:
    """Validate an already decoded TOML document."""
    from .actions import ACTION_TYPES  # the action classes declare their own keys

    problems: List[str] = []
    for key in data:
        if key not in ("aws", "groups"):
            problems.append(f"{key_text(key)}: unknown key (expected [aws] and [groups.NAME] tables)")
    aws_values = read_table(data.get("aws", {}), AWS_FIELDS, "aws", problems) or {}
    aws = AwsSettings(**aws_values) if aws_values else AwsSettings()

    groups: Dict[str, Group] = {}
    raw_groups = data.get("groups", {})
    owners: Dict[Tuple[Any, ...], str] = {}  # action identity -> where it was first seen
    if not isinstance(raw_groups, dict):
        problems.append(f"groups: expected a table of groups, got {type(raw_groups).__name__}")
        raw_groups = {}
    for name, body in raw_groups.items():
        where = f"groups.{key_text(name)}"
        bad_name = _check_group_name(name)
        if bad_name:
            problems.append(f"{where}: {bad_name}")
        if not isinstance(body, dict):
            problems.append(f"{where}: expected a table of actions, got {type(body).__name__}")
            continue
        actions = []
        placed = []  # (key path, action)
        problems_before = len(problems)
        for key, entries in body.items():
            cls = ACTION_TYPES.get(key)
            if cls is None:
                problems.append(f"{where}.{key_text(key)}: unknown action type (expected one of "
                                f"{', '.join(ACTION_TYPES)})")
                continue
            if isinstance(entries, dict):
                problems.append(f"{where}.{key}: write actions as [[{where}.{key}]] (an array of tables)")
                continue
            if not isinstance(entries, list):
                problems.append(f"{where}.{key}: expected an array of tables, got {type(entries).__name__}")
                continue
            for i, entry in enumerate(entries):
                at = f"{where}.{key}[{i}]"
                action = cls.from_table(entry, at, problems)
                if action is None:
                    continue
                ident = action.identity()
                if ident in owners:
                    problems.append(f"{at}: duplicate action, same as {owners[ident]} ({action.describe()})")
                else:
                    owners[ident] = at
                actions.append(action)
                placed.append((at, action))
        for at, action in placed:
            action.check_group(actions, at, problems)
        if not actions and len(problems) == problems_before:
            problems.append(f"{where}: group has no action")
        groups[name] = Group(name=name, actions=tuple(actions))
    if not raw_groups and isinstance(data.get("groups", {}), dict):
        problems.append("groups: no group is configured (add a [groups.NAME] table with at least one action)")
    if problems:
        raise ConfigError(path, problems)
    return Config(path=path, aws=aws, groups=groups)


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
    return tomllib


def check_file_security(st: os.stat_result) -> Optional[str]:
    """Like keepalived's script security: the file must be the running user's (or root's) and
    writable by nobody else."""
    problem = ownership_problem(st)
    return f"refusing a configuration file {problem}" if problem else None


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file (use --config or AWS_VRRP_NOTIFY_CONFIG)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot open: {exc.strerror}"


def _read_config_file(path: str) -> Tuple[os.stat_result, bytes]:
    """The file's status and up to 1 MiB + 1 bytes of it; never blocks, never follows a symlink.

    lstat comes first so that a device node is never even opened (opening some has side
    effects); the descriptor is then checked to be that same regular file."""
    if not path:
        raise ConfigError(path, ["empty path (give -c PATH or AWS_VRRP_NOTIFY_CONFIG)"])
    try:
        before = os.lstat(path)
    except OSError as exc:
        raise ConfigError(path, [_open_problem(exc)]) from None
    if stat.S_ISLNK(before.st_mode):
        raise ConfigError(path, ["is a symbolic link; it is not followed (give the path of the file itself)"])
    if stat.S_ISDIR(before.st_mode):
        raise ConfigError(path, ["is a directory, not a configuration file"])
    if not stat.S_ISREG(before.st_mode):
        raise ConfigError(path, [f"not a regular file ({file_kind(before.st_mode)})"])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(path, [_open_problem(exc)]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise ConfigError(path, ["replaced while being opened; try again"])
        insecure = check_file_security(st)
        if insecure:
            raise ConfigError(path, [insecure])
        chunks = []
        left = MAX_FILE_SIZE + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    finally:
        os.close(fd)
    return st, b"".join(chunks)


def _too_deep(document: Any) -> bool:
    """Nested deeper than MAX_DEPTH (iteratively: no recursion limit to hit)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def _decode(path: str, raw: bytes) -> Dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(path, [f"line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})"]) from None
    tomllib = _toml_module()
    too_deep = ConfigError(path, [f"nested more than {MAX_DEPTH} levels deep; this is not a configuration file"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"TOML syntax error: {exc}"]) from None
    except RecursionError:
        raise too_deep from None
    if _too_deep(data):
        raise too_deep
    return data


def _cache_entry(path: str, st: os.stat_result, raw: bytes) -> Tuple[str, str]:
    """(cache entry name, validity key) of the decoded document of ``path``.

    The key binds the entry to the file's identity and to a hash of the very bytes just
    read from the checked descriptor, so a cached document is only ever one decoded from
    this file's current content (the cache directory itself is checked by state.py)."""
    import hashlib

    name = "config-" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]
    key = (f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:"
           f"{hashlib.sha256(raw).hexdigest()}")
    return name, key


def load(path: str, cache: Any = None) -> Config:
    """Read, decode and validate ``path``; raises ConfigError with every problem found.

    ``cache`` (a state.StateStore) keeps the decoded document of an unchanged file: decoding
    needs tomllib, whose import costs ~5-8 ms of a keepalived transition. A cached document
    is validated again every time."""
    st, raw = _read_config_file(path)
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError(path, ["larger than 1 MiB; this is not a configuration file"])
    name = key = None
    if cache is not None:
        name, key = _cache_entry(path, st, raw)
        cached = cache.cache_get(name)
        if cached and cached.get("key") == key and isinstance(cached.get("document"), dict):
            return parse(cached["document"], path)
    data = _decode(path, raw)
    config = parse(data, path)
    if cache is not None:
        cache.cache_put(name, {"key": key, "document": data})  # only a valid document is kept
    return config
