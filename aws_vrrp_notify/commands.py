"""Command implementations shared by the fast path (__main__) and the click CLI."""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Optional

from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from .state import DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR, StateError, StateStore

from .logsetup import log


def config_path(explicit: Optional[str]) -> str:
    return explicit or os.environ.get("AWS_VRRP_NOTIFY_CONFIG") or DEFAULT_CONFIG_PATH


def state_dir(explicit: Optional[str]) -> str:
    return explicit or os.environ.get("AWS_VRRP_NOTIFY_STATE_DIR") or DEFAULT_STATE_DIR


def cache_dir(explicit: Optional[str]) -> str:
    return explicit or os.environ.get("AWS_VRRP_NOTIFY_CACHE_DIR") or DEFAULT_CACHE_DIR


def open_store(state: Optional[str], cache: Optional[str]) -> StateStore:
    """The state directory, with the model cache directory chosen by --cache-dir (or its default)."""
    return StateStore(state_dir(state), cache_dir(cache))


def load_config(explicit: Optional[str], state_root: Optional[str] = None) -> Config:
    """The configuration; with ``state_root``, an unchanged file is not decoded again (config.load)."""
    return load(config_path(explicit), os.path.join(state_root, "cache") if state_root else None)


def report_config_error(exc: ConfigError) -> int:
    print(f"aws-vrrp-notify: configuration error in {exc.path}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def _prepared(store: StateStore, group: str) -> bool:
    """A plan for the group is already cached (a cheap check: no AWS, no botocore)."""
    try:
        return os.path.getsize(os.path.join(store.cache_dir, f"plan-{group}.json")) > 2
    except OSError:
        return False


def _in_background(cfg: Config, group, store: StateStore, seq: int, prepare: bool, release: bool) -> None:
    """In a detached child: resolve what the next MASTER of ``group`` needs (reads only), and
    after MASTER -> BACKUP hand to the peer what still points here one consistency window
    later (transition.release_group).

    keepalived does not wait for it and the transition's exit does not depend on it."""
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        return
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        import time

        from .transition import prepare_group, release_delay, release_group

        if prepare:
            try:
                prepare_group(cfg, group, store)
            except Exception:  # nobody to report to; the next MASTER resolves for itself
                pass
        if release:
            time.sleep(release_delay(cfg))
            if store.is_current(group.name, seq):
                release_group(cfg, group, store, seq)
    except BaseException as exc:  # stderr is /dev/null here: syslog is the only witness
        log.error("group %s: background work after %s failed: %s", group.name,
                  (store.read(group.name) or {}).get("state"), exc or type(exc).__name__)
    finally:
        os._exit(0)


def transition(config: Optional[str], state: Optional[str], verbosity: int, new_state: str,
               group_name: str, via_notify: bool, cache: Optional[str] = None) -> int:
    """One keepalived event: record it; on MASTER apply the group's actions."""
    from .logsetup import setup

    setup(verbosity)
    try:
        cfg = load_config(config, state_dir(state))
    except ConfigError as exc:
        log.error("configuration error in %s (%d problem(s)); nothing done", exc.path, len(exc.problems))
        return report_config_error(exc)
    group = cfg.group(group_name)
    if group is None:
        if via_notify:
            log.info("%s for %s ignored: no group %s in %s", new_state, group_name, group_name, cfg.path)
            return EXIT_OK
        log.error("no group %r in %s (configured: %s)", group_name, cfg.path,
                  ", ".join(sorted(cfg.groups)) or "none")
        return EXIT_USAGE
    try:
        store = open_store(state, cache).ensure()
        if new_state != "MASTER":
            previous = (store.read(group.name) or {}).get("state")
            seq = store.record(group.name, new_state)
            log.info("group %s: %s recorded (no AWS write)", group.name, new_state)
            prepare = cfg.aws.prepare and not _prepared(store, group.name)
            release = new_state == "BACKUP" and previous == "MASTER"
            if prepare or release:
                _in_background(cfg, group, store, seq, prepare, release)
            return EXIT_OK
        from .transition import run_master

        return run_master(cfg, group, store)
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except Exception as exc:  # an unexpected bug must still be reported, not a bare traceback
        log.exception("group %s: %s failed unexpectedly: %s", group_name, new_state, exc)
        return EXIT_FAILED


def _reporting_imds(cfg: Optional[Config]):
    from .deadline import Deadline
    from .imds import ImdsClient

    deadline = Deadline(cfg.aws.deadline if cfg else 30.0)
    return ImdsClient(deadline=deadline), deadline


def status(config: Optional[str], state: Optional[str], verbosity: int, section: Optional[str],
           as_json: bool, cache: Optional[str] = None) -> int:
    """status [instance|network-port|ha-notification] [--json]."""
    from .imds import ImdsError
    from .logsetup import setup
    from .report import (NotOnAws, ha_json, ha_lines, instance_json, instance_lines, observe_groups,
                         port_lines, require_aws, to_json)

    setup(verbosity)
    sections = [section] if section else ["instance", "network-port", "ha-notification"]
    cfg = None
    if "ha-notification" in sections:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            return report_config_error(exc)
    imds, deadline = _reporting_imds(cfg)
    try:
        require_aws(imds)
    except NotOnAws:
        print("not running on AWS (no instance metadata service): nothing to show")
        return EXIT_OK
    except ImdsError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    out_json = {}
    lines = []
    try:
        if "instance" in sections:
            identity = imds.identity()
            out_json["instance"] = instance_json(identity)
            lines += instance_lines(identity)
        if "network-port" in sections:
            from .ports import network_ports

            ports = network_ports()
            for port in ports:
                try:
                    port.aws_interface_id = imds.mac_data(port.mac_address, "interface-id")
                except ImdsError:
                    port.aws_interface_id = None
            out_json["network-ports"] = [p.to_dict() for p in ports]
            lines += port_lines(ports)
        if "ha-notification" in sections:
            store = open_store(state, cache)
            reports = observe_groups(cfg, store, imds, deadline)
            for report in reports:
                if report.error:
                    log.error("group %s: %s", report.name, report.error)
            out_json["ha-notification"] = ha_json(reports)
            lines += ha_lines(reports)
    except ImdsError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    print(to_json(out_json) if as_json else "\n".join(lines))
    return EXIT_OK


def check(config: Optional[str], state: Optional[str], verbosity: int, as_json: bool,
          prometheus: Optional[str], repair: bool, cache: Optional[str] = None) -> int:
    """Drift report; exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    import time

    from .imds import ImdsError
    from .logsetup import setup
    from .report import (UNKNOWN, NotOnAws, check_json, check_lines, observe_groups, prometheus_text,
                         require_aws, to_json, write_prometheus)

    setup(verbosity)

    def unknown(message: str) -> int:
        if as_json:
            print(to_json({"status": "UNKNOWN", "exit-code": UNKNOWN, "groups": [], "error": message}))
        else:
            print(f"aws-vrrp-notify check UNKNOWN: {message}")
        if prometheus:
            write_prometheus(prometheus, prometheus_text([], UNKNOWN, message, time.time()))
        return UNKNOWN

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        report_config_error(exc)
        return unknown(f"configuration error in {exc.path}")
    imds, deadline = _reporting_imds(cfg)
    try:
        require_aws(imds)
    except NotOnAws:
        return unknown("not running on AWS (no instance metadata service)")
    except ImdsError as exc:
        return unknown(str(exc))
    store = open_store(state, cache)
    reports = observe_groups(cfg, store, imds, deadline)
    if repair:
        # a group that yielded to another instance (split brain) is not taken back here
        # a group still within the consistency window of its transition is converging, not drifted
        drifted = [r.name for r in reports if r.state == "MASTER" and r.check()[0] != 0 and not r.error
                   and not r.converging and (store.read(r.name) or {}).get("outcome") != "yielded"]
        if drifted:
            from .transition import repair_group

            store.ensure()
            for name in drifted:
                repair_group(cfg, cfg.groups[name], store)
            imds, deadline = _reporting_imds(cfg)
            reports = observe_groups(cfg, store, imds, deadline)
    worst, lines = check_lines(reports)
    print(to_json(check_json(reports, worst)) if as_json else "\n".join(lines))
    if prometheus:
        write_prometheus(prometheus, prometheus_text(reports, worst, None, time.time()))
    return worst


def fifo(config: Optional[str], state: Optional[str], verbosity: int, path: Optional[str],
         cache: Optional[str] = None) -> int:
    """Long-running reader of keepalived's notify FIFO."""
    from .fifo import run_fifo
    from .logsetup import setup

    setup(verbosity)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        return report_config_error(exc)
    try:
        store = open_store(state, cache).ensure()
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    log.info("reading keepalived events from %s", path or "standard input")
    return run_fifo(config_path(config), cfg, store, path)
