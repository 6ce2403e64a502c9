"""Interface + VRF -> MAC: netlink parsing (VRF devices, which this kernel cannot create) and
real namespaces (VRFs modelled as network namespaces)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from aws_vrrp_notify import links
from aws_vrrp_notify.links import Link, LinkError, find_link, parse_messages


def rtm_newlink(index, name, mac=None, kind=None, master=None, parent=None):
    msg = ifinfmsg()
    msg["index"] = index
    attrs = [("IFLA_IFNAME", name)]
    if mac:
        attrs.append(("IFLA_ADDRESS", mac))
    if master:
        attrs.append(("IFLA_MASTER", master))
    if kind:
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    if parent:
        attrs += [("IFLA_PARENT_DEV_NAME", parent[0]), ("IFLA_PARENT_DEV_BUS_NAME", parent[1])]
    msg["attrs"] = attrs
    msg["header"]["type"] = links.RTM_NEWLINK
    msg.encode()
    return bytes(msg.data)


DONE = links._NLMSGHDR.pack(20, links.NLMSG_DONE, 2, 1, 0) + b"\0\0\0\0"

# A main namespace holding a VRF device "blue" (ifindex 7) with ens7 enslaved, and ens6 unenslaved.
VRF_DUMP = (rtm_newlink(1, "lo", "00:00:00:00:00:00")
            + rtm_newlink(6, "ens6", "0e:00:00:00:00:06", parent=("0000:00:06.0", "pci"))
            + rtm_newlink(7, "blue", "de:ad:be:ef:00:07", kind="vrf")
            + rtm_newlink(8, "ens7", "0e:00:00:00:00:08", master=7)
            + rtm_newlink(9, "br0", "0e:00:00:00:00:09", kind="bridge")
            + rtm_newlink(10, "ens9", "0e:00:00:00:00:0a", master=9)
            + DONE)


def fake_dump(namespace):
    assert namespace is None, "VRF-device lookups read the main namespace"
    return parse_messages(VRF_DUMP)[0]


def test_parse_messages_decodes_every_attribute():
    parsed, done = parse_messages(VRF_DUMP)
    assert done
    by_name = {l.name: l for l in parsed}
    assert by_name["ens6"] == Link(6, "ens6", "0e:00:00:00:00:06", None, None, "0000:00:06.0", "pci")
    assert by_name["blue"].kind == "vrf" and by_name["ens7"].master == 7


def test_vrf_device_branch(monkeypatch):
    monkeypatch.setattr(links, "NETNS_DIR", "/nonexistent-netns-dir")
    assert find_link("ens7", "blue", dump=fake_dump).mac == "0e:00:00:00:00:08"
    with pytest.raises(LinkError, match="interface ens6 is not enslaved to VRF device blue"):
        find_link("ens6", "blue", dump=fake_dump)
    with pytest.raises(LinkError, match="VRF red does not exist: no network namespace /nonexistent-netns-dir/red "
                                        "and no VRF device named red"):
        find_link("ens7", "red", dump=fake_dump)
    with pytest.raises(LinkError, match="VRF br0 does not exist"):  # a bridge is not a VRF
        find_link("ens9", "br0", dump=fake_dump)
    with pytest.raises(LinkError, match=r"interface ens8 does not exist \(vrf blue\)"):
        find_link("ens8", "blue", dump=fake_dump)


def test_main_branch_and_missing_mac(monkeypatch):
    assert find_link("ens6", "main", dump=fake_dump).mac == "0e:00:00:00:00:06"
    with pytest.raises(LinkError, match=r"interface lo \(vrf main\) has no MAC address"):
        find_link("lo", "main", dump=fake_dump)


def test_partial_buffers_wait_for_done():
    first, done = parse_messages(VRF_DUMP[: len(VRF_DUMP) - len(DONE)])
    assert not done and len(first) == 6


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="network namespaces need root and iproute2")


@pytest.fixture
def namespace():
    name = f"avn-t{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@needs_root
def test_namespace_vrf_matches_pyroute2(namespace):
    subprocess.run(["ip", "-n", namespace, "link", "add", "ens9", "address", "02:00:00:aa:bb:cc", "type", "veth",
                    "peer", "name", "peer9"], check=True)
    link = find_link("ens9", namespace)
    assert link.mac == "02:00:00:aa:bb:cc" and link.kind == "veth"
    from pyroute2 import NetNS

    with NetNS(namespace, flags=0) as ns:
        expected = {l.get_attr("IFLA_IFNAME"): l.get_attr("IFLA_ADDRESS") for l in ns.get_links()}
    assert {l.name: l.mac for l in links.links_in(namespace)} == expected
    with pytest.raises(LinkError, match=rf"interface eth5 does not exist \(vrf {namespace}\)"):
        find_link("eth5", namespace)


@needs_root
def test_missing_vrf_is_not_created():
    name = f"avn-missing{uuid.uuid4().hex[:6]}"
    with pytest.raises(LinkError, match=f"VRF {name} does not exist"):
        find_link("eth0", name)
    assert not os.path.exists(f"/run/netns/{name}")


@needs_root
def test_main_namespace_is_the_commands_own(namespace):
    subprocess.run(["ip", "-n", namespace, "link", "add", "eth7", "address", "02:00:00:00:07:07", "type", "veth",
                    "peer", "name", "eth8"], check=True)
    code = "from aws_vrrp_notify.links import mac_of; print(mac_of('eth7'))"
    proc = subprocess.run(["ip", "netns", "exec", namespace, os.sys.executable, "-c", code],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "02:00:00:00:07:07"


def flagged_interrupted(buffer: bytes) -> bytes:
    """The same messages, the first one carrying NLM_F_DUMP_INTR as the kernel sets it."""
    length, kind, flags, seq, pid = links._NLMSGHDR.unpack_from(buffer, 0)
    return links._NLMSGHDR.pack(length, kind, flags | links.NLM_F_DUMP_INTR, seq, pid) + buffer[16:]


class CannedNetlink:
    """Stands in for a netlink socket: each dump request is answered with the next canned buffer."""

    def __init__(self, *answers: bytes):
        self.answers = list(answers)
        self.pending = []
        self.requests = 0

    def sendall(self, data):
        self.requests += 1
        self.pending = [self.answers.pop(0)] if self.answers else []

    def recv(self, size):
        if not self.pending:
            raise socket.timeout("timed out")
        return self.pending.pop(0)

    def gettimeout(self):
        return 0.25


def test_an_interrupted_dump_is_done_again():
    stale = flagged_interrupted(rtm_newlink(6, "ens6-old", "0e:00:00:00:00:66") + DONE)
    sock = CannedNetlink(stale, VRF_DUMP)
    assert [l.name for l in links.dump_links(sock)] == ["lo", "ens6", "blue", "ens7", "br0", "ens9"]
    assert sock.requests == 2
    with pytest.raises(LinkError, match="interrupted 3 times"):
        links.dump_links(CannedNetlink(stale, stale, stale, VRF_DUMP))


def test_a_silent_netlink_socket_is_a_link_error():
    with pytest.raises(LinkError, match=r"did not answer a link dump within 0.25s"):
        links.dump_links(CannedNetlink())


def test_netlink_waits_no_longer_than_the_transitions_deadline(monkeypatch):
    from aws_vrrp_notify.deadline import Deadline
    from aws_vrrp_notify.imds import ImdsClient
    from aws_vrrp_notify.plan import PlanError, local_eni

    timeouts = []
    real = links._netlink_socket

    def recording(timeout=links.DEFAULT_TIMEOUT):
        timeouts.append(timeout)
        return real(timeout)

    monkeypatch.setattr(links, "_netlink_socket", recording)
    imds = ImdsClient(endpoint="http://127.0.0.1:9/", deadline=Deadline(1.5))
    with pytest.raises(PlanError, match="has no MAC address"):  # lo; no metadata request is made
        local_eni(imds, None, "lo", "main")
    assert len(timeouts) == 1 and 1.0 < timeouts[0] <= 1.5


@needs_root
def test_a_stuck_namespace_thread_is_not_waited_for_forever(namespace, monkeypatch):
    real = links._netlink_socket

    def stuck(timeout=links.DEFAULT_TIMEOUT):
        time.sleep(2)
        return real(timeout)

    monkeypatch.setattr(links, "_netlink_socket", stuck)
    started = time.monotonic()
    with pytest.raises(LinkError, match=f"entering network namespace {namespace} did not finish within 0.3s"):
        links.links_in(namespace, timeout=0.3)
    assert time.monotonic() - started < 1.5
    time.sleep(2)  # the late thread closes its socket and ends before the namespace goes
