"""The command line itself: fast paths agree with click, usage errors, imports kept light."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from aws_vrrp_notify.__main__ import parse_fast
from aws_vrrp_notify.cli import cli
from aws_vrrp_notify.helptext import HELP

SAFE_ENV = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"}


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aws_vrrp_notify", *args], capture_output=True, text=True,
                          env={**SAFE_ENV, "AWS_EC2_METADATA_DISABLED": "true"}, **kw)


def test_fast_help_is_what_click_renders():
    assert CliRunner().invoke(cli, ["--help"], prog_name="aws-vrrp-notify").output == HELP
    for flag in ("--help", "-h"):
        proc = run(flag)
        assert proc.returncode == 0 and proc.stdout == HELP


def test_version():
    from aws_vrrp_notify import __version__

    assert run("--version").stdout == f"aws-vrrp-notify, version {__version__}\n"
    assert CliRunner().invoke(cli, ["--version"], prog_name="aws-vrrp-notify").output == run("--version").stdout


@pytest.mark.parametrize("argv,expected", [
    (["master", "VI_1"], ("MASTER", "VI_1", False)),
    (["-c", "x.toml", "--state-dir", "/s", "-vv", "backup", "G"], ("BACKUP", "G", False)),
    (["--config=x.toml", "notify", "INSTANCE", "VI_1", "MASTER", "150"], ("MASTER", "VI_1", True)),
    (["notify", "GROUP", "G", "STOP"], ("STOP", "G", True)),
])
def test_fast_path_parses_keepalived_calls(argv, expected):
    call = parse_fast(argv)
    assert (call.state, call.group, call.via_notify) == expected


@pytest.mark.parametrize("argv", [["--cache-dir", "/c", "-c", "x.toml", "master", "G"],
                                  ["--cache-dir=/c", "--state-dir=/s", "--config=x.toml", "master", "G"]])
def test_fast_path_reads_every_path_option(argv):
    call = parse_fast(argv)
    assert (call.cache_dir, call.config, call.state, call.group) == ("/c", "x.toml", "MASTER", "G")


@pytest.mark.parametrize("argv", [["master"], ["master", "A", "B"], ["notify", "INSTANCE", "VI_1", "PRIMARY", "1"],
                                  ["notify", "HOST", "VI_1", "MASTER"], ["master", "--help"], ["status"],
                                  ["--bogus", "master", "A"], ["notify", "INSTANCE", "VI_1", "MASTER", "x"]])
def test_anything_else_goes_to_click(argv):
    assert parse_fast(argv) is None


@pytest.mark.parametrize("argv", [["master"], ["notify", "INSTANCE", "VI_1", "PRIMARY", "1"], ["frobnicate"],
                                  ["status", "everything"], ["--bogus"]])
def test_usage_errors_exit_2(argv):
    proc = run(*argv)
    assert proc.returncode == 2 and "Usage:" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["backup", "VI_1"], ["stop", "VI_1"],
                                  ["notify", "INSTANCE", "VI_1", "FAULT", "100"]])
def test_keepalived_path_never_imports_heavy_modules(argv, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[aws]\nprepare = false\n[groups.VI_1]\n[[groups.VI_1.assign-private-ip]]\n'
                   'ip = "10.0.1.100"\ninterface = "eth0"\n')
    os.chmod(cfg, 0o600)
    code = ("import runpy, sys; sys.argv = ['aws-vrrp-notify'] + sys.argv[1:];\n"
            "import aws_vrrp_notify.__main__ as m\n"
            "rc = m.main(sys.argv[1:])\n"
            "heavy = [n for n in ('boto3', 'botocore', 'click', 'pyroute2', 'filelock', 'urllib3', 'dataclasses')"
            " if n in sys.modules]\n"
            "print('HEAVY', heavy, rc)")
    args = ["-c", str(cfg), "--state-dir", str(tmp_path / "st"), *argv] if argv[0] not in ("--help", "--version") \
        else argv
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=SAFE_ENV)
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("priority", ["١٢", "-5", "+5", "1e3", " 7"])
def test_fast_path_and_click_agree_on_a_bad_priority(priority):
    argv = ["notify", "INSTANCE", "VI_1", "BACKUP", priority]
    assert parse_fast(argv) is None  # the fast path leaves it to click ...
    proc = run(*argv)  # ... which names the argument, not an unknown option
    assert proc.returncode == 2 and "Invalid value for '[PRIORITY]'" in proc.stderr, proc.stderr
    assert "No such option" not in proc.stderr


def test_empty_paths_are_errors_not_the_defaults(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[groups.A]\n[[groups.A.assign-private-ip]]\nip = "10.0.1.100"\ninterface = "eth0"\n')
    os.chmod(cfg, 0o600)
    state = ["--state-dir", str(tmp_path / "state")]
    for argv in (["-c", "", "validate"], ["-c", "", *state, "backup", "A"], ["--config=", *state, "check"]):
        proc = run(*argv, cwd=tmp_path)
        assert proc.returncode in (2, 3) and "empty path" in proc.stderr + proc.stdout, proc.stderr
        assert "/etc/aws-vrrp-notify/config.toml" not in proc.stderr + proc.stdout
    proc = run("-c", str(cfg), "--state-dir", "", "backup", "A", cwd=tmp_path)
    assert proc.returncode == 2 and "empty path" in proc.stderr
