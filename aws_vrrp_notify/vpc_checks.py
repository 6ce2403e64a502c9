"""The configured actions against what the VPC really is (validate --environment): the
source/destination check of the ENIs that forward, the virtual IPs against their subnets,
the peer's subnets, and the private address an Elastic IP is associated with.

Facts come from the metadata service (each local ENI's subnet CIDR) and from one
DescribeNetworkInterfaces of the VPCs (every ENI, with its attachment, addresses and
source/destination check); nothing here calls anything.
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from .actions import Action, AssignPrivateIp, AssociateAddress, ChangeRoute, LocalEni
from .config import Config
from .findings import FAIL, PASS, WARN, Finding, not_checked

OVERLAY_FIX = ("for a pair across subnets (or Availability Zones) move an overlay IP instead: a change-route "
               "of a /32 outside the VPC's CIDR to the MASTER's ENI, in the route table of every client subnet")


class VpcFacts(NamedTuple):
    instance_id: Optional[str]
    locals: Dict[Tuple[str, str], LocalEni]   # (interface, vrf) -> its ENI
    cidrs: Dict[str, str]                      # local ENI id -> its subnet's IPv4 CIDR
    enis: Optional[Dict[str, dict]]            # every ENI of the VPCs; None when EC2 did not say
    unknown: str                               # why ``enis`` is None
    unicast_peers: Tuple[str, ...] = ()        # keepalived.conf's unicast_peer addresses

    def local(self, action: Action) -> Optional[LocalEni]:
        return self.locals.get((action.interface, action.vrf))


def _actions(config: Config, kind: type) -> List[Tuple[str, Action]]:
    return [(g.name, a) for g in config.groups.values() for a in g.actions if isinstance(a, kind)]


def _instance_of(eni: Optional[dict]) -> Optional[str]:
    return ((eni or {}).get("Attachment") or {}).get("InstanceId")


def _addresses(eni: dict) -> List[str]:
    return [p.get("PrivateIpAddress") for p in eni.get("PrivateIpAddresses", []) if p.get("PrivateIpAddress")]


def _where(local: LocalEni) -> str:
    vrf = f" vrf {local.vrf}" if local.vrf != "main" else ""
    return f"{local.eni_id} ({local.interface}{vrf})"


def _unresolved(action: Action) -> str:
    return f"interface {action.interface} (vrf {action.vrf}) did not resolve to an ENI (above)"


# ---------------------------------------------------------------- source/destination check


def source_dest_findings(config: Config, facts: VpcFacts) -> List[Finding]:
    """Every ENI that a route targets or that takes a virtual IP forwards traffic that is not
    addressed to it: the VPC drops that traffic while the ENI's source/destination check is on."""
    roles: Dict[str, List[str]] = {}
    for _, action in _actions(config, ChangeRoute) + _actions(config, AssignPrivateIp):
        local = facts.local(action)
        if local is None:
            continue
        role = (f"route {action.destination} targets it" if isinstance(action, ChangeRoute)
                else f"it takes {action.ip}")
        roles.setdefault(_where(local), []).append(role)
    out = []
    for where, why in roles.items():
        eni_id = where.split()[0]
        needed = "; ".join(dict.fromkeys(why))
        eni = (facts.enis or {}).get(eni_id)
        if eni is None:
            reason = facts.unknown if facts.enis is None else f"EC2 does not list {eni_id}"
            out.append(not_checked("source-dest-check", where, reason))
        elif eni.get("SourceDestCheck", True):
            out.append(Finding(FAIL, "source-dest-check", where,
                               f"on, but {needed}: the VPC drops what this ENI forwards",
                               f"aws ec2 modify-network-interface-attribute --network-interface-id {eni_id} "
                               "--no-source-dest-check"))
        else:
            out.append(Finding(PASS, "source-dest-check", where, f"off ({needed})"))
    return out


# ---------------------------------------------------------------- assign-private-ip


def _reserved(ip: ipaddress.IPv4Address, net: ipaddress.IPv4Network) -> bool:
    """AWS keeps the first four addresses and the last one of every subnet."""
    offset = int(ip) - int(net.network_address)
    return offset < 4 or ip == net.broadcast_address


def _primary_holder(enis: Dict[str, dict], ip: str) -> Optional[dict]:
    for eni in enis.values():
        for p in eni.get("PrivateIpAddresses", []):
            if p.get("PrivateIpAddress") == ip and p.get("Primary"):
                return eni
    return None


def _holder_text(enis: Dict[str, dict], ip: str, instance_id: Optional[str]) -> str:
    holders = [e for e in enis.values() if ip in _addresses(e)]
    if not holders:
        return "held by no ENI now"
    eni = holders[0]
    owner = _instance_of(eni)
    whose = "this instance" if owner and owner == instance_id else (owner or "no instance")
    return f"held now by {eni['NetworkInterfaceId']} ({whose})"


def private_ip_findings(config: Config, facts: VpcFacts) -> List[Finding]:
    """Each assign-private-ip address must lie in its ENI's subnet, outside what AWS reserves,
    and be no ENI's primary address (a primary address never moves)."""
    out = []
    for _, action in _actions(config, AssignPrivateIp):
        subject = f"{action.ip} ({action.interface})"
        local = facts.local(action)
        if local is None:
            out.append(not_checked("assign-private-ip", subject, _unresolved(action)))
            continue
        cidr = facts.cidrs.get(local.eni_id)
        if cidr is None:
            out.append(not_checked("assign-private-ip", subject, f"the subnet of {local.eni_id} is unknown"))
            continue
        net, ip = ipaddress.ip_network(cidr), ipaddress.ip_address(action.ip)
        if ip not in net:
            out.append(Finding(FAIL, "assign-private-ip", subject,
                               f"not in {local.subnet_id} ({cidr}), the subnet of {_where(local)}: EC2 refuses to "
                               "assign it there", f"choose an address of {cidr}; {OVERLAY_FIX}"))
            continue
        if _reserved(ip, net):
            out.append(Finding(FAIL, "assign-private-ip", subject,
                               f"reserved by AWS in {cidr} (the first four addresses and the last)",
                               f"choose another address of {cidr}"))
            continue
        if facts.enis is None:
            out.append(not_checked("assign-private-ip", subject,
                                   f"in {cidr}, but whether it is an ENI's primary address is unknown: {facts.unknown}"))
            continue
        primary = _primary_holder(facts.enis, action.ip)
        if primary is not None:
            owner = _instance_of(primary)
            whose = "this instance" if owner == facts.instance_id else (owner or "no instance")
            out.append(Finding(FAIL, "assign-private-ip", subject,
                               f"the primary address of {primary['NetworkInterfaceId']} ({whose}): a primary "
                               "address never moves to another ENI", f"choose a free address of {cidr}"))
            continue
        out.append(Finding(PASS, "assign-private-ip", subject,
                           f"in {local.subnet_id} ({cidr}) of {_where(local)}, no ENI's primary address, "
                           f"{_holder_text(facts.enis, action.ip, facts.instance_id)}"))
    return out


# ---------------------------------------------------------------- the peer's subnets


def _layout(enis: Iterable[dict]) -> Dict[int, Tuple[str, ...]]:
    """Device index -> sorted security group ids, of one instance's ENIs."""
    return {(e.get("Attachment") or {}).get("DeviceIndex"): tuple(sorted(g.get("GroupId", "") for g in e.get("Groups", [])))
            for e in enis}


def find_peers(facts: VpcFacts, our_enis: Sequence[str]) -> Tuple[Set[str], str]:
    """(peer instance ids, how they were found). keepalived's unicast_peer addresses name the
    peers; without them, the peer is the one other instance whose ENIs mirror ours (the same
    device indexes with the same security groups), in whatever subnets."""
    enis = facts.enis or {}
    named = {_instance_of(e) for e in enis.values() if set(_addresses(e)) & set(facts.unicast_peers)}
    named.discard(None)
    named.discard(facts.instance_id)
    if named:
        return named, "keepalived's unicast_peer"  # type: ignore[return-value]
    by_instance: Dict[str, List[dict]] = {}
    for e in enis.values():
        owner = _instance_of(e)
        if owner and owner != facts.instance_id:
            by_instance.setdefault(owner, []).append(e)
    ours = _layout(enis[e] for e in our_enis if e in enis)
    if not ours:
        return set(), "this instance's ENIs are not in EC2's answer"
    mirrors = {i for i, own in by_instance.items() if all(_layout(own).get(k) == v for k, v in ours.items())}
    if len(mirrors) == 1:
        return mirrors, "the one other instance whose ENIs mirror this one's"
    if mirrors:
        return set(), f"{len(mirrors)} instances mirror this one's ENIs ({', '.join(sorted(mirrors))})"
    return set(), "no other instance's ENIs mirror this one's"


def peer_subnet_findings(config: Config, facts: VpcFacts) -> List[Finding]:
    """A secondary IP moves only between ENIs of one subnet: an assign-private-ip whose subnet
    the peer has no ENI in can never reach the peer (multi-AZ pairs need an overlay IP)."""
    actions = _actions(config, AssignPrivateIp)
    if not actions:
        return []
    if facts.enis is None:
        return [not_checked("peer-subnet", f"{a.ip} ({a.interface})", facts.unknown) for _, a in actions]
    our_enis = sorted({l.eni_id for l in facts.locals.values()})
    peers, how = find_peers(facts, our_enis)
    out = []
    for _, action in actions:
        subject = f"{action.ip} ({action.interface})"
        local = facts.local(action)
        if local is None:
            out.append(not_checked("peer-subnet", subject, _unresolved(action)))
            continue
        if not peers:
            out.append(Finding(PASS, "peer-subnet", subject, f"no peer instance identified ({how}; "
                               "keepalived.conf's unicast_peer names it)"))
            continue
        for peer in sorted(peers):
            theirs = [e for e in facts.enis.values() if _instance_of(e) == peer]
            same = [e["NetworkInterfaceId"] for e in theirs if e.get("SubnetId") == local.subnet_id]
            if same:
                out.append(Finding(PASS, "peer-subnet", subject, f"peer {peer} ({how}) has {same[0]} in "
                                   f"{local.subnet_id}: the address can move there"))
                continue
            elsewhere = sorted({f"{e.get('SubnetId')} ({e.get('AvailabilityZone')})" for e in theirs})
            out.append(Finding(WARN, "peer-subnet", subject,
                               f"peer {peer} ({how}) has no ENI in {local.subnet_id}, the subnet of {_where(local)} "
                               f"(its ENIs are in {', '.join(elsewhere) or 'no subnet'}): this address can never "
                               "move to it, since a secondary IP stays in its subnet and a subnet in its "
                               "Availability Zone", OVERLAY_FIX))
    return out


# ---------------------------------------------------------------- associate-address


def elastic_ip_findings(config: Config, facts: VpcFacts, local_ips: Dict[str, List[str]]) -> List[Finding]:
    """An associate-address private-ip must be an address the group moves to that same
    interface, or one the ENI holds; ``local_ips``: the metadata service's addresses per ENI."""
    out = []
    for group, action in _actions(config, AssociateAddress):
        name = action.allocation_id or action.public_ip
        subject = f"{name} ({action.interface})"
        local = facts.local(action)
        if local is None:
            out.append(not_checked("associate-address", subject, _unresolved(action)))
            continue
        if not action.private_ip:
            out.append(Finding(PASS, "associate-address", subject, f"to the primary address of {_where(local)}"))
            continue
        moved = [a for a in config.groups[group].actions if isinstance(a, AssignPrivateIp) and a.ip == action.private_ip]
        here = [a for a in moved if (a.interface, a.vrf) == (action.interface, action.vrf)]
        held = set(local_ips.get(local.eni_id, [])) | set(_addresses((facts.enis or {}).get(local.eni_id, {})))
        if here:
            out.append(Finding(PASS, "associate-address", subject,
                               f"private-ip {action.private_ip} is moved to {_where(local)} by the group's "
                               "assign-private-ip"))
        elif moved:
            out.append(Finding(FAIL, "associate-address", subject,
                               f"private-ip {action.private_ip} is moved by the group to interface "
                               f"{moved[0].interface} (vrf {moved[0].vrf}), not to {_where(local)}: EC2 refuses to "
                               "associate an address the ENI does not hold",
                               "use the same interface and vrf in both actions"))
        elif action.private_ip in held:
            out.append(Finding(PASS, "associate-address", subject,
                               f"private-ip {action.private_ip} is held by {_where(local)}"))
        else:
            out.append(Finding(FAIL, "associate-address", subject,
                               f"private-ip {action.private_ip} is neither moved by group {group} nor held by "
                               f"{_where(local)}: EC2 refuses the association",
                               "add an assign-private-ip of that address to the group, or name one of "
                               f"{', '.join(sorted(held)) or 'the ENI addresses'}"))
    return out
