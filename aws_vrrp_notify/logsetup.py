"""Logging: syslog (ident aws-vrrp-notify) always, stderr for warnings and errors, or for
everything on a terminal or with -v; -vv adds debug lines with milliseconds since start.

A small logger of our own rather than the logging module: importing logging costs ~10 ms,
a sixth of the 60 ms a keepalived BACKUP transition may take. Credentials never reach it;
as a last line of defence, credential VALUES in a line (access key ids, secret keys,
session and metadata tokens, signatures, Authorization headers, passwords in URLs) are
replaced by "[redacted]", and the rest of the line, such as an IAM denial with its
encoded authorization failure message, is kept.
"""

from __future__ import annotations

import os
import sys
import _thread
import time

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
SYSLOG_PRIORITY = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}
SYSLOG_SOCKET = "/dev/log"
SYSLOG_TIMEOUT = 0.5
LOG_DAEMON = 3
# Lines without any of these (lower-cased) or "@" are logged as they are, without
# compiling the patterns of redact() (an import of re's compiler on the BACKUP path).
REDACT_MARKERS = ("akia", "asia", "token", "secret", "signature", "authorization")
START = time.monotonic()


class Logger:
    def __init__(self) -> None:
        self.stderr_level = WARNING
        self.level = INFO
        self.timings = False
        self.syslog = None
        self.configured = False
        self._lock = _thread.allocate_lock()
        self._stream = False  # /dev/log is a stream socket (syslog-ng, some containers)

    def setup(self, verbosity: int = 0) -> "Logger":
        if self.configured:
            return self
        self.configured = True
        self.level = DEBUG if verbosity >= 2 else INFO
        on_terminal = sys.stderr is not None and sys.stderr.isatty()  # None: started with fd 2 closed
        self.stderr_level = DEBUG if verbosity >= 2 else INFO if (verbosity or on_terminal) else WARNING
        self.timings = verbosity >= 2
        if os.path.exists(SYSLOG_SOCKET):  # no syslog daemon (containers, tests): stderr only
            self._connect()
        return self

    def reset(self) -> None:
        """Forget the set-up, as in a new process (a standby process's child, standby.py)."""
        global START
        if self.syslog is not None:
            try:
                self.syslog.close()
            except OSError:
                pass
        self.__init__()  # type: ignore[misc]
        START = time.monotonic()

    def _connect(self) -> None:
        """A socket connected to SYSLOG_SOCKET: datagram, else stream (as logging's SysLogHandler)."""
        import socket

        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
            sock.settimeout(SYSLOG_TIMEOUT)  # a daemon that does not read must not stall a failover
            try:
                sock.connect(SYSLOG_SOCKET)
            except OSError:
                sock.close()
                continue
            self.syslog, self._stream = sock, kind == socket.SOCK_STREAM
            return
        self.syslog = None

    def _send_syslog(self, level: int, name: str, text: str) -> None:
        # the PID is read at each line: a forked background child logs with its own
        line = f"<{LOG_DAEMON * 8 + SYSLOG_PRIORITY[level]}>aws-vrrp-notify[{os.getpid()}]: {name} {text}"
        data = line.encode("utf-8", "replace")[:8192] + (b"\0" if self._stream else b"")
        for attempt in (1, 2):  # a syslog hiccup must never break a failover
            try:
                if self.syslog is not None:
                    self.syslog.sendall(data)
                return
            except OSError:  # the daemon restarted (a long-running fifo reader): reconnect once
                if attempt == 2:
                    return
                try:
                    self.syslog.close()  # type: ignore[union-attr]
                except OSError:
                    pass
                self._connect()

    def log(self, level: int, message: str, *args: object, stderr: bool = True) -> None:
        """One line to syslog and (``stderr``: unless the caller prints the same itself) stderr."""
        if level < self.level and level < self.stderr_level:
            return
        text = message % args if args else message
        text = redact(text)
        name = NAMES[level]
        with self._lock:
            if stderr and level >= self.stderr_level:
                stamp = f"{(time.monotonic() - START) * 1000:6.0f} ms " if self.timings else ""
                try:
                    sys.stderr.write(f"aws-vrrp-notify: {stamp}{name}: {text}\n")
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):  # AttributeError: no stderr (None)
                    pass
            if self.syslog is not None and level >= self.level:
                self._send_syslog(level, name, text)

    def debug(self, message: str, *args: object) -> None:
        self.log(DEBUG, message, *args)

    def info(self, message: str, *args: object) -> None:
        self.log(INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(WARNING, message, *args)

    def error(self, message: str, *args: object) -> None:
        self.log(ERROR, message, *args)

    def exception(self, message: str, *args: object) -> None:
        """An unexpected error: the message, and the traceback at -vv."""
        self.log(ERROR, message, *args)
        if self.timings:
            import traceback

            self.log(DEBUG, "%s", traceback.format_exc())


def redact(text: str) -> str:
    """``text`` with every credential value in it replaced by "[redacted]"."""
    lowered = text.lower()
    if "@" not in text and not any(marker in lowered for marker in REDACT_MARKERS):
        return text
    global _redact_values
    if _redact_values is None:
        _redact_values = _value_redactor()
    return _redact_values(text)


_redact_values = None


def _value_redactor():
    import re

    # A key, as in a header, query string, JSON, Python repr or botocore's canonical request,
    # then its separator; the value follows. Values shorter than 16 characters are left:
    # real keys, tokens and signatures are longer, and error texts such as
    # "ExpiredToken: The security token ..." stay readable.
    keyed = re.compile(r"""(?i)((?:token|secret(?:[_-]?access)?(?:[_-]?key)?|signature)["']?\s*[:=]\s*b?["']?)"""
                       r"[A-Za-z0-9+/=_%.-]{16,}")
    # the whole header value: "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..."
    authorization = re.compile(r"""(?i)(authorization["']?\s*[:=]\s*b?["']?)[^"'\r\n]+""")
    access_key_id = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
    url_password = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")

    def redact_values(text: str) -> str:
        text = authorization.sub(r"\1[redacted]", text)
        text = keyed.sub(r"\1[redacted]", text)
        text = access_key_id.sub(r"\1[redacted]", text)
        return url_password.sub(r"\1[redacted]@", text)

    return redact_values


log = Logger()


def setup(verbosity: int = 0) -> Logger:
    return log.setup(verbosity)
