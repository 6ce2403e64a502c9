"""The lab: a simulated AWS region with two real keepalived routers running the tool.

::

    with Lab() as lab:                       # moto + IMDS + router namespaces r1/r2, configs written
        lab.start_router("r1")               # keepalived in r1's namespace, priority 150
        lab.start_router("r2")               # priority 100
        lab.wait_aws_points_to("r1", timeout=10)
        lab.kill("r1")                       # crash: SIGKILL keepalived's VRRP child and parent
        took = lab.wait_aws_points_to("r2", timeout=10)   # seconds from the kill to AWS on r2
        print(lab.check("r2").returncode)    # aws-vrrp-notify check, inside r2's namespace

    with Lab(mode="fifo", aws_options={"reassert-interval": 2}) as lab:   # one `fifo` reader per keepalived
        lab.start_routers("r1", "r2")        # both at once, cold neighbour caches (the start-up race)
        lab.partition()                      # VRRP cut (AWS still reachable): both become MASTER
        lab.heal()

Each router runs keepalived 2.x inside its namespace (``ip netns exec``), with a
vrrp_instance ``VI_1`` on eth0 (unicast 10.0.1.11 <-> 10.0.1.12) whose
``notify_master/backup/fault/stop`` lines call the installed ``aws-vrrp-notify``
with a per-router configuration (``assign-private-ip`` of the VIP 10.0.1.100 on
eth0, ``assign-ipv6-address`` of the lan subnet's IPv6 VIP (``Topology.vip6``) on
eth0, ``change-route`` 0.0.0.0/0 of the wan subnet via eth1, ``change-route`` ::/0
of the lan route table via eth0, ``associate-address`` of the lab's Elastic IP to
the VIP).  In ``fifo`` mode keepalived instead runs one ``aws-vrrp-notify fifo``
per launch as its ``vrrp_notify_fifo_script``.  keepalived hands the tool only
``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL_ROUTE_53`` and static credentials: the tool
finds its instance metadata at the real 169.254.169.254 inside the router namespace, as on
EC2.  :class:`~.every_action.EveryActionLab` (the demo's) adds the other action types.

What the lab observes, without touching the tool:

* keepalived's own state changes, in order, from its ``notify_fifo`` (one FIFO
  per keepalived launch, read by a thread of this process): :meth:`Lab.events`,
  :meth:`Lab.keepalived_state`.  keepalived 2.2.7 writes every VRRP line to both this
  global FIFO and the ``vrrp_notify_fifo`` of fifo mode, ``MASTER_RX_LOWER_PRI`` included;
* every notify call, through a tiny bash wrapper on the notify lines that logs
  ``start`` / ``end rc=N`` with ``$EPOCHREALTIME`` and keeps the tool's stderr
  (``<workdir>/<router>/notify.log`` and ``tool.log``): :meth:`Lab.notify_calls`;
* what AWS does, read from moto's backend in this process (no HTTP, no request
  recorded) every 10 ms: :meth:`Lab.aws_view`, :meth:`Lab.wait_aws_points_to`,
  :meth:`Lab.aws_leaves`.

Faults besides crash, stop and link down: :meth:`Lab.partition` cuts VRRP only (each
side gets a permanent neighbour entry giving the peer's eth0 address a MAC nobody has,
so the unicast adverts go nowhere while moto and the metadata service, on each router's
loopback, stay reachable) and :meth:`Lab.heal` restores it.

Cleanup (:meth:`Lab.close`, also on an exception or Ctrl-C inside ``with``)
stops every keepalived it started by PID (SIGTERM, then SIGKILL of the parent
and its VRRP child), heals a partition, removes ``/run/keepalived/<ns>``
leftovers and the VIP keepalived left on eth0, and, when the lab built them,
deletes the namespaces and stops the servers.  keepalived is started with a parent-death signal, so it
also stops if this process dies without cleaning up.  Start routers from the
thread that will live longest (the main thread): the parent-death signal
follows the starting thread.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, TypeVar

from .netns import ip

__all__ = ["Lab", "LabError", "Event", "NotifyCall", "available", "VIP", "GROUP", "MODES", "STATES", "find_tool"]

VIP = "10.0.1.100"
GROUP = "VI_1"
VRID = 51
PRIORITIES = {"r1": 150, "r2": 100}
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")   # keepalived's states; its FIFO also carries other lines
MODES = ("notify", "fifo")
NOWHERE_MAC = "02:00:5e:00:de:ad"   # a locally administered MAC no interface of the lab has
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLL = 0.01
T = TypeVar("T")
TOOL_STOP_WAIT = 3.0   # seconds Lab.close waits for the tool's processes after keepalived stopped

WRAPPER = r"""#!/bin/bash
# aws-vrrp-notify lab: log when keepalived runs a notify command and how it ended, and keep
# the command's stderr. Usage (on a notify line): lab-notify [--delay SECONDS] COMMAND [ARGS...]
# keepalived gives its scripts a parent-death signal (SIGTERM when it dies); the command
# gets that signal as it would without this wrapper, and its exit status is still logged.
# --delay: the command's process is forked at once and execs COMMAND that much later
# (a slow start-up on a loaded machine; its process start time stays keepalived's order).
log=${LAB_NOTIFY_LOG:-/dev/null}
delay=0
if [ "$1" = --delay ]; then delay=$2; shift 2; fi
printf '%s %s start %s\n' "$EPOCHREALTIME" "$$" "$*" >>"$log"
{ [ "$delay" = 0 ] || sleep "$delay"; exec "$@"; } 2>>"${LAB_TOOL_LOG:-/dev/null}" </dev/null &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
done
printf '%s %s end rc=%s\n' "$EPOCHREALTIME" "$$" "$rc" >>"$log"
exit $rc
"""

class LabError(RuntimeError):
    pass


def available() -> tuple[bool, str]:
    """(True, "") when the lab can run here (root, ip netns, keepalived, bash), else (False, why)."""
    from .netns import available as netns_available

    if os.geteuid() != 0:
        return False, "the lab needs root (network namespaces, keepalived)"
    if not keepalived_binary():
        return False, "keepalived is not installed (apt-get install keepalived)"
    if not os.path.exists("/bin/bash"):
        return False, "/bin/bash not found"
    return netns_available()


def keepalived_binary() -> Optional[str]:
    return shutil.which("keepalived", path=CLEAN_PATH) or shutil.which("keepalived")


def find_tool() -> str:
    """The installed aws-vrrp-notify: next to this Python first (a venv), else on PATH."""
    here = Path(sys.executable).parent / "aws-vrrp-notify"
    if here.exists():
        return str(here)
    found = shutil.which("aws-vrrp-notify")
    if not found:
        raise LabError("aws-vrrp-notify is not installed (pip install -e '.[lab]')")
    return found


@dataclass
class Event:
    """One line of keepalived's notify FIFO, with the time this process read it."""
    time: float
    router: str
    kind: str          # INSTANCE or GROUP
    name: str          # VI_1
    state: str         # MASTER, BACKUP, FAULT, STOP
    priority: Optional[int]
    launch: int        # which launch of the router's keepalived


@dataclass
class NotifyCall:
    """One notify command keepalived ran (via the wrapper)."""
    router: str
    pid: int
    start: float
    args: List[str]
    end: Optional[float] = None
    rc: Optional[int] = None

    @property
    def command(self) -> str:   # "master", "backup", ...
        for verb in ("master", "backup", "fault", "stop", "notify", "fifo"):
            if verb in self.args:
                return verb
        return self.args[-2] if len(self.args) >= 2 else ""


@dataclass
class _Launch:
    n: int
    proc: subprocess.Popen
    conf: Path
    pidfile: Path
    vrrp_pidfile: Path
    fifo: Path
    tool_fifo: Optional[Path]   # fifo mode: the FIFO keepalived writes for the tool
    log: Path
    priority: int
    version: int
    advert_int: float
    started: float
    reader: Optional["_FifoReader"] = None
    stopped: bool = False
    ended: Optional[float] = None   # time of the kill/stop that ended it

    def vrrp_pid(self) -> Optional[int]:
        try:
            return int(self.vrrp_pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


class _FifoReader(threading.Thread):
    """Reads keepalived's notify_fifo lines: ``INSTANCE "VI_1" MASTER 150``."""

    def __init__(self, lab: "Lab", router: str, launch: int, path: Path):
        super().__init__(name=f"fifo-{router}-{launch}", daemon=True)
        self.lab, self.router, self.launch, self.path = lab, router, launch, path
        os.mkfifo(path, 0o600)
        # O_RDWR: never EOF while keepalived restarts, never blocks the opener
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._halt = threading.Event()

    def run(self) -> None:
        buf = b""
        while not self._halt.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            now = time.time()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._line(now, line.decode("utf-8", "replace"))

    def _line(self, now: float, line: str) -> None:
        parts = line.replace('"', " ").split()
        if len(parts) < 3:
            return
        prio = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
        self.lab._event(Event(now, self.router, parts[0], parts[1], parts[2], prio, self.launch))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=1)
        try:
            os.close(self.fd)
        except OSError:
            pass


class Lab:
    """Two keepalived routers on a simulated AWS region.  See the module docstring.

    ``cloud`` / ``routers``: reuse an existing :class:`~.cloud.Cloud` (topology built)
    and its routers (a mapping name -> :class:`~.routers.Router`, or an iterable of
    them, e.g. the tests' ``routers`` fixture); the lab then leaves them in place on
    close.  Without them the lab builds (and on close removes) its own.

    ``track_tool(script, *args, **keywords)`` adds a ``vrrp_script`` running the tool (for
    example ``health VI_1``) that VI_1 tracks; ``router_env[name]`` adds variables to one
    router's keepalived environment (an endpoint through a fault proxy, for example). Both
    apply to keepalived started afterwards.

    ``on_event``: called (from reader threads) with every :class:`Event` and
    :class:`NotifyCall` as it is seen, and with ``("tool", router, line)`` for the
    tool's log lines; used by the demo to print the failover as it happens.

    ``mode``: how keepalived runs the tool. ``"notify"``: one command per event from the
    instance's ``notify_master/backup/fault/stop`` lines. ``"fifo"``: one long-running
    ``aws-vrrp-notify fifo`` per keepalived launch, as its ``vrrp_notify_fifo_script``
    (keepalived appends the FIFO's path); the lab's own ``notify_fifo`` still reports the
    states. ``aws_options``: extra ``[aws]`` keys of the tool's configuration, e.g.
    ``{"reassert-interval": 2, "consistency-window": 1}``.  ``tool_delay``: per notify
    command (``{"master": 0.5}``), seconds the wrapper waits before it execs the tool: a
    slow start, so that a later event's command may record its state first.

    A variant of the lab (another pair of routers, another group) overrides
    ``PRIORITIES``, ``VIRTUAL_ADDRESS``, :meth:`build_routers`, :meth:`tool_config` and
    :meth:`aws_view` (see :mod:`.multi_az`).
    """

    PRIORITIES: Dict[str, int] = PRIORITIES
    VIRTUAL_ADDRESS = f"{VIP}/24"   # keepalived's virtual_ipaddress on eth0

    def __init__(self, cloud=None, routers=None, *, workdir: Optional[os.PathLike] = None,
                 tool: Optional[str] = None, tool_verbose: int = 1, deadline: float = 20,
                 on_event: Optional[Callable[[object], None]] = None, wrap: bool = True,
                 mode: str = "notify", aws_options: Optional[Mapping[str, object]] = None,
                 tool_delay: Optional[Mapping[str, float]] = None):
        if mode not in MODES:
            raise LabError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.cloud = cloud
        if routers is not None and not isinstance(routers, dict):
            routers = {r.name: r for r in routers}
        self.routers: Dict[str, object] = dict(routers or {})
        self._own_cloud = cloud is None
        self._own_nets = routers is None
        self.nets = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self.tool = tool
        self.tool_verbose = tool_verbose
        self.deadline = deadline
        self.on_event = on_event
        self.wrap = wrap
        self.mode = mode
        self.aws_options = dict(aws_options or {})
        self.tool_delay = dict(tool_delay or {})
        self.cut: set = set()   # routers whose adverts go nowhere (partition)
        self.launches: Dict[str, List[_Launch]] = {}
        self._events: List[Event] = []
        self._calls: Dict[tuple, NotifyCall] = {}
        self._lock = threading.Lock()
        self._tailer: Optional[threading.Thread] = None
        self._tail_stop = threading.Event()
        self._tail_pos: Dict[Path, int] = {}
        self.last_fault: Optional[float] = None
        self._closed = False
        self._up = False
        self._pid = os.getpid()
        self.vrrp_scripts: Dict[str, tuple] = {}        # track_tool(): name -> (tool args, keywords)
        self.router_env: Dict[str, Dict[str, str]] = {}  # router -> variables added to keepalived's environment

    # ================================================================== lifecycle
    def __enter__(self) -> "Lab":
        try:
            return self.up()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> "Lab":
        """Build what was not given (cloud, namespaces), write the tool configurations."""
        if self._up:
            return self
        ok, why = available()
        if not ok:
            raise LabError(why)
        self.tool = self.tool or find_tool()
        if self.cloud is None:
            from .cloud import Cloud

            self.cloud = Cloud().start()
        self.cloud.build_topology()
        if not self.routers:
            from .netns import Netns

            self.nets = Netns()
            self.routers = self.build_routers(self.nets)
        for r in self.routers.values():
            if not getattr(r, "link_local_imds", False):
                raise LabError(f"router {r.name} has no IMDS at 169.254.169.254 (build_routers(link_local_imds=True))")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="avn-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # keepalived: scripts' directories not group/world writable
        bindir = self.workdir / "bin"
        bindir.mkdir(exist_ok=True)
        os.chmod(bindir, 0o755)
        wrapper = bindir / "lab-notify"
        wrapper.write_text(WRAPPER)
        os.chmod(wrapper, 0o755)
        for name in self.routers:
            d = self.router_dir(name)
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o700)
            write_private(self.config_path(name), self.tool_config(name))
            for f in ("notify.log", "tool.log"):
                (d / f).touch(mode=0o600)
        self._tailer = threading.Thread(target=self._tail, name="lab-tail", daemon=True)
        self._tailer.start()
        self._up = True
        return self

    def close(self) -> None:
        """Stop everything this lab started; remove what it built.  Safe to call twice."""
        if self._closed or os.getpid() != self._pid:
            return  # already done, or a forked child (pyroute2's create_socket helper): not ours
        self._closed = True
        restore = _hold_signals()
        try:
            for launches in self.launches.values():  # all at once: each takes ~1 s to stop
                for launch in launches:
                    if launch.proc.poll() is None:
                        _kill(launch.proc.pid, signal.SIGTERM)
            for name in list(self.launches):
                for launch in self.launches[name]:
                    self._terminate(name, launch)
            self._wait_tools(TOOL_STOP_WAIT)
            if self.partitioned:
                self.heal(check=False)
            for name, r in self.routers.items():
                shutil.rmtree(f"/run/keepalived/{r.ns}", ignore_errors=True)
                if self.launches.get(name):
                    # keepalived leaves its VIP on eth0 when it dies; a test may have set links down
                    ip("addr", "del", self.VIRTUAL_ADDRESS, "dev", "eth0", ns=r.ns, check=False)
                    ip("link", "set", "eth0", "up", ns=r.ns, check=False)
            self._tail_stop.set()
            if self._tailer is not None:
                self._tailer.join(timeout=1)
            if self.nets is not None:
                self.nets.cleanup()
            if self._own_cloud and self.cloud is not None:
                self.cloud.close()
            if self._own_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            restore()

    def _wait_tools(self, timeout: float) -> None:
        """Give the commands keepalived started a moment to end: keepalived signals them as it
        stops (a fifo reader records STOP and leaves about a second later)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(c.end is None and _alive(c.pid) for c in self.notify_calls()):
            time.sleep(0.05)

    def _terminate(self, name: str, launch: _Launch) -> None:
        proc = launch.proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child = launch.vrrp_pid()
                for pid in (child, proc.pid):
                    _kill(pid, signal.SIGKILL)
                proc.wait(timeout=5)
        child = launch.vrrp_pid()
        if child and _is_keepalived(child):
            _kill(child, signal.SIGKILL)
        if launch.reader is not None:
            launch.reader.stop()
            launch.reader = None
        for path in (launch.fifo, launch.tool_fifo):
            try:
                if path is not None:
                    path.unlink()
            except OSError:
                pass
        launch.stopped = True

    # ================================================================== files
    def router_dir(self, name: str) -> Path:
        return self.workdir / name

    def config_path(self, name: str) -> Path:
        return self.router_dir(name) / "aws-vrrp-notify.toml"

    def state_dir(self, name: str) -> Path:
        return self.router_dir(name) / "state"

    def router(self, name: str):
        try:
            return self.routers[name]
        except KeyError:
            raise LabError(f"no router {name!r} (have: {', '.join(self.routers)})") from None

    def build_routers(self, nets) -> Dict[str, object]:
        """The router namespaces of this lab (when none were given)."""
        from .routers import build_routers

        return build_routers(self.cloud, nets)

    def tool_config(self, name: str) -> str:
        t = self.cloud.topology
        extra = "".join(f"{key} = {_toml_value(value)}\n" for key, value in self.aws_options.items())
        return f"""# aws-vrrp-notify configuration of lab router {name}
[aws]
deadline = {self.deadline:g}
{extra}
[groups.{GROUP}]

[[groups.{GROUP}.assign-private-ip]]
ip = "{VIP}"
interface = "eth0"

[[groups.{GROUP}.assign-ipv6-address]]
ip = "{t.vip6()}"
interface = "eth0"

[[groups.{GROUP}.change-route]]
subnet = "{t.subnet_cidrs['wan']}"
destination = "0.0.0.0/0"
interface = "eth1"

[[groups.{GROUP}.change-route]]
route-table = "{t.route_tables['lan']}"
destination = "::/0"
interface = "eth0"

[[groups.{GROUP}.associate-address]]
allocation-id = "{t.eip_alloc}"
interface = "eth0"
private-ip = "{VIP}"
"""

    def track_tool(self, script: str, *tool_args: str, **keywords: object) -> None:
        """Make VI_1 of every keepalived started from now on track ``vrrp_script SCRIPT``, which
        runs the tool with ``tool_args`` (e.g. "health", "VI_1"); ``keywords`` are the script's
        keepalived keywords (interval=1, timeout=3, weight=-60, fall=1, rise=1)."""
        self.vrrp_scripts[script] = (tool_args, keywords)

    def _vrrp_script_lines(self, name: str) -> tuple:
        """(the vrrp_script blocks, the instance's track_script block) for track_tool()."""
        blocks, tracked = [], []
        for script, (args, keywords) in self.vrrp_scripts.items():
            blocks += [f"vrrp_script {script} {{", f'    script "{" ".join(self.tool_argv(name, *args))}"']
            blocks += [f"    {k} {v}" for k, v in keywords.items()] + ["}"]
            tracked.append(f"        {script}")
        return blocks, (["    track_script {", *tracked, "    }"] if tracked else [])

    def tool_argv(self, name: str, *args: str) -> List[str]:
        v = ["-" + "v" * self.tool_verbose] if self.tool_verbose else []
        return [self.tool, *v, "-c", str(self.config_path(name)), "--state-dir", str(self.state_dir(name)),
                *args]

    def keepalived_config(self, name: str, *, priority: int, version: int, advert_int: float,
                          fifo: Path, tool_fifo: Optional[Path] = None, preempt: bool = True) -> str:
        """keepalived.conf of one launch: ``fifo`` is the lab's own notify_fifo; with
        ``tool_fifo`` (fifo mode) the tool reads VRRP events from that one instead of being
        run from notify lines."""
        r = self.router(name)
        src = r.addrs["eth0"]
        peers = [o.addrs["eth0"] for n, o in self.routers.items() if n != name]
        prefix = f"{self.workdir / 'bin' / 'lab-notify'} " if self.wrap else ""

        def command(verb: str, *args: str) -> str:
            delay = self.tool_delay.get(verb)
            wait = f"--delay {delay:g} " if delay and self.wrap else ""
            return f'"{prefix}{wait}{" ".join(self.tool_argv(name, verb, *args))}"'

        if tool_fifo is None:
            tool_global = []
            tool_lines = [f"    notify_{event} {command(event, GROUP)}"
                          for event in ("master", "backup", "fault", "stop")]
        else:
            tool_global = [f"    vrrp_notify_fifo {tool_fifo}", f"    vrrp_notify_fifo_script {command('fifo')}"]
            tool_lines = []
        adv = f"{advert_int:g}"
        scripts, track = self._vrrp_script_lines(name)
        return "\n".join([
            f"# keepalived configuration of lab router {name} (namespace {r.ns})",
            "global_defs {",
            f"    router_id {name}",
            "    enable_script_security",
            "    script_user root",
            f"    notify_fifo {fifo}",
            *tool_global,
            "}",
            *scripts,
            f"vrrp_instance {GROUP} {{",
            "    state BACKUP",
            "    interface eth0",
            f"    virtual_router_id {VRID}",
            f"    priority {priority}",
            f"    version {version}",
            f"    advert_int {adv}",
            *([] if preempt else ["    nopreempt"]),
            f"    unicast_src_ip {src}",
            "    unicast_peer {",
            *[f"        {p}" for p in peers],
            "    }",
            "    virtual_ipaddress {",
            f"        {self.VIRTUAL_ADDRESS} dev eth0",
            "    }",
            *track,
            *tool_lines,
            "}",
            "",
        ])

    def keepalived_env(self, name: str) -> Dict[str, str]:
        """The whole environment keepalived (and so the tool) gets: no IMDS override."""
        r = self.router(name)
        d = self.router_dir(name)
        return {
            "PATH": f"{Path(self.tool).parent}:{CLEAN_PATH}",
            "AWS_ENDPOINT_URL_EC2": r.moto_url,
            "AWS_ENDPOINT_URL_ROUTE_53": r.moto_url,  # Route 53 is served by the same moto
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_VRRP_NOTIFY_CACHE_DIR": str(d / "cache"),  # the lab writes nothing outside its workdir
            "LAB_NOTIFY_LOG": str(d / "notify.log"),
            "LAB_TOOL_LOG": str(d / "tool.log"),
            **self.router_env.get(name, {}),
        }

    # ================================================================== keepalived
    def start_router(self, name: str, priority: Optional[int] = None, version: int = 3,
                     advert_int: float = 0.1, *, preempt: bool = True, timeout: float = 5) -> _Launch:
        """Start keepalived in router ``name``'s namespace (it enters BACKUP first)."""
        launch = self._spawn(name, priority, version, advert_int, preempt=preempt)
        self._wait_started(name, launch, timeout)
        return launch

    def start_routers(self, *names: str, cold: bool = True, stagger: float = 0.0, timeout: float = 5,
                      **kw) -> List[_Launch]:
        """Start keepalived in several routers at once (default: all), the start-up race:
        each is spawned, in the order given, before any is waited for. ``cold``: flush every
        router's eth0 neighbour cache first, so that the first adverts wait for ARP.
        ``stagger``: seconds between two spawns; a lower-priority router started about one
        advert interval before a higher one becomes MASTER first, the higher one too a
        moment later (it ignores lower-priority adverts), and both run ``master``.
        ``kw``: as for :meth:`start_router`."""
        names = names or tuple(self.routers)
        self.up()
        if cold:
            for name in names:
                ip("neigh", "flush", "dev", "eth0", ns=self.router(name).ns, check=False)
        launches = []
        for i, name in enumerate(names):
            if i and stagger > 0:
                time.sleep(stagger)
            launches.append(self._spawn(name, **kw))
        for name, launch in zip(names, launches):
            self._wait_started(name, launch, timeout)
        return launches

    def _spawn(self, name: str, priority: Optional[int] = None, version: int = 3, advert_int: float = 0.1,
               *, preempt: bool = True) -> _Launch:
        self.up()
        r = self.router(name)
        if self.running(name):
            raise LabError(f"keepalived already runs in {name}")
        if version == 2 and advert_int != int(advert_int):
            raise LabError("VRRPv2 needs a whole advert_int; use version=3")
        priority = priority if priority is not None else self.PRIORITIES.get(name, 100)
        launches = self.launches.setdefault(name, [])
        n = len(launches) + 1
        d = self.router_dir(name)
        fifo = d / f"fifo-{n}"
        tool_fifo = d / f"tool-fifo-{n}" if self.mode == "fifo" else None
        conf = d / f"keepalived-{n}.conf"
        write_private(conf, self.keepalived_config(name, priority=priority, version=version, advert_int=advert_int,
                                                   fifo=fifo, tool_fifo=tool_fifo, preempt=preempt))
        shutil.rmtree(f"/run/keepalived/{r.ns}", ignore_errors=True)
        reader = _FifoReader(self, name, n, fifo)
        reader.start()
        pid, vpid = d / f"keepalived-{n}.pid", d / f"vrrp-{n}.pid"
        log = d / f"keepalived-{n}.log"
        cmd = [keepalived_binary(), "-n", "-l", "-G", "-P", "-f", str(conf), "-p", str(pid), "-r", str(vpid),
               "-c", str(d / f"checkers-{n}.pid"), "-b", str(d / f"bfd-{n}.pid")]
        cmd = ["ip", "netns", "exec", r.ns] + cmd
        setpriv = shutil.which("setpriv", path=CLEAN_PATH)
        if setpriv:  # keepalived stops (SIGTERM) if this process dies without cleaning up
            cmd = [setpriv, "--pdeathsig", "TERM"] + cmd
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.keepalived_env(name), cwd=str(d), start_new_session=True)
        launch = _Launch(n, proc, conf, pid, vpid, fifo, tool_fifo, log, priority, version, advert_int, time.time(),
                         reader)
        launches.append(launch)
        return launch

    def _wait_started(self, name: str, launch: _Launch, timeout: float) -> None:
        proc = launch.proc
        end = time.monotonic() + timeout
        while launch.vrrp_pid() is None or not _alive(launch.vrrp_pid()):
            if proc.poll() is not None:
                raise LabError(f"keepalived in {name} exited with {proc.returncode}:\n{self.keepalived_log(name)}")
            if time.monotonic() > end:
                raise LabError(f"keepalived in {name} did not start its VRRP process in {timeout:g}s:\n"
                               f"{self.keepalived_log(name)}")
            time.sleep(POLL)

    def current(self, name: str) -> Optional[_Launch]:
        launches = self.launches.get(name)
        return launches[-1] if launches else None

    def running(self, name: str) -> bool:
        launch = self.current(name)
        return launch is not None and launch.proc.poll() is None

    def keepalived_log(self, name: str, launch: Optional[int] = None) -> str:
        la = self.current(name) if launch is None else self.launches[name][launch - 1]
        try:
            return la.log.read_text(errors="replace") if la else ""
        except OSError:
            return ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        """Send ``sig`` to router ``name``'s keepalived; SIGKILL is a crash: the VRRP child
        and the parent are both killed (else the parent respawns the child).
        Returns the time of the fault (``time.time()`` just before the signal)."""
        launch = self.current(name)
        if launch is None or launch.proc.poll() is not None:
            raise LabError(f"keepalived does not run in {name}")
        child = launch.vrrp_pid()
        t = time.time()
        if sig in (signal.SIGKILL, signal.SIGTERM):
            launch.ended = t
        if sig == signal.SIGKILL:
            if child:
                _kill(child, signal.SIGKILL)
            _kill(launch.proc.pid, signal.SIGKILL)
            launch.proc.wait(timeout=5)
        else:
            _kill(launch.proc.pid, sig)
        self.last_fault = t
        return t

    def stop(self, name: str, *, wait: bool = True, timeout: float = 10) -> float:
        """Clean stop (SIGTERM to the parent).  Returns the time of the signal."""
        t = self.kill(name, signal.SIGTERM)
        if wait:
            launch = self.current(name)
            try:
                launch.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise LabError(f"keepalived in {name} did not stop within {timeout:g}s") from None
        return t

    def link_down(self, name: str, ifname: str = "eth0") -> float:
        """``ip link set IF down`` in the router's namespace.  Returns the time of the fault."""
        r = self.router(name)
        t = time.time()
        ip("link", "set", ifname, "down", ns=r.ns)
        self.last_fault = t
        return t

    def link_up(self, name: str, ifname: str = "eth0") -> None:
        ip("link", "set", ifname, "up", ns=self.router(name).ns)

    def partition(self, *names: str) -> float:
        """Cut VRRP between the routers and nothing else: in each router of ``names``
        (default: all), a permanent neighbour entry gives the peers' eth0 addresses a MAC
        nobody has, so its unicast adverts go nowhere (moto and the metadata service are on
        each router's loopback).  Returns the time of the cut."""
        t = time.time()
        for name in names or tuple(self.routers):
            for peer in self._peer_addrs(name):
                ip("neigh", "replace", peer, "lladdr", NOWHERE_MAC, "dev", "eth0", "nud", "permanent",
                   ns=self.router(name).ns)
            self.cut.add(name)
        self.last_fault = t
        return t

    def heal(self, *names: str, check: bool = True) -> float:
        """Undo :meth:`partition` in ``names`` (default: every router cut): their adverts
        reach the peers again.  Healing one side first makes the cut one-way: the other
        side hears this one's adverts while its own still go nowhere.  Returns the time."""
        t = time.time()
        for name in names or sorted(self.cut):
            for peer in self._peer_addrs(name):
                ip("neigh", "del", peer, "dev", "eth0", ns=self.router(name).ns, check=check)
            self.cut.discard(name)
        return t

    @property
    def partitioned(self) -> bool:
        return bool(self.cut)

    def _peer_addrs(self, name: str) -> List[str]:
        return [other.addrs["eth0"] for o_name, other in self.routers.items() if o_name != name]

    # ================================================================== observation
    def _event(self, item) -> None:
        if isinstance(item, Event):
            with self._lock:
                self._events.append(item)
        cb = self.on_event
        if cb is not None:
            try:
                cb(item)
            except Exception:  # a printing problem must not kill a reader
                pass

    def events(self, name: Optional[str] = None, *, since: Optional[float] = None,
               state: Optional[str] = None) -> List[Event]:
        """keepalived's FIFO lines for VI_1, oldest first: its state changes and the other
        lines it writes there (e.g. ``MASTER_RX_LOWER_PRI``: a master heard a lower-priority advert)."""
        with self._lock:
            evs = list(self._events)
        return [e for e in evs if (name is None or e.router == name) and (since is None or e.time >= since)
                and (state is None or e.state == state) and e.name == GROUP]

    def keepalived_state(self, name: str) -> Optional[str]:
        """VI_1's state in router ``name`` as keepalived last reported it (MASTER, BACKUP,
        FAULT, STOP), or None when its keepalived does not run (or has said nothing yet)."""
        launch = self.current(name)
        if launch is None or launch.proc.poll() is not None:
            return None
        evs = [e for e in self.events(name) if e.launch == launch.n and e.state in STATES]
        return evs[-1].state if evs else None

    def wait_state(self, name: str, state: str, timeout: float = 10) -> float:
        """Wait until keepalived reports ``state`` in ``name``; returns the event's time."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.keepalived_state(name) == state:
                return self.events(name, state=state)[-1].time
            time.sleep(POLL)
        raise TimeoutError(f"{name}: keepalived state {self.keepalived_state(name)} after {timeout:g}s, "
                           f"expected {state}\n{self.describe()}")

    def masters(self) -> List[str]:
        return [n for n in self.routers if self.keepalived_state(n) == "MASTER"]

    def notify_calls(self, name: Optional[str] = None) -> List[NotifyCall]:
        """Every notify command keepalived ran (through the wrapper), oldest first."""
        self._read_logs()
        with self._lock:
            calls = list(self._calls.values())
        return sorted((c for c in calls if name is None or c.router == name), key=lambda c: c.start)

    def tool_log(self, name: str) -> str:
        try:
            return (self.router_dir(name) / "tool.log").read_text(errors="replace")
        except OSError:
            return ""

    def record(self, name: str) -> Optional[dict]:
        """The tool's state record of VI_1 on router ``name`` (groups/VI_1.json)."""
        try:
            return json.loads((self.state_dir(name) / "groups" / f"{GROUP}.json").read_text())
        except (OSError, ValueError):
            return None

    def _tail(self) -> None:
        while not self._tail_stop.wait(0.02):
            try:
                self._read_logs()
            except Exception:
                pass

    def _read_logs(self) -> None:
        with self._lock:  # one reader at a time (the tail thread and callers)
            new = []
            for name in self.routers:
                for fname in ("notify.log", "tool.log"):
                    path = self.router_dir(name) / fname
                    pos = self._tail_pos.get(path, 0)
                    try:
                        with open(path, "rb") as fh:
                            fh.seek(pos)
                            data = fh.read()
                    except OSError:
                        continue
                    cut = data.rfind(b"\n") + 1
                    if not cut:
                        continue
                    self._tail_pos[path] = pos + cut
                    for line in data[:cut].decode("utf-8", "replace").splitlines():
                        if fname == "tool.log":
                            new.append(("tool", name, line))
                            continue
                        parts = line.split(" ", 3)
                        if len(parts) < 3:
                            continue
                        try:
                            t, pid = float(parts[0]), int(parts[1])
                        except ValueError:
                            continue
                        key = (name, pid)
                        if parts[2] == "start":
                            call = NotifyCall(name, pid, t, (parts[3] if len(parts) > 3 else "").split())
                            prev = self._calls.pop(key, None)
                            if prev is not None:  # pid reuse: keep the earlier call under another key
                                self._calls[(name, pid, prev.start)] = prev
                            self._calls[key] = call
                            new.append(call)
                        elif parts[2] == "end":
                            call = self._calls.get(key)
                            if call is not None:
                                call.end = t
                                rc = parts[3].split()[0] if len(parts) > 3 else ""
                                if rc.startswith("rc=") and rc[3:].isdigit():
                                    call.rc = int(rc[3:])
                                new.append(call)
        for item in new:
            self._event(item)

    # ------------------------------------------------------------------ AWS
    def aws_view(self) -> Dict[str, Optional[str]]:
        """Which router each action points to right now (None: nobody / several / not a lab ENI).

        Read from moto's backend objects in this process: no request, nothing recorded."""
        from . import moto_fixes

        t = self.cloud.topology
        backend = self.cloud.backend
        owner = {}
        for name, r in self.routers.items():
            for ifname in ("eth0", "eth1"):
                owner[r.eni(ifname)] = (name, ifname)

        def read() -> tuple:
            holders = [e.id for e in list(backend.enis.values())
                       if any(p.get("PrivateIpAddress") == VIP and not p.get("Primary")
                              for p in list(e.private_ip_addresses))]
            holders6 = [e.id for e in list(backend.enis.values()) if t.vip6() in list(e.ipv6_addresses)]
            eip = next((a for a in list(backend.addresses) if a.allocation_id == t.eip_alloc), None)
            on_eni = eip is not None and eip.eni is not None
            return (holders, holders6, _route_eni(backend, t.route_tables["wan"], "0.0.0.0/0"),
                    _route_eni(backend, t.route_tables["lan"], "::/0"), eip.eni.id if on_eni else None,
                    moto_fixes._eip_private_ip(eip) if on_eni else None)

        holders, holders6, wan, lan6, eip_eni, eip_ip = read_moto(read)

        def who(eni, ifname):
            o = owner.get(eni)
            return o[0] if o and o[1] == ifname else None

        return {
            "assign-private-ip": who(holders[0], "eth0") if len(holders) == 1 else None,
            "assign-ipv6-address": who(holders6[0], "eth0") if len(holders6) == 1 else None,
            "change-route wan 0.0.0.0/0": who(wan, "eth1"),
            "change-route lan ::/0": who(lan6, "eth0"),
            "associate-address": who(eip_eni, "eth0") if eip_ip == VIP else None,
        }

    def aws_points_to(self) -> Optional[str]:
        """The router every action points to, or None (mixed, or not set up yet)."""
        targets = set(self.aws_view().values())
        return targets.pop() if len(targets) == 1 else None

    def wait_aws_points_to(self, name: str, timeout: float = 10, *, since: Optional[float] = None,
                           interval: float = POLL) -> float:
        """Poll AWS (moto) every ``interval`` until every action points to router ``name``.

        Returns the seconds from ``since`` (default: the last fault made with kill/stop/
        link_down, else the call) to the first poll that saw it."""
        start = time.time()
        since = since if since is not None else (self.last_fault or start)
        end = time.monotonic() + timeout
        while True:
            now = time.time()
            if self.aws_points_to() == name:
                return now - since
            if time.monotonic() > end:
                raise TimeoutError(f"AWS does not point to {name} after {timeout:g}s: {self.aws_view()}\n"
                                   f"{self.describe()}")
            time.sleep(interval)

    def aws_leaves(self, name: str, seconds: float, *, interval: float = POLL) -> Optional[Dict[str, Optional[str]]]:
        """Watch AWS (moto) for ``seconds``: the first view in which not every action points
        to router ``name``, or None when every poll saw them all on ``name``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            view = self.aws_view()
            if set(view.values()) != {name}:
                return view
            time.sleep(interval)
        return None

    def tools_idle(self) -> bool:
        """No notify command is running (a fifo reader runs for as long as its keepalived)
        and no live MASTER run is in progress."""
        calls = self.notify_calls()
        if any(c.end is None and c.command != "fifo" and _alive(c.pid) for c in calls):
            return False
        for n in self.routers:
            rec = self.record(n) or {}
            if rec.get("outcome") == "in-progress" and _alive(rec.get("pid")):
                return False
        return True

    def orphaned(self, call: NotifyCall) -> bool:
        """Whether the keepalived that ran ``call`` died (kill/stop) while it ran."""
        end = call.end if call.end is not None else time.time()
        return any(la.ended is not None and call.start <= la.ended <= end
                   for la in self.launches.get(call.router, []))

    def wait_settled(self, timeout: float = 20, master: Optional[str] = None, quiet: float = 0.3) -> str:
        """Wait until exactly one running router is MASTER (``master`` if given), AWS points
        to it, every notify command has finished, and nothing happened (no keepalived event,
        no notify command) for ``quiet`` seconds.  Returns the master's name."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            masters = self.masters()
            if len(masters) == 1 and master in (None, masters[0]) and self.aws_points_to() == masters[0] \
                    and self.tools_idle() and time.time() - self._last_activity() >= quiet:
                return masters[0]
            time.sleep(0.05)
        raise TimeoutError(f"the lab did not settle in {timeout:g}s: masters={self.masters()} "
                           f"aws={self.aws_view()}\n{self.describe()}")

    def _last_activity(self) -> float:
        times = [e.time for e in self.events()[-1:]]
        for c in self.notify_calls()[-20:]:
            times += [c.start] + ([c.end] if c.end else [])
        times += [la.started for las in self.launches.values() for la in las[-1:]]
        return max(times, default=0.0)

    def describe(self) -> str:
        """A summary for failure messages: keepalived states, notify calls, tool records."""
        lines = []
        for name in self.routers:
            lines.append(f"{name}: keepalived={self.keepalived_state(name)} running={self.running(name)} "
                         f"record={self.record(name)}")
            for c in self.notify_calls(name)[-8:]:
                lines.append(f"    {c.start:.3f} {c.command} rc={c.rc} took="
                             f"{'%.3f' % (c.end - c.start) if c.end else '-'}")
            tail = self.tool_log(name).splitlines()[-6:]
            lines += [f"    | {t}" for t in tail]
        return "\n".join(lines)

    # ================================================================== the tool
    def run_tool(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``ip netns exec <ns> aws-vrrp-notify -c CONF --state-dir DIR ARGS`` with keepalived's
        environment (IMDS at 169.254.169.254 inside the namespace)."""
        r = self.router(name)
        argv = [self.tool, "-c", str(self.config_path(name)), "--state-dir", str(self.state_dir(name)), *args]
        env = {k: v for k, v in self.keepalived_env(name).items() if not k.startswith("LAB_")}
        return subprocess.run(["ip", "netns", "exec", r.ns] + argv, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def status(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return self.run_tool(name, "status", *args)

    def check(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return self.run_tool(name, "check", *args)


# ---------------------------------------------------------------------- helpers

def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return json.dumps(str(value))  # a TOML basic string


def write_private(path: Path, text: str) -> None:
    """Write a root-owned 0600 file (replacing it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def read_moto(read: Callable[[], T]) -> T:
    """``read()`` of moto's backend objects in this process, again when moto changed a dict
    while serving a request (RuntimeError)."""
    for _ in range(20):
        try:
            return read()
        except RuntimeError:  # a dict changed size while moto served a request
            time.sleep(0.001)
    raise LabError("could not read moto's state")


def _route_eni(backend, rtb: str, dest: str) -> Optional[str]:
    """The ENI the route of ``rtb`` for ``dest`` (a CIDR as moto keeps it, or a prefix list id) targets."""
    table = backend.route_tables.get(rtb)
    if table is None:
        return None
    routes = table.routes
    for route in list(routes.values() if isinstance(routes, dict) else routes):
        prefix_list = getattr(route, "destination_prefix_list", None)
        if dest in (route.destination_cidr_block, route.destination_ipv6_cidr_block,
                    prefix_list.id if prefix_list is not None else None):
            return route.interface.id if route.interface is not None else None
    return None


def _kill(pid: Optional[int], sig: int) -> None:
    if not pid:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_keepalived(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == "keepalived" and _alive(pid)
    except OSError:
        return False


def _hold_signals():
    """Ignore SIGINT/SIGTERM during cleanup (main thread only); returns the restorer."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            saved[sig] = signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass

    def restore():
        for sig, handler in saved.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
    return restore
