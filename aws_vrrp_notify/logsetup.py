"""Logging: syslog (ident aws-vrrp-notify) always, stderr for errors, or everything on a terminal."""

from __future__ import annotations

import logging
import os
import sys

LOGGER = "aws-vrrp-notify"


class _Redact(logging.Filter):
    """Last line of defence: never let a credential-looking value reach a log."""

    MARKERS = ("X-Amz-Security-Token", "X-Amz-Signature", "X-Amz-Credential", "aws_secret_access_key",
               "SecretAccessKey", "SessionToken", "X-aws-ec2-metadata-token", "Authorization")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(m.lower() in message.lower() for m in self.MARKERS):
            record.msg, record.args = "[a log line that mentioned credentials was redacted]", ()
        return True


SYSLOG_SOCKET = "/dev/log"
LOG_DAEMON = 3
PRIORITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class SyslogHandler(logging.Handler):
    """RFC 3164 datagrams to /dev/log, ident aws-vrrp-notify (logging.handlers costs ~10 ms
    to import, a tenth of a transition's budget). A syslog hiccup never breaks a failover."""

    def __init__(self) -> None:
        super().__init__()
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            priority = LOG_DAEMON * 8 + PRIORITIES.get(record.levelname, 6)
            line = f"<{priority}>aws-vrrp-notify[{self.pid}]: {self.format(record)}"
            self.sock.sendto(line.encode("utf-8", "replace")[:8192], SYSLOG_SOCKET)
        except OSError:
            pass


def setup(verbosity: int = 0) -> logging.Logger:
    log = logging.getLogger(LOGGER)
    if log.handlers:
        return log
    log.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    log.propagate = False
    redact = _Redact()
    stderr = logging.StreamHandler(sys.stderr)
    on_terminal = sys.stderr.isatty()
    stderr.setLevel(logging.DEBUG if verbosity >= 2 else
                    logging.INFO if (verbosity or on_terminal) else logging.WARNING)
    fmt = "aws-vrrp-notify: %(levelname)s: %(message)s"
    if verbosity >= 2:  # with timings since start, to see where a transition spends its time
        fmt = "aws-vrrp-notify: %(relativeCreated)6.0f ms %(levelname)s: %(message)s"
    stderr.setFormatter(logging.Formatter(fmt))
    stderr.addFilter(redact)
    log.addHandler(stderr)
    if os.path.exists(SYSLOG_SOCKET):
        syslog = SyslogHandler()
        syslog.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        syslog.addFilter(redact)
        log.addHandler(syslog)  # no syslog daemon (containers, tests): stderr only
    # botocore's own debug logs contain signed headers: keep them quiet at any verbosity.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    return log
