"""Route 53 in the lab: its REST requests named like EC2's query actions, its answers, and
what it decides at once about a change whose effect shows later.

moto serves Route 53 on the same server as EC2 (it picks the service from the SigV4
credential scope).  Route 53 is a REST-XML API: :func:`parse_request` turns a request
(method, path, query, body) into an action name (``ChangeResourceRecordSets``,
``ListResourceRecordSets``, ...) and flat parameters, so that the request log, the
throttle and the consistency model treat it like an EC2 call::

    HostedZoneId, Comment, Change.1.Action, Change.1.Name, Change.1.Type, Change.1.TTL,
    Change.1.Value.1, ...                               (ChangeResourceRecordSets)
    HostedZoneId, StartRecordName, StartRecordType, MaxItems   (ListResourceRecordSets)

:func:`accept` validates a ChangeResourceRecordSets the way Route 53 does before
answering (the zone exists; each name is in the zone; A and AAAA values are addresses)
and answers it ``PENDING``, as Route 53 does until its name servers have the change.
Whether a CREATE finds the record absent or a DELETE finds it present is decided by moto
when the change lands (:meth:`.consistency.Consistency.failed`).
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from typing import Mapping, Optional

from .ec2_writes import Acceptance, Rejected

NAMESPACE = "https://route53.amazonaws.com/doc/2013-04-01/"
LAGGABLE = ("ChangeResourceRecordSets",)

# (method, path relative to /<version>/, with {} for one id) -> action
_ROUTES = {
    ("POST", "hostedzone/{}/rrset"): "ChangeResourceRecordSets",
    ("GET", "hostedzone/{}/rrset"): "ListResourceRecordSets",
    ("GET", "hostedzone/{}"): "GetHostedZone",
    ("DELETE", "hostedzone/{}"): "DeleteHostedZone",
    ("GET", "hostedzone"): "ListHostedZones",
    ("POST", "hostedzone"): "CreateHostedZone",
    ("POST", "hostedzone/{}/associatevpc"): "AssociateVPCWithHostedZone",
    ("GET", "change/{}"): "GetChange",
}
_QUERY_PARAMS = {"name": "StartRecordName", "type": "StartRecordType", "identifier": "StartRecordIdentifier",
                 "maxitems": "MaxItems"}


class Route53Rejected(Rejected):
    """Route 53 refuses the call at once; its error document, not EC2's."""

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> bytes:
    from xml.sax.saxutils import escape

    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{NAMESPACE}"><Error>'
            f"<Type>Sender</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()


def parse_request(method: str, path: str, query: str, body: bytes) -> tuple[Optional[str], dict[str, str]]:
    """(action, flat parameters) of a Route 53 request; (None, {}) for a path it does not know."""
    parts = [p for p in path.split("/") if p][1:]  # without the API version
    ids = [p for i, p in enumerate(parts) if i % 2 == 1]
    shape = "/".join("{}" if i % 2 == 1 else p for i, p in enumerate(parts))
    action = _ROUTES.get((method, shape))
    if action is None:
        return None, {}
    params: dict[str, str] = {}
    if parts and parts[0] == "hostedzone" and ids:
        params["HostedZoneId"] = urllib.parse.unquote(ids[0])
    if parts and parts[0] == "change" and ids:
        params["Id"] = urllib.parse.unquote(ids[0])
    for key, values in urllib.parse.parse_qs(query).items():
        params[_QUERY_PARAMS.get(key, key)] = values[0]
    if action == "ChangeResourceRecordSets":
        params.update(_changes(body))
    return action, params


def _changes(body: bytes) -> dict[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    ns = {"r": NAMESPACE}
    out: dict[str, str] = {}
    comment = root.find("r:ChangeBatch/r:Comment", ns)
    if comment is not None and comment.text:
        out["Comment"] = comment.text
    for n, change in enumerate(root.findall("r:ChangeBatch/r:Changes/r:Change", ns), start=1):
        out[f"Change.{n}.Action"] = change.findtext("r:Action", "", ns)
        rrset = change.find("r:ResourceRecordSet", ns)
        if rrset is None:
            continue
        for field in ("Name", "Type", "TTL", "SetIdentifier"):
            value = rrset.findtext(f"r:{field}", None, ns)
            if value is not None:
                out[f"Change.{n}.{field}"] = value
        for v, value in enumerate(rrset.findall("r:ResourceRecords/r:ResourceRecord/r:Value", ns), start=1):
            out[f"Change.{n}.Value.{v}"] = value.text or ""
    return out


def listed(params: Mapping[str, str]) -> list[dict]:
    """The changes of a parsed ChangeResourceRecordSets: [{Action, Name, Type, TTL, Values}]."""
    changes = []
    n = 1
    while f"Change.{n}.Action" in params:
        values = []
        while f"Change.{n}.Value.{len(values) + 1}" in params:
            values.append(params[f"Change.{n}.Value.{len(values) + 1}"])
        changes.append({"Action": params[f"Change.{n}.Action"], "Name": params.get(f"Change.{n}.Name", ""),
                        "Type": params.get(f"Change.{n}.Type", ""), "TTL": params.get(f"Change.{n}.TTL"),
                        "Values": values})
        n += 1
    return changes


def bad_value(record_type: str, value: str) -> Optional[str]:
    """Route 53's complaint about an A or AAAA value that is not an address (None: fine)."""
    version = {"A": 4, "AAAA": 6}.get(record_type)
    if version is None:
        return None
    try:
        if ipaddress.ip_address(value).version == version:
            return None
    except ValueError:
        pass
    what = "ARRDATAIllegalIPv4Address (Value is not a valid IPv4 address)" if version == 4 \
        else "AAAARRDATAIllegalIPv6Address (Value is not a valid IPv6 address)"
    return f"[Invalid Resource Record: FATAL problem: {what} encountered with '{value}']"


def record_name(name: str) -> str:
    """A record name as a resource key: lower-case, without the final dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def accept(backend, action: str, params: Mapping[str, str]) -> Acceptance:
    """Validate a change now; its resources (the record sets) and Route 53's PENDING answer.
    Raises :class:`Route53Rejected`."""
    zone_id = params.get("HostedZoneId", "")
    zone = backend.zones.get(zone_id)
    if zone is None:
        raise Route53Rejected("NoSuchHostedZone", f"No hosted zone found with ID: {zone_id}", 404)
    changes = listed(params)
    if not changes:
        raise Route53Rejected("InvalidInput", "Invalid request: the change batch has no change")
    zone_name = record_name(zone.name)
    resources = set()
    for change in changes:
        if change["Action"] not in ("CREATE", "UPSERT", "DELETE"):
            raise Route53Rejected("InvalidInput", f"Invalid XML ; cvc-enumeration-valid: Value "
                                                  f"'{change['Action']}' is not facet-valid")
        name = record_name(change["Name"])
        if name != zone_name and not name.endswith("." + zone_name):
            raise Route53Rejected("InvalidChangeBatch", f"RRSet with DNS name {change['Name']} is not permitted "
                                                        f"in zone {zone.name}")
        for value in change["Values"]:
            problem = bad_value(change["Type"], value)
            if problem:
                raise Route53Rejected("InvalidChangeBatch", problem)
        resources.add(("rrset", zone_id, name, change["Type"]))
    return Acceptance(frozenset(resources), success_body("PENDING"))


def new_change_id() -> str:
    return "C" + uuid.uuid4().hex[:13].upper()


def success_body(status: str, change: Optional[str] = None) -> bytes:
    """ChangeResourceRecordSets' answer: ``status`` under ``change`` (default: a new id)."""
    return change_info_body("ChangeResourceRecordSetsResponse", change or new_change_id(), status)


def change_info_body(response: str, change: str, status: str) -> bytes:
    """An answer that is one ChangeInfo (ChangeResourceRecordSets, GetChange)."""
    submitted = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{response} xmlns="{NAMESPACE}">'
            f"<ChangeInfo><Id>/change/{change}</Id><Status>{status}</Status>"
            f"<SubmittedAt>{submitted}</SubmittedAt></ChangeInfo></{response}>").encode()