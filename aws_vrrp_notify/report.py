"""status and check: what this instance is, its ports, and whether AWS agrees with VRRP.

AWS is read with one describe call per resource kind for all groups together, so the
number of calls does not grow with the number of groups and actions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .actions import Action, points_to
from .config import Config, escape_controls
from .deadline import Deadline
from .ec2 import AwsError, Ec2
from .imds import ImdsClient, ImdsError, dmi_says_ec2
from .observe import observe_actions
from .plan import PlanError, ec2_client, local_eni, other_clients
from .state import StateStore, write_atomic


INDENT = "    "
CONVERGING = "converging: the last transition is within the consistency window"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
IDENTITY_KEYS = (("account-id", "accountId"), ("architecture", "architecture"),
                 ("availability-zone", "availabilityZone"), ("image-id", "imageId"),
                 ("instance-id", "instanceId"), ("instance-type", "instanceType"), ("region", "region"),
                 ("private-ip", "privateIp"))


class NotOnAws(Exception):
    pass


@dataclass
class ActionReport:
    action: Action
    in_sync: Optional[bool]  # None: could not tell
    reason: str = ""
    target: Optional[Dict[str, Any]] = None
    points_here: bool = False  # in sync, or some of its several AWS targets point here
    details: Optional[Dict[str, Any]] = None  # per-target facts of the observation (JSON)

    def to_dict(self) -> Dict[str, Any]:
        out = self.action.to_dict()
        out["in-sync"] = bool(self.in_sync)
        if not self.in_sync:
            out["reason"] = self.reason
        out.update(self.details or {})
        return out


@dataclass
class GroupReport:
    name: str
    state: Optional[str]
    actions: List[ActionReport] = field(default_factory=list)
    error: Optional[str] = None
    converging: bool = False  # the last transition is younger than the consistency window

    @property
    def in_sync(self) -> bool:
        return self.error is None and all(a.in_sync for a in self.actions)

    def check(self) -> Tuple[int, str]:
        synced = sum(1 for a in self.actions if a.in_sync)
        count = f"{synced}/{len(self.actions)} actions point here"
        if self.error:
            return UNKNOWN, f"cannot tell: {self.error}"
        if self.state is None:
            return UNKNOWN, f"no transition recorded, {count}"
        if self.state == "MASTER":
            if self.in_sync:
                return OK, f"MASTER, {count}"
            reasons = "; ".join(a.reason for a in self.actions if not a.in_sync)
            if self.converging:
                return WARNING, f"MASTER but {count} ({CONVERGING}): {reasons}"
            return CRITICAL, f"MASTER but {count}: {reasons}"
        if any(a.points_here for a in self.actions):
            held = "; ".join(a.action.describe() for a in self.actions if a.points_here)
            if self.converging:
                return WARNING, f"{self.state} but AWS still points here ({CONVERGING}): {held}"
            return WARNING, f"{self.state} but AWS still points here: {held}"
        return OK, f"{self.state}, {count}"


def require_aws(imds: ImdsClient) -> None:
    if imds.available():
        return
    if dmi_says_ec2():
        raise ImdsError(f"this is an EC2 instance (DMI) but the metadata service at {imds.endpoint} "
                        "does not answer")
    raise NotOnAws()


def _group_report(name: str, record: Optional[Dict[str, Any]], window: float) -> GroupReport:
    """The report skeleton from the group's record: its state, and whether AWS may still be
    catching up with it (a write may take up to the consistency window to show)."""
    record = record or {}
    times = [t for t in (record.get("time"), record.get("finished"))
             if isinstance(t, (int, float)) and t == t]
    converging = bool(times) and time.time() - max(times) < window
    return GroupReport(name, record.get("state"), converging=converging)


def observe_groups(config: Config, store: StateStore, imds: ImdsClient, deadline: Deadline,
                   names: Optional[Sequence[str]] = None, client: Any = None,
                   others: Any = None) -> List[GroupReport]:
    """Every configured group (or those in ``names``) as AWS shows it now; ``client``: an EC2
    client to reuse (fifo mode), else one is made; ``others``: what makes (or reuses) the
    client of another service (Ec2.for_service), else plan.other_clients."""
    groups = [config.groups[n] for n in sorted(config.groups) if names is None or n in names]
    reports = [_group_report(g.name, store.read(g.name), config.aws.consistency_window) for g in groups]
    pending: List[Tuple[ActionReport, Any]] = []
    for group, report in zip(groups, reports):
        for action in group.actions:
            entry = ActionReport(action, None)
            report.actions.append(entry)
            try:
                pending.append((entry, local_eni(imds, store, action.interface, action.vrf)))
            except PlanError as exc:
                entry.in_sync, entry.reason = False, str(exc)
    if not pending:
        return reports
    try:
        ec2 = Ec2(client or ec2_client(config, imds, store, deadline), deadline,
                  clients=others or other_clients(config, imds, store, deadline))
        _, seen = observe_actions(ec2, [entry.action for entry, _ in pending], [local for _, local in pending])
    except (AwsError, PlanError, ImdsError) as exc:
        for report in reports:
            report.error = str(exc)
        return reports
    for (entry, _), found in zip(pending, seen):
        entry.target = found.target
        if found.error:
            entry.in_sync, entry.reason = False, found.error
        else:
            seen = found.observation
            entry.in_sync, entry.reason, entry.details = seen.in_sync, seen.reason, seen.details
            entry.points_here = points_to(seen, found.target["eni"])
    return reports


# ---------------------------------------------------------------- status rendering


def _one_line_each(lines: List[str]) -> List[str]:
    """Names and texts from AWS, IMDS, sysfs or the state directory cannot forge an output line."""
    return [escape_controls(line) for line in lines]


def instance_lines(identity: Dict[str, Any]) -> List[str]:
    lines = ["aws"]  # the router CLI's heading (the JSON key and the argument say "instance")
    for key, doc_key in IDENTITY_KEYS:
        if identity.get(doc_key) is not None:
            lines.append(f"{INDENT}{key} {identity[doc_key]}")
    return _one_line_each(lines)


def instance_json(identity: Dict[str, Any]) -> Dict[str, Any]:
    return {key: identity.get(doc_key) for key, doc_key in IDENTITY_KEYS}


def _quote(text: str) -> str:
    return f'"{text}"' if (" " in text or "," in text) else text


def port_lines(ports: Sequence[Any]) -> List[str]:
    lines = []
    for p in ports:
        lines.append(f"network-port {p.name}")
        lines.append(f"{INDENT}bus-addr {p.bus_addr}")
        lines.append(f"{INDENT}vendor {_quote(p.vendor)}")
        lines.append(f"{INDENT}model {_quote(p.model)}")
        lines.append(f"{INDENT}mac-address {p.mac_address}")
        lines.append(f"{INDENT}interface {p.interface}")
        if p.vrf != "main":
            lines.append(f"{INDENT}vrf {p.vrf}")
        if p.aws_interface_id:
            lines.append(f"{INDENT}aws-interface-id {p.aws_interface_id}")
    return _one_line_each(lines)


def ha_lines(reports: Sequence[GroupReport]) -> List[str]:
    lines = ["ha-notification"]
    for report in reports:
        lines.append(f"{INDENT}group {report.name}")
        for entry in report.actions:
            if entry.in_sync:
                lines.append(f"{INDENT * 2}{entry.action.describe()}")
    return _one_line_each(lines)


def ha_json(reports: Sequence[GroupReport]) -> Dict[str, Any]:
    groups = []
    for report in reports:
        item: Dict[str, Any] = {"name": report.name, "state": report.state,
                                "actions": [a.to_dict() for a in report.actions]}
        if report.error:
            item["error"] = report.error
        groups.append(item)
    return {"groups": groups}


# ---------------------------------------------------------------- check outputs


def check_lines(reports: Sequence[GroupReport], error: Optional[str] = None) -> Tuple[int, List[str]]:
    """(exit status, lines): one per group, then the summary; ``error`` (the check could not
    tell) makes it UNKNOWN and is the summary."""
    results = [(r, *r.check()) for r in reports]
    worst = UNKNOWN if error else max((code for _, code, _ in results), default=OK)
    lines = [f"{r.name} {STATUS_NAMES[code]}: {text}" for r, code, text in results]
    if error:
        lines.append(f"aws-vrrp-notify check UNKNOWN: {error}")
    else:
        counts = {name: sum(1 for _, c, _ in results if c == code) for code, name in STATUS_NAMES.items()}
        summary = ", ".join(f"{n} {name.lower()}" for name, n in counts.items())
        lines.append(f"aws-vrrp-notify check {STATUS_NAMES[worst]}: {len(results)} group(s): {summary}")
    return worst, _one_line_each(lines)


def check_json(reports: Sequence[GroupReport], worst: int, error: Optional[str] = None,
               problems: Optional[List[str]] = None) -> Dict[str, Any]:
    groups = []
    for report in reports:
        code, text = report.check()
        groups.append({"name": report.name, "state": report.state, "status": STATUS_NAMES[code],
                       "exit-code": code, "in-sync": report.in_sync, "summary": text,
                       "actions": [a.to_dict() for a in report.actions], "error": report.error})
    out: Dict[str, Any] = {"status": STATUS_NAMES[worst], "exit-code": worst, "groups": groups, "error": error}
    if problems is not None:
        out["problems"] = problems
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(reports: Sequence[GroupReport], worst: int, error: Optional[str], now: float,
                    health: Optional[bool] = None) -> str:
    """The facts of a check; ``health``: what `health` says of every group (None: not known)."""
    out = [
        "# HELP aws_vrrp_notify_check_timestamp_seconds When the drift check ran.",
        "# TYPE aws_vrrp_notify_check_timestamp_seconds gauge",
        f"aws_vrrp_notify_check_timestamp_seconds {now:.3f}",
        "# HELP aws_vrrp_notify_check_error 1 when the check could not read AWS, IMDS or the configuration.",
        "# TYPE aws_vrrp_notify_check_error gauge",
        f"aws_vrrp_notify_check_error {1 if error or any(r.error for r in reports) else 0}",
        "# HELP aws_vrrp_notify_check_status Worst group status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        "# TYPE aws_vrrp_notify_check_status gauge",
        f"aws_vrrp_notify_check_status {worst}",
        "# HELP aws_vrrp_notify_group_status Group status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        "# TYPE aws_vrrp_notify_group_status gauge",
    ]
    for r in reports:
        out.append(f'aws_vrrp_notify_group_status{{group="{_label(r.name)}"}} {r.check()[0]}')
    out += ["# HELP aws_vrrp_notify_group_in_sync 1 when every action of the group points to this instance.",
            "# TYPE aws_vrrp_notify_group_in_sync gauge"]
    for r in reports:
        out.append(f'aws_vrrp_notify_group_in_sync{{group="{_label(r.name)}"}} {1 if r.in_sync else 0}')
    out += ["# HELP aws_vrrp_notify_group_state Last recorded keepalived transition (1 for the current one).",
            "# TYPE aws_vrrp_notify_group_state gauge"]
    for r in reports:
        for state in ("MASTER", "BACKUP", "FAULT", "STOP"):
            out.append(f'aws_vrrp_notify_group_state{{group="{_label(r.name)}",state="{state}"}} '
                       f'{1 if r.state == state else 0}')
    out += ["# HELP aws_vrrp_notify_health_ready 1 when a MASTER transition of every group could succeed now "
            "(aws-vrrp-notify health).",
            "# TYPE aws_vrrp_notify_health_ready gauge"]
    if health is not None:
        out.append(f"aws_vrrp_notify_health_ready {1 if health else 0}")
    out += ["# HELP aws_vrrp_notify_action_in_sync 1 when AWS points this action to this instance.",
            "# TYPE aws_vrrp_notify_action_in_sync gauge"]
    for r in reports:
        for a in r.actions:
            out.append(f'aws_vrrp_notify_action_in_sync{{group="{_label(r.name)}",type="{a.action.TYPE}",'
                       f'action="{_label(a.action.describe())}"}} {1 if a.in_sync else 0}')
    return "\n".join(out) + "\n"


def write_prometheus(path: str, text: str) -> None:
    write_atomic(path, text, 0o644)  # node_exporter reads it as another user


def to_json(data: Dict[str, Any]) -> str:
    return json.dumps(data, indent=2)

