"""The one way AWS is read for actions: a batched snapshot, each action resolved against it
and observed. Transitions (verification, hand-back, re-assertion) and status/check use it;
the number of describe calls follows the resource kinds, never the number of actions.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

from .actions import Action, LocalEni, Observation, ResolveError, Target, read_keys, reads_for
from .ec2 import Ec2, Snapshot, fetch_snapshot


class Seen(NamedTuple):
    """One action as AWS shows it: its target and observation, or why it did not resolve."""
    target: Optional[Target]
    observation: Optional[Observation]
    error: Optional[str] = None


def observe_actions(ec2: Ec2, actions: Sequence[Action], locals_: Sequence[LocalEni],
                    known: Optional[Sequence[Optional[Target]]] = None,
                    extra_kinds: Sequence[str] = ()) -> Tuple[Snapshot, List[Seen]]:
    """Read what ``actions`` need (one call per kind, and per hosted zone) and observe each of them.

    ``known``: targets resolved before; an action whose resolution reads AWS is resolved
    again (a subnet may have moved to another route table), keeping the known target when
    that fails."""
    kinds = set(reads_for(actions, "resolve", "observe")) | set(extra_kinds)
    snap = fetch_snapshot(ec2, sorted(kinds), vpc_ids=sorted({l.vpc_id for l in locals_}), keys=read_keys(actions))
    seen = []
    for i, (action, local) in enumerate(zip(actions, locals_)):
        before = known[i] if known else None
        try:
            target = action.resolve(local, snap) if before is None or action.resolve_reads() else before
        except ResolveError as exc:
            if before is None:
                seen.append(Seen(None, None, str(exc)))
                continue
            target = before
        seen.append(Seen(target, action.observe(snap, target)))
    return snap, seen
