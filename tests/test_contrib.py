"""contrib/: IAM policies pass an IAM linter; the systemd units' sandbox is rated by
systemd and still lets the check work.

IAM: ``parliament`` (the ``test`` extra) lints every policy in contrib/iam. Nothing may be
rated above LOW, and every LOW must be explained in contrib/iam/README.md. The trust
policy is linted as the statement it stands for: parliament knows identity policies only
and requires a Resource element, which a trust policy must not have (its resource is the
role it is attached to); the test adds that role's ARN and lints the result.

systemd:
The rating comes from ``systemd-analyze security --offline=yes``, which reads the unit
file alone (no systemd as PID 1 needed). Whether the hardened ``ExecStart=`` still works
cannot be tried with ``systemd-run`` here (PID 1 is not systemd), so the restrictions are
reproduced in the lab instead:

* enforced: the capability bounding set and no_new_privs, with util-linux's ``setpriv``
  (the process really runs with only the capabilities the unit leaves it);
* observed: everything else, from an ``strace -f`` of the same run checked against the
  unit's directives: every system call in the unit's ``SystemCallFilter=`` (expanded by
  ``systemd-analyze syscall-filter``), socket families in ``RestrictAddressFamilies=``,
  ``setns`` only into namespace types ``RestrictNamespaces=`` allows and no namespace
  created, no writable+executable memory (``MemoryDenyWriteExecute=``), files written only
  in the test's stand-ins for ``ReadWritePaths=`` and ``RuntimeDirectory=``
  (``ProtectSystem=strict``; the check needs not even its private /tmp), device nodes that
  ``PrivateDevices=`` keeps, and only this process's own /proc entries (``ProcSubset=pid``,
  ``ProtectProc=invisible``).

Only services are rated and run: the timer in contrib/systemd runs nothing itself.

A negative control shows the capability emulation bites: without CAP_SYS_ADMIN the check
cannot enter a VRF that is a network namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from test_failover import VIP, assign, cfg, ok

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "contrib" / "systemd"
SERVICES = sorted(SYSTEMD.glob("*.service"))
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_EXPOSURE = 4.0


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def _required_tool(name: str) -> str:
    """CI (scripts/bootstrap.sh) installs these; elsewhere their absence only skips."""
    path = _which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (scripts/bootstrap.sh installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def unit_directives(path: Path) -> Dict[str, List[str]]:
    """``Key=value`` lines of a unit file, every value of a key in order (comments skipped)."""
    directives: Dict[str, List[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


# ------------------------------------------------------------------ IAM policies

IAM = REPO / "contrib" / "iam"
TRUST_POLICY = IAM / "assume-role-trust.json"
SEVERITIES = ["INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


def _parliament():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its pkg_resources import
            import parliament
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("parliament is not installed (it is in the test extra)")
        pytest.skip("parliament is not installed")
    return parliament


def lint(policy: dict, name: str) -> List[Tuple[str, str, str]]:
    """(severity, title, detail) of parliament's findings on a policy."""
    parliament = _parliament()
    result = parliament.analyze_policy_string(json.dumps(policy), name)
    findings = [parliament.enhance_finding(f) for f in result.findings]
    return [(f.severity, f.title, f"{f.detail} {f.location}") for f in findings]


def assumed_role_arn() -> str:
    [statement] = json.loads((IAM / "assume-role-source.json").read_text())["Statement"]
    return statement["Resource"]


def trust_policy_with_its_resource() -> dict:
    policy = json.loads(TRUST_POLICY.read_text())
    for statement in policy["Statement"]:
        assert "Resource" not in statement and "NotResource" not in statement  # IAM refuses them here
        statement["Resource"] = assumed_role_arn()
    return policy


def _policies() -> list:
    out = []
    for path in sorted(IAM.glob("*.json")):
        policy = trust_policy_with_its_resource() if path == TRUST_POLICY else json.loads(path.read_text())
        out.append(pytest.param(path.name, policy, id=path.name))
    return out


@pytest.mark.parametrize("name, policy", _policies())
def test_iam_policy_lint(name, policy):
    findings = lint(policy, name)
    above_low = [f for f in findings if SEVERITIES.index(f[0]) > SEVERITIES.index("LOW")]
    assert above_low == []
    readme = (IAM / "README.md").read_text()
    explained = re.search(r"^## Linter findings\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert explained, "contrib/iam/README.md has no 'Linter findings' section"
    for severity, title, detail in findings:
        if severity == "LOW":
            bullets = [b for b in explained.group(1).split("\n* ") if f"`{name}`" in b]
            actions = re.findall(r"'(\w+:\w+)'", detail)
            assert any(all(a in b for a in actions) for b in bullets), \
                f"LOW {title} {detail} is not explained in contrib/iam/README.md"


def test_trust_policy_is_linted_as_a_trust_policy():
    """Linted as is, the trust policy gets exactly the finding that does not apply to it."""
    findings = lint(json.loads(TRUST_POLICY.read_text()), TRUST_POLICY.name)
    assert [(s, t) for s, t, _ in findings] == [("HIGH", "Malformed")]
    assert "neither Resource nor NotResource" in findings[0][2]
    assert assumed_role_arn().startswith("arn:aws:iam::")
    assert lint(trust_policy_with_its_resource(), TRUST_POLICY.name) == []


def test_lint_finds_what_it_should():
    """The linter run here does report what the policies avoid."""
    findings = lint({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ec2:ReplaceRoute", "Resource": "*"},
        {"Effect": "Allow", "Action": "ec2:DescribeSubnets", "Resource": "arn:aws:ec2:*:*:subnet/*"}]}, "bad.json")
    assert ("LOW", "Unnecessary use of Resource *") in [(s, t) for s, t, _ in findings]
    assert ("MEDIUM", "No resources match for the given action") in [(s, t) for s, t, _ in findings]  # a Describe needs "*"


# ------------------------------------------------------------------ systemd's own rating


def overall_exposure(output: str, unit: str) -> float:
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+(?:\.\d+)?)", output)
    assert match, f"no overall exposure in systemd-analyze's output:\n{output}"
    return float(match.group(1))


def test_overall_exposure_is_parsed():
    sample = "→ Overall exposure level for x.service: 2.0 OK 🙂\n"
    assert overall_exposure(sample, "x.service") == 2.0
    with pytest.raises(AssertionError):
        overall_exposure("→ Overall exposure level for y.service: 8.9 EXPOSED\n", "x.service")


def test_there_are_services():
    assert [p.name for p in SERVICES] == ["aws-vrrp-notify-check.service"]


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_service_exposure_rating(service):
    analyze = _required_tool("systemd-analyze")
    proc = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(service)],
                          capture_output=True, text=True, timeout=60)
    exposure = overall_exposure(proc.stdout + proc.stderr, service.name)
    assert exposure <= MAX_EXPOSURE, proc.stdout


# ------------------------------------------------------------------ the sandbox, emulated

# Device nodes PrivateDevices=yes leaves (plus /dev/log, a symlink to journald's socket).
PRIVATE_DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/log"}
CLONE_NEW = {"CLONE_NEWNS", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER", "CLONE_NEWPID",
             "CLONE_NEWNET", "CLONE_NEWCGROUP", "CLONE_NEWTIME"}
WRITE_FLAGS = re.compile(r"\bO_(?:WRONLY|RDWR|CREAT|TRUNC)\b")
PATH_CHANGING = {"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir",
                 "chmod", "fchmodat", "symlink", "symlinkat", "link", "linkat", "truncate", "utimensat"}


def syscall_groups(analyze: str) -> Dict[str, Set[str]]:
    """``systemd-analyze syscall-filter``: group -> its members (names and @sub-groups)."""
    groups: Dict[str, Set[str]] = {}
    current = None
    for line in subprocess.run([analyze, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                               timeout=60, check=True).stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), set())
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.add(line.strip())
    return groups


def expand(names: List[str], groups: Dict[str, Set[str]]) -> Set[str]:
    out: Set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(sorted(groups[name]), groups)
        else:
            out.add(name)
    return out


def allowed_syscalls(filters: List[str], groups: Dict[str, Set[str]]) -> Set[str]:
    """The allow-list SystemCallFilter= lines make (the first allows, ``~`` lines deny)."""
    assert filters and not filters[0].startswith("~"), "expected an allow-list first"
    allowed = expand(["@default"], groups)  # systemd always permits these
    for value in filters:
        names = value.lstrip("~").split()
        if value.startswith("~"):
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    return allowed


class Trace:
    """The system calls of one ``strace -f -y`` run from the exec of the tool on."""

    CALL = re.compile(r"^(\d+)\s+([a-z_0-9]+)\((.*?)(?:\)\s+=\s+(-?\d+|\?)(.*))?$")

    def __init__(self, text: str, tool: str):
        lines = text.splitlines()
        start = next(i for i, l in enumerate(lines) if re.search(rf'execve\("[^"]*{re.escape(tool)}"', l)
                     and " = 0" in l)
        self.calls = []  # (name, args, result); unfinished calls are completed by their "resumed" line
        pending: Dict[str, tuple] = {}
        for line in lines[start:]:
            if "<unfinished ...>" in line:
                m = re.match(r"^(\d+)\s+([a-z_0-9]+)\((.*)<unfinished \.\.\.>$", line)
                if m:
                    pending[m.group(1)] = (m.group(2), m.group(3))
                continue
            resumed = re.match(r"^(\d+)\s+<\.\.\. ([a-z_0-9]+) resumed>(.*?)\)\s+=\s+(-?\d+|\?)", line)
            if resumed:
                name, args = pending.pop(resumed.group(1), (resumed.group(2), ""))
                self.calls.append((name, args + resumed.group(3), resumed.group(4)))
                continue
            m = self.CALL.match(line)
            if m and m.group(4) is not None:
                self.calls.append((m.group(2), m.group(3), m.group(4)))

    def names(self) -> Set[str]:
        return {name for name, _, _ in self.calls}

    def succeeded(self, *names: str):
        return [(n, a) for n, a, r in self.calls if n in names and r not in ("?",) and not r.startswith("-")]


def _paths(args: str) -> List[str]:
    """Absolute paths of a call's arguments, with strace -y's ``fd</dir>`` joined to a relative name."""
    paths = []
    for m in re.finditer(r'(?:(\d+|AT_FDCWD)(?:<([^>]*)>)?,\s*)?"([^"]*)"', args):
        name, base = m.group(3), m.group(2)
        if name.startswith("/"):
            paths.append(name)
        elif base:
            paths.append(os.path.join(base, name))
    return paths


def sandbox_violations(trace: Trace, unit: Dict[str, List[str]], groups: Dict[str, Set[str]],
                       writable: List[str]) -> List[str]:
    problems = []
    allowed = allowed_syscalls(unit["SystemCallFilter"], groups)
    problems += [f"system call {n} is not in SystemCallFilter=" for n in sorted(trace.names() - allowed)]
    families = set(unit["RestrictAddressFamilies"][0].split())
    for _, args in trace.succeeded("socket"):
        family = args.split(",")[0].strip()
        if family not in families:
            problems.append(f"socket family {family} is not in RestrictAddressFamilies=")
    namespaces = {f"CLONE_NEW{t.upper()}" for t in unit["RestrictNamespaces"][0].split()}
    for name, args in trace.succeeded("setns"):
        kinds = set(re.findall(r"CLONE_NEW[A-Z]+", args))
        if not kinds or not kinds <= namespaces:
            problems.append(f"setns({args}) enters a namespace RestrictNamespaces= refuses")
    for name, args in trace.succeeded("unshare", "clone", "clone3"):
        if CLONE_NEW & set(re.findall(r"CLONE_NEW[A-Z]+", args)):
            problems.append(f"{name}({args}) creates a namespace")
    if unit.get("MemoryDenyWriteExecute") == ["yes"]:
        for name, args in trace.succeeded("mmap", "mprotect", "pkey_mprotect"):
            if "PROT_EXEC" in args and ("PROT_WRITE" in args or name != "mmap"):
                problems.append(f"{name}({args}) is refused by MemoryDenyWriteExecute=")
    for name, args in trace.succeeded("open", "openat", "openat2", *PATH_CHANGING):
        for path in _paths(args):
            if path.startswith("/dev/") and path not in PRIVATE_DEVICES and not path.startswith("/dev/pts/"):
                problems.append(f"{name} {path}: not a device PrivateDevices= keeps")
            if path.startswith("/proc/") and not re.match(rf"/proc/(self|thread-self|\d+)(/|$)", path):
                problems.append(f"{name} {path}: hidden by ProcSubset=pid")
            if (name in PATH_CHANGING or WRITE_FLAGS.search(args)) and path not in PRIVATE_DEVICES \
                    and "/__pycache__/" not in path \
                    and not any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable):
                problems.append(f"{name} {path}: read-only under ProtectSystem=strict")
    return problems


SAMPLE_TRACE = """\
100 execve("/usr/bin/setpriv", ["setpriv"], 0x7ffd /* 5 vars */) = 0
100 capset({_LINUX_CAPABILITY_VERSION_3, 0}, {}) = 0
100 execve("/usr/bin/aws-vrrp-notify", ["aws-vrrp-notify", "check"], 0x7ffd /* 5 vars */) = 0
100 socket(AF_PACKET, SOCK_RAW, 768) = 3
101 setns(4</run/netns/blue>, CLONE_NEWNET <unfinished ...>
100 openat(AT_FDCWD</>, "/etc/aws-vrrp-notify/new.toml", O_WRONLY|O_CREAT|O_CLOEXEC, 0666) = 5
101 <... setns resumed>) = 0
100 openat(3</var/lib/prometheus/node-exporter>, "x.prom", O_WRONLY|O_CREAT, 0644) = 6
100 unshare(CLONE_NEWNS) = 0
100 mprotect(0x7f00, 4096, PROT_READ|PROT_EXEC) = 0
100 openat(AT_FDCWD</>, "/dev/sda", O_RDONLY) = 7
100 openat(AT_FDCWD</>, "/proc/sys/net/core/somaxconn", O_RDONLY) = 8
100 openat(AT_FDCWD</>, "/proc/self/ns/net", O_RDONLY) = 9
100 setrlimit(RLIMIT_NOFILE, {rlim_cur=1024, rlim_max=4096}) = -1 EPERM (Operation not permitted)
100 +++ exited with 0 +++
"""


def test_sandbox_checker_finds_what_the_unit_refuses():
    analyze = _required_tool("systemd-analyze")
    unit = unit_directives(SYSTEMD / "aws-vrrp-notify-check.service")
    trace = Trace(SAMPLE_TRACE, "aws-vrrp-notify")
    assert "capset" not in trace.names()  # setpriv's own calls are not the tool's
    assert trace.succeeded("setns") == [("setns", "4</run/netns/blue>, CLONE_NEWNET ")]
    problems = sandbox_violations(trace, unit, syscall_groups(analyze), ["/var/lib/prometheus/node-exporter"])
    assert problems == [
        "system call setrlimit is not in SystemCallFilter=",
        "socket family AF_PACKET is not in RestrictAddressFamilies=",
        "unshare(CLONE_NEWNS) creates a namespace",
        "mprotect(0x7f00, 4096, PROT_READ|PROT_EXEC) is refused by MemoryDenyWriteExecute=",
        "openat /etc/aws-vrrp-notify/new.toml: read-only under ProtectSystem=strict",
        "openat /dev/sda: not a device PrivateDevices= keeps",
        "openat /proc/sys/net/core/somaxconn: hidden by ProcSubset=pid",
    ]


def _setpriv(unit: Dict[str, List[str]], drop_all: bool = False) -> List[str]:
    """setpriv with the unit's capability bounding set (or none) and no_new_privs."""
    caps = [] if drop_all else [c.lower().replace("cap_", "") for c in unit["CapabilityBoundingSet"][0].split()]
    bounding = ",".join(["-all"] + [f"+{c}" for c in caps])
    assert unit["NoNewPrivileges"] == ["yes"]
    return [_required_tool("setpriv"), f"--bounding-set={bounding}", "--inh-caps=-all", "--ambient-caps=-all",
            "--no-new-privs", "--"]


def _sandboxed(unit: Dict[str, List[str]], argv: List[str], trace_file: Path, drop_all: bool = False) -> List[str]:
    """argv under strace and setpriv (see the module docstring)."""
    return [_required_tool("strace"), "-f", "-y", "-qq", "-s", "256", "-o", str(trace_file)] \
        + _setpriv(unit, drop_all) + argv


def test_setpriv_leaves_only_the_units_capabilities():
    unit = unit_directives(SYSTEMD / "aws-vrrp-notify-check.service")
    out = subprocess.run(_setpriv(unit) + ["grep", "^CapEff:", "/proc/self/status"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert int(out.split()[1], 16) == 1 << 21  # CAP_SYS_ADMIN alone


def _exec_start(unit: Dict[str, List[str]]) -> List[str]:
    [line] = unit["ExecStart"]
    return line.split()


def test_hardened_check_still_works_in_the_lab(routers, run_tool, tmp_path):
    """The unit's ExecStart, with the textfile directory and state directory of this test,
    run as the unit would run it; a group with one action in a VRF (network namespace)."""
    unit_path = SYSTEMD / "aws-vrrp-notify-check.service"
    unit = unit_directives(unit_path)
    analyze = _required_tool("systemd-analyze")
    aws, r1 = routers.cloud, routers.r1
    config = run_tool.write_config(r1, cfg(assign(), assign(ip="10.0.1.101", interface="ens9", vrf=r1.vrf)))
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert aws.who_holds(VIP) == [r1.eni("eth0")] and aws.who_holds("10.0.1.101") == [r1.eni("ens9")]

    exec_start = _exec_start(unit)
    unit_prom = Path(exec_start[exec_start.index("--prometheus") + 1])
    assert unit_prom.parent == Path("/var/lib/prometheus/node-exporter")
    textfile_dir = tmp_path / "node-exporter"  # stands for the unit's ReadWritePaths= directory
    textfile_dir.mkdir(mode=0o755)
    prom = textfile_dir / unit_prom.name
    state = run_tool.state_dir(r1)
    tool = run_tool.argv(r1, config=config, state_dir=state, ns=False)
    argv = ["ip", "netns", "exec", r1.ns] + _sandboxed(
        unit, tool + [a if a != str(unit_prom) else str(prom) for a in exec_start[1:]], tmp_path / "trace")
    proc = subprocess.run(argv, env=run_tool.env(r1), capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("aws-vrrp-notify check OK: 1 group(s)"), proc.stdout
    text = prom.read_text()
    assert 'aws_vrrp_notify_group_in_sync{group="VI_1"} 1' in text
    assert 'action="assign-private-ip 10.0.1.101 interface ens9 vrf ' in text
    trace = Trace((tmp_path / "trace").read_text(), os.path.basename(tool[0]))
    assert trace.succeeded("setns"), "the check never entered the VRF's namespace"
    writable = [str(textfile_dir), str(state)]  # PrivateTmp's /tmp too, but the check needs none
    assert sandbox_violations(trace, unit, syscall_groups(analyze), writable) == []

    # negative control: with no capability at all the VRF cannot be entered
    argv = ["ip", "netns", "exec", r1.ns] + _sandboxed(unit, tool + ["check"], tmp_path / "trace0", drop_all=True)
    proc = subprocess.run(argv, env=run_tool.env(r1), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and "setns into network namespace" in proc.stdout + proc.stderr, \
        proc.stdout + proc.stderr
