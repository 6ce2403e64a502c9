"""change-route: a VPC route (to a prefix) made to target this ENI."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Tuple

import ipaddress

from ..schema import Field, ip_prefix, route_table_id, subnet_ref
from .base import INTERFACE, VRF, Action, LocalEni, Observation, ResolveError, Target, exactly_one

if TYPE_CHECKING:
    from ..ec2 import Ec2, Snapshot
    from ..permissions import Probe, Prober


class ChangeRoute(Action):
    TYPE: ClassVar[str] = "change-route"
    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field("subnet", subnet_ref), Field("route-table", route_table_id),
        Field("destination", ip_prefix, required=True), INTERFACE, VRF)
    OPERATIONS: ClassVar[Tuple[str, ...]] = ("ReplaceRoute", "CreateRoute")
    STALE_CODES: ClassVar[frozenset] = frozenset({"InvalidNetworkInterfaceID.NotFound",
                                                  "InvalidRouteTableID.NotFound"})

    subnet: Optional[str]
    route_table: Optional[str]
    destination: str

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        exactly_one(values, where, problems, "subnet", "route-table", "'subnet' (CIDR or subnet id)")

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.route_table or self.subnet, self.destination)

    def describe(self) -> str:
        where = self.route_table or self.subnet
        return f"{self.TYPE} {where} {self.destination} interface {self.interface} vrf {self.vrf}"

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_network(self.destination).version == 6

    def _destination_param(self) -> Dict[str, str]:
        key = "DestinationIpv6CidrBlock" if self.ipv6 else "DestinationCidrBlock"
        return {key: self.destination}

    def resolve_reads(self) -> Tuple[str, ...]:
        if self.route_table:
            return ()
        return ("route_tables", "subnets") if not self.subnet.startswith("subnet-") else ("route_tables",)

    def observe_reads(self) -> Tuple[str, ...]:
        return ("route_tables", "subnets") if self.subnet and not self.subnet.startswith("subnet-") \
            else ("route_tables",)

    def resolve(self, local: LocalEni, snap: Snapshot) -> Target:
        if self.route_table:
            return {"eni": local.eni_id, "route_table": self.route_table}
        subnet = snap.subnet_id_for(self.subnet, local.vpc_id)
        if subnet is None:
            raise ResolveError(f"no subnet {self.subnet} in {local.vpc_id}")
        table = snap.table_for_subnet(subnet, local.vpc_id)
        if table is None:
            raise ResolveError(f"no route table for subnet {self.subnet} in {local.vpc_id} "
                               "(no explicit association and no main table)")
        return {"eni": local.eni_id, "route_table": table}

    def apply(self, ec2: Ec2, target: Target) -> str:
        from ..ec2 import AwsError

        params = dict(RouteTableId=target["route_table"], NetworkInterfaceId=target["eni"],
                      **self._destination_param())
        try:
            ec2.call("replace_route", write=True, **params)
            return "replaced route"
        except AwsError as exc:
            # AWS answers InvalidParameterValue ("There is no route defined for ...") when the
            # route does not exist yet; some endpoints say InvalidRoute.NotFound.
            if exc.code not in ("InvalidParameterValue", "InvalidRoute.NotFound") or (
                    exc.code == "InvalidParameterValue" and "no route" not in exc.message.lower()):
                raise
        try:
            ec2.call("create_route", write=True, **params)
            return "created route"
        except AwsError as exc:
            if exc.code != "RouteAlreadyExists":  # created meanwhile by the peer: take it over
                raise
        ec2.call("replace_route", write=True, **params)
        return "replaced route"

    def _route(self, table: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        key = "DestinationIpv6CidrBlock" if self.ipv6 else "DestinationCidrBlock"
        for route in table.get("Routes", []):
            value = route.get(key)
            if value and str(ipaddress.ip_network(value, strict=False)) == self.destination:
                return route
        return None

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        rtb = target["route_table"]
        table = snap.route_table(rtb)
        if table is None:
            return Observation(False, None, f"route table {rtb} not found")
        route = self._route(table)
        if route is None:
            return Observation(False, None, f"no route {self.destination} in {rtb}")
        holder = route.get("NetworkInterfaceId")
        if holder == target["eni"]:
            if route.get("State") == "blackhole":
                return Observation(False, holder, f"route {self.destination} in {rtb} is a blackhole")
            return Observation(True, holder)
        if holder:
            return Observation(False, holder, f"route {self.destination} in {rtb} targets {holder} "
                                              f"of another instance or interface")
        other = next((v for k, v in route.items() if k.endswith("Id") and k != "NetworkInterfaceId"
                      and isinstance(v, str)), "something else")
        return Observation(False, None, f"route {self.destination} in {rtb} targets {other}")

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        from ..permissions import Probe

        params = {"RouteTableId": target["route_table"], "NetworkInterfaceId": target["eni"],
                  **self._destination_param()}
        change = f"route {self.destination} in {target['route_table']} now points to {target['eni']}"
        replace = prober.dry_run("replace_route", change + prober.was(self, snap, target), **params)
        create = prober.dry_run("create_route", change + " (if it did not exist yet)", **params)
        return Probe(replace.ok and create.ok, f"ReplaceRoute {replace.text}; CreateRoute {create.text}",
                     replace.carried_out or create.carried_out)
