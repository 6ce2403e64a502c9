"""A small threaded HTTP proxy with injectable faults, put in front of moto or an IMDS.

::

    proxy = FaultProxy(cloud.url, ns=router.ns).start()     # listens on 127.0.0.1:<port> inside ns
    proxy.add_fault("throttle", first=2, actions={"AssignPrivateIpAddresses"})
    proxy.add_fault("reset", fraction=0.3, seed=7)
    run_tool(router, "master", "VI_1", config=..., env={"AWS_ENDPOINT_URL_EC2": proxy.url})
    proxy.counts            # Counter of Actions (or "PUT /latest/api/token", "GET /latest/...") seen
    proxy.injected          # Counter of (kind, action) faults injected
    proxy.close()

The client points its endpoint at the proxy (``proxy.url``, plus ``path_prefix`` when
given: requests elsewhere get 404, the prefix is removed upstream); ``date_skew`` moves
the ``Date`` of every answer by that many seconds (a server clock that is off); the proxy forwards
to ``upstream`` (an ``http://127.0.0.1:<port>`` URL of this process's moto or
IMDS) from this process.  Fault kinds:

* ``throttle``: HTTP 503 with EC2's ``RequestLimitExceeded`` XML error body
* ``error500``: HTTP 500 with EC2's ``InternalError`` XML error body
* ``unavailable``: HTTP 503 with ``Unavailable`` (EC2's other 5xx code)
* ``denied``: HTTP 403 with ``UnauthorizedOperation`` (IAM says no), with the text EC2
  really sends, built from the request (:func:`denial_message`): the principal
  (``principal=``, an assumed-role ARN), the action, the resource ARN and an encoded
  authorization failure message
* ``status``: HTTP ``status`` with an empty body (e.g. 401/404 for an IMDS)
* ``reset``: the connection is reset (RST) without any response
* ``delay``: wait ``delay`` seconds, then forward normally
* ``drop``: the request is forwarded to the upstream, then the connection is
  reset instead of returning the answer (the write happened, the client does
  not know)
* ``ignore-dryrun``: the request is forwarded without its ``DryRun`` parameter,
  as an endpoint that ignores DryRun would carry it out
* ``prior-request``: Route 53's ``PriorRequestNotComplete`` (HTTP 400)

Route 53 requests (REST, under ``/2013-04-01/``) are named by their API action
(``ChangeResourceRecordSets``, ...; aws_vrrp_notify/lab/route53_api.py) and get Route 53's
error documents: ``throttle`` is ``Throttling`` (HTTP 400), ``denied`` is ``AccessDenied``
(HTTP 403) naming the hosted zone.

A rule applies to requests that match it (``actions``: EC2 Action names;
``paths``: path prefixes; ``methods``); it fires for the first ``first``
matching requests, or for each matching request with probability ``fraction``
(``random.Random(seed)``), or for every matching request when neither is given.
Rules are tried in the order they were added; the first that fires wins.
"""

from __future__ import annotations

import base64
import collections
import http.client
import os
import re
import random
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aws_vrrp_notify.lab.ec2_xml import error_body as ec2_error_body

__all__ = ["FaultProxy", "Rule", "ec2_error_body", "denial_message", "KINDS", "DEFAULT_PRINCIPAL"]

KINDS = ("throttle", "error500", "unavailable", "denied", "status", "reset", "delay", "drop", "ignore-dryrun",
         "prior-request")

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length"}


_CANNED = {
    "throttle": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "error500": (500, "InternalError", "An internal error has occurred"),
    "unavailable": (503, "Unavailable", "The server is overloaded and can't handle the request."),
}
_CANNED_ROUTE53 = {
    "throttle": (400, "Throttling", "Rate exceeded"),
    "error500": (500, "InternalFailure", "An internal error has occurred"),
    "unavailable": (503, "ServiceUnavailable", "Service Unavailable"),
    "prior-request": (400, "PriorRequestNotComplete",
                      "The request was rejected because Route 53 was still processing a prior request."),
}
ROUTE53_PATH = "/2013-04-01/"

DEFAULT_PRINCIPAL = "arn:aws:sts::123456789012:assumed-role/vrrp-failover/i-0123456789abcdef0"
DEFAULT_REGION = "eu-west-3"
# request parameter -> EC2 resource type, in the order EC2 names the denied resource
_RESOURCE_PARAMS = (("RouteTableId", "route-table"), ("AllocationId", "elastic-ip"),
                    ("NetworkInterfaceId", "network-interface"), ("InstanceId", "instance"), ("SubnetId", "subnet"))
_SCOPE_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


def route53_denial_message(action: str, params: dict, principal: str = DEFAULT_PRINCIPAL) -> str:
    """Route 53's AccessDenied text: who, which action, on which hosted zone."""
    resource = f"arn:aws:route53:::hostedzone/{params.get('HostedZoneId', '*')}"
    return (f"User: {principal} is not authorized to perform: route53:{action} on resource: {resource} "
            f"because no identity-based policy allows the route53:{action} action")


def denial_message(action: str, params: dict, principal: str = DEFAULT_PRINCIPAL, region: str = DEFAULT_REGION) -> str:
    """EC2's UnauthorizedOperation text for ``action``: who, what, on which resource, and an
    encoded authorization failure message (describe calls, which have no resource-level
    permissions, get neither resource nor encoded message)."""
    account = principal.split(":")[4]
    head = (f"You are not authorized to perform this operation. User: {principal} "
            f"is not authorized to perform: ec2:{action}")
    because = f"because no identity-based policy allows the ec2:{action} action"
    if action.startswith("Describe"):
        return f"{head} {because}"
    resource = next((f"arn:aws:ec2:{region}:{account}:{kind}/{params[name]}"
                     for name, kind in _RESOURCE_PARAMS if params.get(name)), f"arn:aws:ec2:{region}:{account}:*")
    encoded = base64.urlsafe_b64encode(os.urandom(720)).decode().rstrip("=")
    return f"{head} on resource: {resource} {because}. Encoded authorization failure message: {encoded}"


@dataclass
class Rule:
    kind: str
    first: int | None = None
    fraction: float | None = None
    actions: frozenset | None = None
    paths: tuple = ()
    methods: frozenset | None = None
    delay: float = 0.0
    status: int = 503
    seed: int = 0
    matched: int = 0
    fired: int = 0
    rng: random.Random = field(default=None, repr=False)

    def matches(self, method: str, path: str, action: str | None) -> bool:
        if self.actions is not None and action not in self.actions:
            return False
        if self.paths and not any(path.startswith(p) for p in self.paths):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return True

    def fires(self) -> bool:
        """Called with the proxy lock held, for a matching request."""
        self.matched += 1
        if self.first is not None:
            ok = self.matched <= self.first
        elif self.fraction is not None:
            ok = self.rng.random() < self.fraction
        else:
            ok = True
        if ok:
            self.fired += 1
        return ok


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *a, **kw):
        self.reset_requests: set = set()
        super().__init__(*a, **kw)

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def shutdown_request(self, request):
        if id(request) in self.reset_requests:
            self.reset_requests.discard(id(request))
            request.close()
            return
        super().shutdown_request(request)


class FaultProxy:
    def __init__(self, upstream: str, *, ns: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 upstream_timeout: float = 60.0, label: str | None = None, principal: str = DEFAULT_PRINCIPAL,
                 path_prefix: str = "", date_skew: float = 0.0):
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("upstream must be an http://127.0.0.1:<port> URL of this process")
        self.upstream = (u.hostname, u.port or 80)
        self.ns, self.host, self.port = ns, host, port
        self.upstream_timeout = upstream_timeout
        self.label = label  # sent upstream as X-Avn-Listener (Cloud.count_actions(listener=...))
        self.principal = principal  # who "denied" says was refused
        self.path_prefix = path_prefix  # served under this path (an endpoint URL with a path); removed upstream
        self.date_skew = date_skew  # seconds added to the Date header of every answer
        self.rules: list[Rule] = []
        self.seen: list[tuple[str, str, str | None]] = []   # (method, path, action)
        self.counts: collections.Counter = collections.Counter()
        self.injected: collections.Counter = collections.Counter()
        self.forwarded = 0  # requests received in absolute form (the proxy used as HTTP_PROXY)
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._srv = None
        self._thread = None
        self.url: str | None = None

    # -------------------------------------------------------------- configuration
    def add_fault(self, kind: str, *, first: int | None = None, fraction: float | None = None,
                  actions=None, paths=(), methods=None, delay: float = 0.0, status: int = 503,
                  seed: int = 0) -> Rule:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS}")
        if first is not None and fraction is not None:
            raise ValueError("give first= or fraction=, not both")
        if isinstance(actions, str):
            actions = {actions}
        if isinstance(paths, str):
            paths = (paths,)
        if isinstance(methods, str):
            methods = {methods}
        rule = Rule(kind, first, fraction, frozenset(actions) if actions is not None else None, tuple(paths),
                    frozenset(m.upper() for m in methods) if methods is not None else None,
                    delay, status, seed, rng=random.Random(seed))
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear_faults(self) -> None:
        with self.lock:
            self.rules.clear()

    def reset_counts(self) -> None:
        with self.lock:
            self.seen.clear()
            self.counts.clear()
            self.injected.clear()

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.seen)

    # -------------------------------------------------------------- serving
    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls

            def log_message(self, *a):
                pass

            def date_time_string(self, timestamp=None):
                # the proxy answers with its own Date (the upstream's is dropped): skewed on request
                return super().date_time_string((timestamp or time.time()) + proxy.date_skew)

            def _reset(self):
                # SO_LINGER 0 + close = RST; the server skips its usual shutdown(SHUT_WR) (a FIN)
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                self.close_connection = True
                self.server.reset_requests.add(id(self.connection))

            def _reply(self, status: int, body: bytes, headers=(), ctype="text/xml;charset=UTF-8"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except OSError:  # the client gave up (timeout): nothing to do
                        self.close_connection = True

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                params = {}
                if body and "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                    params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
                action = params.get("Action")
                path = self.path
                if path.startswith(("http://", "https://")):  # used as a forward proxy (HTTP_PROXY)
                    path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
                    with proxy.lock:
                        proxy.forwarded += 1
                route53 = action is None and path.startswith(ROUTE53_PATH)
                if route53:
                    from aws_vrrp_notify.lab.route53_api import parse_request

                    bare, _, query = path.partition("?")
                    action, params = parse_request(self.command, bare, query, body)
                key = action or f"{self.command} {path.split('?', 1)[0]}"
                fault = None
                with proxy.lock:
                    proxy.seen.append((self.command, path, action))
                    proxy.counts[key] += 1
                    for rule in proxy.rules:
                        if rule.matches(self.command, path, action) and rule.fires():
                            fault = rule
                            proxy.injected[(rule.kind, key)] += 1
                            break
                if fault is not None:
                    if fault.kind == "reset":
                        return self._reset()
                    if route53 and (fault.kind == "denied" or fault.kind in _CANNED_ROUTE53):
                        from aws_vrrp_notify.lab.route53_api import error_body

                        if fault.kind == "denied":
                            message = route53_denial_message(action or "Unknown", params, proxy.principal)
                            return self._reply(403, error_body("AccessDenied", message))
                        status, code, msg = _CANNED_ROUTE53[fault.kind]
                        return self._reply(status, error_body(code, msg))
                    if fault.kind == "denied":
                        return self._reply(403, ec2_error_body("UnauthorizedOperation", self._denial(action, params)))
                    if fault.kind in _CANNED:
                        status, code, msg = _CANNED[fault.kind]
                        return self._reply(status, ec2_error_body(code, msg))
                    if fault.kind == "status":
                        return self._reply(fault.status, b"", ctype="text/plain")
                    if fault.kind == "delay" and proxy.closing.wait(fault.delay):
                        return self._reset()  # closed meanwhile: this request must not reach a later test
                    if fault.kind == "ignore-dryrun" and action:
                        form = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
                        body = urllib.parse.urlencode([(k, v) for k, v in form if k != "DryRun"]).encode()
                try:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.upstream_timeout)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if proxy.label:
                        headers["X-Avn-Listener"] = proxy.label
                    if proxy.path_prefix:
                        if not (path + "/").startswith(proxy.path_prefix + "/"):
                            return self._reply(404, b"not under " + proxy.path_prefix.encode(), ctype="text/plain")
                        path = path[len(proxy.path_prefix):] or "/"
                    conn.request(self.command, path, body=body if body or n else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    rheaders = [(k, v) for k, v in resp.getheaders()
                                if k.lower() not in _HOP and k.lower() not in ("content-type", "date", "server")]
                    ctype = resp.getheader("Content-Type", "text/plain")
                    status = resp.status
                    conn.close()
                except OSError:
                    return self._reset()
                if fault is not None and fault.kind == "drop":
                    return self._reset()
                self._reply(status, data, rheaders, ctype=ctype)

            def _denial(self, action, params) -> str:
                scope = _SCOPE_REGION.search(self.headers.get("Authorization") or "")
                return denial_message(action or "Unknown", params, proxy.principal,
                                      scope.group(1) if scope else DEFAULT_REGION)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        if self.ns is not None:
            from aws_vrrp_notify.lab.netns import listen

            sock = listen(self.ns, self.host, self.port)
            srv = _Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
            srv.socket.close()
            srv.socket = sock
            srv.server_address = sock.getsockname()[:2]
        else:
            if self.host != "127.0.0.1":
                raise ValueError("in the root namespace the proxy listens on 127.0.0.1 only")
            srv = _Server((self.host, self.port), Handler)
        self._srv = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        h, p = srv.server_address[:2]
        self.url = f"http://{h}:{p}"
        return self

    def close(self) -> None:
        self.closing.set()  # requests still held by a "delay" are dropped, never forwarded
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._thread.join(timeout=2)
            self._srv = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
