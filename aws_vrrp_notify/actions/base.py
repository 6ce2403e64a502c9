"""What every action type declares and implements (the protocol), and what they share.

An action type is one module in this package, declaring in one place:

* ``TYPE`` and ``FIELDS``: its configuration keys and their validation (``check_values``
  for rules across keys);
* ``OPERATIONS``: the API operations of ``SERVICE`` (``ec2`` unless said otherwise) that
  ``apply`` calls (the IAM actions are ``<service>:`` and the same names; the trimmed
  botocore model and the IAM policies are checked against them), and ``STALE_CODES``, the
  error codes that mean a cached target is out of date;
* ``resolve_reads`` / ``observe_reads``: the snapshot kinds (batched describe calls) it
  needs, and ``read_keys`` what a kind must read for it beyond the VPC (a DNS record);
* ``resolve``, ``apply``, ``observe``: find its AWS target, write it, and say whether AWS
  points here now (and who holds it otherwise); ``batch_key`` / ``apply_batch`` when
  several actions of a group are written with one call (a Route 53 change batch);
* ``moved_addresses`` and ``check_group``: what it moves, and rules about the other
  actions of its group (checked with the configuration);
* ``unconfirmed``: what the instance metadata service does not show yet (asynchronous
  changes), if anything;
* ``probe``: how ``validate --permissions`` proves its IAM permissions without changing
  anything.

Nothing outside the module switches on its class.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

from collections import namedtuple

from ..schema import MAIN_VRF, Field, Frozen, interface_name, read_table, vrf_name

if TYPE_CHECKING:  # ec2 (and botocore behind it) is only needed once AWS is called
    from ..ec2 import Ec2, Snapshot
    from ..imds import ImdsClient
    from ..permissions import Probe, Prober


class ResolveError(Exception):
    """What an action needs cannot be found (route table, Elastic IP, ...)."""


# The ENI behind a local interface, found through its MAC.
LocalEni = namedtuple("LocalEni", "interface vrf mac eni_id vpc_id subnet_id")
# holder: the ENI AWS points to now (None: nothing, or not an ENI). An action with several
# AWS targets (change-route on every tagged route table) names the holder of its first
# target, which decides a split brain, and lists every ENI its targets point to in
# ``holders`` (empty for an action with one target); ``details``: JSON-ready facts per
# target for status and check (None: nothing to add).
Observation = namedtuple("Observation", "in_sync holder reason holders details", defaults=("", (), None))


def held_by(observation: Observation) -> Tuple[str, ...]:
    """Every ENI the observed action points to, its holder first."""
    return tuple(dict.fromkeys(e for e in (observation.holder, *observation.holders) if e))


def points_to(observation: Observation, eni: str) -> bool:
    """In sync, or some of the action's several targets point to ``eni``."""
    return bool(observation.in_sync) or eni in observation.holders


Target = dict  # what resolve() found: eni id plus type-specific AWS ids (Dict[str, Any])


class Action(Frozen):
    """Base of the action types: the values of FIELDS become read-only attributes."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[Tuple[Field, ...]] = ()
    SERVICE: ClassVar[str] = "ec2"  # the AWS service of OPERATIONS (botocore's service name)
    OPERATIONS: ClassVar[Tuple[str, ...]] = ()
    STALE_CODES: ClassVar[frozenset] = frozenset({"InvalidNetworkInterfaceID.NotFound"})
    __slots__ = ("__dict__",)

    def __init__(self, **values: Any):
        for f in self.FIELDS:
            object.__setattr__(self, f.attr, values.get(f.attr, f.default))

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f.attr) for f in self.FIELDS)

    def __repr__(self) -> str:
        args = ", ".join(f"{f.attr}={getattr(self, f.attr)!r}" for f in self.FIELDS)
        return f"{type(self).__name__}({args})"

    interface: str
    vrf: str

    # -- configuration

    @classmethod
    def from_table(cls, table: Any, where: str, problems: List[str]) -> Optional["Action"]:
        before = len(problems)
        values = read_table(table, cls.FIELDS, where, problems)
        if values is None:
            return None
        cls.check_values(values, where, problems)
        if len(problems) > before:
            return None
        return cls(**values)

    @classmethod
    def check_values(cls, values: Dict[str, Any], where: str, problems: List[str]) -> None:
        """Cross-key rules; single-key rules live in FIELDS."""

    def identity(self) -> Tuple[Any, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"type": self.TYPE}
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if value is not None:
                out[f.key] = value
        return out

    def check_group(self, group: Sequence["Action"], where: str, problems: List[str]) -> None:
        """Rules about the other actions of the group (``group`` holds this one too)."""

    def moved_addresses(self) -> Tuple[str, ...]:
        """The IP addresses this action moves to its interface's ENI (as written)."""
        return ()

    def depends_on(self, other: "Action") -> bool:
        """True when this action must wait for ``other`` (same group) to be applied."""
        return False

    # -- AWS

    def resolve_reads(self) -> Tuple[str, ...]:
        """Snapshot kinds resolve() needs (beyond the local ENI)."""
        return ()

    def observe_reads(self) -> Tuple[str, ...]:
        return ()

    def read_keys(self) -> Dict[str, Tuple[Any, ...]]:
        """What a snapshot kind must read for this action beyond the VPCs: {kind: (key, ...)}."""
        return {}

    def resolve(self, local: LocalEni, snap: Snapshot) -> Target:
        return {"eni": local.eni_id}

    def apply(self, ec2: Ec2, target: Target) -> str:
        raise NotImplementedError

    def batch_key(self, target: Target) -> Optional[Tuple[Any, ...]]:
        """None (the default): written alone with ``apply``. Actions of a group with the same
        key are written together, with one ``apply_batch`` call of their class."""
        return None

    @classmethod
    def apply_batch(cls, ec2: Ec2, items: Sequence[Tuple["Action", Target]]) -> str:
        """Write several actions of this type at once (they share a ``batch_key``)."""
        return "; ".join(action.apply(ec2, target) for action, target in items)

    def observe(self, snap: Snapshot, target: Target) -> Observation:
        raise NotImplementedError

    def unconfirmed(self, imds: ImdsClient, local: LocalEni) -> Optional[str]:
        """What the metadata service does not show yet of an applied action (None: nothing)."""
        return None

    def probe(self, prober: Prober, target: Target, local: LocalEni, snap: Snapshot) -> Probe:
        """Prove the IAM permissions ``apply`` needs, changing nothing (validate --permissions)."""
        raise NotImplementedError


class AddressAction(Action):
    """An action moving one address (key ``ip``) to the ENI: its identity, text and reads."""

    ip: str

    def identity(self) -> Tuple[Any, ...]:
        return (self.TYPE, self.ip)

    def describe(self) -> str:
        return f"{self.TYPE} {self.ip} interface {self.interface} vrf {self.vrf}"

    def moved_addresses(self) -> Tuple[str, ...]:
        return (self.ip,)

    def observe_reads(self) -> Tuple[str, ...]:
        return ("enis",)


def exactly_one(values: Dict[str, Any], where: str, problems: List[str], *keys: str,
                first_text: str = "") -> None:
    """Exactly one of ``keys`` (a key that was given but invalid counts as given)."""
    given = [k for k in keys if values[k.replace("-", "_")]]
    quoted = [first_text or repr(keys[0])] + [repr(k) for k in keys[1:]]
    if len(given) > 1:
        if len(keys) == 2:
            problems.append(f"{where}: give either '{keys[0]}' or '{keys[1]}', not both")
        else:
            problems.append(f"{where}: give only one of {', '.join(map(repr, keys[:-1]))} or {keys[-1]!r}, "
                            f"not {' and '.join(map(repr, given))}")
    elif not given and not any(p.startswith(tuple(f"{where}.{k}" for k in keys)) for p in problems):
        problems.append(f"{where}: missing {', '.join(quoted[:-1])} or {quoted[-1]}")


INTERFACE = Field("interface", interface_name, required=True)
VRF = Field("vrf", vrf_name, MAIN_VRF)


def read_keys(actions: Sequence[Action]) -> Dict[str, Tuple[Any, ...]]:
    """What each snapshot kind must read for ``actions`` beyond the VPCs (sorted, no repeats)."""
    keys: Dict[str, set] = {}
    for action in actions:
        for kind, values in action.read_keys().items():
            keys.setdefault(kind, set()).update(values)
    return {kind: tuple(sorted(values)) for kind, values in keys.items()}


def batches(actions: Sequence[Action], targets: Sequence[Optional[Target]], indexes: Sequence[int]) -> List[List[int]]:
    """``indexes`` in write units, one per ``apply`` or ``apply_batch`` call: actions of one
    type with the same ``batch_key`` form one unit. Units keep the order of ``indexes``, a
    batch at the place of its last member (so after whatever its members depend on)."""
    placed: List[Tuple[int, List[int]]] = []
    shared: Dict[Tuple[Any, ...], List[int]] = {}
    last: Dict[Tuple[Any, ...], int] = {}
    for position, i in enumerate(indexes):
        key = actions[i].batch_key(targets[i]) if targets[i] is not None else None
        if key is None:
            placed.append((position, [i]))
        else:
            shared.setdefault((actions[i].TYPE,) + tuple(key), []).append(i)
            last[(actions[i].TYPE,) + tuple(key)] = position
    placed += [(last[key], unit) for key, unit in shared.items()]
    return [unit for _, unit in sorted(placed, key=lambda p: p[0])]


def reads_for(actions: Sequence[Action], *phases: str) -> Tuple[str, ...]:
    """Snapshot kinds the actions need for the given phases ("resolve", "observe")."""
    kinds = set()
    for action in actions:
        if "resolve" in phases:
            kinds.update(action.resolve_reads())
        if "observe" in phases:
            kinds.update(action.observe_reads())
    return tuple(sorted(kinds))


