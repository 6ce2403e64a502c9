"""assign-private-ip: a secondary private IPv4 address (the VRRP virtual IP) moved to this ENI."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Optional, Tuple

from ..schema import Field, ipv4_address
from .base import INTERFACE, VRF, Action, LocalEni, Observation, Target

if TYPE_CHECKING:
    from ..ec2 import Ec2, Snapshot
    from ..imds import ImdsClient
    from ..permissions import Probe, Prober


class AssignPrivateIp(Action):
    TYPE: ClassVar[str] = "assign-private-ip"
    FIELDS: ClassVar[Tuple[Field, ...]] = (Field("ip", ipv4_address, required=True), INTERFACE, VRF)
    OPERATIONS: ClassVar[Tuple[str, ...]] = ("AssignPrivateIpAddresses",)

    ip: str

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.ip)

    def describe(self) -> str:
        return f"{self.TYPE} {self.ip} interface {self.interface} vrf {self.vrf}"

    def moved_addresses(self) -> Tuple[str, ...]:
        return (self.ip,)

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

    def unconfirmed(self, imds: ImdsClient, local: LocalEni) -> Optional[str]:
        """EC2 moves a private IP asynchronously: confirmed once local-ipv4s lists it."""
        if self.ip in imds.local_ipv4s(local.mac):
            return None
        return (f"assigned to {local.eni_id}, but the metadata service's local-ipv4s for {local.mac} "
                "does not list it")

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        """AssignPrivateIpAddresses has no DryRun: a no-op request re-assigns to the ENI an
        address it already holds (the VIP when this instance holds it, else its primary
        address, which EC2 refuses with a parameter error *after* the IAM check)."""
        from ..imds import ImdsError
        from ..permissions import Probe

        eni = snap.enis.get(local.eni_id)
        try:  # without DescribeNetworkInterfaces, the metadata service knows the ENI's addresses
            held = [p["PrivateIpAddress"] for p in eni.get("PrivateIpAddresses", [])] if eni else \
                prober.imds.local_ipv4s(local.mac)
        except ImdsError as exc:
            return Probe(False, f"NOT PROBED: the addresses of {local.eni_id} are unknown: {exc}")
        address = self.ip if self.ip in held else (held[0] if held else None)
        if address is None:
            return Probe(False, "NOT PROBED: no address of the ENI is known for a no-op request")
        return prober.no_op("assign_private_ip_addresses", NetworkInterfaceId=target["eni"],
                            PrivateIpAddresses=[address], AllowReassignment=False)
