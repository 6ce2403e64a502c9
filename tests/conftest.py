"""Shared fixtures: a simulated AWS region (moto + fake IMDS) and two router namespaces.

Fixtures
--------
``cloud``        (session) :class:`aws_vrrp_notify.lab.cloud.Cloud`, started, topology built.
                 ``cloud.topology`` has the ids; ``cloud.ec2`` is the harness's boto3 client.
``aws``          (function) the same ``cloud``, reset to the topology baseline before the test
                 (VIPs, routes, EIP associations, counters, IMDS logs/tokens/overrides).
``routers``      (function) needs root + ``ip netns``: ``routers.r1`` / ``routers.r2``
                 (:class:`aws_vrrp_notify.lab.routers.Router`); namespaces are built once per
                 session, the cloud is reset before each test.
``run_tool``     (function) ``run_tool(router, *args, config=None, env=None, timeout=60)`` runs
                 ``ip netns exec <router.ns> aws-vrrp-notify [-c cfg] --state-dir <dir> *args`` with
                 a clean environment; returns ``subprocess.CompletedProcess`` (text).
                 ``config``: TOML text (written to a new 0600 file), a ``Path`` (used as is), or
                 None (no ``-c``).  ``env``: extra variables; a None value removes a default one.
                 ``state_dir``: True (per test and router, created 0700), a path, or False (none).
                 ``tool=[argv...]`` replaces the tool (stand-ins); ``check=True`` asserts rc 0.
                 ``AWS_VRRP_NOTIFY_CACHE_DIR`` is the session's ``model_cache`` unless ``env`` says otherwise.
                 ``run_tool.popen(...)`` (same arguments) starts it without waiting; left-over
                 processes are SIGKILLed (by PID) at teardown.  ``run_tool.state_dir(router)``,
                 ``run_tool.write_config(router, text)``, ``run_tool.argv(...)``, ``run_tool.env(...)``.
``fault_proxy``  (function) ``fault_proxy(router, "ec2" | "imds")`` -> started
                 :class:`faultproxy.FaultProxy` inside the router's namespace; pass
                 ``env=proxy.env`` to ``run_tool``.  Its ``denied`` answers name the
                 router's instance-profile role session as the refused principal.
``lag``          (function) ``lag(spec, stale_reads=0.0)`` lags the tool's EC2 writes
                 (:meth:`aws_vrrp_notify.lab.cloud.Cloud.set_lag`: a profile name, seconds or
                 a mapping); turned off, pending writes dropped, after the test.
``lag_profile``  (function, parametrized over :data:`aws_vrrp_notify.lab.consistency.PROFILES`)
                 the cloud with that profile's lag in force; the value is the profile name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (faultproxy)

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --------------------------------------------------------------------------- cloud

@pytest.fixture(scope="session")
def cloud():
    from aws_vrrp_notify.lab.cloud import Cloud

    c = Cloud().start()
    try:
        c.build_topology()
        yield c
    finally:
        c.close()


@pytest.fixture
def aws(cloud):
    cloud.reset_state()
    yield cloud
    cloud.request_hook = None


@pytest.fixture
def lag(aws):
    def set_lag(spec, **kw) -> dict:
        return aws.set_lag(spec, **kw)

    yield set_lag
    aws.clear_lag()
    aws.discard_pending()


def _profile_names():
    from aws_vrrp_notify.lab.consistency import PROFILES

    return sorted(PROFILES)


@pytest.fixture(params=_profile_names())
def lag_profile(request, aws):
    aws.set_lag(request.param)
    yield request.param
    aws.clear_lag()
    aws.discard_pending()


# --------------------------------------------------------------------------- namespaces

class Routers:
    """``routers.r1``, ``routers["r2"]``, ``for r in routers``; plus ``.cloud`` and ``.topology``."""

    def __init__(self, cloud, routers: dict, nets):
        self.cloud = cloud
        self.topology = cloud.topology
        self._routers = routers
        self.nets = nets
        self.prefix = nets.prefix

    def __getitem__(self, name):
        return self._routers[name]

    def __getattr__(self, name):
        try:
            return self.__dict__["_routers"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self):
        return iter(self._routers.values())

    def other(self, router):
        return next(r for r in self if r.name != router.name)


@contextlib.contextmanager
def router_namespaces(build):
    """``build(nets)`` (e.g. the lab's build_routers) in fresh namespaces, removed on exit;
    skips the test when namespaces cannot be made here. Yields (nets, what build returned)."""
    from aws_vrrp_notify.lab import netns

    ok, why = netns.available()
    if not ok:
        pytest.skip(f"router namespaces unavailable: {why}")
    nets = netns.Netns()
    try:
        yield nets, build(nets)
    finally:
        nets.cleanup()


@pytest.fixture(scope="session")
def _lab_net(cloud):
    from aws_vrrp_notify.lab.routers import build_routers

    with router_namespaces(lambda nets: build_routers(cloud, nets)) as (nets, routers):
        yield Routers(cloud, routers, nets)


@pytest.fixture
def routers(_lab_net, aws):
    from aws_vrrp_notify.lab.netns import ip
    from aws_vrrp_notify.lab.routers import check_router

    for r in _lab_net:
        problems = check_router(r)
        if problems and not any("missing" in p for p in problems):
            for ifname in ("eth0", "eth1", "ens9"):  # a previous test left a link down / MAC changed
                ip("link", "set", ifname, "address", r.mac(ifname), "up", ns=r.ns_of(ifname), check=False)
            problems = check_router(r)
        if problems:
            pytest.fail(f"router namespaces broken by an earlier test: {problems}")
    yield _lab_net
    # Nothing a test started in the routers may outlive it: a detached background
    # preparation, or a notify script orphaned by a killed keepalived, would otherwise
    # call the shared simulated AWS during later tests.
    for r in _lab_net:
        kill_namespace_processes(r.ns, r.vrf)
        # a VRRP-only partition (Lab.partition) is a permanent neighbour entry: none may outlive a test
        ip("neigh", "flush", "dev", "eth0", "nud", "permanent", ns=r.ns, check=False)


def kill_namespace_processes(*namespaces: str) -> None:
    for _ in range(50):
        pids = set()
        for ns in namespaces:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            pids |= {int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


# --------------------------------------------------------------------------- the tool

def tool_command() -> tuple[list[str], dict]:
    """argv prefix to run the tool, and extra environment it needs."""
    script = Path(sys.executable).parent / "aws-vrrp-notify"
    if script.exists():
        return [str(script)], {}
    return [sys.executable, "-m", "aws_vrrp_notify"], {"PYTHONPATH": str(REPO)}


class ToolRunner:
    def __init__(self, tmp_path: Path, model_cache: Path):
        self.tmp = tmp_path
        self.model_cache = model_cache
        self.procs: list[subprocess.Popen] = []
        self._n = 0

    def state_dir(self, router) -> Path:
        d = self.tmp / "state" / _name(router)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return d

    def write_config(self, router, text: str) -> Path:
        self._n += 1
        path = self.tmp / f"config-{_name(router)}-{self._n}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def env(self, router, env: dict | None = None, extra: dict | None = None) -> dict:
        bindir = str(Path(sys.executable).parent)
        e = {
            "PATH": f"{bindir}:{CLEAN_PATH}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_VRRP_NOTIFY_CACHE_DIR": str(self.model_cache),
        }
        if router is not None and not isinstance(router, str):
            e.update(router.env())
        e.update(extra or {})
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = str(v)
        return e

    def argv(self, router, *args, config: str | None = None, state_dir=True, tool=None, ns=True) -> list[str]:
        base, _ = tool_command()
        if tool is not None:
            base = list(tool)
        cmd = []
        if ns and router is not None:
            cmd += ["ip", "netns", "exec", router.ns]
        cmd += base
        if isinstance(config, Path):  # an existing file, used as is
            cmd += ["-c", str(config)]
        elif config is not None:
            cmd += ["-c", str(self.write_config(router, config))]
        if state_dir is True:
            cmd += ["--state-dir", str(self.state_dir(router))]
        elif state_dir:
            cmd += ["--state-dir", str(state_dir)]
        return cmd + [str(a) for a in args]

    def __call__(self, router, *args, config: str | None = None, env: dict | None = None,
                 timeout: float = 60, state_dir=True, tool=None, input: str | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
        cmd = self.argv(router, *args, config=config, state_dir=state_dir, tool=tool)
        _, extra = tool_command()
        p = subprocess.run(cmd, env=self.env(router, env, extra if tool is None else None), capture_output=True,
                           text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL, cwd=self.tmp)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} -> {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def popen(self, router, *args, config: str | None = None, env: dict | None = None, state_dir=True,
              tool=None, **kw) -> subprocess.Popen:
        cmd = self.argv(router, *args, config=config, state_dir=state_dir, tool=tool)
        _, extra = tool_command()
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, env=self.env(router, env, extra if tool is None else None), text=True,
                             cwd=self.tmp, **kw)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
            for f in (p.stdout, p.stderr, p.stdin):
                if f:
                    f.close()


def _name(router) -> str:
    return router if isinstance(router, str) else router.name


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One trimmed-model cache for the session's tool runs (a machine's /var/cache/aws-vrrp-notify)."""
    path = tmp_path_factory.mktemp("model-cache")
    path.chmod(0o700)
    return path


@pytest.fixture
def run_tool(tmp_path, model_cache):
    runner = ToolRunner(tmp_path, model_cache)
    yield runner
    runner.cleanup()


# --------------------------------------------------------------------------- fault proxy

@pytest.fixture
def fault_proxy(cloud):
    from faultproxy import FaultProxy

    made = []

    def make(router=None, upstream: str = "ec2", **kw) -> FaultProxy:
        if upstream == "ec2":
            up = cloud.url
        elif upstream == "imds":
            if router is None:
                raise ValueError("an IMDS proxy needs a router")
            up = cloud.serve_imds(router.name).rstrip("/")
        else:
            up = upstream
        ns = None if router is None else router.ns
        label = None if router is None else router.ns
        if router is not None:
            role = cloud.imds(router.name).profile.role
            kw.setdefault("principal", f"arn:aws:sts::{cloud.account_id}:assumed-role/{role}/{router.instance_id}")
        p = FaultProxy(up, ns=ns, label=label, **kw).start()
        if upstream == "imds":
            p.env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": p.url + "/"}
        else:
            p.env = {"AWS_ENDPOINT_URL_EC2": p.url}
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
