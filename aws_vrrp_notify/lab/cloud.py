"""A simulated AWS region in this process: moto (with :mod:`moto_fixes`) plus fake IMDSv2s.

::

    cloud = Cloud().start()                  # moto on 127.0.0.1:<ephemeral>
    topo = cloud.build_topology()            # VPC, subnets, route tables, r1/r2, EIP
    url = cloud.serve_moto_in("ns-r1")       # same moto, listening on 127.0.0.1:<p> inside a netns
    imds_url = cloud.serve_imds_in("ns-r1", "r1")
    cloud.count_actions()                    # Counter({'AssignPrivateIpAddresses': 1, ...})
    cloud.reset_state()                      # back to the topology baseline, counters cleared
    cloud.close()

Every listener serves the same in-memory moto.  Requests are recorded twice:
moto's own recorder (``/moto-api/recorder/*`` endpoints, file in a private
temporary directory) and an in-memory log of parsed EC2 query requests, which
:meth:`Cloud.count_actions` reads.  Requests made by the harness itself (the
``Cloud.ec2`` client; its User-Agent carries :data:`HARNESS_UA`) are left out of
the counts unless asked for; ``cloud.client(tool=True)`` makes a client whose calls
are treated as the tool's.  moto's recorder sees a lagged write when it lands and
never sees a throttled call; the in-memory log sees both when they are made.

EC2's eventual consistency (:mod:`.consistency`, docs/lab.md)::

    cloud.set_lag("ip-2-rest-0.1")           # or seconds, or {"AssignPrivateIpAddresses": 2.0, "*": 0.1}
    cloud.set_lag(default=0.5, stale_reads=0.3)
    cloud.settle()                           # every accepted write has landed in moto
    cloud.clear_lag()

and its request throttling (:mod:`.throttle`): ``cloud.set_throttle(True)``,
``cloud.throttled`` (a Counter of RequestLimitExceeded answers per Action).  Each
:class:`Request` records the access key and session token that signed it.

Route 53 is served by the same moto (it picks the service from the SigV4 credential
scope): the topology has a private hosted zone for the VPC (``topology.zone_id``,
``topology.zone_name``), ``cloud.route53`` is the harness's client and
``cloud.dns_values(name)`` reads a record.  Route 53 requests are recorded, counted,
throttled (5 requests/s) and lagged (``ChangeResourceRecordSets``) under the action
names of its API (:mod:`.route53_api`).
"""

from __future__ import annotations

import collections
import functools
import http
import ipaddress
import io
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from . import moto_fixes, route53_api
from .consistency import Consistency, LagSpec, PendingWrite, FailedWrite, parse_lag
from .ec2_writes import Rejected
from .imds import IMDS, DEFAULT_ACCOUNT
from .route53_sync import Propagation
from .stale_reads import StaleReads, question_of
from .throttle import Throttle, throttled_answer

__all__ = ["Cloud", "Topology", "InstanceInfo", "Request", "HARNESS_UA", "LAB_TABLE_TAG"]

HARNESS_UA = "avn-lab-harness"
LAB_TABLE_TAG = "ha-group=VI_1"   # the tag of the route tables of the client subnets
# Subnets beyond lan/wan/implicit: clients in two Availability Zones, and the two zones of the
# multi-AZ pair (instances "ra" and "rb").
MORE_SUBNETS = {"client-a": "10.0.10.0/24", "client-b": "10.0.11.0/24", "az-a": "10.0.20.0/24",
                "az-b": "10.0.21.0/24"}
LAB_ZONE = "lab.internal"        # the private hosted zone of the lab VPC
FAKE_AMI = "ami-0a1b2c3d4e5f60718"


@dataclass
class InstanceInfo:
    name: str
    instance_id: str
    enis: dict[int, str]            # device index -> ENI id
    macs: dict[int, str]            # device index -> MAC
    private_ips: dict[int, str]     # device index -> primary private IPv4
    subnets: dict[int, str]         # device index -> subnet id
    ipv6s: dict[int, list[str]] = field(default_factory=dict)

    def eni(self, index: int = 0) -> str:
        return self.enis[index]

    def mac(self, index: int = 0) -> str:
        return self.macs[index]


@dataclass
class Topology:
    region: str
    az: str
    account_id: str
    vpc: str
    vpc_cidr: str
    vpc_ipv6_cidr: str
    igw: str
    subnets: dict[str, str]          # "lan" | "wan" | "implicit" | MORE_SUBNETS keys -> subnet id
    subnet_cidrs: dict[str, str]     # same keys -> IPv4 CIDR
    subnet_ipv6_cidrs: dict[str, str]
    route_tables: dict[str, str]     # "lan" | "wan" | "client-a" | "client-b" | "main" -> rtb id
                                     # ("implicit", "az-a" and "az-b" use "main")
    instances: dict[str, InstanceInfo]   # "r1" | "r2"
    eip_alloc: str
    eip_public_ip: str
    prefix_list: str = ""            # a managed prefix list (IPv4) for change-route destinations
    route_table_tag: str = ""        # "Key=Value" carried by the tables of tagged_route_tables
    tagged_route_tables: list[str] = field(default_factory=list)   # sorted rtb ids ("client-a", "client-b")
    zone_id: str = ""                # Route 53 private hosted zone of the VPC
    zone_name: str = ""              # its name, without the final dot

    def rtb_for(self, subnet_key: str) -> str:
        return self.route_tables.get(subnet_key, self.route_tables["main"])

    def vip6(self, subnet_key: str = "lan") -> str:
        """An IPv6 virtual IP for tests and the demo: ::100 of the subnet's IPv6 CIDR (no ENI
        holds it in the baseline)."""
        return str(ipaddress.ip_network(self.subnet_ipv6_cidrs[subnet_key])[0x100])

    def as_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


@dataclass
class Request:
    """One request seen by moto (harness requests included, flagged)."""
    listener: str           # label of the listener ("root", or the namespace name)
    action: str | None      # EC2 Action, None for non-query requests (moto-api, ...)
    params: dict[str, str]  # form parameters (first value of each)
    harness: bool
    time: float
    access_key: str | None = None      # the access key id of the SigV4 Authorization header
    session_token: str | None = None   # its X-Amz-Security-Token header
    throttled: bool = False            # answered RequestLimitExceeded (Cloud.set_throttle)
    service: str | None = None         # the service of the SigV4 credential scope ("ec2", "route53", ...)


class _QuietHandler:
    """Factory for moto's request handler without the per-request access log."""

    _cls = None

    @classmethod
    def get(cls):
        if cls._cls is None:
            from moto.moto_server.werkzeug_app import MotoRequestHandler

            class Quiet(MotoRequestHandler):
                def log_request(self, *a, **k):
                    pass

            cls._cls = Quiet
        return cls._cls


# (HTTP status, headers, body) of an answer
Answer = tuple[int, list, bytes]


class _RecordingApp:
    def __init__(self, cloud: "Cloud", label: str):
        self.cloud = cloud
        self.label = label

    def __call__(self, environ, start_response):
        cloud = self.cloud
        host = environ.get("HTTP_HOST", "")
        if ".vpce.amazonaws.com" in host:
            # an interface VPC endpoint's name (vpce-....ec2.REGION.vpce.amazonaws.com): moto
            # takes the region from the Host, and knows only the regional endpoint's form
            environ["HTTP_HOST"] = f"ec2.{cloud.region}.amazonaws.com"
        body = _read_body(environ)
        service = _service(environ)
        params = _form_params(environ, body)
        action = params.get("Action")
        if service == "route53":
            action, params = route53_api.parse_request(environ.get("REQUEST_METHOD", "GET"),
                                                       environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                                                       body)
        harness = HARNESS_UA in environ.get("HTTP_USER_AGENT", "")
        label = environ.get("HTTP_X_AVN_LISTENER") or self.label  # set by tests' fault proxy
        req = Request(label, action, params, harness, time.time(), *_signer(environ), service=service)
        if not harness and req.action and service in (None, "ec2", "route53"):
            req.throttled = not cloud._admitted(req.action, service or "ec2")
        with cloud._lock:
            cloud.requests.append(req)
        if req.throttled:
            status, answer = throttled_answer(service or "ec2")
            return _respond(start_response, (status, [], answer))
        hook = cloud.request_hook
        if hook is not None and not harness:
            hook(req)
        answer = None if harness else cloud._lab_answer(req, environ, body)
        if answer is not None:
            return _respond(start_response, answer)
        return cloud._app(environ, start_response)


def _read_body(environ) -> bytes:
    try:
        n = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        n = 0
    body = environ["wsgi.input"].read(n) if n else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _form_params(environ, body: bytes) -> dict[str, str]:
    if body and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        query = body.decode("utf-8", "replace")
    else:
        query = environ.get("QUERY_STRING") or ""
    return {k: v[0] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}


_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_SCOPE_SERVICE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/")


def _signer(environ) -> tuple[str | None, str | None]:
    """(access key id, session token) of a SigV4-signed request."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    return (match.group(1) if match else None), environ.get("HTTP_X_AMZ_SECURITY_TOKEN")


def _service(environ) -> str | None:
    """The service a SigV4-signed request was signed for ("ec2", "sts", ...)."""
    match = _SCOPE_SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1) if match else None


def _respond(start_response, answer: Answer):
    status, headers, body = answer
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-type")]
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "text/xml;charset=UTF-8")
    start_response(f"{status} {http.HTTPStatus(status).phrase}",
                   kept + [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _call_wsgi(app, environ) -> Answer:
    """Run a WSGI app to completion; its answer."""
    started = []

    def start_response(status, headers, exc_info=None):
        started.append((int(status.split()[0]), list(headers)))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started[0][0], started[0][1], body


def _replayable(environ) -> dict:
    """The plain parts of a WSGI environ (headers, method, path), to send the request again later."""
    return {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple)) and not k.startswith("werkzeug.")}


def _replay(app, environ: dict, body: bytes) -> tuple[int, bytes]:
    import sys

    env = dict(environ, **{"wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
                           "CONTENT_LENGTH": str(len(body))})
    status, _, data = _call_wsgi(app, env)
    return status, data


class Cloud:
    """moto + fake IMDSs hosted in this process.  See the module docstring."""

    def __init__(self, region: str = "eu-west-3", *, account_id: str = DEFAULT_ACCOUNT,
                 load_default_amis: bool = False):
        self.load_default_amis = load_default_amis
        self.region = region
        self.az = region + "a"
        self.account_id = account_id
        self.requests: list[Request] = []
        self.request_hook = None       # callable(Request), called before moto handles a tool request
        self.topology: Topology | None = None
        self.url: str | None = None
        self._lock = threading.Lock()
        self._servers: list[tuple[object, threading.Thread, str]] = []
        self._imds: dict[str, IMDS] = {}
        self._root_imds: dict[str, str] = {}
        self._app = None
        self._tmp = None
        self._ec2 = None
        self._baseline: dict | None = None
        self._consistency = Consistency(lambda: self.backend, lambda: self.route53_backend)
        self._route53 = None
        self._stale_reads: StaleReads | None = None
        self._throttle: Throttle | None = None
        self._propagation: Propagation | None = None
        self.throttled: collections.Counter = collections.Counter()   # RequestLimitExceeded answers per Action

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Cloud":
        if not self.load_default_amis:
            # moto reads this when it creates a region's backend: skipping its ~1300 AMIs
            # saves about a second; the topology uses a fake AMI id anyway.
            os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from moto.moto_api import recorder

        moto_fixes.apply()
        self._app = DomainDispatcherApplication(create_backend_app)
        self._tmp = tempfile.mkdtemp(prefix="avn-cloud-")
        recorder._location = os.path.join(self._tmp, "moto_recording.jsonl")
        recorder.reset_recording()
        recorder.start_recording()
        host, port = self._serve(None, "127.0.0.1", 0, "root")
        self.url = f"http://{host}:{port}"
        return self

    def close(self) -> None:
        self._consistency.close()
        for imds in self._imds.values():
            imds.close()
        self._imds.clear()
        self._root_imds.clear()
        for srv, t, _ in self._servers:
            srv.shutdown()
            srv.server_close()
            t.join(timeout=2)
        self._servers.clear()
        try:
            from moto.moto_api import recorder

            recorder.stop_recording()
        except Exception:
            pass
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _serve(self, ns, host, port, label):
        from werkzeug.serving import make_server
        from .netns import listen

        app = _RecordingApp(self, label)
        if ns is None and host in ("127.0.0.1", "::1"):
            srv = make_server(host, port, app, threaded=True, request_handler=_QuietHandler.get())
        else:
            sock = listen(ns, host, port)
            try:
                srv = make_server(host, sock.getsockname()[1], app, threaded=True,
                                  request_handler=_QuietHandler.get(), fd=sock.fileno())
            finally:
                sock.close()  # werkzeug dup()ed it
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                             name=f"moto-{label}", daemon=True)
        t.start()
        self._servers.append((srv, t, label))
        return srv.server_address[0], srv.server_address[1]

    def serve_moto_in(self, ns: str, host: str = "127.0.0.1", port: int = 0, *, label: str | None = None) -> str:
        """Also serve moto inside network namespace ``ns``; returns the URL valid inside it."""
        h, p = self._serve(ns, host, port, label or ns)
        return f"http://{h}:{p}"

    # ------------------------------------------------------------------ IMDS
    def imds(self, instance: str) -> IMDS:
        """The (cached) fake IMDS of an instance, by topology name ("r1") or instance id."""
        iid = self._instance_id(instance)
        if iid not in self._imds:
            self._imds[iid] = IMDS(iid, region=self.region, account_id=self.account_id)
        return self._imds[iid]

    def serve_imds(self, instance: str) -> str:
        """Serve an instance's IMDS on 127.0.0.1 of this process's namespace (once; cached).

        Returns its URL (with a trailing /)."""
        iid = self._instance_id(instance)
        if iid not in self._root_imds:
            h, p = self.imds(instance).serve(("127.0.0.1", 0))
            self._root_imds[iid] = f"http://{h}:{p}/"
        return self._root_imds[iid]

    def serve_imds_in(self, ns: str, instance: str, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve an instance's IMDS inside network namespace ``ns``; returns the URL valid inside it."""
        from .netns import listen

        h, p = self.imds(instance).serve(listen(ns, host, port))
        return f"http://{h}:{p}/" if p != 80 else f"http://{h}/"

    def _instance_id(self, instance: str) -> str:
        if self.topology and instance in self.topology.instances:
            return self.topology.instances[instance].instance_id
        return instance

    # ------------------------------------------------------------------ clients
    def client(self, service: str = "ec2", *, tool: bool = False, **kw):
        """A boto3 client of this cloud: the harness's own, or (``tool=True``) one whose calls
        are treated as the tool's (counted, lagged, throttled)."""
        import boto3
        from botocore.config import Config

        cfg = Config(user_agent_extra=None if tool else HARNESS_UA,
                     retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        return boto3.session.Session().client(
            service, endpoint_url=self.url, region_name=self.region,
            aws_access_key_id="testing", aws_secret_access_key="testing", config=cfg, **kw)

    @property
    def ec2(self):
        """boto3 EC2 client of the harness (its calls are not counted by count_actions)."""
        if self._ec2 is None:
            self._ec2 = self.client("ec2")
        return self._ec2

    @property
    def backend(self):
        from moto.ec2.models import ec2_backends

        return ec2_backends[self.account_id][self.region]

    @property
    def route53(self):
        """boto3 Route 53 client of the harness (not counted, never lagged or throttled)."""
        if self._route53 is None:
            self._route53 = self.client("route53")
        return self._route53

    @property
    def route53_backend(self):
        from moto.route53.models import route53_backends

        return route53_backends[self.account_id]["aws"]

    # ------------------------------------------------------------------ consistency
    def set_lag(self, lags: LagSpec = None, *, default: float | None = None, stale_reads: float = 0.0,
                seed: int | None = None) -> dict[str, float]:
        """Lag the tool's writes like EC2 (see :mod:`.consistency`); returns the lag per action.

        ``lags``: a profile name of :data:`.consistency.PROFILES`, seconds, or a mapping of
        Action (``"*"``: every other laggable action) to seconds; ``default`` sets ``"*"``.
        ``stale_reads``: the probability that a describe call of the tool is answered with an
        earlier answer to the same call from the last (longest lag) seconds (:mod:`.stale_reads`)."""
        parsed = parse_lag(lags)
        if default is not None:
            parsed.update(parse_lag(default))
        self._consistency.set(parsed)
        window = max(parsed.values(), default=0.0)
        self._stale_reads = StaleReads(stale_reads, window, seed) if stale_reads and window else None
        return parsed

    def clear_lag(self) -> None:
        """New writes are applied at once again (writes already accepted still land on time)."""
        self._consistency.set({})
        self._stale_reads = None

    @property
    def lag(self) -> dict[str, float]:
        """The lag per action in force (empty: none)."""
        return dict(self._consistency.lags)

    def settle(self, timeout: float | None = None) -> None:
        """Block until every accepted write has landed in moto (TimeoutError otherwise)."""
        self._consistency.settle(timeout)

    def discard_pending(self) -> list[PendingWrite]:
        """Drop the writes accepted and not landed yet (they never reach moto); returns them."""
        return self._consistency.discard()

    def pending_writes(self) -> list[PendingWrite]:
        """Writes accepted and not landed yet, in acceptance order."""
        return self._consistency.pending()

    def landed_writes(self) -> list[tuple[float, PendingWrite]]:
        """(time.monotonic() of landing, write) of the lagged writes landed so far, in landing order."""
        return self._consistency.landings()

    def failed_writes(self) -> list[FailedWrite]:
        """Lagged writes that moto refused when they landed (after EC2 had answered success)."""
        return self._consistency.failed()

    @property
    def stale_reads_served(self) -> int:
        return self._stale_reads.served if self._stale_reads else 0

    def set_route53_sync(self, seconds: float | None) -> None:
        """Answer the tool's Route 53 changes PENDING, and GetChange INSYNC only ``seconds``
        later (:mod:`.route53_sync`); None or 0: moto's INSYNC at once again."""
        self._propagation = Propagation(seconds) if seconds else None

    def _lab_answer(self, req: Request, environ, body: bytes) -> Answer | None:
        """The answer to a tool request when the lab, not moto at once, gives it."""
        propagation = self._propagation
        if propagation is not None and req.action == "GetChange":
            answer = propagation.get_change(req.params.get("Id", ""))
            if answer is not None:
                return answer
        if self._consistency.applies_to(req.action, req.params):
            replay = functools.partial(_replay, self._app, _replayable(environ), body)
            try:
                write = self._consistency.accept(req.action, req.params, replay)
            except Rejected as rejected:
                return rejected.status, [], rejected.body()
            return 200, [], write.acceptance.body
        if propagation is not None and req.action == "ChangeResourceRecordSets":
            return propagation.changed(_call_wsgi(self._app, environ))
        stale = self._stale_reads
        if stale is not None and req.action and req.action.startswith("Describe"):
            return stale.answer(question_of(req.action, req.params), _call_wsgi(self._app, environ))
        return None

    # ------------------------------------------------------------------ throttling
    def set_throttle(self, enabled: bool = True, buckets: dict | None = None) -> None:
        """Throttle the tool's calls with EC2's token buckets (:mod:`.throttle`); ``buckets``
        overrides sizes, e.g. ``{"mutating": (50, 5.0)}``.  Fresh (full) buckets each call."""
        self._throttle = Throttle(buckets) if enabled else None

    def _admitted(self, action: str, service: str = "ec2") -> bool:
        throttle = self._throttle
        if throttle is None or throttle.take(action, service):
            return True
        with self._lock:
            self.throttled[action] += 1
        return False

    # ------------------------------------------------------------------ counting
    def count_actions(self, *, listener: str | None = None, include_harness: bool = False) -> collections.Counter:
        """EC2 calls per Action since the last reset_counts() (tool calls only by default).

        A lagged write counts from the moment it is accepted; a throttled call counts too
        (it was made: see ``throttled`` for how many were refused).

        ``listener`` restricts to one listener: "root" or a namespace name given
        to serve_moto_in (i.e. which router made the call)."""
        with self._lock:
            reqs = list(self.requests)
        return collections.Counter(
            r.action for r in reqs
            if r.action and (include_harness or not r.harness) and (listener is None or r.listener == listener))

    def calls(self, action: str | None = None, *, listener: str | None = None,
              include_harness: bool = False) -> list[Request]:
        """Recorded requests (with their parameters), optionally filtered."""
        with self._lock:
            reqs = list(self.requests)
        return [r for r in reqs if (action is None or r.action == action)
                and (include_harness or not r.harness) and (listener is None or r.listener == listener)]

    def reset_counts(self) -> None:
        from moto.moto_api import recorder

        with self._lock:
            self.requests.clear()
            self.throttled.clear()
        try:
            recorder.reset_recording()
        except OSError:
            pass
        for imds in self._imds.values():
            with imds.lock:
                imds.log.clear()

    def recorded_actions(self) -> collections.Counter:
        """Same count from moto's own recorder file (every request, harness included)."""
        import base64
        import json
        from moto.moto_api import recorder

        c = collections.Counter()
        for line in recorder.download_recording().splitlines():
            e = json.loads(line)
            b = e.get("body") or ""
            if e.get("body_encoded"):
                b = base64.b64decode(b).decode("utf-8", "replace")
            a = urllib.parse.parse_qs(b).get("Action")
            if a:
                c[a[0]] += 1
        return c

    # ------------------------------------------------------------------ topology
    def build_topology(self) -> Topology:
        """Create the standard lab topology (once; later calls return it)."""
        if self.topology is not None:
            return self.topology
        ec2 = self.ec2
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]
        vpc_id = vpc["VpcId"]
        v6 = ipaddress.ip_network(vpc["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"])
        v6_subnets = list(v6.subnets(new_prefix=64)) if v6.prefixlen <= 64 else []
        ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "Name", "Value": "lab"}])
        igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
        cidrs = {"lan": "10.0.1.0/24", "wan": "10.0.2.0/24", "implicit": "10.0.3.0/24"}
        subnets, v6cidrs = {}, {}
        for i, (key, cidr) in enumerate(cidrs.items(), start=1):
            kw = {}
            if v6_subnets:
                kw["Ipv6CidrBlock"] = str(v6_subnets[i])
                v6cidrs[key] = str(v6_subnets[i])
            subnets[key] = ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=self.az,
                                             TagSpecifications=[{"ResourceType": "subnet",
                                                                 "Tags": [{"Key": "Name", "Value": key}]}],
                                             **kw)["Subnet"]["SubnetId"]
        main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]},
                                                  {"Name": "association.main", "Values": ["true"]}]
                                         )["RouteTables"][0]["RouteTableId"]
        rtbs = {"main": main}
        for key in ("lan", "wan"):
            rtb = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
            ec2.associate_route_table(RouteTableId=rtb, SubnetId=subnets[key])
            rtbs[key] = rtb
        instances = {}
        for n, name in enumerate(("r1", "r2"), start=1):
            ips = {0: f"10.0.1.1{n}", 1: f"10.0.2.1{n}", 2: f"10.0.1.2{n}"}
            subs = {0: subnets["lan"], 1: subnets["wan"], 2: subnets["lan"]}
            inst = ec2.run_instances(
                ImageId=FAKE_AMI, MinCount=1, MaxCount=1, InstanceType="c5n.xlarge",
                SubnetId=subnets["lan"], PrivateIpAddress=ips[0],
                TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
            )["Instances"][0]
            iid = inst["InstanceId"]
            enis = {0: inst["NetworkInterfaces"][0]["NetworkInterfaceId"]}
            macs = {0: inst["NetworkInterfaces"][0]["MacAddress"]}
            for idx in (1, 2):
                eni = ec2.create_network_interface(SubnetId=subs[idx], PrivateIpAddress=ips[idx],
                                                   Description=f"{name} device {idx}")["NetworkInterface"]
                ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"], InstanceId=iid,
                                             DeviceIndex=idx)
                enis[idx], macs[idx] = eni["NetworkInterfaceId"], eni["MacAddress"]
            ipv6s = {}
            for idx, eni in enis.items():
                ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, SourceDestCheck={"Value": False})
            if v6_subnets:
                for idx in (0, 1):
                    ipv6s[idx] = ec2.assign_ipv6_addresses(NetworkInterfaceId=enis[idx],
                                                           Ipv6AddressCount=1)["AssignedIpv6Addresses"]
            instances[name] = InstanceInfo(name, iid, enis, macs, ips, subs, ipv6s)
        eip = ec2.allocate_address(Domain="vpc")
        zone_id = self.route53.create_hosted_zone(
            Name=f"{LAB_ZONE}.", CallerReference=f"lab-{vpc_id}", VPC={"VPCRegion": self.region, "VPCId": vpc_id},
            HostedZoneConfig={"Comment": "lab", "PrivateZone": True})["HostedZone"]["Id"].rsplit("/", 1)[-1]
        extra = self._build_clients_and_zones(vpc_id, subnets, cidrs, rtbs, instances)
        self.topology = Topology(
            region=self.region, az=self.az, account_id=self.account_id, vpc=vpc_id, vpc_cidr="10.0.0.0/16",
            vpc_ipv6_cidr=str(v6), igw=igw, subnets=subnets, subnet_cidrs=cidrs, subnet_ipv6_cidrs=v6cidrs,
            route_tables=rtbs, instances=instances, eip_alloc=eip["AllocationId"], eip_public_ip=eip["PublicIp"],
            zone_id=zone_id, zone_name=LAB_ZONE, **extra)
        self._baseline = self._snapshot()
        return self.topology

    def _build_clients_and_zones(self, vpc_id: str, subnets: dict, cidrs: dict, rtbs: dict,
                                 instances: dict) -> dict:
        """Client subnets in two Availability Zones whose route tables carry LAB_TABLE_TAG, a
        managed prefix list, and the pair of docs/lab.md "Two Availability Zones": instance
        "ra" in subnet "az-a" and "rb" in "az-b" (one ENI each).  Adds to the given dicts;
        returns the Topology fields of its own."""
        ec2 = self.ec2
        zones = {"client-a": self.az, "client-b": self.az_b, "az-a": self.az, "az-b": self.az_b}
        for key, cidr in MORE_SUBNETS.items():
            cidrs[key] = cidr
            subnets[key] = ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zones[key],
                                             TagSpecifications=[{"ResourceType": "subnet",
                                                                 "Tags": [{"Key": "Name", "Value": key}]}]
                                             )["Subnet"]["SubnetId"]
        tag_key, tag_value = LAB_TABLE_TAG.split("=", 1)
        for key in ("client-a", "client-b"):
            tags = [{"Key": "Name", "Value": key}, {"Key": tag_key, "Value": tag_value}]
            rtbs[key] = ec2.create_route_table(VpcId=vpc_id, TagSpecifications=[
                {"ResourceType": "route-table", "Tags": tags}])["RouteTable"]["RouteTableId"]
            ec2.associate_route_table(RouteTableId=rtbs[key], SubnetId=subnets[key])
        for name, key, ip in (("ra", "az-a", "10.0.20.11"), ("rb", "az-b", "10.0.21.12")):
            inst = ec2.run_instances(
                ImageId=FAKE_AMI, MinCount=1, MaxCount=1, InstanceType="c5n.large", SubnetId=subnets[key],
                PrivateIpAddress=ip, Placement={"AvailabilityZone": zones[key]},
                TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
            )["Instances"][0]
            nic = inst["NetworkInterfaces"][0]
            ec2.modify_network_interface_attribute(NetworkInterfaceId=nic["NetworkInterfaceId"],
                                                   SourceDestCheck={"Value": False})
            instances[name] = InstanceInfo(name, inst["InstanceId"], {0: nic["NetworkInterfaceId"]},
                                           {0: nic["MacAddress"]}, {0: ip}, {0: subnets[key]})
        prefix_list = ec2.create_managed_prefix_list(
            PrefixListName="lab-clients", AddressFamily="IPv4", MaxEntries=4,
            Entries=[{"Cidr": "192.168.0.0/16", "Description": "clients behind the routers"}],
        )["PrefixList"]["PrefixListId"]
        return {"prefix_list": prefix_list, "route_table_tag": LAB_TABLE_TAG,
                "tagged_route_tables": sorted(rtbs[k] for k in ("client-a", "client-b"))}

    @property
    def az_b(self) -> str:
        """The region's second Availability Zone."""
        return self.region + "b"

    # ------------------------------------------------------------------ state
    def _snapshot(self) -> dict:
        t = self.topology
        ec2 = self.ec2
        enis, enis6, checks = {}, {}, {}
        for n in ec2.describe_network_interfaces(Filters=[{"Name": "vpc-id", "Values": [t.vpc]}])["NetworkInterfaces"]:
            enis[n["NetworkInterfaceId"]] = [p["PrivateIpAddress"] for p in n["PrivateIpAddresses"]]
            enis6[n["NetworkInterfaceId"]] = [a["Ipv6Address"] for a in n.get("Ipv6Addresses", [])]
            checks[n["NetworkInterfaceId"]] = n.get("SourceDestCheck")
        rtbs = {}
        for rt in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [t.vpc]}])["RouteTables"]:
            rtbs[rt["RouteTableId"]] = {
                "routes": {_dest(r): _target(r) for r in rt["Routes"]},
                "subnets": sorted(a["SubnetId"] for a in rt.get("Associations", []) if a.get("SubnetId")),
                "main": any(a.get("Main") for a in rt.get("Associations", [])),
            }
        eips = {a["AllocationId"]: (a.get("NetworkInterfaceId") or None, a.get("PrivateIpAddress") or None)
                for a in ec2.describe_addresses()["Addresses"] if a.get("AllocationId")}
        return {"enis": enis, "enis6": enis6, "rtbs": rtbs, "eips": eips, "source_dest_check": checks,
                "records": self._records()}

    def _records(self) -> dict:
        """(name, type) -> record set of the lab zone, its SOA and NS records left out."""
        if not self.topology or not self.topology.zone_id:
            return {}
        sets = self.route53.list_resource_record_sets(HostedZoneId=self.topology.zone_id,
                                                      MaxItems="300")["ResourceRecordSets"]
        return {(r["Name"], r["Type"]): r for r in sets if r["Type"] not in ("SOA", "NS")}

    def _reset_records(self, now: dict, base: dict) -> None:
        changes = [{"Action": "DELETE", "ResourceRecordSet": r} for key, r in now.items() if key not in base]
        changes += [{"Action": "UPSERT", "ResourceRecordSet": r} for key, r in base.items() if now.get(key) != r]
        if changes:
            self.route53.change_resource_record_sets(HostedZoneId=self.topology.zone_id,
                                                     ChangeBatch={"Changes": changes})

    def reset_state(self) -> None:
        """Undo what tests did to the topology (VIPs, routes, EIP associations, subnet
        associations, extra EIPs and route tables, source/destination checks), then clear counters and IMDS logs,
        tokens and overrides.  Only differences cost API calls.

        Writes accepted but not landed yet are dropped first; lag, stale reads, Route 53's
        propagation delay and throttling are turned off."""
        self.clear_lag()
        self._throttle = None
        self._propagation = None
        self.discard_pending()
        if self.topology is None:
            self.reset_counts()
            return
        base = self._baseline
        ec2 = self.ec2
        now = self._snapshot()
        # EIPs: disassociate / release everything that is not the baseline
        for alloc, assoc in now["eips"].items():
            if alloc not in base["eips"]:
                if assoc[0]:
                    ec2.disassociate_address(PublicIp=self._public_ip(alloc))
                ec2.release_address(AllocationId=alloc)
            elif assoc != base["eips"][alloc]:
                if assoc[0]:
                    ec2.disassociate_address(PublicIp=self._public_ip(alloc))
        # private IPs: remove secondaries first (so reassignment back never collides)
        for eni, ips in now["enis"].items():
            extra = [ip for ip in ips if ip not in base["enis"].get(eni, ips) and ip != ips[0]]
            if extra:
                ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=extra)
        for eni, ips in base["enis"].items():
            cur = now["enis"].get(eni)
            if cur is None:
                continue
            missing = [ip for ip in ips[1:] if ip not in cur]
            if missing:
                ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=missing,
                                                AllowReassignment=True)
        for eni, ips in now["enis6"].items():
            extra = [ip for ip in ips if ip not in base["enis6"].get(eni, [])]
            if extra:
                ec2.unassign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6Addresses=extra)
        for eni, ips in base["enis6"].items():
            missing = [ip for ip in ips if ip not in now["enis6"].get(eni, ips)]
            if missing:
                ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6Addresses=missing)
        for eni, check in base["source_dest_check"].items():  # a test may have turned it on
            if eni in now["source_dest_check"] and now["source_dest_check"][eni] != check:
                ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, SourceDestCheck={"Value": check})
        # route tables
        for rtb, cur in now["rtbs"].items():
            want = base["rtbs"].get(rtb)
            if want is None:  # created by a test
                for s in cur["subnets"]:
                    for a in ec2.describe_route_tables(RouteTableIds=[rtb])["RouteTables"][0]["Associations"]:
                        if a.get("SubnetId") == s:
                            ec2.disassociate_route_table(AssociationId=a["RouteTableAssociationId"])
                if not cur["main"]:
                    ec2.delete_route_table(RouteTableId=rtb)
                continue
            for dest, target in cur["routes"].items():
                if target == ("gateway", "local"):
                    continue
                if dest not in want["routes"]:
                    ec2.delete_route(RouteTableId=rtb, **_dest_kw(dest))
                elif want["routes"][dest] != target:
                    ec2.replace_route(RouteTableId=rtb, **_dest_kw(dest), **_target_kw(want["routes"][dest]))
            for dest, target in want["routes"].items():
                if dest not in cur["routes"]:
                    ec2.create_route(RouteTableId=rtb, **_dest_kw(dest), **_target_kw(target))
        # subnet associations
        assoc_of = {}
        for rt in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [self.topology.vpc]}])["RouteTables"]:
            for a in rt.get("Associations", []):
                if a.get("SubnetId"):
                    assoc_of[a["SubnetId"]] = (rt["RouteTableId"], a["RouteTableAssociationId"])
        want_assoc = {s: rtb for rtb, v in base["rtbs"].items() for s in v["subnets"]}
        for subnet in set(assoc_of) | set(want_assoc):
            cur = assoc_of.get(subnet)
            want = want_assoc.get(subnet)
            if cur and cur[0] == want:
                continue
            if cur:
                ec2.disassociate_route_table(AssociationId=cur[1])
            if want:
                ec2.associate_route_table(RouteTableId=want, SubnetId=subnet)
        self._reset_records(now["records"], base.get("records", {}))
        self.request_hook = None
        self.reset_counts()
        for imds in self._imds.values():
            imds.reset()

    def _public_ip(self, alloc: str) -> str:
        return self.ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["PublicIp"]

    # ------------------------------------------------------------------ assertions
    def eni_private_ips(self, eni: str) -> list[str]:
        """Private IPv4 addresses of an ENI, primary first."""
        n = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
        ips = n["PrivateIpAddresses"]
        return [p["PrivateIpAddress"] for p in ips if p.get("Primary")] + \
               [p["PrivateIpAddress"] for p in ips if not p.get("Primary")]

    def who_holds(self, ip: str) -> list[str]:
        """ENI ids (of the lab VPC) that hold private IPv4 ``ip``."""
        flt = [{"Name": "vpc-id", "Values": [self.topology.vpc]}] if self.topology else []
        return [n["NetworkInterfaceId"] for n in self.ec2.describe_network_interfaces(Filters=flt)["NetworkInterfaces"]
                if any(p["PrivateIpAddress"] == ip for p in n["PrivateIpAddresses"])]

    def route(self, rtb: str, dest: str) -> dict | None:
        """The route of ``rtb`` for destination ``dest`` (IPv4 or IPv6 prefix, or prefix list id), or None."""
        rt = self.ec2.describe_route_tables(RouteTableIds=[rtb])["RouteTables"][0]
        if dest.startswith("pl-"):
            return next((r for r in rt["Routes"] if r.get("DestinationPrefixListId") == dest), None)
        want = ipaddress.ip_network(dest, strict=False)
        for r in rt["Routes"]:
            d = r.get("DestinationCidrBlock") or r.get("DestinationIpv6CidrBlock")
            if d and ipaddress.ip_network(d, strict=False) == want:
                return r
        return None

    def route_target(self, rtb: str, dest: str) -> str | None:
        """ENI id the route for ``dest`` targets, or None (no route, or not an ENI target)."""
        r = self.route(rtb, dest)
        if r is None:
            return None
        return r.get("NetworkInterfaceId") or None

    def dns_values(self, name: str, record_type: str = "A") -> list[str] | None:
        """The values of record ``name`` (relative to the lab zone, or fully qualified) and
        ``record_type``, None when there is no such record."""
        record = self.dns_record(name, record_type)
        return None if record is None else [r["Value"] for r in record.get("ResourceRecords", [])]

    def dns_record(self, name: str, record_type: str = "A") -> dict | None:
        """The record set of ``name`` and ``record_type`` in the lab zone (as Route 53 lists it), or None."""
        zone = self.topology.zone_name
        fqdn = name.rstrip(".") if name.rstrip(".").endswith(zone) else f"{name}.{zone}"
        return self._records().get((fqdn + ".", record_type))

    def eip_association(self, alloc_id: str | None = None) -> tuple[str, str] | None:
        """(ENI id, private IP) an Elastic IP is associated with, or None."""
        alloc_id = alloc_id or self.topology.eip_alloc
        a = self.ec2.describe_addresses(AllocationIds=[alloc_id])["Addresses"][0]
        if not a.get("NetworkInterfaceId"):
            return None
        return a["NetworkInterfaceId"], a.get("PrivateIpAddress")


def _dest(r: dict) -> str:
    return r.get("DestinationCidrBlock") or r.get("DestinationIpv6CidrBlock") or r.get("DestinationPrefixListId")


_TARGET_KEYS = (("NetworkInterfaceId", "eni"), ("GatewayId", "gateway"), ("InstanceId", "instance"),
                ("NatGatewayId", "nat"), ("TransitGatewayId", "tgw"), ("VpcPeeringConnectionId", "pcx"),
                ("EgressOnlyInternetGatewayId", "eigw"))
_TARGET_PARAM = {"eni": "NetworkInterfaceId", "gateway": "GatewayId", "instance": "InstanceId",
                 "nat": "NatGatewayId", "tgw": "TransitGatewayId", "pcx": "VpcPeeringConnectionId",
                 "eigw": "EgressOnlyInternetGatewayId"}


def _target(r: dict):
    for key, kind in _TARGET_KEYS:
        if r.get(key):
            return (kind, r[key])
    return (None, None)


def _target_kw(t) -> dict:
    kind, val = t
    return {_TARGET_PARAM[kind]: val} if kind else {}


def _dest_kw(dest: str) -> dict:
    if dest.startswith("pl-"):
        return {"DestinationPrefixListId": dest}
    if ":" in dest:
        return {"DestinationIpv6CidrBlock": dest}
    return {"DestinationCidrBlock": dest}

