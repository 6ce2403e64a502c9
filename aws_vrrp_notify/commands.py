"""Command implementations shared by the fast path (__main__) and the click CLI."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from . import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load
from .state import DEFAULT_STATE_DIR, StateError, StateStore

log = logging.getLogger("aws-vrrp-notify")


def config_path(explicit: Optional[str]) -> str:
    return explicit or os.environ.get("AWS_VRRP_NOTIFY_CONFIG") or DEFAULT_CONFIG_PATH


def state_dir(explicit: Optional[str]) -> str:
    return explicit or os.environ.get("AWS_VRRP_NOTIFY_STATE_DIR") or DEFAULT_STATE_DIR


def load_config(explicit: Optional[str]) -> Config:
    return load(config_path(explicit))


def report_config_error(exc: ConfigError) -> int:
    print(f"aws-vrrp-notify: configuration error in {exc.path}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def transition(config: Optional[str], state: Optional[str], verbosity: int, new_state: str,
               group_name: str, via_notify: bool) -> int:
    """One keepalived event: record it; on MASTER apply the group's actions."""
    from .logsetup import setup

    setup(verbosity)
    try:
        cfg = load_config(config)
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
        store = StateStore(state_dir(state)).ensure()
        if new_state != "MASTER":
            store.record(group.name, new_state)
            log.info("group %s: %s recorded (no AWS write)", group.name, new_state)
            return EXIT_OK
        from .transition import run_master

        return run_master(cfg, group, store)
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except Exception as exc:  # an unexpected bug must still be reported, not a bare traceback
        log.exception("group %s: %s failed unexpectedly: %s", group_name, new_state, exc)
        return EXIT_FAILED
