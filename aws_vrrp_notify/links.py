"""Interface + VRF -> link facts (MAC, master, parent device) over rtnetlink.

A small standard-library netlink reader: pyroute2 takes ~150 ms to import, which a
failover cannot afford, while one RTM_GETLINK dump costs a few milliseconds.

``vrf = "main"`` is the namespace the command runs in. Any other VRF name is first a
named network namespace (``/run/netns/NAME``), else a Linux VRF device of that name in
the main namespace with the interface enslaved to it. Nothing is ever created.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections import namedtuple
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .config import MAIN_VRF

NETNS_DIR = "/run/netns"

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP_INTR = 0x10  # the kernel's link list changed during the dump: it may be inconsistent
NLM_F_DUMP = 0x300
DUMP_ATTEMPTS = 3
DEFAULT_TIMEOUT = 5.0  # seconds, when the caller has no deadline of its own
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_EXT_MASK = 29
IFLA_PARENT_DEV_NAME = 56
IFLA_PARENT_DEV_BUS_NAME = 57
IFLA_INFO_KIND = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
CLONE_NEWNET = 0x40000000

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


class LinkError(Exception):
    """An interface or VRF that does not exist or cannot be used."""


Link = namedtuple("Link", "index name mac master kind parent_dev parent_bus", defaults=(None, None, None, None))


def _attrs(data: bytes, offset: int, end: int) -> Iterator[Tuple[int, bytes]]:
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        yield kind & 0x3FFF, data[offset + _RTATTR.size: offset + length]
        offset += (length + 3) & ~3


def _cstring(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_link(payload: bytes) -> Link:
    """Decode the body of one RTM_NEWLINK message (ifinfomsg + attributes)."""
    _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(payload, 0)
    values: Dict[str, object] = {"index": index, "name": "", "mac": None}
    for kind, value in _attrs(payload, _IFINFOMSG.size, len(payload)):
        if kind == IFLA_IFNAME:
            values["name"] = _cstring(value)
        elif kind == IFLA_ADDRESS and value:
            values["mac"] = ":".join(f"{b:02x}" for b in value)
        elif kind == IFLA_MASTER and len(value) >= 4:
            values["master"] = struct.unpack_from("=I", value)[0] or None
        elif kind == IFLA_LINKINFO:
            for sub, subval in _attrs(value, 0, len(value)):
                if sub == IFLA_INFO_KIND:
                    values["kind"] = _cstring(subval)
        elif kind == IFLA_PARENT_DEV_NAME:
            values["parent_dev"] = _cstring(value)
        elif kind == IFLA_PARENT_DEV_BUS_NAME:
            values["parent_bus"] = _cstring(value)
    return Link(**values)  # type: ignore[arg-type]


def dump_interrupted(data: bytes) -> bool:
    """Whether any message of a buffer carries NLM_F_DUMP_INTR."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, _type, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if flags & NLM_F_DUMP_INTR:
            return True
        if length < _NLMSGHDR.size:
            break
        offset += (length + 3) & ~3
    return False


def parse_messages(data: bytes) -> Tuple[List[Link], bool]:
    """Decode a buffer of netlink messages; returns the links and whether NLMSG_DONE was seen."""
    links: List[Link] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        body = data[offset + _NLMSGHDR.size: offset + length]
        if msg_type == NLMSG_DONE:
            return links, True
        if msg_type == NLMSG_ERROR:
            errno = -struct.unpack_from("=i", body)[0]
            if errno:
                raise LinkError(f"netlink error: {os.strerror(errno)}")
        elif msg_type == RTM_NEWLINK:
            links.append(parse_link(body))
        offset += (length + 3) & ~3
    return links, False


def dump_request(seq: int = 1) -> bytes:
    ext_mask = _RTATTR.pack(8, IFLA_EXT_MASK) + struct.pack("=I", RTEXT_FILTER_SKIP_STATS)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + ext_mask
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _dump_once(sock: socket.socket, seq: int) -> Tuple[List[Link], bool]:
    """One RTM_GETLINK dump read to its end: (links, whether the kernel flagged it interrupted)."""
    sock.sendall(dump_request(seq))
    links: List[Link] = []
    interrupted = False
    while True:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            raise LinkError(f"netlink did not answer a link dump within {sock.gettimeout():g}s") from None
        except OSError as exc:
            raise LinkError(f"netlink link dump failed: {exc.strerror or exc}") from None
        if not data:
            raise LinkError("netlink socket closed during a link dump")
        interrupted = interrupted or dump_interrupted(data)
        batch, done = parse_messages(data)
        links.extend(batch)
        if done:
            return links, interrupted


def dump_links(sock: socket.socket) -> List[Link]:
    """Every link; a dump the kernel flags as interrupted (links changing meanwhile) is redone."""
    for seq in range(1, DUMP_ATTEMPTS + 1):
        links, interrupted = _dump_once(sock, seq)
        if not interrupted:
            return links
    raise LinkError(f"the link dump was interrupted {DUMP_ATTEMPTS} times (interfaces keep changing)")


def _netlink_socket(timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.settimeout(timeout)
    sock.bind((0, 0))
    return sock


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _socket_in_netns(name: str, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    """A netlink socket living in the named namespace; the calling thread never moves.

    setns() applies to the calling thread only, so a short-lived thread enters the
    namespace, creates the socket (which stays bound to that namespace) and ends. It is
    waited for at most ``timeout`` seconds; a thread still stuck then is left behind
    (a daemon thread: it never keeps the process alive) and closes what it makes.
    """
    import ctypes

    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LinkError(f"cannot open network namespace {netns_path(name)}: {exc.strerror}") from None
    result: Dict[str, object] = {}
    handover = threading.Lock()  # the caller takes the socket, or the late thread closes it

    def enter_and_create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
            result["sock"] = _netlink_socket(timeout)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc
        finally:
            os.close(fd)
            with handover:
                result["done"] = True
                if "abandoned" in result and "sock" in result:
                    result["sock"].close()  # type: ignore[attr-defined]

    worker = threading.Thread(target=enter_and_create, name=f"netns-{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    with handover:
        if "done" not in result:
            result["abandoned"] = True
            raise LinkError(f"entering network namespace {name} did not finish within {timeout:g}s")
    if "error" in result:
        raise LinkError(str(result["error"]))
    return result["sock"]  # type: ignore[return-value]


def links_in(namespace: Optional[str], timeout: float = DEFAULT_TIMEOUT) -> List[Link]:
    """Every link of a namespace (None: the command's own), within ``timeout`` seconds per step."""
    try:
        sock = _netlink_socket(timeout) if namespace is None else _socket_in_netns(namespace, timeout)
    except OSError as exc:
        raise LinkError(f"cannot open a netlink socket: {exc.strerror or exc}") from None
    with sock:
        return dump_links(sock)


def namespace_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_namespaces() -> List[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if not n.startswith("."))
    except OSError:
        return []


def select_interface(links: List[Link], interface: str, vrf: str, vrf_device_mode: bool) -> Link:
    """Pick ``interface`` from a link dump; in VRF-device mode it must be enslaved to ``vrf``."""
    by_name = {link.name: link for link in links}
    if vrf_device_mode:
        master = by_name.get(vrf)
        if master is None or master.kind != "vrf":
            raise LinkError(f"VRF {vrf} does not exist: no network namespace {netns_path(vrf)} "
                            f"and no VRF device named {vrf}")
        link = by_name.get(interface)
        if link is None:
            raise LinkError(f"interface {interface} does not exist (vrf {vrf})")
        if link.master != master.index:
            raise LinkError(f"interface {interface} is not enslaved to VRF device {vrf}")
    else:
        link = by_name.get(interface)
        if link is None:
            raise LinkError(f"interface {interface} does not exist (vrf {vrf})")
    if not link.mac or link.mac == "00:00:00:00:00:00":
        raise LinkError(f"interface {interface} (vrf {vrf}) has no MAC address")
    return link


def find_link(interface: str, vrf: str = MAIN_VRF,
              dump: Callable[[Optional[str]], List[Link]] = links_in) -> Link:
    """Resolve interface + VRF to its link; ``dump`` is replaceable (tests, a deadline's timeout)."""
    if vrf == MAIN_VRF:
        return select_interface(dump(None), interface, vrf, vrf_device_mode=False)
    if namespace_exists(vrf):
        return select_interface(dump(vrf), interface, vrf, vrf_device_mode=False)
    return select_interface(dump(None), interface, vrf, vrf_device_mode=True)


def mac_of(interface: str, vrf: str = MAIN_VRF, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The MAC address of an interface, each netlink step given at most ``timeout`` seconds."""
    mac = find_link(interface, vrf, dump=lambda namespace: links_in(namespace, timeout)).mac
    assert mac is not None
    return mac
