"""change-route: a VPC route (to a prefix or a managed prefix list) made to target this ENI,
in one route table (``subnet``, ``route-table``) or in every table with a tag
(``route-table-tag``).

Target: ``{"eni", "route_table"}`` for one table, ``{"eni", "route_tables": [...]}`` (sorted)
for the tagged tables: one write per table. With several tables the first one decides who
holds the action in a split brain (see Observation in base.py).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Tuple

import ipaddress

from ..schema import Field, route_destination, route_table_id, subnet_ref, tag_pair
from .base import INTERFACE, VRF, Action, LocalEni, Observation, ResolveError, Target, exactly_one

if TYPE_CHECKING:
    from ..ec2 import AwsError, Ec2, Snapshot
    from ..permissions import Probe, Prober


def tables_of(target: Target) -> List[str]:
    """The route table ids of a resolved target, in write order."""
    return list(target["route_tables"]) if "route_tables" in target else [target["route_table"]]


class ChangeRoute(Action):
    TYPE: ClassVar[str] = "change-route"
    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field("subnet", subnet_ref), Field("route-table", route_table_id), Field("route-table-tag", tag_pair),
        Field("destination", route_destination, required=True), INTERFACE, VRF)
    OPERATIONS: ClassVar[Tuple[str, ...]] = ("ReplaceRoute", "CreateRoute")
    STALE_CODES: ClassVar[frozenset] = frozenset({"InvalidNetworkInterfaceID.NotFound",
                                                  "InvalidRouteTableID.NotFound"})

    subnet: Optional[str]
    route_table: Optional[str]
    route_table_tag: Optional[str]
    destination: str

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        exactly_one(values, where, problems, "subnet", "route-table", "route-table-tag",
                    first_text="'subnet' (CIDR or subnet id)")

    @property
    def tables_named(self) -> str:
        """How the configuration names the table(s): a table id, a subnet, or tag:Key=Value."""
        return self.route_table or self.subnet or f"tag:{self.route_table_tag}"

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.tables_named, self.destination)

    def describe(self) -> str:
        return f"{self.TYPE} {self.tables_named} {self.destination} interface {self.interface} vrf {self.vrf}"

    @property
    def destination_key(self) -> str:
        """The API's name for this destination (request parameter and route attribute)."""
        if self.destination.startswith("pl-"):
            return "DestinationPrefixListId"
        if ipaddress.ip_network(self.destination).version == 6:
            return "DestinationIpv6CidrBlock"
        return "DestinationCidrBlock"

    @property
    def ipv6(self) -> bool:
        return self.destination_key == "DestinationIpv6CidrBlock"

    def _reads(self) -> Tuple[str, ...]:
        if self.subnet and not self.subnet.startswith("subnet-"):
            return ("route_tables", "subnets")
        return ("route_tables",)

    def resolve_reads(self) -> Tuple[str, ...]:
        return () if self.route_table else self._reads()

    def observe_reads(self) -> Tuple[str, ...]:
        return self._reads()

    # -- resolution

    def resolve(self, local: LocalEni, snap: Snapshot) -> Target:
        if self.route_table:
            return {"eni": local.eni_id, "route_table": self.route_table}
        if self.route_table_tag:
            return {"eni": local.eni_id, "route_tables": self._tagged_tables(local, snap)}
        subnet = snap.subnet_id_for(self.subnet, local.vpc_id)
        if subnet is None:
            raise ResolveError(f"no subnet {self.subnet} in {local.vpc_id}")
        table = snap.table_for_subnet(subnet, local.vpc_id)
        if table is None:
            raise ResolveError(f"no route table for subnet {self.subnet} in {local.vpc_id} "
                               "(no explicit association and no main table)")
        return {"eni": local.eni_id, "route_table": table}

    def _tagged_tables(self, local: LocalEni, snap: Snapshot) -> List[str]:
        key, _, value = self.route_table_tag.partition("=")
        found = sorted(t["RouteTableId"] for t in snap.route_tables if t.get("VpcId") == local.vpc_id
                       and any(tag.get("Key") == key and tag.get("Value", "") == value
                               for tag in t.get("Tags") or ()))
        if not found:
            raise ResolveError(f"no route table of {local.vpc_id} has the tag {self.route_table_tag}")
        return found

    # -- writes

    def _params(self, rtb: str, eni: str) -> Dict[str, str]:
        return {"RouteTableId": rtb, "NetworkInterfaceId": eni, self.destination_key: self.destination}

    def apply(self, ec2: Ec2, target: Target) -> str:
        tables = tables_of(target)
        if len(tables) == 1:
            return self._apply_table(ec2, tables[0], target["eni"])
        return self._apply_tables(ec2, tables, target["eni"])

    def _apply_tables(self, ec2: Ec2, tables: List[str], eni: str) -> str:
        """One write per table, concurrently; every table is attempted, failures named together."""
        from concurrent.futures import ThreadPoolExecutor

        from ..ec2 import AwsError

        with ThreadPoolExecutor(max_workers=min(8, len(tables)), thread_name_prefix="route") as pool:
            futures = [(rtb, pool.submit(self._apply_table, ec2, rtb, eni)) for rtb in tables]
        done: Dict[str, List[str]] = {}
        failed: List[Tuple[str, AwsError]] = []
        for rtb, future in futures:
            try:
                done.setdefault(future.result(), []).append(rtb)
            except AwsError as exc:
                failed.append((rtb, exc))
        if failed:
            first = failed[0][1]
            text = "; ".join(f"{rtb}: {exc}" for rtb, exc in failed)
            wrote = f" (written: {', '.join(sum(done.values(), []))})" if done else ""
            raise AwsError(first.operation, first.code,
                           f"{len(failed)} of {len(tables)} route tables failed: {text}{wrote}", first.attempts)
        return "; ".join(f"{what} in {', '.join(rtbs)}" for what, rtbs in done.items())

    def _apply_table(self, ec2: Ec2, rtb: str, eni: str) -> str:
        from ..ec2 import AwsError

        params = self._params(rtb, eni)
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

    # -- observation

    def _route(self, table: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        key = self.destination_key
        for route in table.get("Routes", []):
            value = route.get(key)
            if not value:
                continue
            if key == "DestinationPrefixListId":
                if value == self.destination:
                    return route
            elif str(ipaddress.ip_network(value, strict=False)) == self.destination:
                return route
        return None

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        if "route_tables" not in target:
            return self._observe_table(snap, target["route_table"], target["eni"])
        seen = [(rtb, self._observe_table(snap, rtb, target["eni"])) for rtb in target["route_tables"]]
        details = {"route-tables": [dict({"route-table": rtb, "in-sync": o.in_sync},
                                         **({} if o.in_sync else {"reason": o.reason})) for rtb, o in seen]}
        first = seen[0][1].holder
        holders = tuple(sorted({o.holder for _, o in seen if o.holder}))
        drifted = [o.reason for _, o in seen if not o.in_sync]
        if not drifted:
            return Observation(True, first, "", holders, details)
        reason = f"{len(drifted)} of {len(seen)} route tables tagged {self.route_table_tag}: " + "; ".join(drifted)
        return Observation(False, first, reason, holders, details)

    def _observe_table(self, snap: Snapshot, rtb: str, eni: str) -> Observation:
        table = snap.route_table(rtb)
        if table is None:
            return Observation(False, None, f"route table {rtb} not found")
        route = self._route(table)
        if route is None:
            return Observation(False, None, f"no route {self.destination} in {rtb}")
        holder = route.get("NetworkInterfaceId")
        if holder == eni:
            if route.get("State") == "blackhole":
                return Observation(False, holder, f"route {self.destination} in {rtb} is a blackhole")
            return Observation(True, holder)
        if holder:
            return Observation(False, holder, f"route {self.destination} in {rtb} targets {holder} "
                                              f"of another instance or interface")
        other = next((v for k, v in route.items() if k.endswith("Id") and k != "NetworkInterfaceId"
                      and not k.startswith("Destination") and isinstance(v, str)), "something else")
        return Observation(False, None, f"route {self.destination} in {rtb} targets {other}")

    # -- permissions

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        from ..permissions import Probe

        tables = tables_of(target)
        probes = [self._probe_table(prober, rtb, target, snap) for rtb in tables]
        if len(probes) == 1:
            return probes[0]
        return Probe(all(p.ok for p in probes), "; ".join(f"{rtb}: {p.text}" for rtb, p in zip(tables, probes)),
                     any(p.carried_out for p in probes))

    def _probe_table(self, prober: Prober, rtb: str, target: Target, snap: Snapshot) -> Probe:
        from ..permissions import Probe

        eni = target["eni"]
        params = self._params(rtb, eni)
        change = f"route {self.destination} in {rtb} now points to {eni}"
        was = prober.was(self, snap, {"eni": eni, "route_table": rtb})
        replace = prober.dry_run("replace_route", change + was, **params)
        create = prober.dry_run("create_route", change + " (if it did not exist yet)", **params)
        return Probe(replace.ok and create.ok, f"ReplaceRoute {replace.text}; CreateRoute {create.text}",
                     replace.carried_out or create.carried_out)
