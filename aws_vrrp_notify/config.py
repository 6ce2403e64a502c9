"""TOML configuration file -> typed, validated objects.

Every problem names the file and the key path (``groups.VI_1.change-route[0].destination``);
all problems of a file are reported at once. Nothing here touches AWS, IMDS or netlink.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

DEFAULT_CONFIG_PATH = "/etc/aws-vrrp-notify/config.toml"
DEFAULT_DEADLINE = 30.0
MAX_DEADLINE = 3600.0
DEFAULT_CONSISTENCY_WINDOW = 5.0
MAX_CONSISTENCY_WINDOW = 120.0
DEFAULT_REASSERT_INTERVAL = 10.0
MAX_REASSERT_INTERVAL = 3600.0
MAX_GROUP_NAME = 128
MAIN_VRF = "main"


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, path: str, problems: Sequence[str]):
        self.path = path
        self.problems = list(problems)
        super().__init__("\n".join(f"{path}: {p}" for p in self.problems))


# ---------------------------------------------------------------- value checkers
# A checker takes the raw TOML value and returns the normalised value, or raises
# ValueError with a message that completes "<key path>: ...".


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {_describe(value)}")
    if not value:
        raise ValueError("must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{_describe(value)} contains control characters")
    return value


def ipv4_address(value: Any) -> str:
    text = _string(value)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{_describe(text)} is not an IPv4 address") from None
    if addr.version != 4:
        raise ValueError(f"{_describe(text)} is an IPv6 address; an IPv4 address is required")
    return str(addr)


def ip_prefix(value: Any) -> str:
    text = _string(value)
    if "/" not in text:
        raise ValueError(f"{_describe(text)} is not a prefix (expected address/length, e.g. 0.0.0.0/0)")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"{_describe(text)} has host bits set (did you mean "
                             f"{ipaddress.ip_network(text, strict=False)}?)") from None
        raise ValueError(f"{_describe(text)} is not an IPv4 or IPv6 prefix") from None
    return str(net)


def ipv4_prefix(value: Any) -> str:
    text = ip_prefix(value)
    if ipaddress.ip_network(text).version != 4:
        raise ValueError(f"{_describe(text)} is an IPv6 prefix; AWS subnets are named by their IPv4 CIDR")
    return text


_HEX = frozenset("0123456789abcdef")


def _aws_id(prefix: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _string(value)
        head, _, digits = text.partition("-")
        if head != prefix or not 8 <= len(digits) <= 17 or not set(digits) <= _HEX:
            raise ValueError(f"{_describe(text)} is not a {prefix} id ({prefix}-0123456789abcdef0)")
        return text

    return check


subnet_id = _aws_id("subnet")
route_table_id = _aws_id("rtb")
allocation_id = _aws_id("eipalloc")


def subnet_ref(value: Any) -> str:
    """An AWS subnet by id (subnet-...) or by its IPv4 CIDR."""
    text = _string(value)
    if text.startswith("subnet-"):
        return subnet_id(text)
    try:
        return ipv4_prefix(text)
    except ValueError as exc:
        raise ValueError(f"{exc}; expected a subnet id (subnet-...) or an IPv4 CIDR") from None


_IFNAME_MAX = 15  # IFNAMSIZ - 1


def interface_name(value: Any) -> str:
    text = _string(value)
    if len(text) > _IFNAME_MAX:
        raise ValueError(f"{_describe(text)} is longer than {_IFNAME_MAX} characters (Linux interface name)")
    if text in (".", "..") or any(c in text for c in "/:") or any(c.isspace() for c in text):
        raise ValueError(f"{_describe(text)} is not a valid Linux interface name")
    return text


def vrf_name(value: Any) -> str:
    text = _string(value)
    if len(text) > 255 or text in (".", "..") or "/" in text or any(c.isspace() for c in text):
        raise ValueError(f"{_describe(text)} is not a valid VRF or network namespace name")
    return text


def _matching(pattern: str, what: str) -> "Callable[[Any], str]":
    """A checker for strings matching ``pattern`` (compiled on first use: off the BACKUP path)."""

    def check(value: Any) -> str:
        import re

        text = _string(value)
        if not re.match(pattern, text):
            raise ValueError(f"{_describe(text)} is not {what}")
        return text

    return check


region_name = _matching(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$", "an AWS region name (e.g. eu-west-3)")
endpoint_url = _matching(r"^https?://[^\s/]+(/\S*)?$", "an http(s) URL")
role_arn = _matching(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$",
                     "an IAM role ARN (arn:aws:iam::123456789012:role/name)")


def deadline_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number of seconds, got {type(value).__name__} {_describe(value)}")
    if not 0 < value <= MAX_DEADLINE or value != value:
        raise ValueError(f"{value} is out of range (0 < deadline <= {MAX_DEADLINE:g} seconds)")
    return float(value)


def _seconds_in(low: float, high: float, what: str, zero_allowed: bool = False) -> "Callable[[Any], float]":
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number of seconds, got {type(value).__name__} {_describe(value)}")
        if value != value or not (low <= value <= high or (zero_allowed and value == 0)):
            also = " or 0 to turn it off" if zero_allowed else ""
            raise ValueError(f"{value} is out of range ({what}: {low:g} to {high:g} seconds{also})")
        return float(value)
    return check


# How long a describe call or the metadata service may lag an accepted write.
consistency_window_seconds = _seconds_in(0, MAX_CONSISTENCY_WINDOW, "consistency-window")
# fifo mode re-checks groups recorded MASTER this often; 0 turns re-checking off.
reassert_interval_seconds = _seconds_in(1, MAX_REASSERT_INTERVAL, "reassert-interval", zero_allowed=True)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type(value).__name__} {_describe(value)}")
    return value


def profile_name(value: Any) -> str:
    text = _string(value)
    if any(c.isspace() for c in text):
        raise ValueError(f"{_describe(text)} contains white space")
    return text


# ---------------------------------------------------------------- schema


class Frozen:
    """A small immutable value object: attributes set once by __init__, compared by value.

    (dataclasses would do, but importing them costs ~15 ms on the keepalived path.)"""

    __slots__ = ()

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__,) + self._values())

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({args})"

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


class Field(Frozen):
    """One key of a TOML table: its name, checker, default, and whether it is required."""

    __slots__ = ("key", "check", "default", "required", "attr")

    def __init__(self, key: str, check: Callable[[Any], Any], default: Any = None, required: bool = False):
        self._set(key=key, check=check, default=default, required=required, attr=key.replace("-", "_"))


def read_table(table: Any, fields: Sequence[Field], where: str, problems: List[str]) -> Optional[Dict[str, Any]]:
    """Check a TOML table against ``fields``; returns attr -> value, or None if not a table."""
    if not isinstance(table, dict):
        problems.append(f"{where}: expected a table, got {type(table).__name__}")
        return None
    known = {f.key: f for f in fields}
    values: Dict[str, Any] = {}
    for key in table:
        if key not in known:
            hint = ""
            if key.replace("_", "-") in known:
                hint = f" (keys are spelled with dashes: {key.replace('_', '-')})"
            problems.append(f"{where}.{key}: unknown key{hint}")
    for f in fields:
        if f.key not in table:
            if f.required:
                problems.append(f"{where}: missing required key {f.key!r}")
            values[f.attr] = f.default
            continue
        try:
            values[f.attr] = f.check(table[f.key])
        except ValueError as exc:
            problems.append(f"{where}.{f.key}: {exc}")
            values[f.attr] = f.default
    return values


class AwsSettings(Frozen):
    """[aws]; ``prepare``: backup/fault/stop resolve in the background what the next master needs."""

    __slots__ = ("region", "endpoint_url", "profile", "role_arn", "deadline", "prepare",
                 "consistency_window", "reassert_interval")

    def __init__(self, region: Optional[str] = None, endpoint_url: Optional[str] = None,
                 profile: Optional[str] = None, role_arn: Optional[str] = None,
                 deadline: float = DEFAULT_DEADLINE, prepare: bool = True,
                 consistency_window: float = DEFAULT_CONSISTENCY_WINDOW,
                 reassert_interval: float = DEFAULT_REASSERT_INTERVAL):
        self._set(region=region, endpoint_url=endpoint_url, profile=profile, role_arn=role_arn,
                  deadline=deadline, prepare=prepare, consistency_window=consistency_window,
                  reassert_interval=reassert_interval)


AWS_FIELDS = (
    Field("region", region_name),
    Field("endpoint-url", endpoint_url),
    Field("profile", profile_name),
    Field("role-arn", role_arn),
    Field("deadline", deadline_seconds, DEFAULT_DEADLINE),
    Field("prepare", boolean, True),
    Field("consistency-window", consistency_window_seconds, DEFAULT_CONSISTENCY_WINDOW),
    Field("reassert-interval", reassert_interval_seconds, DEFAULT_REASSERT_INTERVAL),
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
            problems.append(f"{key}: unknown key (expected [aws] and [groups.NAME] tables)")
    aws_values = read_table(data.get("aws", {}), AWS_FIELDS, "aws", problems) or {}
    aws = AwsSettings(**aws_values) if aws_values else AwsSettings()

    groups: Dict[str, Group] = {}
    raw_groups = data.get("groups", {})
    owners: Dict[Tuple[Any, ...], str] = {}  # action identity -> where it was first seen
    if not isinstance(raw_groups, dict):
        problems.append(f"groups: expected a table of groups, got {type(raw_groups).__name__}")
        raw_groups = {}
    for name, body in raw_groups.items():
        where = f"groups.{name}"
        bad_name = _check_group_name(name)
        if bad_name:
            problems.append(f"{where}: {bad_name}")
        if not isinstance(body, dict):
            problems.append(f"{where}: expected a table of actions, got {type(body).__name__}")
            continue
        actions = []
        problems_before = len(problems)
        for key, entries in body.items():
            cls = ACTION_TYPES.get(key)
            if cls is None:
                problems.append(f"{where}.{key}: unknown action type (expected one of "
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
        if not actions and len(problems) == problems_before:
            problems.append(f"{where}: group has no action")
        groups[name] = Group(name=name, actions=tuple(actions))
    if problems:
        raise ConfigError(path, problems)
    return Config(path=path, aws=aws, groups=groups)


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python < 3.11 only
        import tomli as tomllib
    return tomllib


def check_file_security(path: str, st: os.stat_result) -> Optional[str]:
    """Like keepalived's script security: as root, the file must be root's and not writable by others."""
    if os.geteuid() != 0:
        return None
    if st.st_uid != 0:
        return "refusing a configuration file not owned by root (chown root)"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "refusing a configuration file writable by group or others (chmod go-w)"
    return None


def _cached_document(cache_dir: Optional[str], path: str, st: os.stat_result):
    """(cache file, key, document or None): the decoded TOML kept from an earlier run.

    Decoding needs tomllib, whose import (regex compiles) costs ~5-8 ms of a keepalived
    transition; an unchanged file (same inode, size, mtime, ctime) is read back as JSON."""
    if not cache_dir:
        return None, None, None
    import hashlib
    import json

    name = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"config-{name}.json")
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    try:
        with open(cache) as fh:
            cached = json.load(fh)
        if cached.get("key") == key and isinstance(cached.get("document"), dict):
            return cache, key, cached["document"]
    except (OSError, ValueError, AttributeError):
        pass
    return cache, key, None


def _store_document(cache: Optional[str], key: Optional[str], data: Dict[str, Any]) -> None:
    if not cache:
        return
    import json

    tmp = f"{cache}.{os.getpid()}.tmp"
    old_umask = os.umask(0o077)  # the state directory is private (state.py makes it so too)
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key, "document": data}, fh)
        os.replace(tmp, cache)
    except (OSError, TypeError, ValueError):  # e.g. TOML dates are not JSON: just no cache
        try:
            os.unlink(tmp)
        except OSError:
            pass
    finally:
        os.umask(old_umask)


def load(path: str, cache_dir: Optional[str] = None) -> Config:
    """Read, decode and validate ``path``; raises ConfigError with every problem found.

    With ``cache_dir`` (the state directory's cache), an unchanged file is not decoded again;
    it is always validated again."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(path, ["not a regular file"])
            insecure = check_file_security(path, st)
            if insecure:
                raise ConfigError(path, [insecure])
            cache, key, document = _cached_document(cache_dir, path, st)
            if document is not None:
                return parse(document, path)
            raw = fh.read((1 << 20) + 1)
    except FileNotFoundError:
        raise ConfigError(path, ["no such file (use --config or AWS_VRRP_NOTIFY_CONFIG)"]) from None
    except IsADirectoryError:
        raise ConfigError(path, ["is a directory, not a configuration file"]) from None
    except PermissionError:
        raise ConfigError(path, ["permission denied"]) from None
    if len(raw) > 1 << 20:
        raise ConfigError(path, ["larger than 1 MiB; this is not a configuration file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(path, [f"line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})"]) from None
    tomllib = _toml_module()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"TOML syntax error: {exc}"]) from None
    config = parse(data, path)
    _store_document(cache, key, data)  # only a valid document is kept
    return config
