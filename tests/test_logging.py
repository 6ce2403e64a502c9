"""Logging: syslog datagrams with the aws-vrrp-notify ident, stderr rules, redaction."""

from __future__ import annotations

import http.server
import io
import os
import socket
import subprocess
import sys
import threading

import pytest

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


# Credentials in the formats they take (values are made up, of the real lengths and alphabets).
KEY_ID = "ASIAQ3EXAMPLEKEYID7Z"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
SESSION_TOKEN = ("IQoJb3JpZ2luX2VjEKz//////////wEaCWV1LXdlc3QtMyJHMEUCIQDexample+session/token"
                 "AiBsomeMoreBase64Text==")
IMDS_TOKEN = "AQAEAHbVz8Q1dGE3wOpvq0pN8y0lO8Pf1xRcMExampleImdsToken0=="
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
# What EC2 answers for an action the role may not perform (the blob is shortened but of its shape).
DENIAL = ("You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/"
          "vrrp-failover/i-0abc is not authorized to perform: ec2:ReplaceRoute on resource: "
          "arn:aws:ec2:eu-west-3:123456789012:route-table/rtb-0abc because no identity-based policy allows the "
          "ec2:ReplaceRoute action. Encoded authorization failure message: "
          "1Cz4UAkPIVpLspKuwVMT8lgR9Ozwvy-MM_MtKuKfGGDs4-2T3dMVBd-IUfEkCNyYyF0Z9A7Cq_Vt5NUk0gWvB3ASIAS1mB3sxP0"
          "aK_TrTknxd8yGmgTzNUZ8JyFY8qK_hbFkiQmz-1Yj7cB2cWmxbtgZ-TEQW9kC9TohZUfYQK5mX1KKBz5I6rIyLeqJqiT3hV_"
          "Xd6xmbLDb-B_1lXWCNqVKK5hxA_Bb-9x8M3kzDsrgs8NQDzKqQOWs0Cs7Ucjf3Ha2vEKfDWZaATQ-Ylj_IbNpYaqZc6ngD-Rl")
ERROR_LINE = f"group VI_1: change-route 10.0.3.0/24 0.0.0.0/0 interface eth1 vrf main: ReplaceRoute failed: " \
             f"UnauthorizedOperation: {DENIAL} (1 attempt)"


def test_an_iam_denial_reaches_syslog_whole(monkeypatch, tmp_path):
    log, server, err = fresh_logger(monkeypatch, tmp_path)
    log.error("%s", ERROR_LINE)
    assert server.recv(8192).decode() == f"<27>aws-vrrp-notify[{os.getpid()}]: ERROR {ERROR_LINE}"
    assert err.getvalue() == f"aws-vrrp-notify: ERROR: {ERROR_LINE}\n"


@pytest.mark.parametrize("line, secrets, kept", [
    # botocore's "Sending http request" debug line (headers as bytes)
    (f"Sending http request: <AWSPreparedRequest stream_output=False, method=POST, "
     f"url=https://ec2.eu-west-3.amazonaws.com/, headers={{'Content-Type': b'application/x-www-form-urlencoded; "
     f"charset=utf-8', 'X-Amz-Date': b'20240101T120000Z', 'X-Amz-Security-Token': b'{SESSION_TOKEN}', "
     f"'Authorization': b'AWS4-HMAC-SHA256 Credential={KEY_ID}/20240101/eu-west-3/ec2/aws4_request, "
     f"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature={SIGNATURE}', "
     f"'Content-Length': '97'}}>",
     [SESSION_TOKEN, KEY_ID, SIGNATURE], ["Sending http request", "'Content-Length': '97'", "X-Amz-Date"]),
    # botocore.auth's canonical request and signature
    (f"CanonicalRequest:\nPOST\n/\n\nhost:ec2.eu-west-3.amazonaws.com\nx-amz-date:20240101T120000Z\n"
     f"x-amz-security-token:{SESSION_TOKEN}\n\nhost;x-amz-date;x-amz-security-token\n"
     f"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
     [SESSION_TOKEN], ["host;x-amz-date;x-amz-security-token\ne3b0c442"]),
    (f"Signature:\n{SIGNATURE}", [SIGNATURE], ["Signature:"]),
    # instance-profile credentials from the metadata service, and its token header
    (f'{{"Code" : "Success", "LastUpdated" : "2024-01-01T12:00:00Z", "Type" : "AWS-HMAC", '
     f'"AccessKeyId" : "{KEY_ID}", "SecretAccessKey" : "{SECRET}", "Token" : "{SESSION_TOKEN}", '
     f'"Expiration" : "2024-01-01T18:00:00Z"}}',
     [KEY_ID, SECRET, SESSION_TOKEN], ['"Expiration" : "2024-01-01T18:00:00Z"']),
    (f"GET /latest/meta-data/local-ipv4 headers {{'X-aws-ec2-metadata-token': '{IMDS_TOKEN}', "
     f"'X-aws-ec2-metadata-token-ttl-seconds': '21600'}}",
     [IMDS_TOKEN], ["'X-aws-ec2-metadata-token-ttl-seconds': '21600'"]),
    # a presigned URL, environment-style assignments, a proxy URL with a password
    (f"https://ec2.amazonaws.com/?Action=DescribeRegions&X-Amz-Algorithm=AWS4-HMAC-SHA256&"
     f"X-Amz-Credential={KEY_ID}%2F20240101%2Fus-east-1%2Fec2%2Faws4_request&X-Amz-Security-Token="
     f"{SESSION_TOKEN.replace('/', '%2F')}&X-Amz-Signature={SIGNATURE}",
     [KEY_ID, SESSION_TOKEN.replace("/", "%2F"), SIGNATURE], ["Action=DescribeRegions"]),
    (f"AWS_ACCESS_KEY_ID={KEY_ID} AWS_SECRET_ACCESS_KEY={SECRET} aws_session_token={SESSION_TOKEN}",
     [KEY_ID, SECRET, SESSION_TOKEN], ["AWS_ACCESS_KEY_ID="]),
    ("HTTPS_PROXY=http://router:s3cr3t-Pa55@proxy.example:3128", ["s3cr3t-Pa55"], ["@proxy.example:3128"]),
])
def test_credential_values_are_redacted_not_lines(monkeypatch, tmp_path, line, secrets, kept):
    log, server, err = fresh_logger(monkeypatch, tmp_path, tty=True)
    log.info("%s", line)
    sent = server.recv(8192).decode()
    for out in (sent, err.getvalue()):
        assert "[redacted]" in out
        assert not [s for s in secrets if s in out], out
        assert all(k in out for k in kept), out


@pytest.mark.parametrize("line", [
    "group VI_1: MASTER failed: ExpiredToken: The security token included in the request is expired",
    "group VI_1: MASTER failed: SignatureDoesNotMatch: The request signature we calculated does not match",
    "IMDSv2 token refused (HTTP 401), asking for a new one",
    "role credentials: Code 'Failed': no instance profile",
    "StaticCredentials(access_key=ASIA..., token=yes)",
])
def test_error_texts_about_credentials_are_kept(line):
    assert logsetup.redact(line) == line


class _DeniedEc2(http.server.BaseHTTPRequestHandler):
    """A local endpoint that answers every EC2 request as EC2 denies one."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>UnauthorizedOperation'
                f'</Code><Message>{DENIAL}</Message></Error></Errors><RequestID>5b1f7a3e-0000-4c1e-9d5e-0abc'
                f'</RequestID></Response>').encode()
        self.send_response(403)
        self.send_header("Content-Type", "text/xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_real_botocore_debug_lines_leak_nothing(monkeypatch, tmp_path):
    """botocore's own DEBUG lines of a signed request with a session token, and its error,
    passed through the logger: no key, token or signature in syslog or stderr, the denial whole."""
    import logging

    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import ClientError

    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DeniedEc2)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    records: list = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    botocore_log = logging.getLogger("botocore")
    level = botocore_log.level
    botocore_log.setLevel(logging.DEBUG)  # setLevel, not the attribute: it clears logging's level cache
    botocore_log.addHandler(handler)
    try:
        client = botocore.session.get_session().create_client(
            "ec2", region_name="eu-west-3", endpoint_url=f"http://127.0.0.1:{endpoint.server_port}",
            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, aws_session_token=SESSION_TOKEN,
            config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(ClientError) as denied:
            client.replace_route(RouteTableId="rtb-0abc", DestinationCidrBlock="0.0.0.0/0",
                                 NetworkInterfaceId="eni-0abc")
    finally:
        botocore_log.removeHandler(handler)
        botocore_log.setLevel(level)
        endpoint.shutdown()
        endpoint.server_close()
    lines = [r.getMessage() for r in records]
    signature = next(l for l in lines if l.startswith("Signature:")).split()[-1]
    assert any(SESSION_TOKEN in l for l in lines) and any(signature in l for l in lines)  # botocore logs them

    log, server, err = fresh_logger(monkeypatch, tmp_path, verbosity=2)
    received: list = []
    reader = threading.Thread(target=lambda: received.extend(iter(lambda: server.recv(65536).decode(), "END")))
    reader.start()
    for line in lines:
        log.debug("%s", line)
    log.error("group VI_1: %s", denied.value)
    log.info("END")
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"END", server.getsockname())
    reader.join(5)
    syslog = "\n".join(received)
    for out in (syslog, err.getvalue()):
        assert not [s for s in (KEY_ID, SECRET, SESSION_TOKEN, signature) if s in out]
        assert "Sending http request" in out and "[redacted]" in out
        [error] = [l for l in out.splitlines() if "group VI_1: An error occurred" in l]
        assert "group VI_1: An error occurred (UnauthorizedOperation) when calling the ReplaceRoute" in error
        assert error.endswith(f": {DENIAL}")


def test_plain_lines_compile_no_pattern():
    """The BACKUP path logs lines like these: no regular expression is compiled for them."""
    code = ("import sys; from aws_vrrp_notify import logsetup as l\n"
            "for t in ('group VI_1: BACKUP recorded', 'group VI_1: nothing to do', 'config cached'):\n"
            "    assert l.redact(t) == t\n"
            "print(l._redact_values is None)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "True", proc.stderr


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
