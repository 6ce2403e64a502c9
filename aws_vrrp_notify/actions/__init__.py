"""Action types: one module each (see base.py for what a module declares), and the registry.

Adding an action type means adding one module here and listing its class in ACTION_TYPES.
"""

from __future__ import annotations

from .assign_ipv6_address import AssignIpv6Address
from .assign_private_ip import AssignPrivateIp
from .associate_address import AssociateAddress
from .base import Action, LocalEni, Observation, ResolveError, Target, held_by, points_to, reads_for
from .change_route import ChangeRoute

ACTION_TYPES = {cls.TYPE: cls for cls in (AssignPrivateIp, ChangeRoute, AssociateAddress,
                                          AssignIpv6Address)}

# What any action type may answer when a cached target (route table, allocation) is gone.
STALE_CODES = frozenset().union(*(cls.STALE_CODES for cls in ACTION_TYPES.values()))


def operations() -> tuple:
    """The EC2 operations the action types write with (sorted API names)."""
    return tuple(sorted({op for cls in ACTION_TYPES.values() for op in cls.OPERATIONS}))


__all__ = ["ACTION_TYPES", "Action", "AssignIpv6Address", "AssignPrivateIp", "AssociateAddress", "ChangeRoute",
           "LocalEni", "Observation", "ResolveError", "STALE_CODES", "Target", "held_by", "operations",
           "points_to", "reads_for"]
