"""The demo's group: every kind of thing the tool moves, in one failover.

:class:`EveryActionLab` is :class:`.keepalived.Lab` whose group ``VI_1`` moves, besides the
lab's default actions (the IPv4 and IPv6 VIPs, the wan and lan routes, the Elastic IP):

* ``change-route`` of the managed prefix list (``topology.prefix_list``, "lab-clients") in
  the lan route table, via eth0;
* ``change-route`` with ``route-table-tag`` (``topology.route_table_tag``): the default
  route of every client subnet's table (client-a and client-b, two Availability Zones),
  via eth0;
* ``update-dns``: the A record :data:`RECORD` of the lab VPC's private hosted zone
  (``topology.zone_id``), the master's eth0 address.

The plain :class:`.keepalived.Lab` keeps the shorter group: most end-to-end tests are about
keepalived and the tool's core, and every action more costs each of their transitions.
"""

from __future__ import annotations

from typing import Dict, Optional

from .cloud import LAB_ZONE
from .keepalived import GROUP, Lab, _route_eni, read_moto

__all__ = ["EveryActionLab", "RECORD", "CLIENT_DESTINATION", "CLIENT_SUBNETS", "every_action_config", "record_values"]

RECORD = f"master.{LAB_ZONE}"      # the record update-dns points to the master
CLIENT_DESTINATION = "0.0.0.0/0"   # the client subnets' default route, in every tagged table
CLIENT_SUBNETS = ("client-a", "client-b")


def every_action_config(topo, group: str = GROUP) -> str:
    """The actions EveryActionLab adds to the lab's default group."""
    return f"""
[[groups.{group}.change-route]]
route-table = "{topo.route_tables['lan']}"
destination = "{topo.prefix_list}"
interface = "eth0"

[[groups.{group}.change-route]]
route-table-tag = "{topo.route_table_tag}"
destination = "{CLIENT_DESTINATION}"
interface = "eth0"

[[groups.{group}.update-dns]]
zone-id = "{topo.zone_id}"
name = "{RECORD}"
value = "private"
interface = "eth0"
"""


class EveryActionLab(Lab):
    """:class:`.keepalived.Lab` with every action type in its group (see the module docstring)."""

    def tool_config(self, name: str) -> str:
        return super().tool_config(name) + every_action_config(self.cloud.topology)

    def aws_view(self) -> Dict[str, Optional[str]]:
        """The lab's view, plus the prefix-list route, each tagged table's route and the record."""
        view = super().aws_view()
        view.update(read_moto(self._more_view))
        return view

    def _more_view(self) -> Dict[str, Optional[str]]:
        t = self.cloud.topology
        backend = self.cloud.backend
        owner = {r.eni("eth0"): name for name, r in self.routers.items()}
        view = {f"change-route lan {t.prefix_list}": owner.get(_route_eni(backend, t.route_tables["lan"],
                                                                         t.prefix_list))}
        for key in CLIENT_SUBNETS:
            view[f"change-route {key} {CLIENT_DESTINATION}"] = owner.get(
                _route_eni(backend, t.route_tables[key], CLIENT_DESTINATION))
        values = record_values(self.cloud, RECORD)
        by_address = {r.addrs["eth0"]: name for name, r in self.routers.items()}
        view[f"update-dns {RECORD}"] = by_address.get(values[0]) if len(values) == 1 else None
        return view


def record_values(cloud, name: str, record_type: str = "A") -> list:
    """The values of record ``name`` of the lab zone, read from moto's Route 53 backend in
    this process (no request): [] when there is no such record."""
    zone = cloud.route53_backend.zones.get(cloud.topology.zone_id)
    fqdn = name.rstrip(".") + "."
    for rrset in list(zone.rrsets if zone is not None else []):
        if rrset.name == fqdn and rrset.type == record_type:
            return list(rrset.records or [])
    return []
