#!/usr/bin/env python3
"""Failover benchmark: how long a MASTER transition takes, aws-vrrp-notify vs the alternatives.

    sudo python benchmarks/failover.py [--rounds N] [--json out.json] [--latency-ms 0] [--moto]
                                       [--tool PATH] [--route-by route-table|subnet] [--skip V,...]

Needs root (it creates a network namespace).  What it does:

1. Creates a private network namespace ``avn-bench-<pid>`` with ``lo`` and a veth ``bench0`` whose
   MAC is the one the fake instance metadata knows; IPv6 is disabled in it and no IPv4 address is
   configured, so nothing but loopback traffic ever happens.
2. Serves, in this process, a zero-work fake AWS (``fake_aws.py``): IMDSv2 and an EC2 query
   endpoint with canned XML, both on 127.0.0.1 *inside* that namespace (sockets made with
   ``pyroute2.netns.create_socket``).  ``--latency-ms`` delays each EC2 call.  With ``--moto`` the
   EC2 endpoint is a seeded moto server instead (``moto_seed.py``, also on the namespace's
   127.0.0.1, ephemeral port); IMDS stays the fake.
3. Runs every variant as a fresh process with ``ip netns exec``, interleaved round-robin (the order
   rotates every round; one unrecorded warm-up round first), measuring wall time from spawn to
   reap and peak RSS (``wait4`` rusage, from the small spawner.py process):

   py-pass       ``python -c pass`` (interpreter start, for scale)
   py-nosite     ``python -S -c pass`` (the same without site: py-pass minus this = site/.pth cost)
   floor         floor_client.py: stdlib SigV4 + http.client, VIP branch || route branch
   bash-aws      bash_aws.sh: curl (IMDS) + aws CLI v1, the two calls one after the other
   bash-aws-par  the same with the two aws calls as background jobs
   tool-cold     aws-vrrp-notify -c CFG --state-dir <empty> --cache-dir <empty> master VI_1: the first
                 master ever (after an install or a botocore upgrade: botocore's full EC2 model)
   tool-boot     the same with the cache directory kept (--cache-dir, the trimmed botocore model):
                 the first master after a reboot, which empties the state directory (/run)
   tool-backup-first  aws-vrrp-notify ... backup VI_1 on an empty state dir (the first after a reboot)
   tool-backup   the next backup VI_1 on that state dir, once its background preparation ended
                 (every later BACKUP/FAULT/STOP; target <= 60 ms)
   tool-warm     ... master VI_1 right after that backup, same state dir (warm caches)
   tool-standby  the same with ``[aws] standby = true``: the backup left a standby process with
                 botocore imported, and master hands its call to it (kept across the rounds)
   tool-help     aws-vrrp-notify --help
   fifo          a resident ``aws-vrrp-notify ... fifo PATH`` fed keepalived notify_fifo lines;
                 latency = write of ``INSTANCE "VI_1" MASTER 150`` -> the fake EC2 endpoint has
                 answered the last mutating call, minus one --latency-ms (always the fake EC2).

   A MASTER run only counts as a success if it exited 0 *and*
   AssignPrivateIpAddresses and ReplaceRoute/CreateRoute reached the endpoint during the run
   ("effect" = spawn -> last of those answered).  Before each MASTER run the VIP and
   the route are put back on the peer ENI (fake or moto), so every run has real work to do.
4. Prints medians, p25-p75, peak RSS and the targets with PASS/FAIL:
   tool-standby's "AWS written" <= 1/10 of bash-aws's; tool-boot <= 1.2 x tool-warm (wall);
   peak RSS of tool-boot and tool-warm <= 50 MB; fifo <= 10 ms plus the API's own time;
   tool-backup and tool-help <= 60 ms.  With --json it writes every sample.

The aws CLI v1 is installed on first use into benchmarks/.venv-awscli (pip, PyPI); if that fails
the bash variants are reported as skipped.  A missing or failing tool is reported, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import marshal
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fake_aws import FakeAWS, Topology  # noqa: E402

IFNAME = "bench0"
GROUP = "VI_1"
AWSCLI_VENV = HERE / ".venv-awscli"
MUTATION_SETS = ({"AssignPrivateIpAddresses"}, {"ReplaceRoute", "CreateRoute"})

# ---------------------------------------------------------------------------------------- helpers


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def tail(path_or_text, n=8, width=300) -> str:
    if isinstance(path_or_text, Path):
        try:
            text = path_or_text.read_text(errors="replace")
        except OSError:
            return ""
    else:
        text = path_or_text or ""
    lines = [ln[:width] for ln in text.strip().splitlines()]
    return "\n".join(lines[-n:])


def mutations_done(entries: list[dict]):
    """(t_sent, t_recv) of the last required mutating call if every required one succeeded, else None."""
    last_sent = last_recv = None
    for wanted in MUTATION_SETS:
        hits = [e for e in entries if e["action"] in wanted and e["status"] == 200]
        if not hits:
            return None
        first = hits[0]      # the first successful call of each kind is what moved the traffic
        last_sent = max(last_sent or 0.0, first["t_sent"])
        last_recv = max(last_recv or 0.0, first["t_recv"])
    return last_sent, last_recv


def summarize(vals: list[float]) -> dict:
    if not vals:
        return {"n": 0, "median": None, "p25": None, "p75": None, "min": None, "max": None}
    if len(vals) >= 2:
        q = statistics.quantiles(vals, n=4, method="inclusive")
        p25, p75 = q[0], q[2]
    else:
        p25 = p75 = vals[0]
    return {"n": len(vals), "median": statistics.median(vals), "p25": p25, "p75": p75,
            "min": min(vals), "max": max(vals)}


# ------------------------------------------------------------------------------ network namespace


class Netns:
    """A throw-away namespace with lo up and a veth whose MAC the fake IMDS knows."""

    def __init__(self, name: str):
        self.name = name
        self.created = False

    def _ip(self, *args, check=True):
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)

    def create(self, mac: str):
        if self.name in self._ip("netns", "list").stdout.split():
            self._ip("netns", "del", self.name, check=False)
        self._ip("netns", "add", self.name)
        self.created = True
        n = ["-n", self.name]
        self._ip(*n, "link", "set", "lo", "up")
        # No IPv6 (no DAD/RS packets on the veth) and no IPv4 address: the only traffic is loopback.
        for conf in ("all", "default"):
            subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c",
                            f"echo 1 > /proc/sys/net/ipv6/conf/{conf}/disable_ipv6"],
                           check=False, capture_output=True)
        self._ip(*n, "link", "add", IFNAME, "type", "veth", "peer", "name", IFNAME + "p")
        self._ip(*n, "link", "set", IFNAME, "address", mac)
        self._ip(*n, "link", "set", IFNAME, "up")
        self._ip(*n, "link", "set", IFNAME + "p", "up")

    def listen(self) -> socket.socket:
        """A listening TCP socket on 127.0.0.1:<ephemeral> inside the namespace."""
        from pyroute2.netns import create_socket
        s = create_socket(self.name, socket.AF_INET, socket.SOCK_STREAM, flags=0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        return s

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self):
        if self.created:
            self._ip("netns", "del", self.name, check=False)
            self.created = False


# --------------------------------------------------------------------------------- process runner


class Runner:
    """Runs commands through spawner.py (a small process, so that the children's ru_maxrss is theirs
    and not the harness's memory image): wall time spawn -> reap and peak RSS via wait4."""

    def __init__(self, workdir: Path, env: dict, netns: Netns):
        self.workdir = workdir
        self.env = env
        self.netns = netns
        self.live: set[int] = set()      # PIDs started and not reaped yet (for cleanup)
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(HERE / "spawner.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def _call(self, req: dict) -> dict:
        data = marshal.dumps(req)
        with self.lock:
            self.proc.stdin.write(len(data).to_bytes(4, "little") + data)
            head = self._read(4)
            resp = marshal.loads(self._read(int.from_bytes(head, "little")))
        if "error" in resp:
            raise RuntimeError("spawner: " + resp["error"])
        return resp

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.proc.stdout.read(n - len(buf))
            if not chunk:
                raise RuntimeError("spawner exited")
            buf += chunk
        return buf

    def _req(self, op, argv, env_extra, tag):
        return {"op": op, "argv": self.netns.wrap([str(a) for a in argv]),
                "env": dict(self.env, **(env_extra or {})), "cwd": str(self.workdir),
                "out": str(self.workdir / f"{tag}.out"), "err": str(self.workdir / f"{tag}.err")}

    def run(self, argv, timeout=30.0, env_extra=None, tag="run") -> dict:
        req = self._req("run", argv, env_extra, tag)
        req["timeout"] = float(timeout)
        r = self._call(req)
        return {"t0": r["t0"], "wall_ms": (r["t1"] - r["t0"]) * 1000.0, "rc": r["rc"],
                "maxrss_kb": r["maxrss_kb"], "timed_out": r["timed_out"],
                "stdout": Path(req["out"]), "stderr": Path(req["err"])}

    def spawn(self, argv, env_extra=None, tag="run"):
        req = self._req("spawn", argv, env_extra, tag)
        r = self._call(req)
        self.live.add(r["pid"])
        return r["pid"], Path(req["out"]), Path(req["err"])

    def reap(self, pid: int, block=True):
        """None while running, else (rc, maxrss_kb)."""
        r = self._call({"op": "reap", "pid": pid, "block": block})
        if not r["done"]:
            return None
        self.live.discard(pid)
        return r["rc"], r["maxrss_kb"]

    def close(self):
        """EOF to the spawner: it SIGKILLs and reaps whatever is still running, then exits.  If it is
        busy waiting for a child, SIGTERM (by PID) makes it do the same at once."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.live.clear()


class MotoBackend:
    """The request log / reset of moto_seed.py, same interface as FakeAWS's (over its stdin/stdout)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def _cmd(self, line: str) -> str:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        out = self.proc.stdout.readline().decode()
        if not out:
            raise RuntimeError("moto_seed.py went away")
        return out.strip()

    def reset_state(self):
        if self._cmd("reset") != "ok":
            raise RuntimeError("moto reset failed")

    def mark(self) -> int:
        return len(json.loads(self._cmd("log 0")))

    def entries_since(self, idx: int) -> list[dict]:
        return json.loads(self._cmd(f"log {idx}"))


# ----------------------------------------------------------------------------------------- awscli


def ensure_awscli(spec: str) -> tuple[Path | None, str]:
    """(bin dir, version or reason).  Creates benchmarks/.venv-awscli with pip on first use."""
    aws = AWSCLI_VENV / "bin" / "aws"

    def version():
        r = subprocess.run([str(aws), "--version"], capture_output=True, text=True, timeout=60,
                           env={"PATH": f"{aws.parent}:/usr/bin:/bin", "HOME": "/nonexistent"})
        return r.returncode, (r.stdout + r.stderr).strip()

    if aws.exists():
        rc, v = version()
        if rc == 0:
            return aws.parent, v
        log(f"awscli venv at {AWSCLI_VENV} is broken ({tail(v, 1)}); recreating it")
        shutil.rmtree(AWSCLI_VENV, ignore_errors=True)
    log(f"installing {spec} into {AWSCLI_VENV} (first run only) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True,
                       capture_output=True, text=True, timeout=120)
        subprocess.run([str(AWSCLI_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", spec], check=True, capture_output=True,
                       text=True, timeout=600)
        rc, v = version()
        if rc != 0:
            raise RuntimeError(v)
        return aws.parent, v
    except subprocess.CalledProcessError as e:
        return None, f"awscli install failed: {tail(e.stderr or e.stdout or str(e), 3)}"
    except Exception as e:  # noqa: BLE001
        return None, f"awscli install failed: {e}"


# -------------------------------------------------------------------------------------- benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.skip = {s.strip() for s in (args.skip or "").split(",") if s.strip()}
        self.tmp = Path(tempfile.mkdtemp(prefix="avn-bench-"))
        os.chmod(self.tmp, 0o755)
        self.netns = Netns(f"avn-bench-{os.getpid()}")
        self.fake: FakeAWS | None = None
        self.moto: subprocess.Popen | None = None
        self.runner: Runner | None = None
        self.samples: dict[str, list[dict]] = {}
        self.notes: dict[str, str] = {}
        self.disabled: dict[str, str] = {}
        self.fifo_result: dict = {}
        self.state_n = 0
        self.meta: dict = {}
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ setup
    def setup(self):
        a = self.args
        topo = Topology()
        moto_info = None
        if a.moto:
            moto_info = self.start_moto_pending()
        if moto_info:
            topo = Topology(mac=moto_info["mac"], eni=moto_info["eni"], other_eni=moto_info["other_eni"],
                            subnet=moto_info["subnet"], vpc=moto_info["vpc"], rtb=moto_info["rtb"],
                            primary_ip=moto_info["primary_ip"], vip=moto_info["vip"],
                            subnet_cidr=moto_info["subnet_cidr"], vpc_cidr=moto_info["vpc_cidr"])
        self.topo = topo
        self.fake = FakeAWS(topo, latency_ms=a.latency_ms)
        imds_port, ec2_port = self.fake.start(self.netns.listen(), self.netns.listen())
        # the MAC was only known now in --moto mode
        subprocess.run(["ip", "-n", self.netns.name, "link", "set", IFNAME, "address", topo.mac], check=True)
        self.fake_imds_url = f"http://127.0.0.1:{imds_port}/"
        self.fake_ec2_url = f"http://127.0.0.1:{ec2_port}"
        if moto_info:     # moto's process serves an IMDS that reads moto's state
            self.imds_url = f"http://127.0.0.1:{moto_info['imds_port']}/"
            self.ec2_url = f"http://127.0.0.1:{moto_info['port']}"
            self.meta["moto_fixes"] = moto_info.get("moto_fixes")
            self.backend = MotoBackend(self.moto)
        else:
            self.imds_url, self.ec2_url = self.fake_imds_url, self.fake_ec2_url
            self.backend = self.fake

        home = self.tmp / "home"
        home.mkdir()
        venv_bin = str(Path(sys.executable).parent)
        self.env = {
            "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_EC2": self.ec2_url,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds_url,
            "AWS_CONFIG_FILE": str(self.tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.tmp / "no-aws-credentials"),
            # kept across the runs, like /var/cache/aws-vrrp-notify across reboots (tool-cold: its own)
            "AWS_VRRP_NOTIFY_CACHE_DIR": str(self.tmp / "model-cache"),
        }
        self.runner = Runner(self.tmp, self.env, self.netns)

        where = topo.rtb if a.route_by == "route-table" else topo.subnet
        self.failover_args = [IFNAME, topo.vip, where, topo.destination]
        self.config = self.tmp / "config.toml"
        self.config_text = (
            "# written by benchmarks/failover.py\n"
            "[aws]\n"
            f"deadline = {a.tool_deadline}\n\n"
            f"[groups.{GROUP}]\n\n"
            f"[[groups.{GROUP}.assign-private-ip]]\n"
            f'ip = "{topo.vip}"\n'
            f'interface = "{IFNAME}"\n\n'
            f"[[groups.{GROUP}.change-route]]\n"
            f'{a.route_by} = "{where}"\n'
            f'destination = "{topo.destination}"\n'
            f'interface = "{IFNAME}"\n'
        )
        self.config.write_text(self.config_text)
        self.standby_config = self.tmp / "config-standby.toml"
        self.standby_config.write_text(self.config_text.replace("[aws]\n", "[aws]\nstandby = true\n", 1))
        self.standby_state = None

        self.tool = Path(a.tool) if a.tool else Path(sys.executable).parent / "aws-vrrp-notify"
        import sysconfig
        pths = sorted(Path(sysconfig.get_paths()["purelib"]).glob("__editable__*.pth"))
        if pths:
            self.meta["editable_pth"] = [str(x) for x in pths]
            self.warnings.append(
                "site-packages has setuptools editable-install finder(s) (" + ", ".join(x.name for x in pths)
                + "): every Python start in this venv imports them; compare py-pass with py-nosite. "
                "A regular (non-editable) install does not pay this.")
        if not (self.tool.is_file() and os.access(self.tool, os.X_OK)):
            reason = f"tool not found or not executable: {self.tool}"
            for v in ("tool-cold", "tool-boot", "tool-backup", "tool-warm", "tool-standby", "tool-help", "fifo"):
                self.disabled[v] = reason

        self.aws_bin = None
        if not ({"bash-aws", "bash-aws-par"} <= self.skip):
            self.aws_bin, awsv = ensure_awscli(a.awscli_spec)
            self.meta["awscli"] = awsv
            if self.aws_bin is None:
                self.notes["bash-aws"] = self.notes["bash-aws-par"] = awsv
                self.skip |= {"bash-aws", "bash-aws-par"}
                log(awsv)

    def start_moto_pending(self):
        """Start moto_seed.py inside the namespace (needs the namespace; MAC is fixed up after)."""
        log("starting moto in the namespace ...")
        err = open(self.tmp / "moto.err", "wb")
        self.moto = subprocess.Popen(self.netns.wrap([sys.executable, str(HERE / "moto_seed.py"),
                                                      str(self.args.latency_ms)]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                          "HOME": str(self.tmp), "LANG": "C.UTF-8"})
        err.close()
        ready, _, _ = select.select([self.moto.stdout], [], [], 120)
        line = self.moto.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("moto failed to start: " + tail(self.tmp / "moto.err"))
        return json.loads(line)

    # ---------------------------------------------------------------- records
    def record(self, variant, rnd, res, ok=None, error=None, effect=None):
        if ok is None:
            ok = res["rc"] == 0 and not res["timed_out"]
        if not ok and error is None:
            if res["timed_out"]:
                error = f"timed out; stderr: {tail(res['stderr'], 4)}"
            else:
                error = f"exit {res['rc']}; stderr: {tail(res['stderr'])}"
        s = {"round": rnd, "ok": ok, "wall_ms": round(res["wall_ms"], 3), "rc": res["rc"],
             "maxrss_kb": res["maxrss_kb"], "effect_ms": None if effect is None else round(effect, 3)}
        if error:
            s["error"] = error
        if rnd >= 1:
            self.samples.setdefault(variant, []).append(s)
        if not ok:
            fails = [x for x in self.samples.get(variant, []) if not x["ok"]]
            oks = [x for x in self.samples.get(variant, []) if x["ok"]]
            if not oks and len(fails) >= self.args.give_up_after and variant not in self.disabled:
                self.disabled[variant] = f"gave up after {len(fails)} failures; last: {error}"
        return s

    def new_state_dir(self) -> Path:
        self.state_n += 1
        d = self.tmp / f"state-{self.state_n}"
        d.mkdir()
        return d

    def master_run(self, variant, rnd, argv, timeout, env_extra=None):
        """A MASTER-like run: put the VIP and route back on the peer, run, check what reached EC2."""
        self.backend.reset_state()
        mark = self.backend.mark()
        res = self.runner.run(argv, timeout=timeout, env_extra=env_extra, tag=variant)
        entries = self.backend.entries_since(mark)
        calls = [e["action"] + ("" if e["status"] == 200 else f"={e['status']}") for e in entries]
        done = mutations_done(entries)
        effect = (done[0] - res["t0"]) * 1000.0 if done else None
        if res["rc"] == 0 and not res["timed_out"] and done is None:
            s = self.record(variant, rnd, res, ok=False, error=(
                "exit 0 but AssignPrivateIpAddresses + ReplaceRoute/CreateRoute did not both succeed "
                f"at the EC2 endpoint (saw: {', '.join(calls) or 'nothing'}); stderr: {tail(res['stderr'], 4)}"))
        else:
            s = self.record(variant, rnd, res, effect=effect)
        s["ec2_calls"] = calls
        return s

    # ---------------------------------------------------------------- variants
    def step_py_pass(self, rnd):
        self.record("py-pass", rnd, self.runner.run([sys.executable, "-c", "pass"], timeout=10, tag="py-pass"))

    def step_py_nosite(self, rnd):
        self.record("py-nosite", rnd, self.runner.run([sys.executable, "-S", "-c", "pass"], timeout=10,
                                                      tag="py-nosite"))

    def step_floor(self, rnd):
        self.master_run("floor", rnd, [sys.executable, str(HERE / "floor_client.py"), *self.failover_args], 15)

    def _bash(self, variant, rnd, parallel):
        env = {"PATH": f"{self.aws_bin}:{self.env['PATH']}", "BENCH_PARALLEL": "1" if parallel else "0"}
        self.master_run(variant, rnd, ["bash", str(HERE / "bash_aws.sh"), *self.failover_args], 90,
                        env_extra=env)

    def step_bash(self, rnd):
        self._bash("bash-aws", rnd, False)

    def step_bash_par(self, rnd):
        self._bash("bash-aws-par", rnd, True)

    def tool_argv(self, state_dir, *cmd):
        return [str(self.tool), "-c", str(self.config), "--state-dir", str(state_dir), *cmd]

    def step_tool_cold(self, rnd):
        cache = self.new_state_dir()  # an empty directory of its own: no trimmed model yet
        self.master_run("tool-cold", rnd, self.tool_argv(self.new_state_dir(), "master", GROUP),
                        self.args.tool_deadline + 10, env_extra={"AWS_VRRP_NOTIFY_CACHE_DIR": str(cache)})

    def step_tool_boot(self, rnd):
        self.master_run("tool-boot", rnd, self.tool_argv(self.new_state_dir(), "master", GROUP),
                        self.args.tool_deadline + 10)

    def step_tool_backup_warm(self, rnd):
        d = self.new_state_dir()
        if "tool-backup" not in self.disabled or "tool-warm" not in self.disabled:
            # the first BACKUP on an empty state directory (after a reboot: /run is a tmpfs) ...
            res = self.runner.run(self.tool_argv(d, "backup", GROUP), timeout=20, tag="tool-backup-first")
            if "tool-backup" not in self.disabled and "tool-backup" not in self.skip:
                self.record("tool-backup-first", rnd, res)
            # ... prepares the next MASTER in a detached child: let it finish, so that it does not
            # compete for the CPU with what is measured next
            plan = Path(d) / "cache" / f"plan-{GROUP}.json"
            end = time.monotonic() + 5
            while time.monotonic() < end and not (plan.exists() and plan.stat().st_size > 2):
                time.sleep(0.01)
            time.sleep(0.05)
            # the steady state: every later BACKUP/FAULT/STOP (the 60 ms target)
            res = self.runner.run(self.tool_argv(d, "backup", GROUP), timeout=20, tag="tool-backup")
            if "tool-backup" not in self.disabled and "tool-backup" not in self.skip:
                self.record("tool-backup", rnd, res)
        if "tool-warm" not in self.disabled and "tool-warm" not in self.skip:
            self.master_run("tool-warm", rnd, self.tool_argv(d, "master", GROUP), self.args.tool_deadline + 10)

    def step_tool_standby(self, rnd):
        """master with [aws] standby = true: the BACKUP before it left a standby process with
        botocore imported (kept across the rounds, as it is across transitions)."""
        if self.standby_state is None:
            self.standby_state = self.new_state_dir()
        argv = [str(self.tool), "-c", str(self.standby_config), "--state-dir", str(self.standby_state)]
        self.runner.run(argv + ["backup", GROUP], timeout=20, tag="tool-standby-backup")
        sock = self.standby_state / "standby.sock"
        end = time.monotonic() + 10
        while time.monotonic() < end and not sock.exists():
            time.sleep(0.02)
        time.sleep(0.05)
        self.master_run("tool-standby", rnd, argv + ["master", GROUP], self.args.tool_deadline + 10)

    def stop_standby(self):
        if self.standby_state is None:
            return
        argv = [str(self.tool), "-c", str(self.standby_config), "--state-dir", str(self.standby_state)]
        with contextlib.suppress(Exception):
            self.runner.run(argv + ["stop", GROUP], timeout=20, tag="tool-standby-stop")
        with contextlib.suppress(Exception):  # by PID, should stop not have ended it
            os.kill(int((self.standby_state / "standby.lock").read_text().split()[0]), signal.SIGTERM)

    def step_tool_help(self, rnd):
        res = self.runner.run([str(self.tool), "--help"], timeout=10, tag="tool-help")
        ok = res["rc"] == 0 and not res["timed_out"] and res["stdout"].stat().st_size > 0
        self.record("tool-help", rnd, res, ok=ok,
                    error=None if ok else (f"exit {res['rc']}, {res['stdout'].stat().st_size} bytes on stdout; "
                                           f"stderr: {tail(res['stderr'])}"))

    def steps(self):
        table = [("py-pass", self.step_py_pass), ("py-nosite", self.step_py_nosite), ("floor", self.step_floor),
                 ("bash-aws", self.step_bash), ("bash-aws-par", self.step_bash_par),
                 ("tool-cold", self.step_tool_cold), ("tool-boot", self.step_tool_boot),
                 (("tool-backup", "tool-warm"), self.step_tool_backup_warm),
                 ("tool-standby", self.step_tool_standby),
                 ("tool-help", self.step_tool_help)]
        out = []
        for names, fn in table:
            names = names if isinstance(names, tuple) else (names,)
            live = [n for n in names if n not in self.skip]
            if live:
                out.append((live, fn))
        return out

    def run_rounds(self):
        steps = self.steps()
        for rnd in range(0, self.args.rounds + 1):       # round 0 = warm-up, not recorded
            k = rnd % len(steps) if steps else 0
            order = steps[k:] + steps[:k]
            t = time.perf_counter()
            for names, fn in order:
                if all(n in self.disabled for n in names):
                    continue
                fn(rnd)
            log(f"round {rnd}/{self.args.rounds}{' (warm-up)' if rnd == 0 else ''}: "
                f"{time.perf_counter() - t:.1f} s")

    # ------------------------------------------------------------------- fifo
    def run_fifo(self):
        if "fifo" in self.skip:
            return
        if "fifo" in self.disabled:
            self.fifo_result = {"ok": False, "error": self.disabled["fifo"], "samples": []}
            return
        r = self.fifo_result = {"ok": False, "samples": [], "first_ms": None, "error": None}
        fifo = self.tmp / "notify.fifo"
        os.mkfifo(fifo)
        state = self.new_state_dir()
        # the fifo measurement always uses the fake EC2 endpoint: its request log gives the timing
        env = {"AWS_ENDPOINT_URL_EC2": self.fake_ec2_url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.fake_imds_url}
        pid, _, err = self.runner.spawn(self.tool_argv(state, "fifo", str(fifo)), env_extra=env, tag="fifo")
        fd = None
        maxrss = None
        try:
            t_start = time.perf_counter()
            while True:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                got = self.runner.reap(pid, block=False)
                if got:
                    maxrss = got[1]
                    r["error"] = f"exited {got[0]} without opening the FIFO; stderr: {tail(err)}"
                    return
                if time.perf_counter() - t_start > 15:
                    r["error"] = f"did not open the FIFO for reading within 15 s; stderr: {tail(err)}"
                    return
                time.sleep(0.005)
            os.set_blocking(fd, True)
            r["open_ms"] = (time.perf_counter() - t_start) * 1000.0
            lat = self.args.latency_ms

            def event(state, prio, wait):
                self.fake.reset_state() if state == "MASTER" else None
                mark = self.fake.mark()
                t0 = time.perf_counter()
                os.write(fd, f'INSTANCE "{GROUP}" {state} {prio}\n'.encode())
                if not wait:
                    return None
                ok = self.fake.wait_for(lambda log_: mutations_done(log_[mark:]) is not None,
                                        timeout=self.args.tool_deadline + 5)
                if not ok:
                    return None
                sent, recv = mutations_done(self.fake.entries_since(mark))
                return (sent - t0) * 1000.0 - lat, (recv - t0) * 1000.0

            first = event("MASTER", 150, True)
            if first is None:
                got = self.runner.reap(pid, block=False)
                if got:
                    maxrss = got[1]
                r["error"] = ("first MASTER event: AssignPrivateIpAddresses + ReplaceRoute/CreateRoute not seen "
                              f"within {self.args.tool_deadline + 5} s; stderr: {tail(err)}")
                return
            r["first_ms"] = round(first[0], 3)
            for i in range(self.args.rounds):
                event("BACKUP", 100, False)
                time.sleep(0.15)
                res = event("MASTER", 150, True)
                if res is None:
                    r["samples"].append({"i": i, "ok": False})
                    if sum(1 for s in r["samples"] if not s["ok"]) >= 3:
                        r["error"] = f"3 MASTER events without effect; stderr: {tail(err)}"
                        break
                    continue
                r["samples"].append({"i": i, "ok": True, "latency_ms": round(res[0], 3),
                                     "to_receipt_ms": round(res[1], 3)})
            r["ok"] = any(s["ok"] for s in r["samples"])
        finally:
            if fd is not None:
                os.close(fd)                      # EOF for the reader
            if pid in self.runner.live:
                deadline = time.perf_counter() + 1.0
                got = None
                while time.perf_counter() < deadline:
                    got = self.runner.reap(pid, block=False)
                    if got:
                        break
                    time.sleep(0.02)
                if not got:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                    deadline = time.perf_counter() + 3.0
                    while time.perf_counter() < deadline:
                        got = self.runner.reap(pid, block=False)
                        if got:
                            break
                        time.sleep(0.02)
                if not got:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    got = self.runner.reap(pid)
                maxrss = got[1]
                r["exit"] = got[0]
            if maxrss is not None:
                r["maxrss_kb"] = maxrss

    # ----------------------------------------------------------------- report
    def report(self) -> dict:
        names = ["py-pass", "py-nosite", "floor", "bash-aws", "bash-aws-par", "tool-cold", "tool-boot",
                 "tool-backup-first",
                 "tool-backup", "tool-warm", "tool-standby",
                 "tool-help"]
        rows = {}
        for n in names:
            ss = self.samples.get(n, [])
            ok = [s for s in ss if s["ok"]]
            rows[n] = {
                "wall": summarize([s["wall_ms"] for s in ok]),
                "effect": summarize([s["effect_ms"] for s in ok if s["effect_ms"] is not None]),
                "maxrss_mb": summarize([s["maxrss_kb"] / 1024.0 for s in ok]),
                "ok": len(ok), "runs": len(ss),
                "ec2_calls_example": next((x["ec2_calls"] for x in reversed(ss) if "ec2_calls" in x), None),
                "status": ("skipped" if n in self.skip else
                           "failed" if (n in self.disabled or (ss and not ok)) else
                           "ok" if ok else "not run"),
                "note": self.notes.get(n) or self.disabled.get(n) or ("--skip" if n in self.skip else None)
                or next((s.get("error") for s in ss if not s["ok"]), None),
            }
        if "fifo" not in self.skip:
            f = self.fifo_result
            ok = [s["latency_ms"] for s in f.get("samples", []) if s["ok"]]
            rows["fifo"] = {"wall": summarize(ok), "effect": summarize([]),
                            "maxrss_mb": summarize([f["maxrss_kb"] / 1024.0] if f.get("maxrss_kb") else []),
                            "ok": len(ok), "runs": len(f.get("samples", [])),
                            "status": "ok" if ok else "failed",
                            "note": f.get("error") or (f"first event {f['first_ms']:.1f} ms" if f.get("first_ms")
                                                       is not None else None)}

        return {"rows": rows, "targets": targets(rows, self.args.latency_ms)}

    def print_table(self, rep):
        a = self.args
        rows = rep["rows"]
        print()
        print(f"aws-vrrp-notify failover benchmark: {a.rounds} interleaved rounds, "
              f"EC2 = {'moto' if a.moto else 'zero-work fake'}, +{a.latency_ms:g} ms per EC2 call, "
              f"change-route by {a.route_by}")
        print("wall = spawn -> exit of a fresh process (ms); effect = spawn -> last mutating EC2 call answered")
        print()
        hdr = f"{'variant':<13} {'ok/runs':>7} {'median':>8} {'p25-p75':>15} {'effect':>8} {'RSS MB':>7}  note"
        print(hdr)
        print("-" * len(hdr))

        def f(x, w, d=1):
            return f"{x:>{w}.{d}f}" if x is not None else f"{'-':>{w}}"
        for n, r in rows.items():
            w = r["wall"]
            iqr = f"{w['p25']:.1f}-{w['p75']:.1f}" if w["median"] is not None else "-"
            note = r["note"] or ""
            if r["status"] in ("failed", "skipped", "not run"):
                note = f"{r['status'].upper()}: {note}"
            if n == "fifo" and r["status"] == "ok":
                note = f"resident; write -> last mutation answered, minus {a.latency_ms:g} ms; {note}"
            note = " | ".join(ln.strip() for ln in note.splitlines() if ln.strip())
            if len(note) > 170:
                note = note[:60] + " ... " + note[-105:]       # keep the end: the actual error
            print(f"{n:<13} {r['ok']:>3}/{r['runs']:<3} {f(w['median'], 8)} {iqr:>15} "
                  f"{f(r['effect']['median'], 8)} {f(r['maxrss_mb']['median'], 7)}  {note}")
        print()
        for w in self.warnings:
            print("note: " + w)
        if self.warnings:
            print()
        print_targets(rep["targets"])

    # ---------------------------------------------------------------- cleanup
    def cleanup(self):
        if self.runner:
            self.stop_standby()
            self.runner.close()
        if self.fake:
            self.fake.stop()
        if self.moto:
            with contextlib.suppress(Exception):
                self.moto.stdin.close()
                self.moto.wait(timeout=3)
            if self.moto.poll() is None:
                self.moto.terminate()                # by PID
                try:
                    self.moto.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.moto.kill()
                    self.moto.wait()
        self.netns.delete()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _median(rows: dict, variant: str, column: str = "wall"):
    return rows.get(variant, {}).get(column, {}).get("median")


def _target(name: str, value, limit: float, unit: str, detail: str) -> dict:
    return {"target": name, "value": value, "limit": limit, "unit": unit, "detail": detail,
            "pass": None if value is None else value <= limit}


def targets(rows: dict, latency_ms: float) -> list[dict]:
    """The targets of a failover, each with its measured value and PASS/FAIL."""
    warm_effect, bash_effect = _median(rows, "tool-standby", "effect"), _median(rows, "bash-aws", "effect")
    boot, warm = _median(rows, "tool-boot"), _median(rows, "tool-warm")
    rss = [v for v in (_median(rows, "tool-boot", "maxrss_mb"), _median(rows, "tool-warm", "maxrss_mb"))
           if v is not None]
    return [
        _target("master after backup: AWS written / bash + aws CLI's", warm_effect / bash_effect
                if warm_effect and bash_effect else None, 0.1, "ratio", "tool-standby effect / bash-aws effect"),
        _target("first master after a boot / warm master", boot / warm if boot and warm else None, 1.2, "ratio",
                "tool-boot wall / tool-warm wall"),
        _target("peak RSS of a master", max(rss) if rss else None, 50.0, "MB", "the larger of tool-boot, tool-warm"),
        _target("fifo: MASTER line -> writes answered, minus API time", _median(rows, "fifo"), 10.0, "ms",
                f"median, {latency_ms:g} ms of API time taken off"),
        _target("backup", _median(rows, "tool-backup"), 60.0, "ms", "steady-state BACKUP, wall"),
        _target("--help", _median(rows, "tool-help"), 60.0, "ms", "wall"),
    ]


def print_targets(results: list[dict]) -> None:
    print(f"{'target':<55} {'measured':>10} {'limit':>8}  verdict")
    for t in results:
        fmt = "{:.3f}" if t["unit"] == "ratio" else "{:.1f} " + t["unit"]
        value = fmt.format(t["value"]) if t["value"] is not None else "-"
        limit = fmt.format(t["limit"])
        verdict = "n/a" if t["pass"] is None else "PASS" if t["pass"] else "FAIL"
        print(f"{t['target']:<55} {value:>10} {limit:>8}  {verdict}   ({t['detail']})")
    print()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument("--json", metavar="FILE", help="write all samples and the summary here")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay per EC2 call (default 0)")
    p.add_argument("--moto", action="store_true", help="EC2 = a seeded moto server instead of the fake")
    p.add_argument("--tool", metavar="PATH", help="aws-vrrp-notify executable "
                   "(default: aws-vrrp-notify next to this Python)")
    p.add_argument("--route-by", choices=("route-table", "subnet"), default="route-table",
                   help="how change-route names its table: route-table id (no describe) or subnet id")
    p.add_argument("--skip", metavar="V,...", help="variants to leave out, e.g. bash-aws-par,fifo")
    p.add_argument("--awscli-spec", default="awscli<2", help="pip requirement for the aws CLI v1 venv")
    p.add_argument("--tool-deadline", type=int, default=5, help="[aws] deadline written to the tool's config")
    p.add_argument("--give-up-after", type=int, default=2,
                   help="stop running a variant after this many failures with no success (default 2)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, stderr files)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("failover.py needs root: it creates a network namespace (ip netns add)")
        return 2
    if shutil.which("ip") is None:
        log("failover.py needs iproute2 (ip)")
        return 2
    import importlib.util
    if importlib.util.find_spec("pyroute2") is None:
        log(f"failover.py needs pyroute2 in {sys.executable} (use the project's venv python)")
        return 2
    bench = Bench(args)

    main_pid = os.getpid()

    def on_signal(signum, frame):
        if os.getpid() != main_pid:
            # a forked helper (pyroute2's create_socket child gets SIGTERM when done): die quietly,
            # never run the cleanup below (it would delete the namespace under our feet)
            os._exit(128 + signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second signal must not interrupt cleanup
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t_all = time.perf_counter()
    try:
        bench.netns.create(Topology().mac)
        bench.setup()
        log(f"netns {bench.netns.name}; IMDS {bench.imds_url}; EC2 {bench.ec2_url}; tool {bench.tool}")
        bench.run_rounds()
        bench.run_fifo()
        rep = bench.report()
        bench.print_table(rep)
        if args.json:
            out = {
                "meta": {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                    "executable": sys.executable, "platform": platform.platform(),
                    "cpus": os.cpu_count(), "rounds": args.rounds, "latency_ms": args.latency_ms,
                    "ec2": "moto" if args.moto else "fake", "route_by": args.route_by,
                    "tool": str(bench.tool), "config": bench.config_text,
                    "order": "round-robin, rotated each round, 1 warm-up round discarded",
                    "total_s": round(time.perf_counter() - t_all, 1), "warnings": bench.warnings,
                    **bench.meta,
                },
                "summary": rep,
                "samples": bench.samples,
                "fifo": bench.fifo_result,
            }
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
            log(f"wrote {args.json}")
        log(f"total {time.perf_counter() - t_all:.1f} s")
        return 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        return 130
    finally:
        if os.getpid() == main_pid:
            bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
