"""validate --permissions: prove, without changing anything, that every action may run.

EC2 DryRun is used where the API has it (ReplaceRoute, CreateRoute, AssociateAddress and
the describe calls): DryRunOperation means allowed, UnauthorizedOperation means denied.
Route 53 has no DryRun: its read (ListResourceRecordSets) is proved by reading, and
ChangeResourceRecordSets by an UPSERT Route 53 refuses after the IAM check
(actions/update_dns.py).
AssignPrivateIpAddresses has no DryRun: it is proved with a no-op request, re-assigning
to the ENI an address it already holds (the virtual IP when this instance holds it, else
the ENI's primary address, which EC2 refuses with a parameter error *after* the IAM check).
AssignIpv6Addresses and UnassignIpv6Addresses have no DryRun either: their no-op requests
are in actions/assign_ipv6_address.py. Any answer except UnauthorizedOperation /
AuthFailure proves the permission.

An endpoint that ignores DryRun (some emulators and proxies) answers a DryRun request as
a real one. A describe answered that way changed nothing, but proves the endpoint would
carry out the write probes too, so they are not sent. A write answered that way did change
AWS: it is reported as a failure naming what changed, and no further write probe is sent.

Every probe stands alone: a denied describe call fails only the actions that need what it
reads, and every action gets its line.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from . import EXIT_FAILED, EXIT_OK
from .actions import Action, LocalEni, ResolveError, read_keys, reads_for
from .config import Config, key_text
from .deadline import Deadline
from .ec2 import READ_KINDS, READ_OPERATIONS, AwsError, Ec2, Snapshot, fetch_snapshot, read_service
from .imds import ImdsClient, ImdsError
from .plan import PlanError, ec2_client, local_eni, other_clients

DENIED = frozenset({"UnauthorizedOperation", "AuthFailure", "AccessDenied", "AccessDeniedException",
                    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"})
POLICY_HINT = ("see the least-privilege policies in contrib/iam/ "
               "(installed under share/doc/aws-vrrp-notify/iam/)")
DESCRIBE_CALLS = {"enis": "describe_network_interfaces", "route_tables": "describe_route_tables",
                  "subnets": "describe_subnets", "addresses": "describe_addresses"}


class Probe(NamedTuple):
    ok: bool
    text: str
    carried_out: bool = False  # the endpoint ignored DryRun: the request was really made
    unresolved: bool = False  # not a permission question: the resource does not exist


def _probe(call: Callable[[], Any], dry_run: bool, effect: str = "") -> Probe:
    """One request; ``effect`` says what it changes when an endpoint carries a DryRun out."""
    try:
        call()
    except AwsError as exc:
        if exc.code == "DryRunOperation":
            return Probe(True, "allowed (DryRun)")
        if exc.code in DENIED:
            return Probe(False, f"DENIED: {exc.code}: {exc.message}")
        if dry_run:
            return Probe(True, f"allowed (DryRun answered {exc.code}: {exc.message})")
        return Probe(True, f"allowed (no-op request answered {exc.code})")
    if not dry_run:
        return Probe(True, "allowed (no-op request)")
    if not effect:
        return Probe(True, "allowed, but the endpoint ignored DryRun and answered a real request "
                           "(a read: nothing changed)", carried_out=True)
    return Probe(False, f"NOT A DRY RUN: the endpoint ignored DryRun and carried the request out: {effect}",
                 carried_out=True)


class Prober:
    """The probes of one run; stops sending DryRun writes once the endpoint is seen ignoring DryRun."""

    def __init__(self, ec2: Ec2, imds: ImdsClient):
        self.ec2 = ec2
        self.imds = imds
        self.ignores_dry_run: Optional[str] = None  # the operation that showed it

    def api_name(self, operation: str) -> str:
        return self.ec2.client.meta.method_to_api_mapping[operation]

    def dry_run(self, operation: str, effect: str = "", **params: Any) -> Probe:
        """A DryRun request; ``effect``: what it changes if carried out ("" for a read, always sent)."""
        if effect and self.ignores_dry_run:
            return Probe(False, f"NOT PROBED: the endpoint ignores DryRun ({self.ignores_dry_run} was answered "
                                f"as a real request), so a probe would really change AWS")
        probe = _probe(lambda: self.ec2.call(operation, DryRun=True, **params), dry_run=True, effect=effect)
        if probe.carried_out and not self.ignores_dry_run:
            self.ignores_dry_run = self.api_name(operation)
        return probe

    def no_op(self, operation: str, **params: Any) -> Probe:
        """A request that changes nothing even when allowed (for APIs without DryRun)."""
        return _probe(lambda: self.ec2.call(operation, **params), dry_run=False)

    @staticmethod
    def was(action: Action, snap: Snapshot, target: Dict[str, Any]) -> str:
        """" (was <holder>)" when the snapshot knew who held the resource before the probe."""
        try:
            holder = action.observe(snap, target).holder
        except (KeyError, ValueError, TypeError, AttributeError):  # a partial snapshot: say nothing
            return ""
        return f" (was {holder})" if holder and holder != target["eni"] else ""


def _read(ec2: Ec2, prober: Prober, kinds: List[str], vpc_ids: List[str], keys: Dict[str, Any],
          lines: List[str]) -> Tuple[Snapshot, Dict[str, str]]:
    """Probe and read each kind on its own: the snapshot, and {kind: the call that failed}.

    An EC2 describe call is probed with DryRun first; another service's read (Route 53's
    ListResourceRecordSets, which has no DryRun) is proved by reading."""
    snap, missing = Snapshot(), {}
    for kind in kinds:
        service = read_service(kind)
        name = f"{service}:{READ_OPERATIONS[kind]}"
        if service == "ec2":
            probe = prober.dry_run(DESCRIBE_CALLS[kind])
            lines.append(f"{name}: {probe.text}")
            if not probe.ok:
                missing[kind] = name
                continue
        try:
            setattr(snap, kind, getattr(fetch_snapshot(ec2, [kind], vpc_ids, keys), kind))
            if service != "ec2":
                lines.append(f"{name}: allowed (read)")
            continue
        except AwsError as exc:
            lines.append(f"{name}: {'DENIED' if exc.code in DENIED else 'FAILED'}: {exc}")
        missing[kind] = name
    return snap, missing


def _action_line(prober: Prober, action: Action, local: LocalEni, snap: Snapshot,
                 missing: Dict[str, str]) -> Probe:
    unreadable = [missing[k] for k in action.resolve_reads() if k in missing]
    if unreadable:
        return Probe(False, f"NOT PROBED: resolving it needs {' and '.join(unreadable)}, which failed (above)")
    try:
        target = action.resolve(local, snap)
    except ResolveError as exc:
        return Probe(False, f"FAILED: {exc}", unresolved=True)
    return action.probe(prober, target, local, snap)


def _key_paths(config: Config) -> List[Tuple[str, Action]]:
    """Every action with its key path as the configuration file spells it (groups.G.TYPE[i])."""
    out = []
    for group in config.groups.values():
        seen: Dict[str, int] = {}
        for action in group.actions:
            index = seen[action.TYPE] = seen.get(action.TYPE, -1) + 1
            out.append((f"groups.{key_text(group.name)}.{action.TYPE}[{index}]", action))
    return out


def check_permissions(config: Config, opts: Any) -> int:
    """validate --permissions: one line per describe call and per action, then a conclusion."""
    try:
        return _check_permissions(config, opts)
    except Exception as exc:  # reported, never a traceback
        print(f"FAILED: unexpected error: {exc}")
        return EXIT_FAILED


def _check_permissions(config: Config, opts: Any) -> int:
    from .commands import open_state, state_error_status
    from .state import StateError

    try:
        store = open_state(getattr(opts, "state_dir", None), create=False, cache=getattr(opts, "cache_dir", None))
    except StateError as exc:
        return state_error_status(exc)
    deadline = Deadline(config.aws.deadline)
    imds = ImdsClient(deadline=deadline)
    lines: List[str] = []
    failed = unresolved = False
    try:
        if not imds.available():
            print("cannot prove permissions: not running on AWS (no instance metadata service)")
            return EXIT_FAILED
        ec2 = Ec2(ec2_client(config, imds, store, deadline), deadline,
                  clients=other_clients(config, imds, store, deadline))
        prober = Prober(ec2, imds)
        entries = []
        for where, action in _key_paths(config):
            try:
                entries.append((where, action, local_eni(imds, store, action.interface, action.vrf)))
            except PlanError as exc:
                lines.append(f"{where}: {action.describe()}: FAILED: {exc}")
                unresolved = True
        wanted = set(reads_for([a for _, a, _ in entries], "resolve", "observe")) | {"enis"}
        snap, missing = _read(ec2, prober, [k for k in READ_KINDS if k in wanted],
                              [l.vpc_id for _, _, l in entries], read_keys([a for _, a, _ in entries]), lines)
        failed |= bool(missing)
        for where, action, local in entries:
            probe = _action_line(prober, action, local, snap, missing)
            if probe.unresolved:
                unresolved = True
            else:
                failed |= not probe.ok
            lines.append(f"{where}: {action.describe()}: {probe.text}")
    except AwsError as exc:
        lines.append(f"FAILED: {exc}")
        failed = failed or exc.code in DENIED
        unresolved = unresolved or exc.code not in DENIED
    except (ImdsError, PlanError) as exc:
        lines.append(f"FAILED: {exc}")
        unresolved = True
    print("\n".join(lines))
    if failed:
        print(f"some permissions are missing or could not be proved: {POLICY_HINT}")
    if unresolved:
        print("some actions could not be checked: an interface, VRF, subnet, route table, Elastic IP or "
              "hosted zone above does not exist or cannot be reached (not a permission problem)")
    if failed or unresolved:
        return EXIT_FAILED
    print(f"every configured action is permitted ({POLICY_HINT})")
    return EXIT_OK
