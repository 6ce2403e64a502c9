"""Hostile and broken inputs off AWS: special files as configuration, hostile state
directories, corrupt state records, and the reports of `check` when it cannot tell.

Every command here runs as a subprocess of the installed package with the metadata service
disabled and an empty sysfs (so: not on AWS, no network call at all), and may log to a
syslog socket of the test's own (``syslog`` fixture)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

GOOD = ('[aws]\nprepare = false\n[groups.A]\n[[groups.A.assign-private-ip]]\nip = "10.0.1.100"\n'
        'interface = "eth0"\n')
OFF_AWS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/",
           "AWS_VRRP_NOTIFY_SYSFS": "/nonexistent-sysfs"}
# The tool with its syslog socket moved to argv[1] (the default /dev/log is not ours to read).
WRAPPER = ("import sys; import aws_vrrp_notify.logsetup as l; l.SYSLOG_SOCKET = sys.argv[1]; "
           "from aws_vrrp_notify.__main__ import main; sys.exit(main(sys.argv[2:]))")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership rules and mounts need root")


class Syslog:
    """A datagram socket standing in for /dev/log."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def lines(self) -> list:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def syslog(tmp_path):
    log = Syslog(tmp_path / "log.sock")
    yield log
    log.sock.close()


class Tool:
    def __init__(self, tmp: Path, syslog: Syslog):
        self.tmp = tmp
        self.syslog = syslog
        self.state = tmp / "state"

    def config(self, text: str = GOOD, name: str = "config.toml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        os.chmod(path, 0o600)
        return path

    def __call__(self, *args, config=None, state=None, timeout: float = 20, input=None, prefix=()):
        argv = [*prefix, sys.executable, "-c", WRAPPER, self.syslog.path]
        if config is not None:
            argv += ["-c", str(config)]
        argv += ["--state-dir", str(state if state is not None else self.state), *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.tmp,
                              env={**os.environ, **OFF_AWS}, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        return proc


@pytest.fixture
def tool(tmp_path, syslog):
    return Tool(tmp_path, syslog)


def record_of(state: Path, group: str = "A"):
    return json.loads((state / "groups" / f"{group}.json").read_text())


# ---------------------------------------------------------------- special files as configuration


def special_config(kind: str, tmp: Path) -> str:
    """A configuration path that is not a plain file; returns the path to give to -c."""
    if kind == "fifo":
        os.mkfifo(tmp / "c.toml", 0o600)
    elif kind == "symlink-loop":
        os.symlink("loop-b", tmp / "c.toml")
        os.symlink("c.toml", tmp / "loop-b")
    elif kind == "symlink":
        good = tmp / "real.toml"
        good.write_text(GOOD)
        os.chmod(good, 0o600)
        os.symlink(good, tmp / "c.toml")
    elif kind == "directory":
        (tmp / "c.toml").mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp / "c.toml"))
        s.close()
    elif kind == "not-a-directory":
        (tmp / "file").write_text("")
        return str(tmp / "file" / "c.toml")
    elif kind == "name-too-long":
        return str(tmp / ("x" * 300 + ".toml"))
    elif kind in ("dev-null", "dev-zero"):
        return "/dev/" + kind[4:]
    elif kind == "empty-path":
        return ""
    return str(tmp / "c.toml")


SPECIAL = {
    "fifo": "not a regular file (a FIFO)",
    "symlink-loop": "is a symbolic link",
    "symlink": "is a symbolic link",
    "directory": "is a directory",
    "socket": "not a regular file (a socket)",
    "not-a-directory": "Not a directory",
    "name-too-long": "File name too long",
    "dev-null": "not a regular file (a character device)",
    "dev-zero": "not a regular file (a character device)",
    "empty-path": "empty path",
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_special_configuration_paths_are_refused_at_once(kind, tool, syslog):
    path = special_config(kind, tool.tmp)
    started = time.monotonic()
    proc = tool("validate", config=path, timeout=10)
    assert proc.returncode == 2 and SPECIAL[kind] in proc.stderr, proc.stderr
    proc = tool("backup", "A", config=path, timeout=10)
    assert proc.returncode == 2 and SPECIAL[kind] in proc.stderr, proc.stderr
    assert any(SPECIAL[kind] in line for line in syslog.lines())  # keepalived discards stderr
    proc = tool("check", "--json", config=path, timeout=10)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "UNKNOWN" and any(SPECIAL[kind] in p for p in data["problems"])
    assert time.monotonic() - started < 8  # nothing blocked on the special file
    assert not tool.state.exists() or not list((tool.state / "groups").glob("*.json"))


# ---------------------------------------------------------------- every problem reaches syslog


def test_every_configuration_problem_reaches_syslog(tool, syslog):
    corpus = Path(__file__).parent / "bad_configs"
    path = tool.config((corpus / "several_problems.toml").read_text())
    proc = tool("backup", "VI_1", config=path)
    assert proc.returncode == 2
    logged = "\n".join(syslog.lines())
    problems = (corpus / "several_problems.expected").read_text().splitlines()
    assert len(problems) > 1
    for problem in problems:
        assert problem in logged, (problem, logged)


# ---------------------------------------------------------------- hostile state directories


def make_state(kind: str, tmp: Path, state: Path) -> Path:
    """A state directory set up by someone else; returns a directory that must stay untouched."""
    other = tmp / "elsewhere"
    other.mkdir(mode=0o755)
    os.chmod(other, 0o755)
    state.mkdir(mode=0o700)
    if kind == "world-writable":
        os.chmod(state, 0o777)
    elif kind == "group-writable":
        os.chmod(state, 0o770)
    elif kind == "other-owner":
        os.chown(state, 65534, 65534)
    elif kind == "symlink":
        state.rmdir()
        os.symlink(other, state)
    elif kind in ("groups-symlink", "cache-symlink"):
        os.symlink(other, state / kind.split("-")[0])
    elif kind == "groups-other-owner":
        (state / "groups").mkdir(mode=0o700)
        os.chown(state / "groups", 65534, 65534)
    elif kind == "groups-world-writable":
        (state / "groups").mkdir()
        os.chmod(state / "groups", 0o777)
    elif kind == "groups-is-a-file":
        (state / "groups").write_text("")
    elif kind == "not-a-directory":
        state.rmdir()
        state.write_text("")
    return other


HOSTILE = {
    "world-writable": "writable by group or others",
    "group-writable": "writable by group or others",
    "other-owner": "not owned by root but by uid 65534",
    "symlink": "is a symbolic link",
    "groups-symlink": "is a symbolic link",
    "cache-symlink": "is a symbolic link",
    "groups-other-owner": "not owned by root but by uid 65534",
    "groups-world-writable": "writable by group or others",
    "groups-is-a-file": "not a directory",
    "not-a-directory": "not a directory",
}


@needs_root
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_state_directory_is_refused(kind, tool, syslog):
    other = make_state(kind, tool.tmp, tool.state)
    config = tool.config()
    proc = tool("backup", "A", config=config)
    assert proc.returncode == 2, proc.stderr
    assert "refusing state directory" in proc.stderr and HOSTILE[kind] in proc.stderr, proc.stderr
    assert str(tool.state) in proc.stderr
    assert any("refusing state directory" in line for line in syslog.lines())
    assert os.listdir(other) == [] and stat.S_IMODE(os.stat(other).st_mode) == 0o755  # nothing written, no chmod
    proc = tool("check", config=config)
    assert proc.returncode == 3 and "UNKNOWN" in proc.stdout and HOSTILE[kind] in proc.stdout, proc.stdout
    proc = tool("status", "ha-notification", config=config)
    assert proc.returncode == 2 and HOSTILE[kind] in proc.stderr


@needs_root
def test_cache_planted_by_another_user_is_never_used(tool):
    """A cache entry with the validity key anyone can compute with stat(2) names a group
    that is in no root-owned file."""
    config = tool.config()
    st = os.stat(config)
    evil = {"groups": {"EVIL": {"assign-private-ip": [{"ip": "10.0.1.66", "interface": "eth0"}]}}}
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    name = hashlib.sha1(os.path.abspath(config).encode()).hexdigest()[:16]
    for owner in (65534, 0):  # a hostile directory, then a stale entry in our own
        if tool.state.exists():
            shutil.rmtree(tool.state)
        (tool.state / "cache").mkdir(parents=True, mode=0o700)
        (tool.state / "groups").mkdir(mode=0o700)
        (tool.state / "cache" / f"config-{name}.json").write_text(json.dumps({"key": key, "document": evil}))
        for d in ("", "cache", "groups"):
            os.chown(tool.state / d, owner, owner)
        proc = tool("backup", "EVIL", config=config)
        assert proc.returncode == 2, proc.stderr
        assert not (tool.state / "groups" / "EVIL.json").exists()
        if owner:
            assert "refusing state directory" in proc.stderr
        else:
            assert "no group 'EVIL'" in proc.stderr
            assert tool("backup", "A", config=config).returncode == 0
            assert record_of(tool.state)["state"] == "BACKUP"


@needs_root
def test_readable_state_directory_of_ours_is_kept_private(tool):
    tool.state.mkdir(mode=0o755)
    os.chmod(tool.state, 0o755)
    assert tool("backup", "A", config=tool.config()).returncode == 0
    assert stat.S_IMODE(os.stat(tool.state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tool.state / "groups" / "A.json").st_mode) == 0o600


def read_only_state(state: Path, *argv):
    """argv run in a private mount namespace where ``state`` is a read-only tmpfs with its
    groups/ and cache/ directories already made."""
    script = ('mount -t tmpfs -o size=1m,mode=0755 avn-ro "$1" && mkdir -m 0700 "$1/groups" "$1/cache" '
              '&& mount -o remount,ro "$1" && shift && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(state), *argv]


@needs_root
@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare(1)")
def test_read_only_state_directory_is_a_clean_error(tool, syslog):
    tool.state.mkdir(mode=0o700)
    config = tool.config()
    proc = tool("backup", "A", config=config, prefix=read_only_state(tool.state))
    assert proc.returncode == 1, proc.stderr
    assert f"{tool.state}/groups" in proc.stderr and "Read-only file system" in proc.stderr
    proc = tool("fifo", config=config, input='INSTANCE "A" BACKUP 100\n', prefix=read_only_state(tool.state))
    assert "Read-only file system" in proc.stderr and f"{tool.state}/groups" in proc.stderr


# ---------------------------------------------------------------- corrupt state records


CORRUPT = {
    "seq-string": '{"group": "A", "state": "BACKUP", "seq": "x"}',
    "seq-null": '{"group": "A", "state": "BACKUP", "seq": null}',
    "seq-huge": '{"group": "A", "state": "BACKUP", "seq": 1e999}',
    "seq-negative": '{"group": "A", "state": "BACKUP", "seq": -4}',
    "seq-bool": '{"group": "A", "state": "BACKUP", "seq": true}',
    "state-unknown": '{"group": "A", "state": "BACKUP\\nB OK", "seq": 3}',
    "json-null": "null",
    "json-list": "[1, 2]",
    "not-json": "{\"seq\": 4",
    "binary": b"\xff\xfe\x00garbage",
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_record_is_logged_and_replaced(kind, tool, syslog):
    config = tool.config()
    (tool.state / "groups").mkdir(parents=True, mode=0o700)
    os.chmod(tool.state, 0o700)
    path = tool.state / "groups" / "A.json"
    content = CORRUPT[kind]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    os.chmod(path, 0o600)
    proc = tool("backup", "A", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "corrupt" in proc.stderr and str(path) in proc.stderr
    assert any("corrupt" in line for line in syslog.lines())
    first = record_of(tool.state)
    assert first["state"] == "BACKUP" and type(first["seq"]) is int and first["seq"] >= 1
    assert tool("fault", "A", config=config).returncode == 0
    assert record_of(tool.state)["seq"] == first["seq"] + 1 and record_of(tool.state)["state"] == "FAULT"


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_record_that_is_not_a_file_is_replaced(kind, tool):
    config = tool.config()
    (tool.state / "groups").mkdir(parents=True, mode=0o700)
    os.chmod(tool.state, 0o700)
    path = tool.state / "groups" / "A.json"
    target = tool.tmp / "target.json"
    target.write_text('{"group": "A", "state": "MASTER", "seq": 41}')
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(target, path)
    proc = tool("backup", "A", config=config, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert record_of(tool.state)["state"] == "BACKUP" and not path.is_symlink()
    assert target.read_text() == '{"group": "A", "state": "MASTER", "seq": 41}'


# ---------------------------------------------------------------- check: UNKNOWN with the reason


def test_check_without_any_group_is_unknown(tool):
    for text in ("", "[aws]\ndeadline = 5\n"):
        config = tool.config(text)
        proc = tool("validate", config=config)
        assert proc.returncode == 2 and "no group is configured" in proc.stderr
        proc = tool("check", config=config)
        assert proc.returncode == 3 and "no group is configured" in proc.stdout


def test_check_json_with_a_configuration_error_carries_the_problems(tool):
    config = tool.config(GOOD.replace('"10.0.1.100"', '"10.0.1.300"').replace("prepare = false", "prepare = 3"))
    proc = tool("check", "--json", config=config)
    assert proc.returncode == 3
    data = json.loads(proc.stdout)
    assert data["status"] == "UNKNOWN" and data["exit-code"] == 3 and data["groups"] == []
    assert data["problems"] == ["aws.prepare: expected true or false, got int 3",
                                "groups.A.assign-private-ip[0].ip: '10.0.1.300' is not an IPv4 address"]
    assert "aws.prepare" in data["error"] and "10.0.1.300" in data["error"]


def test_prometheus_file_in_a_missing_directory_is_unknown(tool):
    config = tool.config()
    target = tool.tmp / "missing" / "avn.prom"
    proc = tool("check", "--prometheus", target, config=config)
    assert proc.returncode == 3 and str(target) in proc.stdout and "No such file or directory" in proc.stdout
    proc = tool("check", "--json", "--prometheus", target, config=config)
    assert proc.returncode == 3 and str(target) in json.loads(proc.stdout)["error"]
    # the directory exists: written in every case, also for a configuration error
    (tool.tmp / "missing").mkdir()
    bad = tool.config("[groups.A]\n", name="bad.toml")
    assert tool("check", "--prometheus", target, config=bad).returncode == 3
    assert "aws_vrrp_notify_check_error 1" in target.read_text()
    assert "aws_vrrp_notify_check_status 3" in target.read_text()


# ---------------------------------------------------------------- output lines cannot be forged


def test_text_outputs_escape_control_characters():
    from aws_vrrp_notify.actions import AssignPrivateIp
    from aws_vrrp_notify.report import ActionReport, GroupReport, check_lines, ha_lines, instance_lines

    action = AssignPrivateIp.from_table({"ip": "10.0.1.1", "interface": "eth0"}, "x", [])
    report = GroupReport("A\nB OK: fine", "MASTER\nC", [ActionReport(action, False, "denied\nD OK")])
    for lines in (ha_lines([report]), check_lines([report])[1], instance_lines({"region": "eu\nx 1"})):
        assert all("\n" not in line and "\r" not in line for line in lines), lines
    assert "A\\nB OK: fine" in check_lines([report])[1][0]


# ---------------------------------------------------------------- fuzzing the state directory

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from aws_vrrp_notify.state import STATES, StateError, StateStore  # noqa: E402

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3),
                           max_leaves=10)
record_contents = st.one_of(
    st.binary(max_size=120),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"group": st.just("A"), "state": st.sampled_from(["MASTER", "BACKUP", "X", None]),
                           "seq": json_values}).map(json.dumps),
    st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_contents)
def test_any_record_content_is_read_safely_and_replaced(tmp_path_factory, content):
    root = tmp_path_factory.mktemp("state") / "s"
    store = StateStore(str(root)).ensure()
    try:
        (root / "groups" / "A.json").write_bytes(content if isinstance(content, bytes) else content.encode())
        before = store.read("A")
        assert before is None or (before["state"] in STATES and type(before["seq"]) is int)
        seq = store.record("A", "FAULT")
        after = store.read("A")
        assert after["state"] == "FAULT" and after["seq"] == seq and store.is_current("A", seq)
        assert seq == (before["seq"] + 1 if before else 1)
    finally:
        store.close()


entry_kinds = st.sampled_from(["directory", "file", "symlink", "fifo", "missing"])


def make_entry(path: Path, kind: str, mode: int, elsewhere: Path) -> None:
    if kind == "directory":
        path.mkdir()
        os.chmod(path, mode)
    elif kind == "file":
        path.write_text("")
    elif kind == "symlink":
        os.symlink(elsewhere, path)
    elif kind == "fifo":
        os.mkfifo(path)


@needs_root
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 0o777), entry_kinds, st.integers(0, 0o777), entry_kinds, st.integers(0, 0o777),
       st.sampled_from([0, 65534]))
def test_any_state_layout_is_used_safely_or_refused(tmp_path_factory, root_mode, groups, groups_mode, cache,
                                                    cache_mode, owner):
    base = tmp_path_factory.mktemp("layout")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    root = base / "s"
    root.mkdir()
    make_entry(root / "groups", groups, groups_mode, elsewhere)
    make_entry(root / "cache", cache, cache_mode, elsewhere)
    os.chmod(root, root_mode)
    os.chown(root, owner, owner)
    store = StateStore(str(root))
    try:
        store.ensure().record("A", "BACKUP")
    except StateError as exc:
        assert str(root) in str(exc)
    else:
        for d in (root, root / "groups", root / "cache"):
            st_ = os.lstat(d)
            assert stat.S_ISDIR(st_.st_mode) and st_.st_uid == 0 and not st_.st_mode & 0o077
        assert record_of(root)["state"] == "BACKUP"
    finally:
        store.close()
    assert os.listdir(elsewhere) == []
