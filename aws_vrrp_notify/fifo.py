"""Long-running reader of keepalived's notify FIFO (notify_fifo / notify_fifo_script).

keepalived writes one line per event, in order: ``INSTANCE "VI_1" MASTER 150`` or
``GROUP "G" BACKUP 0``. A reader thread records each state change the moment it
arrives, so a MASTER being applied notices at once that it was superseded; a worker
applies, in order, the last state of each group of a burst, with the AWS clients (EC2's,
and Route 53's when a group has update-dns) kept warm between events.

Between events the worker keeps AWS right (docs/consistency.md): every
``[aws] reassert-interval`` seconds it reads AWS once for all groups recorded MASTER and
re-applies what drifted; a ``MASTER_RX_LOWER_PRI`` line (this master heard a
lower-priority advert: the peer believed it was master, and may have taken AWS) re-checks
its group at once. After MASTER -> BACKUP it hands back, one consistency window later,
whatever still points here (see transition.release_group).

An error in one event is logged, recorded for its group, and the reader goes on. A FIFO
is reopened when its writer goes away (keepalived restarting); a regular file or standard
input is read to its end. The configuration is reloaded when it changes; a new file that
cannot be loaded leaves the previous configuration in force.
"""

from __future__ import annotations

import heapq
import os
import queue
import shlex
import signal
import stat
import sys
import threading
import time
from typing import Callable, Dict, IO, Iterator, List, Optional, Tuple

from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import Config, ConfigError
from .state import StateStore

from .logsetup import log

STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
RECHECK = "MASTER_RX_LOWER_PRI"
PRIORITY_LINES = ("MASTER_PRIORITY", "BACKUP_PRIORITY")
SIGTERM_GRACE = 0.8  # seconds; keepalived 2.2.7 SIGKILLs its FIFO script about 1 s after SIGTERM
RECHECK_MIN_INTERVAL = 1.0  # keepalived writes MASTER_RX_LOWER_PRI for every lower-priority advert
Event = Tuple[str, str, int]  # group, state (or RECHECK), sequence number recorded (0 for RECHECK)


def parse_line(line: str) -> Optional[Tuple[str, str]]:
    """``INSTANCE "VI_1" MASTER 150`` -> ("VI_1", "MASTER"); None for lines we do not act on.

    Besides the four states, ``MASTER_RX_LOWER_PRI`` and the priority-change lines
    (``MASTER_PRIORITY``/``BACKUP_PRIORITY``, with ``notify_priority_changes``) are returned."""
    try:
        parts = shlex.split(line)
    except ValueError:
        return None
    if len(parts) < 3 or parts[0] not in ("INSTANCE", "GROUP"):
        return None
    if parts[2] not in STATES + (RECHECK,) + PRIORITY_LINES:
        return None
    return parts[1], parts[2]


class ConfigWatcher:
    def __init__(self, path: str, config: Config):
        self.path = path
        self.config = config
        self._mtime = self._stat()

    def _stat(self) -> Optional[float]:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def current(self) -> Config:
        mtime = self._stat()
        if mtime != self._mtime:
            from .config import load

            self._mtime = mtime
            try:
                self.config = load(self.path)
                log.info("configuration %s reloaded", self.path)
            except ConfigError as exc:
                log.error("configuration %s changed but is invalid, keeping the previous one: %s",
                          self.path, "; ".join(exc.problems))
            except (Exception, RecursionError) as exc:  # whatever the parser chokes on
                log.error("configuration %s changed but cannot be loaded (%s), keeping the previous one",
                          self.path, exc or type(exc).__name__)
        return self.config


class Warm:
    """What successive MASTER transitions share: the AWS clients (their connections and
    credentials), EC2's and, once a group needs it, Route 53's. A change of region or of
    the [aws] settings makes them anew."""

    def __init__(self) -> None:
        self.clients: Dict[str, object] = {}   # service -> botocore client
        self.region: Optional[str] = None
        self.aws = None
        self._lock = threading.Lock()  # a Route 53 client may be asked for from the apply threads

    def client_for(self, run) -> object:
        return self.client_with(run.config, run.imds, run.store, run.deadline)

    def others_for(self, run) -> Callable[[str], object]:
        return self.others_with(run.config, run.imds, run.store, run.deadline)

    def client_with(self, config: Config, imds, store: StateStore, deadline, service: str = "ec2") -> object:
        from .ec2 import make_client
        from .plan import region_of

        region = region_of(imds, store, config.aws.region)
        with self._lock:
            if region != self.region or config.aws != self.aws:
                self.clients = {}
                self.region, self.aws = region, config.aws
            if service not in self.clients:
                self.clients[service] = make_client(config.aws, region, deadline, store, service)
            return self.clients[service]

    def others_with(self, config: Config, imds, store: StateStore, deadline) -> Callable[[str], object]:
        """What Ec2.for_service calls for another service's client: the one kept here."""
        return lambda service: self.client_with(config, imds, store, deadline, service)


def _preload() -> None:
    """Import botocore while keepalived is still quiet: the first MASTER then pays nothing."""
    try:
        import botocore.client  # noqa: F401
        import botocore.session  # noqa: F401  pylint: disable=unused-import

        from . import ec2, transition  # noqa: F401
    except Exception:  # only speed is at stake
        pass


def _lines(stream: IO[str]) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")


def _read_source(path: Optional[str], stop: threading.Event) -> Iterator[str]:
    if path is None:
        yield from _lines(sys.stdin)
        return
    is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    while not stop.is_set():
        with open(path, "r", encoding="utf-8", errors="replace") as stream:  # blocks until a writer opens
            yield from _lines(stream)
        if not is_fifo:
            return
        log.info("FIFO %s closed by its writer; reopening", path)


class Timers:
    """Work due later in the worker: re-checks and hand-backs, earliest first."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, str, str, int]] = []
        self._n = 0

    def add(self, when: float, kind: str, group: str = "", seq: int = 0) -> None:
        self._n += 1
        heapq.heappush(self._heap, (when, self._n, kind, group, seq))

    def wait_time(self) -> Optional[float]:
        return max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None

    def due(self) -> List[Tuple[str, str, int]]:
        now = time.monotonic()
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, _, kind, group, seq = heapq.heappop(self._heap)
            out.append((kind, group, seq))
        return out


class FifoReader:
    """The reader thread, the worker loop and what they share."""

    def __init__(self, config_path: str, config: Config, store: StateStore, path: Optional[str]):
        self.config_path = config_path
        self.watcher = ConfigWatcher(config_path, config)
        self.store = store
        self.path = path
        self.events: "queue.Queue[Optional[Event]]" = queue.Queue()
        self.stop = threading.Event()
        self.warm = Warm()
        self.timers = Timers()
        self.code = EXIT_OK
        self.source_failed = False
        self.left_master: "set[Tuple[str, int]]" = set()  # BACKUP events that followed a MASTER
        self.rechecked: Dict[str, float] = {}  # group -> when MASTER_RX_LOWER_PRI last re-checked it

    # -- reader thread

    def read(self) -> None:
        try:
            for line in _read_source(self.path, self.stop):
                try:
                    self.take_line(line)
                except Exception as exc:  # one bad event must not end the reader
                    log.error("fifo: event %r not handled: %s", line, exc or type(exc).__name__)
        except Exception as exc:
            log.error("fifo: reading %s failed: %s", self.path or "standard input", exc)
            self.source_failed = True
        finally:
            self.events.put(None)

    def take_line(self, line: str) -> None:
        parsed = parse_line(line)
        if parsed is None:
            if line.strip():
                log.debug("fifo: ignoring %r", line)
            return
        name, state = parsed
        group = self.watcher.current().group(name)
        if group is None:
            log.info("%s for %s ignored: no group %s in %s", state, name, name, self.config_path)
            return
        if state in PRIORITY_LINES:
            # a priority change alone changes nothing in AWS; the state change it may cause comes
            # as its own MASTER/BACKUP line
            log.info("group %s: %s (%s)", group.name, state.replace("_", " ").lower(), line.split()[-1])
            return
        if state == RECHECK:
            log.info("group %s: this master heard a lower-priority advert; re-checking AWS", group.name)
            self.events.put((group.name, RECHECK, 0))
            return
        previous = (self.store.read(group.name) or {}).get("state")
        seq = self.store.record(group.name, state)
        if state != "MASTER":
            log.info("group %s: %s recorded (no AWS write)", group.name, state)
        if state == "BACKUP" and previous == "MASTER":
            self.left_master.add((group.name, seq))
        self.events.put((group.name, state, seq))

    # -- worker

    def run(self) -> int:
        threading.Thread(target=_preload, name="preload", daemon=True).start()
        self.schedule_reassert()
        while True:
            batch = self.next_batch()
            finished = None in batch
            for name, state, seq in self.latest_per_group(batch):
                self.guarded(f"{state} of group {name}", self.handle_event, name, state, seq)
            for kind, name, seq in self.timers.due():
                self.guarded(kind, self.handle_timer, kind, name, seq)
            if finished:
                if self.source_failed:
                    return EXIT_FAILED
                if self.path is None or not stat.S_ISFIFO(os.stat(self.path).st_mode):
                    return self.code
                return EXIT_OK

    def next_batch(self) -> List[Optional[Event]]:
        try:
            batch: List[Optional[Event]] = [self.events.get(timeout=self.timers.wait_time())]
        except queue.Empty:
            return []
        while True:  # a burst: everything already queued
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                return batch

    @staticmethod
    def latest_per_group(batch: List[Optional[Event]]) -> List[Event]:
        latest: Dict[Tuple[str, bool], Event] = {}
        for event in batch:
            if event is not None:
                key = (event[0], event[1] == RECHECK)
                latest.pop(key, None)
                latest[key] = event  # keeps arrival order of each group's last event
        return list(latest.values())

    def guarded(self, what: str, func, *args) -> None:
        try:
            func(*args)
        except (Exception, RecursionError) as exc:  # log it, go on with the next event
            log.error("fifo: %s failed unexpectedly: %s", what, exc or type(exc).__name__)
            self.code = EXIT_FAILED

    def handle_event(self, name: str, state: str, seq: int) -> None:
        from .transition import reassert_groups, release_delay, run_master_seq

        cfg = self.watcher.current()
        group = cfg.group(name)
        if group is None:
            return
        if state == RECHECK:
            now = time.monotonic()
            if now - self.rechecked.get(name, float("-inf")) < RECHECK_MIN_INTERVAL:
                return
            self.rechecked[name] = now
            reassert_groups(cfg, [group], self.store, self.warm, take_over=True)
            return
        if not self.store.is_current(name, seq):
            return
        if state == "MASTER":
            if run_master_seq(cfg, group, self.store, seq, self.warm) != EXIT_OK:
                self.code = EXIT_FAILED
        elif (name, seq) in self.left_master:
            self.left_master.discard((name, seq))
            self.timers.add(time.monotonic() + release_delay(cfg), "release", name, seq)

    def handle_timer(self, kind: str, name: str, seq: int) -> None:
        from .transition import reassert_groups, release_group

        cfg = self.watcher.current()
        if kind == "reassert":
            self.schedule_reassert()
            masters = [g for g in cfg.groups.values() if (self.store.read(g.name) or {}).get("state") == "MASTER"]
            if masters:
                reassert_groups(cfg, masters, self.store, self.warm)
        elif kind == "release":
            group = cfg.group(name)
            if group is not None and self.store.is_current(name, seq):
                release_group(cfg, group, self.store, seq)

    def schedule_reassert(self) -> None:
        interval = self.watcher.current().aws.reassert_interval
        if interval > 0:
            self.timers.add(time.monotonic() + interval, "reassert")


def run_fifo(config_path: str, config: Config, store: StateStore, path: Optional[str]) -> int:
    if path is not None:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            log.error("cannot read %s: %s", path, exc.strerror)
            return EXIT_USAGE
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            log.error("%s is neither a FIFO nor a regular file", path)
            return EXIT_USAGE
    reader = FifoReader(config_path, config, store, path)

    def terminate(signum, frame) -> None:
        # keepalived signals its FIFO script first and writes the STOP lines after: keep
        # reading (and recording) until the writer closes or a short grace period ends.
        reader.stop.set()
        timer = threading.Timer(SIGTERM_GRACE, lambda: reader.events.put(None))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    threading.Thread(target=reader.read, name="fifo-reader", daemon=True).start()
    return reader.run()
