"""Route 53 reads: the record sets that update-dns actions manage, batched per hosted zone.

ListResourceRecordSets lists a zone in a fixed order (the names' labels reversed, then the
type), from a given name on. One call per zone, starting at the first configured name of
that zone, usually holds every configured record of it; further pages are read only
while a configured record may still follow. So the number of calls follows the zones,
not the number of records or groups (Route 53 allows five requests a second per account).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .ec2 import AwsError, Ec2

PAGE_SIZE = "300"  # Route 53's largest page
RecordKey = Tuple[str, str, str]  # (hosted zone id, name without the final dot, type)

_ESCAPE = re.compile(r"\\(\d{3})")


def answered_name(name: str) -> str:
    """A record name as Route 53 answers it ("\\052.example.com.") in the configuration's
    form ("*.example.com"): escapes decoded, lower-case, no final dot."""
    name = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), name).lower()
    return name[:-1] if name.endswith(".") else name


def listing_order(name: str, record_type: str) -> Tuple[str, str]:
    """Where Route 53 lists a record: by name with its labels reversed (com.example.www.), then type."""
    return ".".join(reversed(name.split("."))) + ".", record_type


def read_records(route53: Ec2, wanted: Iterable[RecordKey]) -> Dict[RecordKey, Optional[Dict[str, Any]]]:
    """The record set of every wanted (zone, name, type), None for those that do not exist."""
    by_zone: Dict[str, List[RecordKey]] = {}
    for key in set(wanted):
        by_zone.setdefault(key[0], []).append(key)
    found: Dict[RecordKey, Optional[Dict[str, Any]]] = {}
    for zone in sorted(by_zone):  # one after the other: zones are few, and Route 53's rate is low
        found.update(_zone_records(route53, zone, sorted(by_zone[zone], key=lambda k: listing_order(*k[1:]))))
    return found


def _zone_records(route53: Ec2, zone: str, keys: List[RecordKey]) -> Dict[RecordKey, Optional[Dict[str, Any]]]:
    wanted = set(keys)
    last = listing_order(*keys[-1][1:])
    params: Dict[str, Any] = {"HostedZoneId": zone, "StartRecordName": keys[0][1],
                              "StartRecordType": keys[0][2], "MaxItems": PAGE_SIZE}
    found: Dict[RecordKey, Optional[Dict[str, Any]]] = {}
    while True:
        page = _list(route53, params)
        listed = page.get("ResourceRecordSets", [])
        for record in listed:
            key = (zone, answered_name(record.get("Name", "")), record.get("Type", ""))
            if key in wanted and key not in found:
                found[key] = record
        if (not page.get("IsTruncated") or wanted <= set(found) or not listed
                or listing_order(answered_name(listed[-1]["Name"]), listed[-1]["Type"]) > last):
            break
        params.update(StartRecordName=page["NextRecordName"], StartRecordType=page["NextRecordType"])
        if page.get("NextRecordIdentifier"):
            params["StartRecordIdentifier"] = page["NextRecordIdentifier"]
    return {key: found.get(key) for key in keys}


def _list(route53: Ec2, params: Dict[str, Any]) -> Dict[str, Any]:
    """One page; a start name Route 53 refuses (not in the zone) lists from the zone's start."""
    try:
        return route53.call("list_resource_record_sets", **params)
    except AwsError as exc:
        if exc.code != "InvalidInput" or "StartRecordName" not in params:
            raise
    for name in ("StartRecordName", "StartRecordType", "StartRecordIdentifier"):
        params.pop(name, None)
    return route53.call("list_resource_record_sets", **params)
