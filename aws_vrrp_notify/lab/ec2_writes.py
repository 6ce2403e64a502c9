"""What EC2 decides at once about a mutating call whose effect it applies later.

:func:`accept` is used by :mod:`.consistency` for a write that will reach moto only
after a lag.  It does three things, from the request's form parameters alone:

* **validates** what EC2 checks synchronously, raising :class:`Rejected` with the code
  and message moto gives for the same mistake: every id the call names must exist
  (ENI, route table, Elastic IP by allocation id or public address, instance, internet
  gateway, association id), addresses must be well formed and inside the ENI's subnet,
  ``ReplaceRoute`` / ``DeleteRoute`` need a route that exists once the writes accepted
  before it have landed, and ``AssignIpv6Addresses`` an address that no other ENI holds
  then (EC2 has no reassignment for IPv6: it refuses an address in use at once);
* names the **resources** the call touches (an ENI, an address, a route table and
  destination, an Elastic IP), so that writes touching the same one land in the
  order they were accepted;
* writes EC2's **success answer** (``<return>true</return>``, plus the ENI and the
  requested addresses for the Assign/Unassign calls and a fresh ``associationId`` for
  ``AssociateAddress``).

Everything that depends on the state other writes leave behind (an address in use
without ``AllowReassignment``, an Elastic IP already associated without
``AllowReassociation``, a ``CreateRoute`` over an existing route, the private address
of ``AssociateAddress`` not being on the ENI) is decided by moto when the write lands;
such a write is reported by :meth:`.consistency.Consistency.failed`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from . import ec2_xml

# Resource keys: ("eni", id) ("ip", normalised address) ("route", rtb, destination) ("eip", allocation id)
Resource = tuple

LAGGABLE = ("AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "AssignIpv6Addresses",
            "UnassignIpv6Addresses", "ReplaceRoute", "CreateRoute", "DeleteRoute", "AssociateAddress",
            "DisassociateAddress", "ModifyNetworkInterfaceAttribute")


class Rejected(Exception):
    """EC2 refuses the call at once (HTTP ``status``, EC2 error ``code``)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status

    def body(self) -> bytes:
        return ec2_xml.error_body(self.code, self.message)


@dataclass(frozen=True)
class Acceptance:
    resources: frozenset
    body: bytes
    association_id: Optional[str] = None   # AssociateAddress: the id answered (moto's is replaced on landing)
    allocation_id: Optional[str] = None    # the Elastic IP an (Dis)AssociateAddress touches


class PendingView:
    """What :func:`accept` needs to know about writes accepted but not landed yet."""

    def route_exists(self, rtb: str, destination: str) -> Optional[bool]:
        """Whether the route exists once pending writes land; None when none touches it."""
        raise NotImplementedError

    def allocation_of(self, association_id: str) -> Optional[str]:
        """Allocation id of an association answered by a pending (or landed) AssociateAddress."""
        raise NotImplementedError

    def ipv6_holders(self, ip: str, now: set) -> set:
        """The ENIs that hold IPv6 address ``ip`` once pending writes land, given those that
        hold it ``now``."""
        raise NotImplementedError


def needs_server_choice(params: Mapping[str, str]) -> bool:
    """Calls where EC2 picks the addresses itself: answered by moto at once (not lagged)."""
    return any(k in params for k in ("SecondaryPrivateIpAddressCount", "Ipv6AddressCount", "Ipv4PrefixCount",
                                     "Ipv6PrefixCount"))


def accept(backend, action: str, params: Mapping[str, str], pending: PendingView) -> Acceptance:
    """Validate ``action`` now; its resources and EC2's success answer.  Raises :class:`Rejected`."""
    try:
        return _ACCEPTORS[action](backend, action, params, pending)
    except Rejected:
        raise
    except Exception as exc:  # moto's own "not found" errors carry EC2's code and message
        code, message = getattr(exc, "code", None), getattr(exc, "message", None)
        if isinstance(code, str) and isinstance(message, str):
            raise Rejected(code, message) from None
        raise


# --------------------------------------------------------------------------- helpers

def _listed(params: Mapping[str, str], prefix: str) -> list[str]:
    """Values of a query-protocol list (``prefix.1``, ``prefix.2``, ...), in order."""
    items = []
    for key, value in params.items():
        head, _, index = key.rpartition(".")
        if head == prefix and index.isdigit():
            items.append((int(index), value))
    return [v for _, v in sorted(items)]


def _address(text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        kind = "private IP address" if version == 4 else "IPv6 address"
        raise Rejected("InvalidParameterValue", f"Invalid {kind} {text!r}")
    return str(addr)


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise Rejected("MissingParameter", f"The request must contain the parameter {name}")
    return value


def _eni(backend, params: Mapping[str, str]):
    return backend.get_network_interface(_required(params, "NetworkInterfaceId"))


# --------------------------------------------------------------------------- ENI addresses

def _private_ips(backend, action, params, pending) -> Acceptance:
    eni = _eni(backend, params)
    ips = [_address(ip, 4) for ip in _listed(params, "PrivateIpAddress")]
    if action == "AssignPrivateIpAddresses":
        subnet = ipaddress.ip_network(eni.subnet.cidr_block)
        for ip in ips:
            if ipaddress.ip_address(ip) not in subnet:
                raise Rejected("InvalidParameterValue", f"Address {ip} does not fall within the subnet's address range")
        inner = (ec2_xml.element("networkInterfaceId", eni.id)
                 + ec2_xml.item_set("assignedPrivateIpAddressesSet", ips, "privateIpAddress")
                 + "<return>true</return>")
    else:
        inner = "<return>true</return>"
    return Acceptance(frozenset({("eni", eni.id)} | {("ip", ip) for ip in ips}), ec2_xml.success_body(action, inner))


def _ipv6s(backend, action, params, pending) -> Acceptance:
    eni = _eni(backend, params)
    ips = [_address(ip, 6) for ip in _listed(params, "Ipv6Addresses")]
    if action == "AssignIpv6Addresses":
        nets = [ipaddress.ip_network(a["ipv6CidrBlock"])
                for a in eni.subnet.ipv6_cidr_block_associations.values() if a.get("ipv6CidrBlock")]
        for ip in ips:
            if not any(ipaddress.ip_address(ip) in net for net in nets):
                raise Rejected("InvalidParameterValue",
                               f"Address {ip} does not fall within the subnet's IPv6 address range")
            now = {e.id for e in list(backend.enis.values()) if ip in {_address(a, 6) for a in e.ipv6_addresses}}
            if pending.ipv6_holders(ip, now) - {eni.id}:
                raise Rejected("InvalidIPAddress.InUse", f"Address {ip} is in use.")
    tag = "assignedIpv6Addresses" if action == "AssignIpv6Addresses" else "unassignedIpv6Addresses"
    inner = ec2_xml.element("networkInterfaceId", eni.id) + ec2_xml.item_set(tag, ips)
    return Acceptance(frozenset({("eni", eni.id)} | {("ip", ip) for ip in ips}), ec2_xml.success_body(action, inner))


def _eni_attribute(backend, action, params, pending) -> Acceptance:
    eni = _eni(backend, params)
    return Acceptance(frozenset({("eni", eni.id)}), ec2_xml.success_body(action))


# --------------------------------------------------------------------------- routes

def _destination(params: Mapping[str, str]) -> tuple[str, str]:
    """(the destination as sent, as moto keys it; normalised, for ordering)."""
    for name in ("DestinationCidrBlock", "DestinationIpv6CidrBlock", "DestinationPrefixListId"):
        if params.get(name):
            raw = params[name]
            if name == "DestinationPrefixListId":
                return raw, raw
            try:
                return raw, str(ipaddress.ip_network(raw, strict=False))
            except ValueError:
                raise Rejected("InvalidParameterValue", f"Value ({raw}) for parameter destinationCidrBlock is "
                                                        "invalid. This is not a valid CIDR block.") from None
    raise Rejected("MissingParameter", "The request must contain the parameter destinationCidrBlock "
                                       "or destinationIpv6CidrBlock")


def _route_targets(backend, params: Mapping[str, str]) -> None:
    if params.get("NetworkInterfaceId"):
        backend.get_network_interface(params["NetworkInterfaceId"])
    if params.get("InstanceId"):
        backend.get_instance(params["InstanceId"])
    if params.get("GatewayId", "").startswith("igw-"):
        backend.get_internet_gateway(params["GatewayId"])


def _route(backend, action, params, pending: PendingView) -> Acceptance:
    from moto.ec2.exceptions import InvalidParameterValueErrorReplaceRoute, InvalidRouteError
    from moto.ec2.utils import generate_route_id

    rtb = backend.get_route_table(_required(params, "RouteTableId"))
    raw, dest = _destination(params)
    if raw.startswith("pl-") and action != "DeleteRoute" and raw not in backend.managed_prefix_lists:
        raise Rejected("InvalidPrefixListID.NotFound", f"The prefix list ID '{raw}' does not exist")
    if action in ("ReplaceRoute", "DeleteRoute"):
        exists = pending.route_exists(rtb.id, dest)
        if exists is None:
            exists = generate_route_id(rtb.id, raw) in rtb._routes
        if not exists:
            error = InvalidParameterValueErrorReplaceRoute(raw) if action == "ReplaceRoute" \
                else InvalidRouteError(rtb.id, raw)
            raise Rejected(error.code, error.message)
    if action != "DeleteRoute":
        _route_targets(backend, params)
    return Acceptance(frozenset({("route", rtb.id, dest)}), ec2_xml.success_body(action))


# --------------------------------------------------------------------------- Elastic IPs

def _allocation(backend, params: Mapping[str, str]) -> str:
    if params.get("AllocationId"):
        return backend.address_by_allocation([params["AllocationId"]])[0].allocation_id
    if params.get("PublicIp"):
        eip = backend.address_by_ip([params["PublicIp"]])[0]
        return eip.allocation_id or eip.public_ip
    raise Rejected("MissingParameter", "The request must contain the parameter AllocationId or PublicIp")


def _associate(backend, action, params, pending) -> Acceptance:
    from moto.ec2.utils import random_eip_association_id

    alloc = _allocation(backend, params)
    resources = {("eip", alloc)}
    if params.get("NetworkInterfaceId"):
        resources.add(("eni", backend.get_network_interface(params["NetworkInterfaceId"]).id))
    if params.get("InstanceId"):
        resources.add(("instance", backend.get_instance(params["InstanceId"]).id))
    if params.get("PrivateIpAddress"):
        resources.add(("ip", _address(params["PrivateIpAddress"], 4)))
    assoc = random_eip_association_id()
    inner = "<return>true</return>" + ec2_xml.element("associationId", assoc)
    return Acceptance(frozenset(resources), ec2_xml.success_body(action, inner), assoc, alloc)


def _disassociate(backend, action, params, pending: PendingView) -> Acceptance:
    assoc = params.get("AssociationId")
    if assoc:
        alloc = pending.allocation_of(assoc)
        if alloc is None:
            alloc = backend.address_by_association([assoc])[0].allocation_id
    else:
        alloc = _allocation(backend, params)
    return Acceptance(frozenset({("eip", alloc)}), ec2_xml.success_body(action), allocation_id=alloc)


_ACCEPTORS: dict[str, Callable] = {
    "AssignPrivateIpAddresses": _private_ips,
    "UnassignPrivateIpAddresses": _private_ips,
    "AssignIpv6Addresses": _ipv6s,
    "UnassignIpv6Addresses": _ipv6s,
    "ModifyNetworkInterfaceAttribute": _eni_attribute,
    "CreateRoute": _route,
    "ReplaceRoute": _route,
    "DeleteRoute": _route,
    "AssociateAddress": _associate,
    "DisassociateAddress": _disassociate,
}
