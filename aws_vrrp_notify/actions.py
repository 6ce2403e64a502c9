"""Action types: one class each, declaring its keys, how it resolves, applies and observes.

Adding an action type means adding one class here and listing it in ACTION_TYPES.
"""

from __future__ import annotations

import ipaddress
from collections import namedtuple
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

from .config import (MAIN_VRF, Field, Frozen, allocation_id, interface_name, ip_prefix, ipv4_address,
                     read_table, route_table_id, subnet_ref, vrf_name)

if TYPE_CHECKING:  # ec2 (and botocore behind it) is only needed once AWS is called
    from .ec2 import Ec2, Snapshot


class ResolveError(Exception):
    """What an action needs cannot be found (route table, Elastic IP, ...)."""


# The ENI behind a local interface, found through its MAC.
LocalEni = namedtuple("LocalEni", "interface vrf mac eni_id vpc_id subnet_id")
# holder: the ENI AWS points to now (None: nothing, or not an ENI).
Observation = namedtuple("Observation", "in_sync holder reason", defaults=("",))


Target = dict  # what resolve() found: eni id plus type-specific AWS ids (Dict[str, Any])


class Action(Frozen):
    """Base of the action types: the values of FIELDS become read-only attributes."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[Tuple[Field, ...]] = ()
    __slots__ = ("__dict__",)

    def __init__(self, **values: Any):
        for f in self.FIELDS:
            object.__setattr__(self, f.attr, values.get(f.attr, f.default))

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f.attr) for f in self.FIELDS)

    def __repr__(self) -> str:
        args = ", ".join(f"{f.attr}={getattr(self, f.attr)!r}" for f in self.FIELDS)
        return f"{type(self).__name__}({args})"

    interface: str
    vrf: str

    # -- configuration

    @classmethod
    def from_table(cls, table: Any, where: str, problems: List[str]) -> Optional["Action"]:
        before = len(problems)
        values = read_table(table, cls.FIELDS, where, problems)
        if values is None:
            return None
        cls.check_values(values, where, problems)
        if len(problems) > before:
            return None
        return cls(**values)

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        """Cross-key rules; single-key rules live in FIELDS."""

    def identity(self) -> Tuple[Any, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": self.TYPE}
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if value is not None:
                out[f.key] = value
        return out

    def depends_on(self, other: "Action") -> bool:
        """True when this action must wait for ``other`` (same group) to be applied."""
        return False

    # -- AWS

    def resolve_reads(self) -> Tuple[str, ...]:
        """Snapshot kinds resolve() needs (beyond the local ENI)."""
        return ()

    def observe_reads(self) -> Tuple[str, ...]:
        return ()

    def resolve(self, local: LocalEni, snap: Snapshot) -> Target:
        return {"eni": local.eni_id}

    def apply(self, ec2: Ec2, target: Target) -> str:
        raise NotImplementedError

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        raise NotImplementedError


def _exactly_one(values: Dict[str, Any], where: str, problems: List[str], first: str, second: str,
                 first_text: str = "") -> None:
    """Exactly one of two keys (a key that was given but invalid counts as given)."""
    a, b = values[first.replace("-", "_")], values[second.replace("-", "_")]
    if a and b:
        problems.append(f"{where}: give either '{first}' or '{second}', not both")
    elif not a and not b and not any(p.startswith((f"{where}.{first}", f"{where}.{second}")) for p in problems):
        problems.append(f"{where}: missing {first_text or repr(first)} or '{second}'")


_INTERFACE = Field("interface", interface_name, required=True)
_VRF = Field("vrf", vrf_name, MAIN_VRF)


class AssignPrivateIp(Action):
    TYPE: ClassVar[str] = "assign-private-ip"
    FIELDS: ClassVar[Tuple[Field, ...]] = (Field("ip", ipv4_address, required=True), _INTERFACE, _VRF)

    ip: str

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.ip)

    def describe(self) -> str:
        return f"{self.TYPE} {self.ip} interface {self.interface} vrf {self.vrf}"

    def observe_reads(self) -> Tuple[str, ...]:
        return ("enis",)

    def apply(self, ec2: Ec2, target: Target) -> str:
        ec2.call("assign_private_ip_addresses", write=True, NetworkInterfaceId=target["eni"],
                 PrivateIpAddresses=[self.ip], AllowReassignment=True)
        return "assigned"

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        holder = snap.holder_of_ip(self.ip)
        if holder == target["eni"]:
            return Observation(True, holder)
        if holder:
            return Observation(False, holder, f"{self.ip} is assigned to {holder}, not to {target['eni']} "
                                              f"({self.interface})")
        return Observation(False, None, f"{self.ip} is not assigned to any ENI of the VPC")


class ChangeRoute(Action):
    TYPE: ClassVar[str] = "change-route"
    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field("subnet", subnet_ref), Field("route-table", route_table_id),
        Field("destination", ip_prefix, required=True), _INTERFACE, _VRF)

    subnet: Optional[str]
    route_table: Optional[str]
    destination: str

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        _exactly_one(values, where, problems, "subnet", "route-table", "'subnet' (CIDR or subnet id)")

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
        from .ec2 import AwsError

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


class AssociateAddress(Action):
    TYPE: ClassVar[str] = "associate-address"
    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field("allocation-id", allocation_id), Field("public-ip", ipv4_address), _INTERFACE,
        Field("private-ip", ipv4_address), _VRF)

    allocation_id: Optional[str]
    public_ip: Optional[str]
    private_ip: Optional[str]

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        _exactly_one(values, where, problems, "allocation-id", "public-ip")

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.allocation_id or self.public_ip)

    def describe(self) -> str:
        text = f"{self.TYPE} {self.allocation_id or self.public_ip} interface {self.interface}"
        if self.private_ip:
            text += f" private-ip {self.private_ip}"
        return f"{text} vrf {self.vrf}"

    def depends_on(self, other: Action) -> bool:
        return isinstance(other, AssignPrivateIp) and self.private_ip == other.ip

    def resolve_reads(self) -> Tuple[str, ...]:
        return () if self.allocation_id else ("addresses",)

    def observe_reads(self) -> Tuple[str, ...]:
        return ("addresses",)

    def resolve(self, local: LocalEni, snap: Snapshot) -> Target:
        if self.allocation_id:
            return {"eni": local.eni_id, "allocation_id": self.allocation_id}
        addr = snap.address(None, self.public_ip)
        if addr is None or not addr.get("AllocationId"):
            raise ResolveError(f"no Elastic IP {self.public_ip} in this account and region")
        return {"eni": local.eni_id, "allocation_id": addr["AllocationId"]}

    def apply(self, ec2: Ec2, target: Target) -> str:
        params: Dict[str, Any] = dict(AllocationId=target["allocation_id"], NetworkInterfaceId=target["eni"],
                                      AllowReassociation=True)
        if self.private_ip:
            params["PrivateIpAddress"] = self.private_ip
        ec2.call("associate_address", write=True, **params)
        return "associated"

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        addr = snap.address(target["allocation_id"], None)
        name = self.allocation_id or self.public_ip
        if addr is None:
            return Observation(False, None, f"Elastic IP {name} not found")
        holder = addr.get("NetworkInterfaceId")
        if holder != target["eni"]:
            if holder:
                return Observation(False, holder, f"Elastic IP {name} is associated with {holder}")
            return Observation(False, None, f"Elastic IP {name} is not associated")
        if self.private_ip and addr.get("PrivateIpAddress") != self.private_ip:
            return Observation(False, holder, f"Elastic IP {name} is on {holder} but private IP "
                                              f"{addr.get('PrivateIpAddress')}, not {self.private_ip}")
        return Observation(True, holder)


ACTION_TYPES: Dict[str, type] = {cls.TYPE: cls for cls in (AssignPrivateIp, ChangeRoute, AssociateAddress)}


def reads_for(actions: Sequence[Action], *phases: str) -> Tuple[str, ...]:
    """Snapshot kinds the actions need for the given phases ("resolve", "observe")."""
    kinds = set()
    for action in actions:
        if "resolve" in phases:
            kinds.update(action.resolve_reads())
        if "observe" in phases:
            kinds.update(action.observe_reads())
    return tuple(sorted(kinds))


__all__ = ["ACTION_TYPES", "Action", "AssignPrivateIp", "AssociateAddress", "ChangeRoute", "LocalEni",
           "Observation", "ResolveError", "Target", "reads_for"]
