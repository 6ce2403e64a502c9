"""Small helpers around ``ip netns`` for the lab and the tests (root only).

Every namespace created through a :class:`Netns` gets its unique prefix, and
:meth:`Netns.cleanup` deletes them all (deleting a namespace also deletes the
veth pairs that have an end in it).  Nothing here adds an interface or an
address to the root namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess

__all__ = ["Netns", "NetnsError", "available", "exists", "listen", "ip"]


class NetnsError(RuntimeError):
    pass


IP = shutil.which("ip") or "/usr/sbin/ip"


def ip(*args: str, ns: str | None = None, check: bool = True, input: str | None = None) -> str:
    """Run ``ip [-n ns] args...``; returns stdout, raises NetnsError on failure."""
    cmd = [IP] + (["-n", ns] if ns else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {p.stderr.strip() or p.returncode}")
    return p.stdout


def batch(commands: list[str], ns: str | None = None) -> None:
    """Run several ``ip`` commands in one process (``ip -batch -``); one command per line."""
    if commands:
        cmd = [IP] + (["-n", ns] if ns else []) + ["-batch", "-"]
        p = subprocess.run(cmd, capture_output=True, text=True, input="\n".join(commands) + "\n")
        if p.returncode != 0:
            raise NetnsError(f"ip -batch: {p.stderr.strip() or p.returncode}\n" + "\n".join(commands))


def available() -> tuple[bool, str]:
    """(True, "") when network namespaces can be created here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if not os.path.exists(IP):
        return False, "iproute2 'ip' command not found"
    name = "avnprobe" + secrets.token_hex(3)
    p = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        return False, f"'ip netns add' failed: {p.stderr.strip()}"
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    return True, ""


def exists(name: str) -> bool:
    return os.path.exists(os.path.join("/run/netns", name))


def listen(ns: str | None, ip_addr: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on (ip_addr, port) inside namespace ``ns`` (None: this namespace).

    The socket is created inside ``ns`` (pyroute2 ``create_socket`` with
    ``flags=0``, so a missing namespace is an error, never created) and can then
    be served from any thread of this process.
    """
    family = socket.AF_INET6 if ":" in ip_addr else socket.AF_INET
    if ns is None:
        s = socket.socket(family, socket.SOCK_STREAM)
    else:
        if not exists(ns):
            raise NetnsError(f"network namespace {ns!r} does not exist")
        from pyroute2.netns import create_socket

        s = create_socket(ns, family, socket.SOCK_STREAM, flags=0)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip_addr, port))
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return s


class Netns:
    """Namespaces (and veths between them) with a unique prefix; ``cleanup()`` removes them."""

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or ("avn" + secrets.token_hex(3))
        self.created: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def add(self, short: str, *, loopback_addrs: tuple[str, ...] = ()) -> str:
        """Create namespace ``<prefix>-<short>`` with ``lo`` up; returns its full name."""
        full = self.name(short)
        ip("netns", "add", full)
        self.created.append(full)
        batch(["link set lo up"] + [f"addr add {a} dev lo" for a in loopback_addrs], ns=full)
        return full

    def veth(self, ns: str, ifname: str, *, mac: str | None = None, addrs: tuple[str, ...] = (),
             peer_ns: str, peer_name: str, peer_master: str | None = None, up: bool = True) -> None:
        """A veth pair: ``ifname`` in ``ns`` (MAC, addresses) and ``peer_name`` in ``peer_ns``.

        ``peer_master`` enslaves the peer to a bridge in ``peer_ns``.
        """
        add = f"link add {ifname}"
        if mac:
            add += f" address {mac}"
        add += f" type veth peer name {peer_name} netns {peer_ns}"
        cmds = [add] + [f"addr add {a} dev {ifname}" for a in addrs]
        if up:
            cmds.append(f"link set {ifname} up")
        batch(cmds, ns=ns)
        peer = []
        if peer_master:
            peer.append(f"link set {peer_name} master {peer_master}")
        if up:
            peer.append(f"link set {peer_name} up")
        batch(peer, ns=peer_ns)

    def bridge(self, ns: str, name: str, *, addrs: tuple[str, ...] = ()) -> None:
        batch([f"link add {name} type bridge", f"link set {name} type bridge stp_state 0 forward_delay 0"]
              + [f"addr add {a} dev {name}" for a in addrs] + [f"link set {name} up"], ns=ns)

    def delete(self, ns: str) -> None:
        subprocess.run([IP, "netns", "del", ns], capture_output=True)
        if ns in self.created:
            self.created.remove(ns)

    def cleanup(self) -> None:
        for ns in reversed(list(self.created)):
            self.delete(ns)
        self.created.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
