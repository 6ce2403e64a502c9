"""The sdist and the wheel build, and the wheel installs and runs in a fresh virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build", reason="the 'build' package (test extra) is not installed")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "Could not find a version" in proc.stdout + proc.stderr:
        pytest.skip("no package index reachable to build in an isolated environment")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_sdist_and_wheel_build(dist):
    wheels = list(dist.glob("aws_vrrp_notify-*.whl"))
    sdists = list(dist.glob("aws_vrrp_notify-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.endswith("data/share/man/man8/aws-vrrp-notify.8") for n in names)
    assert any(n.endswith("data/share/man/man5/aws-vrrp-notify.toml.5") for n in names)
    assert any(n.endswith("iam/aws-vrrp-notify-policy.json") for n in names)
    assert not any("/lab/" in n and n.endswith("test_") for n in names)


def test_wheel_installs_and_runs_in_a_fresh_virtualenv(dist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    wheel = next(dist.glob("aws_vrrp_notify-*.whl"))
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tool = env_dir / "bin" / "aws-vrrp-notify"
    version = subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("aws-vrrp-notify, version ")
    config = REPO / "contrib" / "keepalived" / "config.toml"
    copy = tmp_path / "config.toml"
    copy.write_text(config.read_text())
    os.chmod(copy, 0o600)
    out = subprocess.run([str(tool), "-c", str(copy), "validate"], capture_output=True, text=True,
                         env={**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/"})
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
    assert (env_dir / "share" / "man" / "man8" / "aws-vrrp-notify.8").exists()
    assert (env_dir / "share" / "man" / "man5" / "aws-vrrp-notify.toml.5").exists()
    # the runtime needs neither the lab's moto nor pyroute2
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    assert "moto" not in freeze and "pyroute2" not in freeze and "filelock" not in freeze
