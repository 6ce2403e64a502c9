"""Resolve a group's actions to AWS ids: interface -> MAC -> ENI, subnet -> route table, ...

Resolved facts are cached in the state directory so that a later ``master`` can go
straight to the mutating calls. A MAC's ENI never changes, so that part is safe to keep;
route tables and Elastic IP allocations can change, which ``master`` notices from the
API's error or from its verification pass and then re-resolves.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .actions import Action, LocalEni, ResolveError, Target, reads_for
from .deadline import Deadline
from .ec2 import Ec2, Snapshot, fetch_snapshot, make_client
from .imds import ImdsClient, ImdsError, ImdsNotFound
from .links import LinkError, mac_of
from .state import StateStore

NETLINK_TIMEOUT = 5.0  # seconds, within the transition's deadline


class PlanError(Exception):
    """A run-time resolution failure (exit 1): unknown interface, MAC unknown to IMDS, ..."""


class Plan:
    """A group's actions with their local ENIs and, once resolved, their AWS targets.

    An action that cannot be resolved (its interface is gone, its Elastic IP released)
    is kept out of the run with its reason in ``errors``; the others go ahead."""

    def __init__(self, actions: Sequence[Action], locals: List[Optional[LocalEni]],
                 errors: Optional[Dict[int, str]] = None):
        self.actions = actions
        self.locals = locals
        self.targets: List[Optional[Target]] = [None] * len(actions)
        self.errors: Dict[int, str] = dict(errors or {})
        self.from_cache = False

    def usable(self) -> List[int]:
        """Indexes of the actions that resolved, in configuration order."""
        return [i for i in range(len(self.actions)) if i not in self.errors]

    def vpc_ids(self) -> List[str]:
        return sorted({l.vpc_id for l in self.locals if l is not None})

    def eni_ids(self) -> List[str]:
        return sorted({l.eni_id for l in self.locals if l is not None})


def _mac_cache_key(mac: str) -> str:
    return "mac-" + mac.replace(":", "")


def local_eni(imds: ImdsClient, store: Optional[StateStore], interface: str, vrf: str,
              use_cache: bool = True) -> LocalEni:
    try:  # netlink is local and answers in milliseconds; the cap only matters if it hangs
        mac = mac_of(interface, vrf, timeout=min(NETLINK_TIMEOUT, max(0.05, imds.deadline.remaining())))
    except LinkError as exc:
        raise PlanError(str(exc)) from None
    cached = store.cache_get(_mac_cache_key(mac)) if (store and use_cache) else None
    if cached and all(cached.get(k) for k in ("eni", "vpc", "subnet")):
        return LocalEni(interface, vrf, mac, cached["eni"], cached["vpc"], cached["subnet"])
    try:
        eni = imds.mac_data(mac, "interface-id")
        vpc = imds.mac_data(mac, "vpc-id")
        subnet = imds.mac_data(mac, "subnet-id")
    except ImdsNotFound:
        raise PlanError(f"the metadata service does not know MAC {mac} of interface {interface} "
                        f"(vrf {vrf}): is it an ENI of this instance?") from None
    except ImdsError as exc:
        raise PlanError(f"interface {interface} (vrf {vrf}): {exc}") from None
    if store:
        store.cache_put(_mac_cache_key(mac), {"eni": eni, "vpc": vpc, "subnet": subnet})
    return LocalEni(interface, vrf, mac, eni, vpc, subnet)


def resolve_locals(imds: ImdsClient, store: Optional[StateStore], actions: Sequence[Action],
                   use_cache: bool = True) -> Tuple[List[Optional[LocalEni]], Dict[int, str]]:
    """The local ENI of every action, looking each distinct (interface, vrf) up once, concurrently.

    Returns the ENIs (None where the lookup failed) and the failures' reasons by action index."""
    keys = list(dict.fromkeys((a.interface, a.vrf) for a in actions))
    found: Dict[Tuple[str, str], Any] = {}

    def lookup(key: Tuple[str, str]) -> Any:
        try:
            return local_eni(imds, store, *key, use_cache=use_cache)
        except PlanError as exc:
            return exc

    if len(keys) == 1:
        found[keys[0]] = lookup(keys[0])
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
            found = dict(zip(keys, pool.map(lookup, keys)))
    locals_: List[Optional[LocalEni]] = []
    errors: Dict[int, str] = {}
    for i, action in enumerate(actions):
        result = found[(action.interface, action.vrf)]
        if isinstance(result, PlanError):
            errors[i] = str(result)
            locals_.append(None)
        else:
            locals_.append(result)
    return locals_, errors


def region_of(imds: ImdsClient, store: Optional[StateStore], configured: Optional[str]) -> str:
    if configured:
        return configured
    cached = store.cache_get("instance") if store else None
    if cached and cached.get("region"):
        return cached["region"]
    try:
        ident = imds.identity()
    except ImdsError as exc:
        raise PlanError(f"cannot read the instance's region: {exc}") from None
    if store:
        store.cache_put("instance", {"region": ident.get("region"), "instance-id": ident.get("instanceId")})
    return ident["region"]


def ec2_client(config: Any, imds: ImdsClient, store: StateStore, deadline: Deadline) -> Any:
    """The EC2 client for this instance's region (from config, cache or IMDS)."""
    region = region_of(imds, store, config.aws.region)
    return make_client(config.aws, region, deadline, store)


def other_clients(config: Any, imds: ImdsClient, store: Optional[StateStore], deadline: Deadline):
    """What makes the client of another service than EC2 (Route 53) when it is first needed
    (Ec2.for_service): same settings, region and deadline; a group without such an action
    never makes one."""

    def make(service: str) -> Any:
        return make_client(config.aws, region_of(imds, store, config.aws.region), deadline, store, service)

    return make


def fingerprint(actions: Sequence[Action], locals_: Sequence[Optional[LocalEni]]) -> str:
    text = json.dumps([[a.describe(), l and l.mac, l and l.eni_id] for a, l in zip(actions, locals_)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def resolve_targets(ec2: Ec2, plan: Plan, snap: Optional[Snapshot] = None) -> Snapshot:
    """Fill plan.targets from AWS (one describe per resource kind); returns the snapshot used.

    An action that does not resolve gets its reason in plan.errors."""
    usable = plan.usable()
    if snap is None:
        snap = fetch_snapshot(ec2, reads_for([plan.actions[i] for i in usable], "resolve"),
                              vpc_ids=plan.vpc_ids())
    for i in usable:
        try:
            plan.targets[i] = plan.actions[i].resolve(plan.locals[i], snap)
        except ResolveError as exc:
            plan.errors[i] = str(exc)
    plan.from_cache = False
    return snap


def load_cached_targets(store: StateStore, group: str, plan: Plan) -> bool:
    if plan.errors:
        return False
    cached = store.cache_get(f"plan-{group}")
    if not cached or cached.get("fingerprint") != fingerprint(plan.actions, plan.locals):
        return False
    targets = cached.get("targets")
    if not isinstance(targets, list) or len(targets) != len(plan.actions):
        return False
    plan.targets = targets
    plan.from_cache = True
    return True


def save_targets(store: StateStore, group: str, plan: Plan) -> None:
    if not plan.errors and all(t is not None for t in plan.targets):
        store.cache_put(f"plan-{group}", {"fingerprint": fingerprint(plan.actions, plan.locals),
                                          "targets": plan.targets})


def drop_cached_targets(store: StateStore, group: str) -> None:
    store.cache_put(f"plan-{group}", {})


