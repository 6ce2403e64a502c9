"""update-dns: a Route 53 record (A or AAAA) made to point to this instance (UPSERT).

``value`` names the address: ``private`` (the interface's primary private IPv4),
``public`` (the public IPv4 associated with it), ``ipv6`` (its first IPv6 address), or a
literal address that another action of the group moves to the same interface. The record
points here when it holds that address (for a literal: and the address is on this
interface's ENI); its holder is the ENI that holds the address it names.

Every record of a group in one hosted zone is written with one ChangeResourceRecordSets
(batch_key / apply_batch): Route 53 allows five requests a second per account. The change
is not waited for: Route 53 answers PENDING until its name servers have it (INSYNC,
logged when the answer already says so), and the record itself is verified like every
action, by reading it back (ListResourceRecordSets, the "records" snapshot kind).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

from ..schema import Field, _describe, dns_name, hosted_zone_id, ip_address, ttl_seconds
from .base import INTERFACE, VRF, Action, LocalEni, Observation, ResolveError, Target

if TYPE_CHECKING:
    from ..ec2 import Ec2, Snapshot
    from ..permissions import Probe, Prober

KEYWORDS = ("private", "public", "ipv6")
DEFAULT_TTL = 10
COMMENT = "aws-vrrp-notify"
# validate --permissions writes this value: Route 53 refuses it (it is no address) only
# after IAM has allowed the request, so the answer proves the permission and changes nothing.
PROBE_VALUE = "aws-vrrp-notify-permission-probe"


def record_value(value: Any) -> str:
    """private, public, ipv6, or an IPv4 or IPv6 address (normalised)."""
    if value in KEYWORDS:
        return value
    try:
        return ip_address(value)
    except ValueError:
        raise ValueError(f"expected private, public, ipv6 or an IP address, got {_describe(value)}") from None


def _same_address(a: Optional[str], b: Optional[str]) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(a or "") == ipaddress.ip_address(b or "")
    except ValueError:
        return a == b


def address_of_eni(eni: Optional[Dict[str, Any]], value: str) -> Optional[str]:
    """The address ``value`` (a keyword) names on ``eni`` (a DescribeNetworkInterfaces item)."""
    if not eni:
        return None
    if value == "private":
        return eni.get("PrivateIpAddress")
    if value == "public":
        return (eni.get("Association") or {}).get("PublicIp")
    ipv6s = eni.get("Ipv6Addresses", [])
    first = next((a for a in ipv6s if a.get("IsPrimaryIpv6")), ipv6s[0] if ipv6s else {})
    return first.get("Ipv6Address")


class UpdateDns(Action):
    TYPE: ClassVar[str] = "update-dns"
    FIELDS: ClassVar[Tuple[Field, ...]] = (
        Field("zone-id", hosted_zone_id, required=True), Field("name", dns_name, required=True),
        Field("value", record_value, required=True), INTERFACE, VRF, Field("ttl", ttl_seconds, DEFAULT_TTL))
    SERVICE: ClassVar[str] = "route53"
    OPERATIONS: ClassVar[Tuple[str, ...]] = ("ChangeResourceRecordSets",)
    STALE_CODES: ClassVar[frozenset] = frozenset()

    zone_id: str
    name: str
    value: str
    ttl: int

    @property
    def literal(self) -> bool:
        return self.value not in KEYWORDS

    @property
    def record_type(self) -> str:
        return "AAAA" if self.value == "ipv6" or ":" in (self.value or "") else "A"

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.zone_id, self.name, self.record_type)

    def describe(self) -> str:
        return (f"{self.TYPE} {self.name} {self.record_type} {self.value} zone {self.zone_id} "
                f"interface {self.interface} vrf {self.vrf}")

    def check_group(self, group: Sequence[Action], where: str, problems: List[str]) -> None:
        """A literal value must be an address that another action of the group moves to this
        action's interface: the record follows the address, which that action moves."""
        if not self.literal:
            return
        movers = [a for a in group if a is not self and any(_same_address(self.value, m)
                                                              for m in a.moved_addresses())]
        if not movers:
            problems.append(f"{where}.value: {self.value} is not an address that another action of this group "
                            "moves (assign-private-ip ip, associate-address public-ip, ...); for this "
                            "interface's own address use private, public or ipv6")
        elif not any((a.interface, a.vrf) == (self.interface, self.vrf) for a in movers):
            mover = movers[0]
            problems.append(f"{where}.value: {self.value} is moved to interface {mover.interface} (vrf "
                            f"{mover.vrf}) by {mover.TYPE}, not to this action's interface {self.interface} "
                            f"(vrf {self.vrf})")

    # -- reads

    def resolve_reads(self) -> Tuple[str, ...]:
        return () if self.literal else ("enis",)

    def observe_reads(self) -> Tuple[str, ...]:
        if self.literal and self.record_type == "A":
            return ("enis", "addresses", "records")  # the address may be an Elastic IP
        return ("enis", "records")

    def read_keys(self) -> Dict[str, Tuple[Any, ...]]:
        return {"records": ((self.zone_id, self.name, self.record_type),)}

    def resolve(self, local: LocalEni, snap: Snapshot) -> Target:
        target: Target = {"eni": local.eni_id, "zone": self.zone_id}
        if self.literal:
            target["address"] = self.value
            return target
        address = address_of_eni(snap.enis.get(local.eni_id), self.value)
        if not address:
            raise ResolveError(f"{local.eni_id} ({self.interface}) has no {self._value_text()}")
        target.update(address=address, address_of=local.eni_id)
        return target

    def _value_text(self) -> str:
        return {"private": "primary private IPv4 address", "public": "public IPv4 address",
                "ipv6": "IPv6 address"}.get(self.value, self.value)

    # -- writes

    def batch_key(self, target: Target) -> Optional[Tuple[Any, ...]]:
        return (target["zone"],)

    def apply(self, ec2: Ec2, target: Target) -> str:
        return self.apply_batch(ec2, [(self, target)])

    @classmethod
    def apply_batch(cls, ec2: Ec2, items: Sequence[Tuple[Action, Target]]) -> str:
        """One ChangeResourceRecordSets (UPSERT) for records of one hosted zone."""
        from ..logsetup import log

        zone = items[0][1]["zone"]
        records = [(action, action._address_for(ec2, target)) for action, target in items]  # type: ignore[attr-defined]
        changes = [action._change(address) for action, address in records]  # type: ignore[attr-defined]
        answer = ec2.for_service("route53").call("change_resource_record_sets", write=True, HostedZoneId=zone,
                                                 ChangeBatch={"Comment": COMMENT, "Changes": changes})
        info = answer.get("ChangeInfo") or {}
        status, change = info.get("Status", "?"), str(info.get("Id", "?")).rsplit("/", 1)[-1]
        written = ", ".join(f"{a.name} {a.record_type} {address}" for a, address in records)  # type: ignore[attr-defined]
        if status == "INSYNC":
            log.info("Route 53 change %s of zone %s (%s) is INSYNC", change, zone, written)
        return f"upserted {written} in zone {zone} (change {change} {status})"

    def _change(self, address: str) -> Dict[str, Any]:
        return {"Action": "UPSERT", "ResourceRecordSet": {
            "Name": self.name, "Type": self.record_type, "TTL": self.ttl,
            "ResourceRecords": [{"Value": address}]}}

    def _address_for(self, ec2: Ec2, target: Target) -> str:
        """The address to write for target["eni"]. A hand-back to the peer re-targets the
        action at the peer's ENI: its own address is then read (DescribeNetworkInterfaces)."""
        if self.literal or target.get("address_of") == target["eni"]:
            return target["address"]
        enis = ec2.call("describe_network_interfaces", NetworkInterfaceIds=[target["eni"]]).get(
            "NetworkInterfaces", [])
        address = address_of_eni(enis[0] if enis else None, self.value)
        if not address:
            from ..plan import PlanError

            raise PlanError(f"{target['eni']} has no {self._value_text()}")
        return address

    # -- observation

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        where = f"{self.name} {self.record_type} in zone {self.zone_id}"
        record = snap.records.get((self.zone_id, self.name, self.record_type))
        if record is None:
            return Observation(False, None, f"no record {where}")
        if record.get("AliasTarget") or record.get("SetIdentifier"):
            return Observation(False, None, f"record {where} is an alias or has a routing policy "
                                            "(update-dns writes simple records only)")
        values = [r.get("Value", "") for r in record.get("ResourceRecords", [])]
        expected, eni = target["address"], target["eni"]
        if len(values) != 1 or not _same_address(values[0], expected):
            holder = self._holder(snap, values[0]) if len(values) == 1 else None
            held = f" ({holder})" if holder else ""
            return Observation(False, holder, f"record {where} is {', '.join(values) or 'empty'}{held}, "
                                              f"not {expected} ({eni}, {self.interface})")
        holder = self._holder(snap, expected) if self.literal else eni
        if holder != eni:
            return Observation(False, holder, f"record {where} is {expected}, but {expected} is on "
                                              f"{holder or 'no ENI'}, not on {eni} ({self.interface})")
        if record.get("TTL") != self.ttl:
            return Observation(False, holder, f"record {where} has TTL {record.get('TTL')}, not {self.ttl}")
        return Observation(True, holder)

    @staticmethod
    def _holder(snap: Snapshot, address: str) -> Optional[str]:
        try:
            return snap.holder_of_address(address)
        except ValueError:  # the record holds something that is no address
            return None

    # -- validate --permissions

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        """Route 53 has no DryRun: an UPSERT of this very record (same zone, name, type and
        action, so IAM conditions on them apply) with a value that is no address. Route 53
        checks the value only after IAM allowed the request, and refuses it."""
        from ..ec2 import AwsError
        from ..permissions import DENIED, Probe

        change = self._change(PROBE_VALUE)
        try:
            prober.ec2.for_service("route53").call(
                "change_resource_record_sets", HostedZoneId=self.zone_id,
                ChangeBatch={"Comment": f"{COMMENT} validate --permissions", "Changes": [change]})
        except AwsError as exc:
            if exc.code in DENIED:
                return Probe(False, f"DENIED: {exc.code}: {exc.message}")
            if exc.code == "NoSuchHostedZone":
                return Probe(False, f"FAILED: {exc.message}", unresolved=True)
            if "not permitted in zone" in exc.message:  # allowed, but the name is not in that zone
                return Probe(False, f"FAILED: {exc.message}", unresolved=True)
            if exc.code in ("InvalidChangeBatch", "InvalidInput"):
                return Probe(True, f"allowed (an UPSERT of a value that is no address was refused after the "
                                   f"IAM check: {exc.code})")
            return Probe(False, f"NOT PROVED: {exc}")
        return Probe(False, f"NOT REFUSED: the endpoint accepted an UPSERT that Route 53 refuses: {self.name} "
                            f"{self.record_type} in zone {self.zone_id} now holds {PROBE_VALUE!r}; run master "
                            "to write it back", carried_out=True)
