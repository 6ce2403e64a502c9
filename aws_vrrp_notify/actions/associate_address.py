"""associate-address: an Elastic IP associated with this ENI (optionally to a given private IP)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Tuple

from ..schema import Field, allocation_id, ipv4_address
from .base import INTERFACE, VRF, Action, LocalEni, Observation, ResolveError, Target, exactly_one

if TYPE_CHECKING:
    from ..ec2 import Ec2, Snapshot
    from ..permissions import Probe, Prober


class AssociateAddress(Action):
    TYPE: ClassVar[str] = "associate-address"
    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field("allocation-id", allocation_id), Field("public-ip", ipv4_address), INTERFACE,
        Field("private-ip", ipv4_address), VRF)
    OPERATIONS: ClassVar[Tuple[str, ...]] = ("AssociateAddress",)
    STALE_CODES: ClassVar[frozenset] = frozenset({"InvalidNetworkInterfaceID.NotFound",
                                                  "InvalidAllocationID.NotFound",
                                                  "InvalidAssociationID.NotFound"})

    allocation_id: Optional[str]
    public_ip: Optional[str]
    private_ip: Optional[str]

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        exactly_one(values, where, problems, "allocation-id", "public-ip")

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.allocation_id or self.public_ip)

    def describe(self) -> str:
        text = f"{self.TYPE} {self.allocation_id or self.public_ip} interface {self.interface}"
        if self.private_ip:
            text += f" private-ip {self.private_ip}"
        return f"{text} vrf {self.vrf}"

    def moved_addresses(self) -> Tuple[str, ...]:
        """The Elastic IP, when it is named by its address (an allocation id says nothing offline)."""
        return (self.public_ip,) if self.public_ip else ()

    def depends_on(self, other: Action) -> bool:
        """An Elastic IP on a secondary address waits for the action that moves that address here."""
        return other.TYPE == "assign-private-ip" and self.private_ip == getattr(other, "ip", None)

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

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        params = {"AllocationId": target["allocation_id"], "NetworkInterfaceId": target["eni"],
                  "AllowReassociation": True}
        change = f"Elastic IP {target['allocation_id']} is now associated with {target['eni']}"
        return prober.dry_run("associate_address", change + prober.was(self, snap, target), **params)
