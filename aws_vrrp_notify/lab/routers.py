"""The two-router namespace layout of the lab, on top of a :class:`~.cloud.Cloud` topology.

::

    <prefix>-vpc        bridges "lan" (10.0.1.1/24) and "wan" (10.0.2.1/24): the VPC fabric
    <prefix>-r1         eth0 10.0.1.11/24 (MAC = r1 ENI #0, lan), eth1 10.0.2.11/24 (MAC = r1 ENI #1, wan)
                        lo: 127.0.0.1 (moto + this router's IMDS) and 169.254.169.254/32 (IMDS on :80)
    <prefix>-r1-blue    "VRF" of r1: ens9 10.0.1.21/24 (MAC = r1 ENI #2, lan)
    <prefix>-r2, <prefix>-r2-blue   the same with .12 / .22

Every listening socket is created inside the router namespace and served by
this process; nothing is added to the root namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .cloud import Cloud, InstanceInfo
from .imds import IMDS
from .netns import Netns, ip

__all__ = ["Router", "build_routers", "INTERFACES"]

# interface name -> (device index, namespace role)
INTERFACES = {"eth0": (0, "main"), "eth1": (1, "main"), "ens9": (2, "vrf")}
BRIDGE_OF = {0: "lan", 1: "wan", 2: "lan"}
VRF_SHORT = "blue"


@dataclass
class Router:
    name: str                   # "r1"
    ns: str                     # network namespace of the router ("main" VRF)
    vrf: str                    # network namespace standing for the VRF (use as vrf = "..." in configs)
    instance: InstanceInfo
    moto_url: str               # valid inside ns
    imds_url: str               # valid inside ns (127.0.0.1:<port>)
    imds: IMDS
    link_local_imds: bool = False   # IMDS also at http://169.254.169.254/ inside ns
    addrs: dict[str, str] = field(default_factory=dict)   # ifname -> IPv4 address
    interfaces: dict[str, tuple[int, str]] = field(default_factory=lambda: dict(INTERFACES))  # as INTERFACES

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id

    def eni(self, ifname: str = "eth0") -> str:
        return self.instance.enis[self.interfaces[ifname][0]]

    def mac(self, ifname: str = "eth0") -> str:
        return self.instance.macs[self.interfaces[ifname][0]]

    def ns_of(self, ifname: str) -> str:
        return self.vrf if self.interfaces[ifname][1] == "vrf" else self.ns

    def env(self) -> dict[str, str]:
        """The AWS endpoint variables the tool needs inside ``ns``."""
        return {"AWS_ENDPOINT_URL_EC2": self.moto_url, "AWS_ENDPOINT_URL_ROUTE_53": self.moto_url,
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_url}


def build_routers(cloud: Cloud, nets: Netns, names=("r1", "r2"), *, link_local_imds: bool = True) -> dict[str, Router]:
    """Create the namespaces and servers for ``names`` (instances of ``cloud.build_topology()``)."""
    topo = cloud.build_topology()
    vpc = nets.add("vpc")
    nets.bridge(vpc, "lan", addrs=("10.0.1.1/24",))
    nets.bridge(vpc, "wan", addrs=("10.0.2.1/24",))
    routers = {}
    for name in names:
        inst = topo.instances[name]
        lo = ("169.254.169.254/32",) if link_local_imds else ()
        ns = nets.add(name, loopback_addrs=lo)
        vrf = nets.add(f"{name}-{VRF_SHORT}")
        addrs = {}
        for ifname, (idx, role) in INTERFACES.items():
            target = vrf if role == "vrf" else ns
            addr = f"{inst.private_ips[idx]}/24"
            addrs[ifname] = inst.private_ips[idx]
            nets.veth(target, ifname, mac=inst.macs[idx], addrs=(addr,), peer_ns=vpc,
                      peer_name=f"{name}-{ifname}", peer_master=BRIDGE_OF[idx])
        moto_url = cloud.serve_moto_in(ns)
        imds_url = cloud.serve_imds_in(ns, name)
        if link_local_imds:
            cloud.serve_imds_in(ns, name, "169.254.169.254", 80)
        routers[name] = Router(name, ns, vrf, inst, moto_url, imds_url, cloud.imds(name), link_local_imds, addrs)
    return routers


def check_router(r: Router) -> list[str]:
    """Problems with a router's namespaces (missing namespace/interface, wrong MAC, link down)."""
    problems = []
    namespaces = sorted({r.ns, r.vrf})
    for ns in namespaces:
        if not os.path.exists(f"/run/netns/{ns}"):
            problems.append(f"namespace {ns} is missing")
    if problems:
        return problems
    links = {}
    for ns in namespaces:
        for line in ip("-br", "link", ns=ns, check=False).splitlines():
            parts = line.split()
            if len(parts) >= 3:
                links[(ns, parts[0].split("@")[0])] = (parts[1], parts[2])
    for ifname in r.interfaces:
        ns = r.ns_of(ifname)
        got = links.get((ns, ifname))
        if got is None:
            problems.append(f"{ns}: interface {ifname} is missing")
        elif got[1] != r.mac(ifname):
            problems.append(f"{ns}: {ifname} has MAC {got[1]}, expected {r.mac(ifname)}")
        elif got[0] not in ("UP", "UNKNOWN"):
            problems.append(f"{ns}: {ifname} is {got[0]}")
    return problems
