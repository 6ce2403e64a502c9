"""assign-ipv6-address: an IPv6 address (a dual-stack or IPv6 virtual IP) moved to this ENI.

EC2 has no reassignment flag for IPv6: AssignIpv6Addresses refuses an address that another
ENI holds. So a move is two writes: UnassignIpv6Addresses on the ENI that holds the address
(found with one DescribeNetworkInterfaces filtered on the address), then AssignIpv6Addresses
on ours. Between them the address is on no ENI. Unassigning is asynchronous, so an assign
refused because the address is still "in use" is tried again, re-reading the holder each
time, until the transition's deadline; if it still fails, the error says plainly that the
address was taken from its holder and is now on no ENI (``check`` reports it CRITICAL).
When the read says the address is ours already, nothing is unassigned but the assign is
still sent (the read may lag); if EC2 refuses it as in use and a new read says ours, done.

In a split brain both instances may run the pair at once; each ends after one successful
assign, or when the address went meanwhile to a third ENI that it did not take it from, and
the verification of transition.py decides who keeps the group (docs/consistency.md).
"""

from __future__ import annotations

import ipaddress

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
# After EC2 refused an assign as in use, how many reads in a row must show the address here
# before it counts as ours (a single read may come from a lagging replica).
HERE_READS = 2


def normal(address: str) -> str:
    """An address as the configuration holds it (EC2 and the metadata service may differ in case
    or zero compression)."""
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
        already holds (its own, else the action's); UnassignIpv6Addresses unassigns from the ENI its subnet's first address
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
        # the ENI's own address first: it never moves, so even a stale read cannot make this a move
        own = [a for a in held if a != self.ip]
        address = own[0] if own else (self.ip if held else None)
        if address is None:
            return Probe(False, f"NOT PROBED: {local.eni_id} holds no IPv6 address to re-assign in a no-op "
                                "request (run it where the address is, or give the ENI an address of its own)")
        return prober.no_op("assign_ipv6_addresses", NetworkInterfaceId=target["eni"], Ipv6Addresses=[address])

    def _probe_unassign(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
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
        self.attempts = 0  # assigns sent
        self.here_reads = 0  # reads in a row showing it here after a refused assign

    def run(self) -> str:
        from ..ec2 import AwsError

        while True:
            try:
                done = self._attempt()
            except AwsError as exc:
                self._wait_or_give_up(exc)
                continue
            if done:
                return done

    def _attempt(self) -> Optional[str]:
        """One read-unassign-assign round: what happened, or None to read again."""
        held_by = holders(self.ip, self.ec2.paginate(
            "describe_network_interfaces", "NetworkInterfaces",
            Filters=[{"Name": "ipv6-addresses.ipv6-address", "Values": [self.ip]}]))
        others = [h for h in held_by if h != self.eni]
        here = self.eni in held_by and not others
        self.here_reads = self.here_reads + 1 if here else 0
        if here and self.attempts:  # an assign was refused, yet the address looks ours
            if self.here_reads >= HERE_READS or not self._pause():
                return self._done("already assigned")
            return None
        if self.taken_from and others and not set(others) <= set(self.taken_from):
            # another instance took it after we freed it (a split brain): verification decides
            return f"taken meanwhile by {', '.join(others)} after unassigning it from {', '.join(self.taken_from)}"
        for other in others:
            self._unassign(other)
        # Assigned even when the read says it is ours: a describe call may lag, and a write
        # that was not made cannot win a split brain. (EC2 may refuse it as in use: see above.)
        self.attempts += 1
        self.here_reads = 0
        self.ec2.call("assign_ipv6_addresses", write=True, NetworkInterfaceId=self.eni, Ipv6Addresses=[self.ip])
        return self._done("assigned again (already here)" if here else "assigned")

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
        from ..permissions import DENIED

        retry = exc.code not in DENIED and (self.taken_from or _in_use(exc))
        if not retry or not self._pause():
            raise self._stranded(exc) if self.taken_from else exc

    def _pause(self) -> bool:
        """Wait a little before the next round; False when the deadline leaves no time for one."""
        import time

        from ..ec2 import backoff

        pause = backoff(self.attempts)
        if pause >= self.ec2.deadline.remaining():
            return False
        time.sleep(pause)
        return True

    def _stranded(self, exc: AwsError) -> AwsError:
        from ..ec2 import AwsError

        return AwsError(exc.operation, exc.code,
                        f"{exc.message}; {self.ip} was unassigned from {', '.join(self.taken_from)} but could not "
                        f"be assigned to {self.eni}, so it is on no ENI now", self.attempts)
