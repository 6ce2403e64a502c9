"""Logging: syslog datagrams with the aws-vrrp-notify ident, stderr rules, redaction."""

from __future__ import annotations

import io
import os
import socket
import sys

from aws_vrrp_notify import logsetup


def fresh_logger(monkeypatch, tmp_path, verbosity=0, tty=False):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", path)
    err = io.StringIO()
    err.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", err)
    return logsetup.Logger().setup(verbosity), server, err


def test_syslog_ident_priority_and_stderr_levels(monkeypatch, tmp_path):
    log, server, err = fresh_logger(monkeypatch, tmp_path)
    log.info("group %s: assigned", "VI_1")
    log.error("group %s: failed", "VI_1")
    log.debug("not at this verbosity")
    assert server.recv(4096).decode() == f"<30>aws-vrrp-notify[{os.getpid()}]: INFO group VI_1: assigned"
    assert server.recv(4096).decode() == f"<27>aws-vrrp-notify[{os.getpid()}]: ERROR group VI_1: failed"
    assert err.getvalue() == "aws-vrrp-notify: ERROR: group VI_1: failed\n"  # not a terminal: errors only


def test_terminal_and_verbose(monkeypatch, tmp_path):
    log, _, err = fresh_logger(monkeypatch, tmp_path, tty=True)
    log.info("hello")
    assert err.getvalue() == "aws-vrrp-notify: INFO: hello\n"
    verbose = tmp_path / "verbose"
    verbose.mkdir()
    log, _, err = fresh_logger(monkeypatch, verbose, verbosity=2)
    log.debug("timed")
    assert err.getvalue().startswith("aws-vrrp-notify: ") and " ms DEBUG: timed" in err.getvalue()


def test_credentials_are_redacted(monkeypatch, tmp_path):
    log, server, err = fresh_logger(monkeypatch, tmp_path, tty=True)
    log.info("headers: %s", {"X-Amz-Security-Token": "FwoGZXIvYXdzE"})
    assert "FwoGZXIvYXdzE" not in err.getvalue() and "redacted" in err.getvalue()
    assert b"FwoGZXIvYXdzE" not in server.recv(4096)


def test_missing_syslog_is_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(tmp_path / "nothing"))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    log = logsetup.Logger().setup(0)
    log.error("still reported")
    assert sys.stderr.getvalue() == "aws-vrrp-notify: ERROR: still reported\n"


def test_stream_syslog_socket(monkeypatch, tmp_path):
    """syslog-ng and some containers offer /dev/log as a stream socket: NUL-terminated messages."""
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(2)
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", path)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    log = logsetup.Logger().setup(0)
    log.error("over a stream")
    log.info("and another")
    conn, _ = server.accept()
    conn.settimeout(2)
    data = b""
    while data.count(b"\0") < 2:
        data += conn.recv(4096)
    pid = os.getpid()
    assert data == (f"<27>aws-vrrp-notify[{pid}]: ERROR over a stream\0"
                    f"<30>aws-vrrp-notify[{pid}]: INFO and another\0").encode()


def test_forked_child_logs_with_its_own_pid(monkeypatch, tmp_path):
    log, server, _ = fresh_logger(monkeypatch, tmp_path)
    child = os.fork()
    if child == 0:  # the background preparation of a backup is such a child
        try:
            log.info("from the child")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert server.recv(4096).decode() == f"<30>aws-vrrp-notify[{child}]: INFO from the child"


def test_syslog_daemon_restart_is_survived(monkeypatch, tmp_path):
    log, server, _ = fresh_logger(monkeypatch, tmp_path)
    log.info("before")
    assert server.recv(4096).endswith(b"INFO before")
    server.close()  # the daemon restarts: a new socket at the same path
    os.unlink(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log.sock"))
    server.settimeout(2)
    log.info("after")
    assert server.recv(4096).endswith(b"INFO after")
