"""Monkeypatches that bring moto 5.2.x closer to real EC2 for VRRP failover tests.

Call :func:`apply` in the process that hosts moto (the werkzeug app of
:mod:`aws_vrrp_notify.lab.cloud`, ``ThreadedMotoServer`` or ``mock_aws``) before
serving.  It is idempotent.  The patches touch moto internals, so moto is pinned
(``moto[ec2]==5.2.5`` in the ``lab`` extra) and ``tests/test_lab.py`` exercises
every patch.

What is fixed (moto 5.2.5's behaviour, as observed against it, next to EC2's):

* ``AssignPrivateIpAddresses``: an address held by another ENI is *moved* when
  ``AllowReassignment`` is true and rejected (``InvalidParameterValue``)
  otherwise; an address outside the ENI's subnet or equal to another ENI's
  primary address is rejected.  An Elastic IP associated with a moved private
  address moves with it, as on EC2.
* ``AssignIpv6Addresses``: an address that another ENI holds is rejected with
  ``InvalidIPAddress.InUse`` (EC2's code for an address already in use; moto let two
  ENIs hold it), and so is one outside the ENI's subnet IPv6 CIDR
  (``InvalidParameterValue``).  Re-assigning an address the ENI already holds changes
  nothing.
* ``DryRun`` on the route-table calls raises ``DryRunOperation`` (HTTP 412) and
  changes nothing (moto ignored it and applied the change).
* ``AssociateAddress`` honours ``PrivateIpAddress`` (rejects an address that is
  not on the target ENI with ``InvalidParameterValue``), reports ``InstanceId``
  for an ENI attached to an instance, and clears the stale association left on
  the previous ENI.
* ``DescribeAddresses`` ``PrivateIpAddress`` and its ``private-ip-address``
  filter reflect the associated private address rather than the ENI's primary.
* ``DescribeNetworkInterfaces`` filters ``private-ip-address`` and
  ``addresses.private-ip-address`` match secondary addresses too (moto matched
  the primary only); ``attachment.device-index``, ``association.public-ip`` and
  ``association.allocation-id`` work (moto answered HTTP 500), and so does
  ``ipv6-addresses.ipv6-address``.  Limitation: with
  several values in one address filter, moto's matcher needs them all to be on
  the ENI (EC2 matches any); use one value per call.
* ``CreateRoute`` with ``DestinationPrefixListId`` and a ``NetworkInterfaceId``
  target keeps its prefix list (moto stored the route without a destination, so
  describe calls showed none and ``ReplaceRoute`` of it failed: getmoto/moto#8394);
  a prefix list that does not exist is rejected (``InvalidPrefixListID.NotFound``).
* Route 53 ``ChangeResourceRecordSets`` refuses an A or AAAA value that is not an
  IPv4 or IPv6 address (``InvalidChangeBatch``, after the zone is found and every name
  is checked to be in it), as Route 53 does; moto stored anything.
"""

from __future__ import annotations

import ipaddress

from moto.ec2.exceptions import DryRunClientError, EC2ClientError
from moto.ec2.models.elastic_ip_addresses import ElasticAddress
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
from moto.ec2.models.route_tables import RouteBackend
from moto.ec2.responses.route_tables import RouteTables
from moto.ec2.utils import generate_route_id
from moto.route53.exceptions import DnsNameInvalidForZone, Route53ClientError
from moto.route53.models import Route53Backend

__all__ = ["apply", "is_applied"]

_ORIG: dict = {}
_APPLIED = False

_ROUTE_TABLE_CALLS = (
    "associate_route_table",
    "create_route",
    "create_route_table",
    "delete_route",
    "delete_route_table",
    "describe_route_tables",
    "disassociate_route_table",
    "replace_route",
    "replace_route_table_association",
)


def _truthy(value) -> bool:
    return str(value).lower() == "true"


def _raise_on_dryrun(resp) -> None:
    if _truthy(resp._get_param("DryRun", False)):
        raise DryRunClientError()


def _eips_on(backend, eni, ip=None):
    """Elastic IPs associated with ``eni`` (and with private address ``ip`` if given)."""
    out = []
    for eip in backend.addresses:
        if eip.eni is not eni:
            continue
        if ip is not None and _eip_private_ip(eip) != ip:
            continue
        out.append(eip)
    return out


# --- AssignPrivateIpAddresses ------------------------------------------------

def _assign_private_ip_addresses(self):
    backend = self.ec2_backend
    eni = backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    ips = self._get_param("PrivateIpAddresses", []) or []
    allow = _truthy(self._get_param("AllowReassignment", False))
    net = ipaddress.ip_network(eni.subnet.cidr_block)
    moves = []
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise EC2ClientError("InvalidParameterValue", f"Invalid private IP address {ip!r}")
        if addr not in net:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Address {ip} does not fall within the subnet's address range",
            )
        for other in list(backend.enis.values()):
            if other is eni:
                continue
            held = [p for p in other.private_ip_addresses if p.get("PrivateIpAddress") == ip]
            if not held:
                continue
            if held[0].get("Primary") or other.private_ip_address == ip:
                raise EC2ClientError("InvalidParameterValue", f"Address {ip} is in use as a primary address.")
            if not allow:
                raise EC2ClientError("InvalidParameterValue", f"Address {ip} is in use.")
            moves.append((other, held[0], ip))
    # validation done: now apply the moves (all or nothing)
    for other, entry, ip in moves:
        followers = _eips_on(backend, other, ip)  # the EIP follows its private address
        if entry in other.private_ip_addresses:
            other.private_ip_addresses.remove(entry)
        for eip in followers:
            other.public_ip = None
            eip.eni = eni
            eip.instance = eni.instance
            eni.public_ip = eip.public_ip
    return _ORIG["assign"](self)


# --- AssignIpv6Addresses --------------------------------------------------------

def _same_ipv6(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _assign_ipv6_addresses(self):
    backend = self.ec2_backend
    eni = backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    nets = [ipaddress.ip_network(a.get("ipv6CidrBlock"))
            for a in eni.subnet.ipv6_cidr_block_associations.values() if a.get("ipv6CidrBlock")]
    for ip in self._get_param("Ipv6Addresses", []) or []:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise EC2ClientError("InvalidParameterValue", f"Invalid IPv6 address {ip!r}")
        if addr.version != 6 or not any(addr in net for net in nets):
            raise EC2ClientError("InvalidParameterValue",
                                 f"Address {ip} does not fall within the subnet's IPv6 address range")
        for other in backend.enis.values():
            if other is not eni and any(_same_ipv6(ip, held) for held in other.ipv6_addresses):
                raise EC2ClientError("InvalidIPAddress.InUse", f"Address {ip} is in use.")
    return _ORIG["assign6"](self)


# --- route tables: DryRun ------------------------------------------------------

def _dryrun_first(name):
    orig = _ORIG["rt:" + name]

    def wrapper(self):
        _raise_on_dryrun(self)
        return orig(self)

    wrapper.__name__ = name
    wrapper._lab_patched = True
    return wrapper


# --- route tables: prefix-list destinations --------------------------------------

def _create_route(self, route_table_id, destination_cidr_block, destination_ipv6_cidr_block=None,
                  destination_prefix_list_id=None, **kwargs):
    prefix_list = None
    if destination_prefix_list_id:
        prefix_list = self.managed_prefix_lists.get(destination_prefix_list_id)
        if prefix_list is None:
            raise EC2ClientError("InvalidPrefixListID.NotFound",
                                 f"The prefix list ID '{destination_prefix_list_id}' does not exist")
    route = _ORIG["create_route"](self, route_table_id, destination_cidr_block, destination_ipv6_cidr_block,
                                  destination_prefix_list_id, **kwargs)
    if prefix_list is not None and route.destination_prefix_list is None:
        # moto skips the prefix list when the target is an ENI and keys the route "<rtb>~None"
        table = route.route_table
        table._routes.pop(route.id, None)
        route.destination_prefix_list = prefix_list
        route.id = generate_route_id(table.id, None, None, prefix_list.id)
        table._routes[route.id] = route
    return route


# --- Elastic IPs ---------------------------------------------------------------

def _eip_private_ip(self):
    if not self.eni:
        return None
    wanted = getattr(self, "_lab_private_ip", None)
    if wanted and any(p.get("PrivateIpAddress") == wanted for p in self.eni.private_ip_addresses):
        return wanted
    return self.eni.private_ip_address


def _eip_get_filter_value(self, filter_name, method_name=None):
    if filter_name == "private-ip-address":
        return _eip_private_ip(self)
    return _ORIG["eip_filter"](self, filter_name, method_name)


def _associate_address(self):
    _raise_on_dryrun(self)
    backend = self.ec2_backend
    params = self._get_params()
    target = None
    if "NetworkInterfaceId" in params:
        target = backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    elif "InstanceId" in params:
        inst = backend.get_instance(self._get_param("InstanceId"))
        target = inst.nics[0] if getattr(inst, "nics", None) else None
    wanted = self._get_param("PrivateIpAddress")
    if wanted and target is not None:
        if not any(p.get("PrivateIpAddress") == wanted for p in target.private_ip_addresses):
            raise EC2ClientError(
                "InvalidParameterValue",
                f"The specified private IP address {wanted} is not assigned to network interface {target.id}",
            )
    eip = None
    try:
        if "AllocationId" in params:
            eip = backend.address_by_allocation([self._get_param("AllocationId")])[0]
        elif "PublicIp" in params:
            eip = backend.address_by_ip([self._get_param("PublicIp")])[0]
    except Exception:  # let moto raise its own error below
        eip = None
    old_eni = eip.eni if eip is not None else None
    result = _ORIG["associate"](self)
    if eip is not None:
        eip._lab_private_ip = wanted or (eip.eni.private_ip_address if eip.eni else None)
        if eip.eni is not None and eip.eni.instance is not None and eip.instance is None:
            eip.instance = eip.eni.instance  # EC2 reports InstanceId for an attached ENI
        if old_eni is not None and old_eni is not eip.eni and old_eni.public_ip == eip.public_ip:
            old_eni.public_ip = None  # moto leaves a stale Association on the old ENI
            others = [e for e in _eips_on(backend, old_eni) if e is not eip]
            if others:
                old_eni.public_ip = others[0].public_ip
    return result


def _disassociate_address(self):
    result = _ORIG["disassociate"](self)
    for eip in self.ec2_backend.addresses:
        if eip.eni is None and getattr(eip, "_lab_private_ip", None):
            eip._lab_private_ip = None
    return result


# --- DescribeNetworkInterfaces filters ------------------------------------------

def _eni_get_filter_value(self, filter_name, method_name=None):
    if filter_name in ("addresses.private-ip-address", "private-ip-address"):
        return [p.get("PrivateIpAddress") for p in self.private_ip_addresses]
    if filter_name == "ipv6-addresses.ipv6-address":
        return [str(ipaddress.ip_address(a)) for a in self.ipv6_addresses]
    if filter_name == "attachment.device-index":
        return str(self.device_index) if self.instance is not None and self.device_index is not None else None
    if filter_name == "association.public-ip":
        return self.public_ip
    if filter_name == "association.allocation-id":
        eips = [e for e in self.ec2_backend.addresses if e.eni is self]
        return eips[0].allocation_id if eips else None
    return _ORIG["eni_filter"](self, filter_name, method_name)


def _change_resource_record_sets(self, zoneid, change_list):
    from .route53_api import bad_value, record_name

    zone = self.get_hosted_zone(zoneid)  # NoSuchHostedZone first, then the names, then the values
    for change in change_list:
        rrset = change.get("ResourceRecordSet") or {}
        name = record_name(rrset.get("Name", ""))
        if name != record_name(zone.name) and not name.endswith("." + record_name(zone.name)):
            raise DnsNameInvalidForZone(name=rrset.get("Name", ""), zone_name=zone.name)
        if change.get("Action") not in ("CREATE", "UPSERT"):
            continue
        for record in rrset.get("ResourceRecords") or []:
            problem = bad_value(rrset.get("Type", ""), record.get("Value", "") if isinstance(record, dict) else record)
            if problem:
                raise Route53ClientError("InvalidChangeBatch", problem)
    return _ORIG["r53_change"](self, zoneid, change_list)


# --- entry points ----------------------------------------------------------------

def is_applied() -> bool:
    return _APPLIED


def apply() -> None:
    """Install the patches (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _ORIG["assign"] = ElasticNetworkInterfaces.assign_private_ip_addresses
    ElasticNetworkInterfaces.assign_private_ip_addresses = _assign_private_ip_addresses
    _ORIG["assign6"] = ElasticNetworkInterfaces.assign_ipv6_addresses
    ElasticNetworkInterfaces.assign_ipv6_addresses = _assign_ipv6_addresses
    for name in _ROUTE_TABLE_CALLS:
        orig = getattr(RouteTables, name, None)
        if orig is None or getattr(orig, "_lab_patched", False):
            continue
        _ORIG["rt:" + name] = orig
        setattr(RouteTables, name, _dryrun_first(name))
    _ORIG["create_route"] = RouteBackend.create_route
    RouteBackend.create_route = _create_route
    _ORIG["associate"] = ElasticIPAddresses.associate_address
    ElasticIPAddresses.associate_address = _associate_address
    _ORIG["disassociate"] = ElasticIPAddresses.disassociate_address
    ElasticIPAddresses.disassociate_address = _disassociate_address
    _ORIG["eip_private_ip"] = ElasticAddress.__dict__.get("private_ip_address")
    ElasticAddress.private_ip_address = property(_eip_private_ip)
    _ORIG["eip_filter"] = ElasticAddress.get_filter_value
    ElasticAddress.get_filter_value = _eip_get_filter_value
    _ORIG["eni_filter"] = NetworkInterface.get_filter_value
    NetworkInterface.get_filter_value = _eni_get_filter_value
    _ORIG["r53_change"] = Route53Backend.change_resource_record_sets
    Route53Backend.change_resource_record_sets = _change_resource_record_sets
    _APPLIED = True
