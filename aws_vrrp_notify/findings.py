"""The report of validate --environment: one finding per check (and subject), PASS, WARN or
FAIL, with the reason and, when something is wrong, what to do; exit status 0 (all pass),
1 (warnings) or 2 (a failure)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, NamedTuple, Sequence

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
EXIT_STATUS = {PASS: 0, WARN: 1, FAIL: 2}


class Finding(NamedTuple):
    status: str     # PASS, WARN or FAIL
    check: str      # what was checked: "metadata", "clock", "source-dest-check", ...
    subject: str    # what it was checked on ("" when the check is about the instance)
    reason: str
    fix: str = ""   # what to do (WARN and FAIL)

    def line(self) -> str:
        about = f" {self.subject}" if self.subject else ""
        fix = f"; fix: {self.fix}" if self.fix and self.status != PASS else ""
        return " ".join(f"{self.status} {self.check}{about}: {self.reason}{fix}".split())

    def to_dict(self) -> Dict[str, Any]:
        return {"status": self.status, "check": self.check, "subject": self.subject or None,
                "reason": self.reason, "fix": self.fix or None}


def not_checked(check: str, subject: str, why: str) -> Finding:
    """A check that could not be made: a failure, since a failover would meet the same cause."""
    return Finding(FAIL, check, subject, f"not checked: {why}")


def worst(findings: Sequence[Finding]) -> str:
    return max((f.status for f in findings), key=EXIT_STATUS.__getitem__, default=PASS)


def summary(findings: Sequence[Finding]) -> str:
    counts = {s: sum(1 for f in findings if f.status == s) for s in (PASS, WARN, FAIL)}
    return (f"aws-vrrp-notify validate --environment {worst(findings)}: {counts[PASS]} passed, "
            f"{counts[WARN]} warning(s), {counts[FAIL]} failed")


def text(findings: Sequence[Finding]) -> str:
    lines: List[str] = [f.line() for f in findings]
    return "\n".join(lines + [summary(findings)])


def to_json(findings: Sequence[Finding]) -> str:
    status = worst(findings)
    return json.dumps({"status": status, "exit-code": EXIT_STATUS[status],
                       "checks": [f.to_dict() for f in findings]}, indent=2)
