"""assign-ipv6-address: an IPv6 address (a dual-stack or IPv6 virtual IP) moved to this ENI.

EC2 has no reassignment flag for IPv6: AssignIpv6Addresses refuses an address that another
ENI holds. So a move is two writes: UnassignIpv6Addresses on the ENI that holds the address
(found with one DescribeNetworkInterfaces filtered on the address), then AssignIpv6Addresses
on ours. Between them the address is on no ENI. Unassigning is asynchronous, so an assign
refused because the address is still "in use" is tried again, re-reading the holder each
time, until the transition's deadline; if it still fails, the error says plainly that the
address was taken from its holder and is now on no ENI (``check`` reports it CRITICAL).

In a split brain both instances may run the pair at once; each ends after one successful
assign, or when the address went meanwhile to a third ENI that it did not take it from, and
the verification of transition.py decides who keeps the group (docs/consistency.md).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import ClassVar, Iterable, List, Optional, Tuple

from ..schema import Field, ipv6_address
from .base import INTERFACE, VRF, AddressAction, LocalEni, Observation, Target

if TYPE_CHECKING:
    from ..ec2 import AwsError, Ec2, Snapshot
    from ..imds import ImdsClient
    from ..permissions import Probe, Prober

IN_USE_CODES = frozenset({"InvalidIPAddress.InUse", "InvalidParameterValue"})


def normal(address: str) -> str:
    """An address as the configuration holds it (EC2 and the metadata service may differ in case
    or zero compression)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def ipv6s_of(eni: dict) -> List[str]:
    """The IPv6 addresses an ENI (a DescribeNetworkInterfaces item) lists, normalised."""
    return [normal(a["Ipv6Address"]) for a in eni.get("Ipv6Addresses", []) if a.get("Ipv6Address")]


def holders(ip: str, enis: Iterable[dict]) -> List[str]:
    """The ids of the ENIs that list ``ip`` in their Ipv6Addresses, in the order given."""
    return [e["NetworkInterfaceId"] for e in enis if ip in ipv6s_of(e)]


def _in_use(exc: AwsError) -> bool:
    """EC2 refused the assign because another ENI holds the address (or still does: unassigning
    is asynchronous)."""
    return exc.code in IN_USE_CODES and (exc.code != "InvalidParameterValue" or "use" in exc.message.lower()
                                         or "assigned" in exc.message.lower())


class AssignIpv6Address(AddressAction):
    TYPE: ClassVar[str] = "assign-ipv6-address"
    FIELDS: ClassVar[Tuple[Field, ...]] = (Field("ip", ipv6_address, required=True), INTERFACE, VRF)
    OPERATIONS: ClassVar[Tuple[str, ...]] = ("UnassignIpv6Addresses", "AssignIpv6Addresses")

    def apply(self, ec2: Ec2, target: Target) -> str:
        return Move(ec2, self.ip, target["eni"]).run()

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        held_by = holders(self.ip, snap.enis.values())
        others = [h for h in held_by if h != target["eni"]]
        if others:
            return Observation(False, others[0], f"{self.ip} is assigned to {', '.join(others)}, not to "
                                                 f"{target['eni']} ({self.interface})")
        if held_by:
            return Observation(True, target["eni"])
        return Observation(False, None, f"{self.ip} is not assigned to any ENI of the VPC")

    def unconfirmed(self, imds: ImdsClient, local: LocalEni) -> Optional[str]:
        """Confirmed once the metadata service's ipv6s of the interface lists the address."""
        if self.ip in [normal(a) for a in imds.ipv6s(local.mac)]:
            return None
        return f"assigned to {local.eni_id}, but the metadata service's ipv6s for {local.mac} does not list it"

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        """Neither call has DryRun (botocore's model): each is proved with a request that changes
        nothing whatever EC2 answers. AssignIpv6Addresses re-assigns to the ENI an address it
        already holds; UnassignIpv6Addresses unassigns from the ENI its subnet's first address
        (the Subnet-Router anycast address, which no ENI holds). Any answer but a denial proves
        the permission."""
        from ..permissions import Probe

        assign = self._probe_assign(prober, target, local, snap)
        unassign = self._probe_unassign(prober, target, local, snap)
        return Probe(assign.ok and unassign.ok, f"AssignIpv6Addresses {assign.text}; "
                                                f"UnassignIpv6Addresses {unassign.text}")

    def _probe_assign(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        from ..imds import ImdsError
        from ..permissions import Probe

        eni = snap.enis.get(local.eni_id)
        try:  # without DescribeNetworkInterfaces, the metadata service knows the ENI's addresses
            held = ipv6s_of(eni) if eni else [normal(a) for a in prober.imds.ipv6s(local.mac)]
        except ImdsError as exc:
            return Probe(False, f"NOT PROBED: the IPv6 addresses of {local.eni_id} are unknown: {exc}")
        address = self.ip if self.ip in held else (held[0] if held else None)
        if address is None:
            return Probe(False, f"NOT PROBED: {local.eni_id} holds no IPv6 address to re-assign in a no-op "
                                "request (run it where the address is, or give the ENI an address of its own)")
        return prober.no_op("assign_ipv6_addresses", NetworkInterfaceId=target["eni"], Ipv6Addresses=[address])

    def _probe_unassign(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        import ipaddress

        from ..imds import ImdsError
        from ..permissions import Probe

        try:
            blocks = prober.imds.mac_data(local.mac, "subnet-ipv6-cidr-blocks").split()
            anycast = str(ipaddress.ip_network(blocks[0], strict=False).network_address) if blocks else None
        except (ImdsError, ValueError) as exc:
            return Probe(False, f"NOT PROBED: the IPv6 CIDR of the subnet of {local.eni_id} is unknown: {exc}")
        eni = snap.enis.get(local.eni_id)
        if anycast is None or (eni and anycast in ipv6s_of(eni)):
            return Probe(False, f"NOT PROBED: no address that {local.eni_id} does not hold is known for a "
                                "no-op request (its subnet has no IPv6 CIDR block?)")
        return prober.no_op("unassign_ipv6_addresses", NetworkInterfaceId=target["eni"], Ipv6Addresses=[anycast])


class Move:
    """One move of ``ip`` to ``eni``: unassign from the holders, then assign, within the deadline."""

    def __init__(self, ec2: Ec2, ip: str, eni: str):
        self.ec2, self.ip, self.eni = ec2, ip, eni
        self.taken_from: List[str] = []  # the ENIs we unassigned it from
        self.attempts = 0

    def run(self) -> str:
        from ..ec2 import AwsError

        while True:
            try:
                return self._attempt()
            except AwsError as exc:
                self._wait_or_give_up(exc)

    def _attempt(self) -> str:
        held_by = holders(self.ip, self.ec2.paginate(
            "describe_network_interfaces", "NetworkInterfaces",
            Filters=[{"Name": "ipv6-addresses.ipv6-address", "Values": [self.ip]}]))
        others = [h for h in held_by if h != self.eni]
        if self.eni in held_by and not others:
            return self._done("already assigned")
        if self.taken_from and others and not set(others) <= set(self.taken_from):
            # another instance took it after we freed it (a split brain): verification decides
            return f"taken meanwhile by {', '.join(others)} after unassigning it from {', '.join(self.taken_from)}"
        for other in others:
            self._unassign(other)
        self.attempts += 1
        self.ec2.call("assign_ipv6_addresses", write=True, NetworkInterfaceId=self.eni, Ipv6Addresses=[self.ip])
        return self._done("assigned")

    def _done(self, what: str) -> str:
        return f"{what}, unassigned from {', '.join(self.taken_from)} first" if self.taken_from else what

    def _unassign(self, other: str) -> None:
        from ..ec2 import AwsError
        from ..permissions import DENIED

        try:
            self.ec2.call("unassign_ipv6_addresses", write=True, NetworkInterfaceId=other, Ipv6Addresses=[self.ip])
        except AwsError as exc:
            if exc.code in DENIED:
                raise
            return  # already gone from it (our read was late), or no time left: the assign tells
        if other not in self.taken_from:
            self.taken_from.append(other)

    def _wait_or_give_up(self, exc: AwsError) -> None:
        """After a failed step: wait a little before the next attempt, or raise what happened."""
        import time

        from ..ec2 import backoff
        from ..permissions import DENIED

        retry = exc.code not in DENIED and (self.taken_from or _in_use(exc))
        pause = backoff(self.attempts, throttled=False)
        if not retry or pause >= self.ec2.deadline.remaining():
            raise self._stranded(exc) if self.taken_from else exc
        time.sleep(pause)

    def _stranded(self, exc: AwsError) -> AwsError:
        from ..ec2 import AwsError

        return AwsError(exc.operation, exc.code,
                        f"{exc.message}; {self.ip} was unassigned from {', '.join(self.taken_from)} but could not "
                        f"be assigned to {self.eni}, so it is on no ENI now", self.attempts)
