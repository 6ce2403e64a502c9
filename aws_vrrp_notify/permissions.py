"""validate --permissions: prove, without changing anything, that every action may run.

EC2 DryRun is used where the API has it (ReplaceRoute, CreateRoute, AssociateAddress and
the describe calls): DryRunOperation means allowed, UnauthorizedOperation means denied.
AssignPrivateIpAddresses has no DryRun: it is proved with a no-op request, re-assigning
to the ENI an address it already holds (the virtual IP when this instance holds it, else
the ENI's primary address, which EC2 refuses with a parameter error *after* the IAM check).
Any answer except UnauthorizedOperation / AuthFailure proves the permission.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from . import EXIT_FAILED, EXIT_OK
from .actions import Action, AssignPrivateIp, AssociateAddress, ChangeRoute, ResolveError, reads_for
from .config import Config, key_text
from .deadline import Deadline
from .ec2 import AwsError, Ec2, fetch_snapshot
from .imds import ImdsClient, ImdsError
from .plan import PlanError, ec2_client, local_eni

DENIED = frozenset({"UnauthorizedOperation", "AuthFailure", "AccessDenied", "AccessDeniedException",
                    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"})
POLICY_HINT = ("see the least-privilege policies in contrib/iam/ "
               "(installed under share/doc/aws-vrrp-notify/iam/)")


def _probe(call: Callable[[], Any], dry_run: bool) -> Tuple[bool, str]:
    try:
        call()
    except AwsError as exc:
        if exc.code == "DryRunOperation":
            return True, "allowed (DryRun)"
        if exc.code in DENIED:
            return False, f"DENIED: {exc.code}: {exc.message}"
        if dry_run:
            return True, f"allowed (DryRun answered {exc.code}: {exc.message})"
        return True, f"allowed (no-op request answered {exc.code})"
    return True, "allowed (DryRun ignored by the endpoint)" if dry_run else "allowed (no-op request)"


def _action_probe(ec2: Ec2, action: Action, target: Dict[str, Any], eni: Dict[str, Any]) -> Tuple[bool, str]:
    if isinstance(action, AssignPrivateIp):
        held = [p["PrivateIpAddress"] for p in eni.get("PrivateIpAddresses", [])]
        address = action.ip if action.ip in held else eni.get("PrivateIpAddress")
        return _probe(lambda: ec2.call("assign_private_ip_addresses", NetworkInterfaceId=target["eni"],
                                       PrivateIpAddresses=[address], AllowReassignment=False), dry_run=False)
    if isinstance(action, ChangeRoute):
        key = "DestinationIpv6CidrBlock" if action.ipv6 else "DestinationCidrBlock"
        params = {"RouteTableId": target["route_table"], "NetworkInterfaceId": target["eni"],
                  key: action.destination, "DryRun": True}
        ok, text = _probe(lambda: ec2.call("replace_route", **params), dry_run=True)
        if not ok:
            return ok, f"ReplaceRoute {text}"
        ok, text2 = _probe(lambda: ec2.call("create_route", **params), dry_run=True)
        return ok, (f"ReplaceRoute {text}; CreateRoute {text2}")
    if isinstance(action, AssociateAddress):
        params = {"AllocationId": target["allocation_id"], "NetworkInterfaceId": target["eni"],
                  "AllowReassociation": True, "DryRun": True}
        return _probe(lambda: ec2.call("associate_address", **params), dry_run=True)
    return False, f"no permission probe for {action.TYPE}"


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
        store = open_state(getattr(opts, "state_dir", None), create=False)
    except StateError as exc:
        return state_error_status(exc)
    deadline = Deadline(config.aws.deadline)
    imds = ImdsClient(deadline=deadline)
    lines: List[str] = []
    denied = unresolved = False
    try:
        if not imds.available():
            print("cannot prove permissions: not running on AWS (no instance metadata service)")
            return EXIT_FAILED
        ec2 = Ec2(ec2_client(config, imds, store, deadline), deadline)
        entries = []
        for where, action in _key_paths(config):
            try:
                entries.append((where, action, local_eni(imds, store, action.interface, action.vrf)))
            except PlanError as exc:
                lines.append(f"{where}: {action.describe()}: FAILED: {exc}")
                unresolved = True
        actions = [a for _, a, _ in entries]
        kinds = set(reads_for(actions, "resolve", "observe")) | {"enis"}
        for kind, operation in (("enis", "describe_network_interfaces"), ("route_tables", "describe_route_tables"),
                                ("addresses", "describe_addresses")):
            if kind in kinds:
                ok, text = _probe(lambda op=operation: ec2.call(op, DryRun=True), dry_run=True)
                denied |= not ok
                lines.append(f"ec2:{ec2.client.meta.method_to_api_mapping[operation]}: {text}")
        snap = fetch_snapshot(ec2, kinds, vpc_ids=[l.vpc_id for _, _, l in entries])
        for where, action, local in entries:
            try:
                target = action.resolve(local, snap)
            except ResolveError as exc:
                lines.append(f"{where}: {action.describe()}: FAILED: {exc}")
                unresolved = True
                continue
            ok, text = _action_probe(ec2, action, target, snap.enis.get(local.eni_id, {}))
            denied |= not ok
            lines.append(f"{where}: {action.describe()}: {text}")
    except AwsError as exc:
        lines.append(f"FAILED: {exc}")
        denied = denied or exc.code in DENIED
        unresolved = unresolved or exc.code not in DENIED
    except (ImdsError, PlanError) as exc:
        lines.append(f"FAILED: {exc}")
        unresolved = True
    print("\n".join(lines))
    if denied:
        print(f"some permissions are missing or could not be proved: {POLICY_HINT}")
    if unresolved:
        print("some actions could not be checked: an interface, VRF, subnet, route table or Elastic IP "
              "above does not exist or cannot be reached (not a permission problem)")
    if denied or unresolved:
        return EXIT_FAILED
    print(f"every configured action is permitted ({POLICY_HINT})")
    return EXIT_OK
