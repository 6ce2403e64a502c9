"""Command implementations shared by the fast path (__main__) and the click CLI."""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import Optional

from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from .state import DEFAULT_CACHE_DIR, StateError, StateStore, UnsafeStateDir, state_dir

from .logsetup import ERROR, log


def config_path(explicit: Optional[str]) -> str:
    """-c PATH as given (an empty one is an error, not the default), else the environment's."""
    if explicit is not None:
        return explicit
    return os.environ.get("AWS_VRRP_NOTIFY_CONFIG") or DEFAULT_CONFIG_PATH


def cache_dir(explicit: Optional[str]) -> str:
    return explicit or os.environ.get("AWS_VRRP_NOTIFY_CACHE_DIR") or DEFAULT_CACHE_DIR


def load_config(explicit: Optional[str], store: Optional[StateStore] = None) -> Config:
    """The configuration; with ``store``, an unchanged file is not decoded again (config.load)."""
    return load(config_path(explicit), store)


def report_config_error(exc: ConfigError) -> int:
    """Every problem on stderr, and each one to syslog too: keepalived discards stderr."""
    print(f"aws-vrrp-notify: configuration error in {exc.path}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
        log.log(ERROR, "configuration error in %s: %s", exc.path, problem, stderr=False)
    return EXIT_USAGE


def open_state(state: Optional[str], create: bool, cache: Optional[str] = None) -> StateStore:
    """The checked state directory (with the botocore model cache chosen by --cache-dir);
    UnsafeStateDir and StateError are logged and raised."""
    store = StateStore(state_dir(state), cache_dir(cache))
    try:
        return store.open(create)
    except StateError as exc:
        log.error("%s", exc)
        raise


def state_error_status(exc: StateError) -> int:
    """2 for a refused state directory (as for an unsafe configuration file), 1 for an unusable one."""
    return EXIT_USAGE if isinstance(exc, UnsafeStateDir) else EXIT_FAILED


def _in_background(cfg: Config, group, store: StateStore, seq: int, prepare: bool, release: bool) -> None:
    """In a detached child: resolve what the next MASTER of ``group`` needs (reads only), and
    after MASTER -> BACKUP hand to the peer what still points here one consistency window
    later (transition.release_group).

    keepalived does not wait for it and the transition's exit does not depend on it."""
    from .detach import fork_detached

    if not fork_detached():
        return
    try:
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
        log.error("group %s: background work after a transition failed: %s", group.name,
                  exc or type(exc).__name__)
    finally:
        os._exit(0)


def transition(config: Optional[str], state: Optional[str], verbosity: int, new_state: str,
               group_name: str, via_notify: bool, cache: Optional[str] = None) -> int:
    """One keepalived event: record it; on MASTER apply the group's actions."""
    from .logsetup import setup

    setup(verbosity)
    try:
        return _transition(config, state, new_state, group_name, via_notify, cache)
    except Exception as exc:  # an unexpected bug must still be reported, not a bare traceback
        log.exception("group %r: %s failed unexpectedly: %s", group_name, new_state, exc)
        return EXIT_FAILED


def _transition(config: Optional[str], state: Optional[str], new_state: str, group_name: str,
                via_notify: bool, cache: Optional[str]) -> int:
    store = StateStore(state_dir(state), cache_dir(cache))
    unusable = None
    try:
        store.ensure()
    except UnsafeStateDir as exc:
        log.error("%s; nothing done", exc)
        return EXIT_USAGE
    except StateError as exc:  # reported once the configuration and the group are known
        unusable = exc
    try:
        cfg = load_config(config, None if unusable else store)
    except ConfigError as exc:
        log.error("configuration error in %s (%d problem(s)); nothing done", exc.path, len(exc.problems))
        return report_config_error(exc)
    group = cfg.group(group_name)
    if group is None:
        if via_notify:
            log.info("%s for %r ignored: no such group in %s", new_state, group_name, cfg.path)
            return EXIT_OK
        log.error("no group %r in %s (configured: %s)", group_name, cfg.path,
                  ", ".join(sorted(cfg.groups)) or "none")
        return EXIT_USAGE
    try:
        if unusable is not None:
            raise unusable
        if new_state != "MASTER":
            from .state import process_start

            previous = (store.read(group.name) or {}).get("state")
            seq = store.record(group.name, new_state, started=process_start())
            if seq is None:
                return _older_event(group.name, new_state)
            log.info("group %s: %s recorded (no AWS write)", group.name, new_state)
            _standby_after(new_state, cfg, store)
            prepare = cfg.aws.prepare and not store.has_cache(f"plan-{group.name}")
            release = new_state == "BACKUP" and previous == "MASTER"
            if prepare or release:
                _in_background(cfg, group, store, seq, prepare, release)
            return EXIT_OK
        from .transition import run_master

        return run_master(cfg, group, store)
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


def _standby_after(new_state: str, cfg: Config, store: StateStore) -> None:
    """BACKUP and FAULT keep a standby process for the next MASTER ([aws] standby); STOP, or
    a BACKUP or FAULT with standby off, ends the one that runs."""
    from . import standby

    if new_state != "STOP" and cfg.aws.standby:
        standby.start(store.root)
    else:
        standby.quit_standby(store.root)


def _older_event(group: str, state: str) -> int:
    log.info("group %s: %s ignored: keepalived started a later event's script before this one's "
             "(the later event was recorded first)", group, state)
    return EXIT_OK


def _reporting_imds(cfg: Optional[Config]):
    from .deadline import Deadline
    from .imds import ImdsClient

    deadline = Deadline(cfg.aws.deadline if cfg else 30.0)
    return ImdsClient(deadline=deadline), deadline


def status(config: Optional[str], state: Optional[str], verbosity: int, section: Optional[str],
           as_json: bool, cache: Optional[str] = None) -> int:
    """status [instance|network-port|ha-notification] [--json]."""
    from .logsetup import setup

    setup(verbosity)
    try:
        return _status(config, state, section, as_json, cache)
    except Exception as exc:
        log.exception("status failed unexpectedly: %s", exc)
        return EXIT_FAILED


def _status(config: Optional[str], state: Optional[str], section: Optional[str], as_json: bool,
            cache: Optional[str]) -> int:
    from .imds import ImdsError
    from .report import (NotOnAws, ha_json, ha_lines, instance_json, instance_lines, observe_groups,
                         port_lines, require_aws, to_json)

    sections = [section] if section else ["instance", "network-port", "ha-notification"]
    cfg = store = None
    if "ha-notification" in sections:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            return report_config_error(exc)
        try:
            store = open_state(state, create=False, cache=cache)
        except StateError as exc:
            return state_error_status(exc)
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
            reports = observe_groups(cfg, store, imds, deadline)
            for report in reports:
                if report.error:
                    log.error("group %s: %s", report.name, report.error)
            out_json["ha-notification"] = ha_json(reports)
            lines += ha_lines(reports)
    except ImdsError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    if as_json:
        print(to_json(out_json))
    elif lines:  # no PCI network port: no output at all, not an empty line
        print("\n".join(lines))
    return EXIT_OK


def check(config: Optional[str], state: Optional[str], verbosity: int, as_json: bool,
          prometheus: Optional[str], repair: bool, cache: Optional[str] = None) -> int:
    """Drift report; exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (whatever goes wrong)."""
    from .logsetup import setup

    setup(verbosity)
    try:
        reports, error, problems = _observe_for_check(config, state, repair, cache)
    except Exception as exc:
        log.exception("check failed unexpectedly: %s", exc)
        reports, error, problems = [], f"unexpected error: {exc}", None
    health = None
    if prometheus:  # the file also says whether this instance could become MASTER now
        from .health import ready_for_metrics

        health = ready_for_metrics(config, state, cache)
    return _report_check(reports, error, problems, as_json, prometheus, health)


def _observe_for_check(config: Optional[str], state: Optional[str], repair: bool, cache: Optional[str]):
    """(group reports, why the check could not tell or None, configuration problems or None)."""
    from .imds import ImdsError
    from .report import NotOnAws, observe_groups, require_aws

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        report_config_error(exc)
        return [], f"configuration error in {exc.path}: {'; '.join(exc.problems)}", exc.problems
    try:
        store = open_state(state, create=False, cache=cache)
    except StateError as exc:
        return [], str(exc), None
    imds, deadline = _reporting_imds(cfg)
    try:
        require_aws(imds)
    except NotOnAws:
        return [], "not running on AWS (no instance metadata service)", None
    except ImdsError as exc:
        return [], str(exc), None
    reports = observe_groups(cfg, store, imds, deadline)
    if repair:
        # a group that yielded to another instance (split brain) is not taken back here, and a
        # group still within the consistency window of its transition is converging, not drifted
        drifted = [r.name for r in reports if r.state == "MASTER" and r.check()[0] != 0 and not r.error
                   and not r.converging and (store.read(r.name) or {}).get("outcome") != "yielded"]
        if drifted:
            from .transition import repair_group

            try:
                store.ensure()
            except StateError as exc:
                log.error("%s", exc)
                return reports, str(exc), None
            for name in drifted:
                repair_group(cfg, cfg.groups[name], store)
            imds, deadline = _reporting_imds(cfg)
            reports = observe_groups(cfg, store, imds, deadline)
    return reports, None, None


def _report_check(reports, error: Optional[str], problems, as_json: bool, prometheus: Optional[str],
                  health: Optional[bool] = None) -> int:
    """Print the report and write the Prometheus file; a file that cannot be written is UNKNOWN."""
    import time

    from .report import check_json, check_lines, prometheus_text, to_json, write_prometheus

    worst, lines = check_lines(reports, error)
    if prometheus:
        try:
            write_prometheus(prometheus, prometheus_text(reports, worst, error, time.time(), health))
        except OSError as exc:
            why = f"cannot write the Prometheus file {prometheus}: {exc.strerror}"
            log.error("%s", why)
            error = f"{error}; {why}" if error else why
            worst, lines = check_lines(reports, error)
    print(to_json(check_json(reports, worst, error, problems)) if as_json else "\n".join(lines))
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
        log.error("configuration error in %s (%d problem(s)); not started", exc.path, len(exc.problems))
        return report_config_error(exc)
    try:
        store = open_state(state, create=True, cache=cache)
    except StateError as exc:
        return state_error_status(exc)
    log.info("reading keepalived events from %s", path or "standard input")
    try:
        return run_fifo(config_path(config), cfg, store, path)
    except Exception as exc:
        log.exception("fifo failed unexpectedly: %s", exc)
        return EXIT_FAILED
