"""Long-running reader of keepalived's notify FIFO (notify_fifo / notify_fifo_script).

keepalived writes one line per event, in order: ``INSTANCE "VI_1" MASTER 150`` or
``GROUP "G" BACKUP 0`` (other line types are ignored). A reader thread records each
event the moment it arrives, so a MASTER being applied notices at once that it was
superseded; a worker applies, in order, the last state of each group of a burst,
with the EC2 client kept warm between events.

A FIFO is reopened when its writer goes away (keepalived restarting); a regular file
or standard input is read to its end. The configuration is reloaded when it changes.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import stat
import sys
import threading
from typing import Dict, IO, Iterator, List, Optional, Tuple

from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import Config, ConfigError
from .state import StateStore

from .logsetup import log

STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
SIGTERM_GRACE = 1.0  # seconds
Event = Tuple[str, str, int]  # group, state, sequence number recorded


def parse_line(line: str) -> Optional[Tuple[str, str]]:
    """``INSTANCE "VI_1" MASTER 150`` -> ("VI_1", "MASTER"); None for lines we do not act on."""
    try:
        parts = shlex.split(line)
    except ValueError:
        return None
    if len(parts) < 3 or parts[0] not in ("INSTANCE", "GROUP") or parts[2] not in STATES:
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

            try:
                self.config = load(self.path)
                log.info("configuration %s reloaded", self.path)
            except ConfigError as exc:
                log.error("configuration %s changed but is invalid, keeping the previous one: %s",
                          self.path, "; ".join(exc.problems))
            self._mtime = mtime
        return self.config


class Warm:
    """What successive MASTER transitions share: the EC2 client (its connections and credentials)."""

    def __init__(self) -> None:
        self.client = None
        self.region: Optional[str] = None
        self.aws = None

    def client_for(self, run) -> object:
        from .ec2 import make_client
        from .plan import region_of

        region = region_of(run.imds, run.store, run.config.aws.region)
        if self.client is None or region != self.region or run.config.aws != self.aws:
            self.client = make_client(run.config.aws, region, run.deadline, run.store)
            self.region, self.aws = region, run.config.aws
        return self.client


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


def run_fifo(config_path: str, config: Config, store: StateStore, path: Optional[str]) -> int:
    from .transition import run_master_seq

    if path is not None:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            log.error("cannot read %s: %s", path, exc.strerror)
            return EXIT_USAGE
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            log.error("%s is neither a FIFO nor a regular file", path)
            return EXIT_USAGE
    watcher = ConfigWatcher(config_path, config)
    events: "queue.Queue[Optional[Event]]" = queue.Queue()
    stop = threading.Event()
    warm = Warm()

    def reader() -> None:
        try:
            for line in _read_source(path, stop):
                parsed = parse_line(line)
                if parsed is None:
                    if line.strip():
                        log.debug("fifo: ignoring %r", line)
                    continue
                name, state = parsed
                group = watcher.current().group(name)
                if group is None:
                    log.info("%s for %s ignored: no group %s in %s", state, name, name, config_path)
                    continue
                seq = store.record(group.name, state)
                if state != "MASTER":
                    log.info("group %s: %s recorded (no AWS write)", group.name, state)
                events.put((group.name, state, seq))
        except Exception as exc:  # the worker reports and ends the process
            log.error("fifo: reading %s failed: %s", path or "standard input", exc)
        finally:
            events.put(None)

    def terminate(signum, frame) -> None:
        # keepalived signals its FIFO script first and writes the STOP lines after: keep
        # reading (and recording) until the writer closes or a short grace period ends.
        stop.set()
        timer = threading.Timer(SIGTERM_GRACE, lambda: events.put(None))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    threading.Thread(target=reader, name="fifo-reader", daemon=True).start()
    code = EXIT_OK
    while True:
        batch: List[Optional[Event]] = [events.get()]
        while True:  # a burst: everything already queued
            try:
                batch.append(events.get_nowait())
            except queue.Empty:
                break
        finished = None in batch
        latest: Dict[str, Event] = {}
        for event in batch:
            if event is not None:
                latest.pop(event[0], None)
                latest[event[0]] = event  # keeps arrival order of each group's last event
        for name, state, seq in latest.values():
            if state != "MASTER" or not store.is_current(name, seq):
                continue
            cfg = watcher.current()
            group = cfg.group(name)
            if group is None:
                continue
            if run_master_seq(cfg, group, store, seq, warm) != EXIT_OK:
                code = EXIT_FAILED
        if finished:
            return code if path is None or not stat.S_ISFIFO(os.stat(path).st_mode) else EXIT_OK
