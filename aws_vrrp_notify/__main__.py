"""Entry point. keepalived's calls (master/backup/fault/stop/notify) take a fast path that
never imports click; everything else, and any call the fast path does not understand
exactly (--help, a typo, a bad STATE), goes to the click CLI for its help and errors."""

from __future__ import annotations

import gc
import os
import sys
from collections import namedtuple
TYPE_CHECKING = False  # typing costs ~5 ms of a keepalived BACKUP: annotations only
if TYPE_CHECKING:
    from typing import List, Optional, Union

gc.disable()  # a short-lived process: cyclic GC only costs time (README, Performance)

TRANSITIONS = {"master": "MASTER", "backup": "BACKUP", "fault": "FAULT", "stop": "STOP"}
NOTIFY_TYPES = ("INSTANCE", "GROUP")
NOTIFY_STATES = ("MASTER", "BACKUP", "FAULT", "STOP")


FastCall = namedtuple("FastCall", "config state_dir cache_dir verbosity state group via_notify")
HealthCall = namedtuple("HealthCall", "config state_dir cache_dir verbosity groups")  # vrrp_script: every few s
PATH_OPTIONS = {"-c": "config", "--config": "config", "--state-dir": "state_dir", "--cache-dir": "cache_dir"}


def parse_fast(argv: List[str]) -> Optional[Union[FastCall, HealthCall]]:
    paths = {"config": None, "state_dir": None, "cache_dir": None}
    verbosity = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, equals, value = arg.partition("=")
        if arg in PATH_OPTIONS and i + 1 < len(argv):
            paths[PATH_OPTIONS[arg]] = argv[i + 1]
            i += 2
        elif equals and name.startswith("--") and name in PATH_OPTIONS:
            paths[PATH_OPTIONS[name]], i = value, i + 1
        elif arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            verbosity += 1 if arg == "--verbose" else len(arg) - 1
            i += 1
        else:
            break
    rest = argv[i:]
    if any(a.startswith("-") for a in rest) or not rest:
        return None
    command, args = rest[0], rest[1:]
    if command == "health":
        return HealthCall(verbosity=verbosity, groups=tuple(args), **paths)
    if command in TRANSITIONS and len(args) == 1:
        return FastCall(verbosity=verbosity, state=TRANSITIONS[command], group=args[0], via_notify=False, **paths)
    if command == "notify" and len(args) in (3, 4):
        kind, name, state = args[:3]
        priority_ok = len(args) == 3 or (args[3].isascii() and args[3].isdigit())  # as cli.Priority
        if kind in NOTIFY_TYPES and state in NOTIFY_STATES and priority_ok:
            return FastCall(verbosity=verbosity, state=state, group=name, via_notify=True, **paths)
    return None


def _finish(code: int) -> None:
    """Flush and leave without interpreter teardown (freeing botocore's objects costs ~20-80 ms)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--help"], ["-h"], ["--version"]):
        if args == ["--version"]:
            from . import __version__

            sys.stdout.write(f"aws-vrrp-notify, version {__version__}\n")
        else:
            from .helptext import HELP

            sys.stdout.write(HELP)
        sys.stdout.flush()
        return 0
    fast = parse_fast(args)
    if isinstance(fast, HealthCall):
        from .health import DEFAULT_MAX_AGE, run

        code = run(fast.config, fast.state_dir, fast.cache_dir, fast.verbosity, fast.groups, DEFAULT_MAX_AGE)
        if argv is None:
            _finish(code)
        return code
    if fast is not None:
        if argv is None and fast.state == "MASTER":
            from .standby import hand_over

            code = hand_over(args, fast.state_dir, fast.verbosity)
            if code is not None:
                _finish(code)
        from .commands import transition

        code = transition(fast.config, fast.state_dir, fast.verbosity, fast.state, fast.group,
                          fast.via_notify, fast.cache_dir)
        if argv is None:
            _finish(code)
        return code
    gc.enable()
    from .cli import cli

    return cli.main(args=args, prog_name="aws-vrrp-notify", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
