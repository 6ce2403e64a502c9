"""The lab's pair across two Availability Zones: an overlay IP moved with change-route.

A secondary private IP cannot move between subnets, and a subnet lives in one AZ, so a
pair in two AZs shares an *overlay IP*: an address outside the VPC's CIDR
(:data:`OVERLAY_VIP`), held by keepalived on the master's interface and routed to the
master's ENI in the route table of every client subnet (the tables tagged
``ha-group=VI_1``, see :meth:`.cloud.Cloud.build_topology`)::

    <prefix>-fabric   the VPC router: bridges "az-a" (10.0.20.1/24) and "az-b"
                      (10.0.21.1/24), forwarding between them
    <prefix>-ra       eth0 10.0.20.11/24 (MAC = ENI of instance "ra", AZ a), default
                      route via 10.0.20.1; IMDS at 169.254.169.254, moto on 127.0.0.1
    <prefix>-rb       eth0 10.0.21.12/24 (instance "rb", AZ b), via 10.0.21.1

keepalived's unicast adverts cross the fabric from one subnet to the other.
:class:`MultiAzLab` is :class:`.keepalived.Lab` on these two routers.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Optional

from .cloud import Cloud
from .keepalived import GROUP, Lab, _route_eni, read_moto
from .netns import Netns, ip
from .routers import Router

__all__ = ["OVERLAY_VIP", "PAIR", "MultiAzLab", "build_multi_az_routers", "overlay_config", "zone_of"]

OVERLAY_VIP = "172.16.100.1"   # outside the lab VPC's 10.0.0.0/16
PAIR = {"ra": "az-a", "rb": "az-b"}   # router -> its subnet (and AZ)
ONLY_ETH0 = {"eth0": (0, "main")}


def zone_of(cloud: Cloud, name: str) -> str:
    """The Availability Zone of router ``name`` of the pair."""
    return cloud.az if PAIR[name] == "az-a" else cloud.az_b


def _gateway(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


def build_multi_az_routers(cloud: Cloud, nets: Netns) -> Dict[str, Router]:
    """Namespaces for instances "ra" and "rb", in two subnets joined by a forwarding fabric."""
    topo = cloud.build_topology()
    fabric = nets.add("fabric")
    for key in PAIR.values():
        nets.bridge(fabric, key, addrs=(f"{_gateway(topo.subnet_cidrs[key])}/24",))
    ip("netns", "exec", fabric, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    routers = {}
    for name, key in PAIR.items():
        inst = topo.instances[name]
        ns = nets.add(name, loopback_addrs=("169.254.169.254/32",))
        addr = inst.private_ips[0]
        nets.veth(ns, "eth0", mac=inst.macs[0], addrs=(f"{addr}/24",), peer_ns=fabric, peer_name=f"{name}-eth0",
                  peer_master=key)
        ip("route", "add", "default", "via", _gateway(topo.subnet_cidrs[key]), ns=ns)
        moto_url = cloud.serve_moto_in(ns)
        imds_url = cloud.serve_imds_in(ns, name)
        cloud.serve_imds_in(ns, name, "169.254.169.254", 80)
        routers[name] = Router(name, ns, ns, inst, moto_url, imds_url, cloud.imds(name), True, {"eth0": addr},
                               dict(ONLY_ETH0))
    return routers


def overlay_config(topo, group: str = GROUP) -> str:
    """The group's actions: the overlay IP's route in every client subnet's table."""
    return f"""[[groups.{group}.change-route]]
route-table-tag = "{topo.route_table_tag}"
destination = "{OVERLAY_VIP}/32"
interface = "eth0"
"""


class MultiAzLab(Lab):
    """:class:`.keepalived.Lab` with the routers "ra" (priority 150) and "rb" in two AZs."""

    PRIORITIES = {"ra": 150, "rb": 100}
    VIRTUAL_ADDRESS = f"{OVERLAY_VIP}/32"

    def build_routers(self, nets) -> Dict[str, object]:
        return build_multi_az_routers(self.cloud, nets)

    def tool_config(self, name: str) -> str:
        return (f"# aws-vrrp-notify configuration of lab router {name} (two Availability Zones)\n"
                f"[aws]\ndeadline = {self.deadline:g}\n\n[groups.{GROUP}]\n\n"
                + overlay_config(self.cloud.topology))

    def aws_view(self) -> Dict[str, Optional[str]]:
        """Which router the overlay IP's route of each client table targets (None: nobody)."""
        t = self.cloud.topology
        owner = {r.eni("eth0"): name for name, r in self.routers.items()}
        names = {t.route_tables[k]: k for k in ("client-a", "client-b")}
        return read_moto(lambda: {f"change-route {names[rtb]} {OVERLAY_VIP}/32":
                                  owner.get(_route_eni(self.cloud.backend, rtb, f"{OVERLAY_VIP}/32"))
                                  for rtb in t.tagged_route_tables})
