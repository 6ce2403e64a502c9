"""Action types: one module each (see base.py for what a module declares), and the registry.

Adding an action type means adding one module here and listing its class in ACTION_TYPES.
"""

from __future__ import annotations

from .assign_ipv6_address import AssignIpv6Address
from .assign_private_ip import AssignPrivateIp
from .associate_address import AssociateAddress
from .base import (Action, LocalEni, Observation, ResolveError, Target, batches, held_by, points_to, read_keys,
                   reads_for)
from .change_route import ChangeRoute
from .update_dns import UpdateDns

ACTION_TYPES = {cls.TYPE: cls for cls in (AssignPrivateIp, ChangeRoute, AssociateAddress,
                                          AssignIpv6Address, UpdateDns)}

# What any action type may answer when a cached target (route table, allocation) is gone.
STALE_CODES = frozenset().union(*(cls.STALE_CODES for cls in ACTION_TYPES.values()))


def operations(service: str = "ec2") -> tuple:
    """The operations of ``service`` the action types write with (sorted API names)."""
    return tuple(sorted({op for cls in ACTION_TYPES.values() if cls.SERVICE == service for op in cls.OPERATIONS}))


def services() -> tuple:
    """The AWS services the action types write to (sorted botocore names)."""
    return tuple(sorted({cls.SERVICE for cls in ACTION_TYPES.values()}))


__all__ = ["ACTION_TYPES", "Action", "AssignIpv6Address", "AssignPrivateIp", "AssociateAddress", "ChangeRoute",
           "LocalEni", "Observation", "ResolveError", "STALE_CODES", "Target", "UpdateDns", "batches", "held_by",
           "operations", "points_to", "read_keys", "reads_for", "services"]
