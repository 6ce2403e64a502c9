"""Value checkers and typed records for the configuration file, shared by config.py and the
action types (actions/): a checker takes a raw TOML value and returns it normalised, or
raises ValueError with a message that completes "<key path>: ...".
"""

from __future__ import annotations

import ipaddress
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

MIN_DEADLINE = 1.0  # a metadata request alone may take a second: see aws-vrrp-notify.toml(5)
MAX_DEADLINE = 3600.0
MAX_CONSISTENCY_WINDOW = 120.0
MAX_REASSERT_INTERVAL = 3600.0
MAIN_VRF = "main"


# ---------------------------------------------------------------- value checkers
# A checker takes the raw TOML value and returns the normalised value, or raises
# ValueError with a message that completes "<key path>: ...".


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """``text`` with control characters escaped (\\n, \\u001b...): one line of output stays one."""
    if text.isprintable():
        return text
    return "".join(_ESCAPES.get(c) or (c if c.isprintable() else f"\\u{ord(c):04x}") for c in text)


def key_text(key: str) -> str:
    """A TOML key as written in a key path: bare when it is plain printable ASCII, else quoted
    with escapes, so that no key can break a problem line in two."""
    if key and all(32 < ord(c) < 127 and c not in '"\\' for c in key):
        return key
    return '"' + escape_controls(key.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {_describe(value)}")
    if not value:
        raise ValueError("must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{_describe(value)} contains control characters")
    return value


def _ip_address(version: int) -> "Callable[[Any], str]":
    """A checker for one IP version's addresses, normalised (2001:DB8::0100 -> 2001:db8::100)."""
    other = 10 - version  # 4 <-> 6

    def check(value: Any) -> str:
        text = _string(value)
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{_describe(text)} is not an IPv{version} address") from None
        if addr.version != version:
            raise ValueError(f"{_describe(text)} is an IPv{other} address; an IPv{version} address is required")
        return str(addr)

    return check


ipv4_address = _ip_address(4)
ipv6_address = _ip_address(6)


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


prefix_list_id = _aws_id("pl")


def route_destination(value: Any) -> str:
    """A route's destination: an IPv4 or IPv6 prefix, or a managed prefix list id (pl-...)."""
    text = _string(value)
    if text.lower().startswith("pl-"):
        try:
            return prefix_list_id(text)
        except ValueError:
            raise ValueError(f"{_describe(text)} is not a prefix list id (pl-0123456789abcdef0)") from None
    return ip_prefix(text)


TAG_KEY_MAX, TAG_VALUE_MAX = 128, 256  # EC2's limits for a tag's key and value


def tag_pair(value: Any) -> str:
    """A resource tag as ``Key=Value`` (split at the first "="; the value may be empty)."""
    text = _string(value)
    key, equals, tag_value = text.partition("=")
    if not equals or not key:
        raise ValueError(f"{_describe(text)} is not a tag as Key=Value (e.g. ha-group=VI_1)")
    if len(key) > TAG_KEY_MAX or len(tag_value) > TAG_VALUE_MAX:
        raise ValueError(f"{_describe(text)} is too long for a tag (key at most {TAG_KEY_MAX} characters, "
                         f"value at most {TAG_VALUE_MAX})")
    return text


def ip_address(value: Any) -> str:
    """An IPv4 or IPv6 address, normalised (2001:DB8::0001 -> 2001:db8::1)."""
    text = _string(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{_describe(text)} is not an IPv4 or IPv6 address") from None


_ZONE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def hosted_zone_id(value: Any) -> str:
    """A Route 53 hosted zone id (Z0123456789ABCDEFGHIJ); "/hostedzone/" before it is dropped."""
    text = _string(value)
    zone = text[len("/hostedzone/"):] if text.startswith("/hostedzone/") else text
    if not (1 <= len(zone) <= 32 and set(zone) <= _ZONE_CHARS):
        raise ValueError(f"{_describe(text)} is not a Route 53 hosted zone id (upper-case letters and "
                         "digits, e.g. Z0123456789ABCDEFGHIJ)")
    return zone


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def dns_name(value: Any) -> str:
    """A fully qualified DNS name, lower-case, without the final dot (a first label "*" is a
    wildcard); international names in their ASCII (xn--) form."""
    text = _string(value)
    name = text.lower()[:-1] if text.endswith(".") else text.lower()
    if not name.isascii():
        raise ValueError(f"{_describe(text)} is not ASCII: write an international name in its "
                         "xn-- form (punycode)")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2:
        raise ValueError(f"{_describe(text)} is not a fully qualified DNS name (at least two labels, "
                         "at most 253 characters)")
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not 1 <= len(label) <= 63 or not set(label) <= _LABEL_CHARS:
            raise ValueError(f"{_describe(text)} has an invalid label {_describe(label)} (1 to 63 letters, "
                             "digits, - or _)")
    return name


MAX_TTL = 2147483647  # Route 53's largest TTL


def ttl_seconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number of seconds, got {type(value).__name__} {_describe(value)}")
    if not 0 <= value <= MAX_TTL:
        raise ValueError(f"{value} is out of range (0 to {MAX_TTL} seconds)")
    return value


_IFNAME_MAX = 15  # IFNAMSIZ - 1


def interface_name(value: Any) -> str:
    text = _string(value)
    if len(text.encode("utf-8")) > _IFNAME_MAX:
        raise ValueError(f"{_describe(text)} is longer than {_IFNAME_MAX} bytes (Linux interface name)")
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
    if not MIN_DEADLINE <= value <= MAX_DEADLINE:  # also false for NaN
        raise ValueError(f"{value} is out of range ({MIN_DEADLINE:g} <= deadline <= {MAX_DEADLINE:g} seconds)")
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
            problems.append(f"{where}.{key_text(key)}: unknown key{hint}")
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
