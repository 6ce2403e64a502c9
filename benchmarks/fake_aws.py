"""Zero-work fake AWS for the failover benchmark: an IMDSv2 endpoint and an EC2 query endpoint.

Both are plain ``ThreadingHTTPServer``s meant to listen on 127.0.0.1 only (by default inside a
private network namespace; see ``failover.py``).  Responses are canned and the "state" is two
fields, so the server costs next to nothing per call and the numbers measure the client.

Two details matter for the numbers:

* every response is written with **one** ``write`` (status line, headers and body buffered
  together), and ``TCP_NODELAY`` is set; otherwise a keep-alive client stalls ~40 ms per call on
  Nagle + delayed ACK;
* HTTP/1.1 keep-alive is supported (``Content-Length`` on every response).

The EC2 endpoint records ``(t_received, t_sent, action, params)`` for every request in
``FakeAWS.log`` (``time.perf_counter`` clock of this process), so the harness can tell when the
last mutating call arrived.  ``latency_ms`` delays every EC2 call (not IMDS calls) to model real
API latency.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
MUTATING = frozenset({
    "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses", "ReplaceRoute", "CreateRoute",
    "AssociateAddress", "DisassociateAddress",
})


class Topology:
    """The one instance / ENI / subnet / route table the fake serves."""

    def __init__(self, **kw):
        self.mac = "02:42:0a:00:01:0a"
        self.eni = "eni-0be7c000000000001"
        self.other_eni = "eni-0be7c000000000002"       # the peer that holds the VIP / route at first
        self.instance = "i-0be7c000000000001"
        self.other_instance = "i-0be7c000000000002"
        self.subnet = "subnet-0be7c000000000001"
        self.subnet_cidr = "10.0.1.0/24"
        self.vpc = "vpc-0be7c000000000001"
        self.vpc_cidr = "10.0.0.0/16"
        self.rtb = "rtb-0be7c000000000001"
        self.primary_ip = "10.0.1.10"
        self.other_primary_ip = "10.0.1.11"
        self.vip = "10.0.1.100"
        self.destination = "0.0.0.0/0"
        self.eip_alloc = "eipalloc-0be7c000000000001"
        self.public_ip = "198.51.100.10"                 # documentation range; never contacted
        self.region = "us-east-1"
        self.az = "us-east-1a"
        self.account = "123456789012"
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError(f"unknown topology key {k}")
            setattr(self, k, v)

    def as_dict(self):
        return dict(self.__dict__)


class FakeAWS:
    """Holds the shared state, the request log and the two servers."""

    def __init__(self, topo: Topology | None = None, latency_ms: float = 0.0):
        self.topo = topo or Topology()
        self.latency = latency_ms / 1000.0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.log: list[dict] = []          # EC2 requests
        self.imds_log: list[tuple] = []    # (t, method, path, status)
        self.tokens: dict[str, float] = {}
        self.servers: list[ThreadingHTTPServer] = []
        self.threads: list[threading.Thread] = []
        self.reset_state()

    # ----------------------------------------------------------------- state
    def reset_state(self):
        """Put the VIP and the route on the peer, so a MASTER run has real work to do."""
        with self.lock:
            self.vip_on_us = False
            self.route_target = self.topo.other_eni
            self.eip_on = self.topo.other_eni

    def mark(self) -> int:
        """Index into ``log`` from which a caller wants to look at requests."""
        with self.lock:
            return len(self.log)

    def entries_since(self, idx: int) -> list[dict]:
        with self.lock:
            return list(self.log[idx:])

    def wait_for(self, pred, timeout: float) -> bool:
        """Wait until ``pred(log)`` is true (called under the lock) or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.log):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    # --------------------------------------------------------------- servers
    def _serve(self, sock_or_addr, handler_cls):
        if isinstance(sock_or_addr, socket.socket):
            srv = ThreadingHTTPServer(sock_or_addr.getsockname()[:2], handler_cls, bind_and_activate=False)
            srv.socket.close()
            srv.socket = sock_or_addr               # already bound and listening (maybe in a netns)
            srv.server_address = sock_or_addr.getsockname()[:2]
        else:
            srv = ThreadingHTTPServer(sock_or_addr, handler_cls)
        srv.daemon_threads = True
        srv.fake = self
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                             name=f"fake-{handler_cls.__name__}", daemon=True)
        t.start()
        self.servers.append(srv)
        self.threads.append(t)
        return srv

    def start(self, imds_sock=("127.0.0.1", 0), ec2_sock=("127.0.0.1", 0)):
        """Start both servers; return (imds_port, ec2_port)."""
        return self.start_imds(imds_sock), self.start_ec2(ec2_sock)

    def start_imds(self, sock=("127.0.0.1", 0)) -> int:
        return self._serve(sock, IMDSHandler).server_address[1]

    def start_ec2(self, sock=("127.0.0.1", 0)) -> int:
        return self._serve(sock, EC2Handler).server_address[1]

    def stop(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for t in self.threads:
            t.join(timeout=2)
        self.servers.clear()
        self.threads.clear()

    # ------------------------------------------------------------------ IMDS
    def imds_tree(self):
        t = self.topo
        ipv4s = [t.primary_ip] + ([t.vip] if self.vip_on_us else [])
        ident = {"accountId": t.account, "architecture": "x86_64", "availabilityZone": t.az,
                 "imageId": "ami-0be7c000000000001", "instanceId": t.instance,
                 "instanceType": "c5n.large", "privateIp": t.primary_ip, "region": t.region,
                 "version": "2017-09-30", "pendingTime": "2026-01-01T00:00:00Z"}
        mac = {
            "device-number": "0", "interface-id": t.eni, "local-ipv4s": "\n".join(ipv4s),
            "mac": t.mac, "owner-id": t.account, "subnet-id": t.subnet,
            "subnet-ipv4-cidr-block": t.subnet_cidr, "vpc-id": t.vpc,
            "vpc-ipv4-cidr-block": t.vpc_cidr, "vpc-ipv4-cidr-blocks": t.vpc_cidr,
        }
        return {"latest": {
            "api": {},
            "meta-data": {
                "ami-id": "ami-0be7c000000000001", "instance-id": t.instance,
                "instance-type": "c5n.large", "local-ipv4": t.primary_ip, "mac": t.mac,
                "placement": {"availability-zone": t.az, "region": t.region},
                "network": {"interfaces": {"macs": {t.mac: mac}}},
            },
            "dynamic": {"instance-identity": {"document": json.dumps(ident, indent=2)}},
        }}

    # ------------------------------------------------------------------- EC2
    def ec2_call(self, action: str, params: dict) -> tuple[int, str]:
        t = self.topo
        if params.get("DryRun", "").lower() == "true":
            return 412, _error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        fn = getattr(self, "_ec2_" + action, None)
        if fn is None:
            return 400, _error("InvalidAction", f"The action {action} is not valid for this web service.")
        return fn(t, params)

    def _ec2_AssignPrivateIpAddresses(self, t, p):
        if p.get("NetworkInterfaceId") != t.eni:
            return 400, _error("InvalidNetworkInterfaceID.NotFound",
                               f"The networkInterface ID '{p.get('NetworkInterfaceId')}' does not exist")
        ips = [v for k, v in p.items() if k.startswith("PrivateIpAddress.")]
        with self.lock:
            if t.vip in ips:
                self.vip_on_us = True
        items = "".join(f"<item><privateIpAddress>{ip}</privateIpAddress></item>" for ip in ips)
        return 200, _ok("AssignPrivateIpAddresses",
                        f"<networkInterfaceId>{t.eni}</networkInterfaceId>"
                        f"<assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet>"
                        "<return>true</return>")

    def _ec2_UnassignPrivateIpAddresses(self, t, p):
        ips = [v for k, v in p.items() if k.startswith("PrivateIpAddress.")]
        with self.lock:
            if t.vip in ips and p.get("NetworkInterfaceId") == t.eni:
                self.vip_on_us = False
        return 200, _ok("UnassignPrivateIpAddresses", "<return>true</return>")

    def _route_call(self, name, t, p):
        if p.get("RouteTableId") != t.rtb:
            return 400, _error("InvalidRouteTableID.NotFound",
                               f"The routeTable ID '{p.get('RouteTableId')}' does not exist")
        target = p.get("NetworkInterfaceId")
        if target not in (t.eni, t.other_eni):
            return 400, _error("InvalidNetworkInterfaceID.NotFound",
                               f"The networkInterface ID '{target}' does not exist")
        dest = p.get("DestinationCidrBlock") or p.get("DestinationIpv6CidrBlock")
        if dest != t.destination:
            if name == "ReplaceRoute":
                return 400, _error("InvalidParameterValue",
                                   f"There is no route defined for '{dest}' in the route table. "
                                   "Use CreateRoute instead.")
            return 200, _ok(name, "<return>true</return>")
        with self.lock:
            self.route_target = target
        return 200, _ok(name, "<return>true</return>")

    def _ec2_ReplaceRoute(self, t, p):
        return self._route_call("ReplaceRoute", t, p)

    def _ec2_CreateRoute(self, t, p):
        return self._route_call("CreateRoute", t, p)

    def _ec2_DescribeRouteTables(self, t, p):
        with self.lock:
            target = self.route_target
        body = (
            "<routeTableSet><item>"
            f"<routeTableId>{t.rtb}</routeTableId><vpcId>{t.vpc}</vpcId><ownerId>{t.account}</ownerId>"
            "<routeSet>"
            f"<item><destinationCidrBlock>{t.vpc_cidr}</destinationCidrBlock><gatewayId>local</gatewayId>"
            "<state>active</state><origin>CreateRouteTable</origin></item>"
            f"<item><destinationCidrBlock>{t.destination}</destinationCidrBlock>"
            f"<networkInterfaceId>{target}</networkInterfaceId>"
            f"<instanceId>{t.instance if target == t.eni else t.other_instance}</instanceId>"
            f"<instanceOwnerId>{t.account}</instanceOwnerId>"
            "<state>active</state><origin>CreateRoute</origin></item>"
            "</routeSet>"
            "<associationSet><item>"
            f"<routeTableAssociationId>rtbassoc-0be7c000000000001</routeTableAssociationId>"
            f"<routeTableId>{t.rtb}</routeTableId><subnetId>{t.subnet}</subnetId><main>false</main>"
            "<associationState><state>associated</state></associationState>"
            "</item></associationSet>"
            "<propagatingVgwSet/><tagSet/>"
            "</item></routeTableSet>"
        )
        return 200, _ok("DescribeRouteTables", body)

    def _eni_xml(self, t, eni, primary, instance, ips, mac):
        items = "".join(
            f"<item><privateIpAddress>{ip}</privateIpAddress><primary>{'true' if ip == primary else 'false'}"
            "</primary></item>" for ip in ips)
        return (
            "<item>"
            f"<networkInterfaceId>{eni}</networkInterfaceId><subnetId>{t.subnet}</subnetId>"
            f"<vpcId>{t.vpc}</vpcId><availabilityZone>{t.az}</availabilityZone>"
            f"<ownerId>{t.account}</ownerId><requesterManaged>false</requesterManaged>"
            f"<status>in-use</status><macAddress>{mac}</macAddress>"
            f"<privateIpAddress>{primary}</privateIpAddress><sourceDestCheck>false</sourceDestCheck>"
            "<interfaceType>interface</interfaceType>"
            f"<attachment><attachmentId>eni-attach-{eni[4:]}</attachmentId><instanceId>{instance}</instanceId>"
            f"<instanceOwnerId>{t.account}</instanceOwnerId><deviceIndex>0</deviceIndex>"
            "<status>attached</status><deleteOnTermination>true</deleteOnTermination></attachment>"
            f"<privateIpAddressesSet>{items}</privateIpAddressesSet>"
            "<ipv6AddressesSet/><tagSet/>"
            "</item>"
        )

    def _ec2_DescribeNetworkInterfaces(self, t, p):
        with self.lock:
            vip_on_us = self.vip_on_us
        enis = {
            t.eni: (t.primary_ip, t.instance, [t.primary_ip] + ([t.vip] if vip_on_us else []), t.mac),
            t.other_eni: (t.other_primary_ip, t.other_instance,
                          [t.other_primary_ip] + ([] if vip_on_us else [t.vip]), "02:42:0a:00:01:0b"),
        }
        wanted = {v for k, v in p.items() if k.startswith("NetworkInterfaceId.")}
        filters = _filters(p)
        out = []
        for eni, (primary, inst, ips, mac) in enis.items():
            if wanted and eni not in wanted:
                continue
            ok = True
            for name, values in filters.items():
                if name in ("network-interface-id",):
                    ok = eni in values
                elif name in ("addresses.private-ip-address", "private-ip-address"):
                    ok = bool(set(ips) & values)
                elif name == "mac-address":
                    ok = mac in values
                elif name == "attachment.instance-id":
                    ok = inst in values
                elif name in ("subnet-id", "vpc-id"):
                    ok = (t.subnet if name == "subnet-id" else t.vpc) in values
                if not ok:
                    break
            if ok:
                out.append(self._eni_xml(t, eni, primary, inst, ips, mac))
        return 200, _ok("DescribeNetworkInterfaces", f"<networkInterfaceSet>{''.join(out)}</networkInterfaceSet>")

    def _ec2_AssociateAddress(self, t, p):
        with self.lock:
            self.eip_on = p.get("NetworkInterfaceId") or p.get("InstanceId")
        return 200, _ok("AssociateAddress",
                        "<return>true</return><associationId>eipassoc-0be7c000000000001</associationId>")

    def _ec2_DescribeAddresses(self, t, p):
        with self.lock:
            eni = self.eip_on
        inst = t.instance if eni == t.eni else t.other_instance
        body = ("<addressesSet><item>"
                f"<publicIp>{t.public_ip}</publicIp><allocationId>{t.eip_alloc}</allocationId>"
                "<domain>vpc</domain><associationId>eipassoc-0be7c000000000001</associationId>"
                f"<instanceId>{inst}</instanceId><networkInterfaceId>{eni}</networkInterfaceId>"
                f"<networkInterfaceOwnerId>{t.account}</networkInterfaceOwnerId>"
                f"<privateIpAddress>{t.primary_ip if eni == t.eni else t.other_primary_ip}</privateIpAddress>"
                "</item></addressesSet>")
        return 200, _ok("DescribeAddresses", body)


def _filters(p: dict) -> dict[str, set]:
    names = {}
    for k, v in p.items():
        m = re.fullmatch(r"Filter\.(\d+)\.Name", k)
        if m:
            names[m.group(1)] = v
    out = {}
    for n, name in names.items():
        prefix = f"Filter.{n}.Value."
        out[name] = {v for k, v in p.items() if k.startswith(prefix)}
    return out


def _request_id():
    return "0be7c000-0000-4000-8000-" + secrets.token_hex(6)


def _ok(action: str, inner: str) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_NS}">'
            f"<requestId>{_request_id()}</requestId>{inner}</{action}Response>")


def _error(code: str, message: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{_request_id()}</RequestID></Response>")


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # TCP_NODELAY: see the module docstring
    server_version = "fake-aws"
    sys_version = ""

    def log_message(self, *a):        # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reply(self, code: int, body: str | bytes, ctype="text/plain", extra=()):
        data = body.encode() if isinstance(body, str) else body
        head = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}",
                f"Server: {self.server_version}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in extra]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)   # one write


class IMDSHandler(_Handler):
    def do_PUT(self):
        fake = self.server.fake
        self._body()
        path = self.path.split("?")[0]
        if self.headers.get("X-Forwarded-For"):
            code = 403
        elif path != "/latest/api/token":
            code = 404
        else:
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                code = 400
            else:
                tok = secrets.token_urlsafe(40)
                with fake.lock:
                    fake.tokens[tok] = time.monotonic() + int(ttl)
                fake.imds_log.append((time.perf_counter(), "PUT", path, 200))
                return self._reply(200, tok, extra=[("X-aws-ec2-metadata-token-ttl-seconds", ttl)])
        fake.imds_log.append((time.perf_counter(), "PUT", path, code))
        self._reply(code, "")

    def do_GET(self):
        fake = self.server.fake
        path = self.path.split("?")[0]
        tok = self.headers.get("X-aws-ec2-metadata-token")
        with fake.lock:
            valid = tok is not None and fake.tokens.get(tok, 0) >= time.monotonic()
        if not valid:                         # IMDSv2 only (HttpTokens=required)
            fake.imds_log.append((time.perf_counter(), "GET", path, 401))
            return self._reply(401, "")
        with fake.lock:
            node = fake.imds_tree()
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                fake.imds_log.append((time.perf_counter(), "GET", path, 404))
                return self._reply(404, "")
            node = node[part]
        fake.imds_log.append((time.perf_counter(), "GET", path, 200))
        if isinstance(node, dict):
            return self._reply(200, "\n".join(k + ("/" if isinstance(v, dict) else "") for k, v in node.items()))
        ctype = "application/json" if path.endswith("/document") else "text/plain"
        self._reply(200, node, ctype=ctype)


class EC2Handler(_Handler):
    def do_POST(self):
        fake = self.server.fake
        raw = self._body()
        t_recv = time.perf_counter()
        params = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "?")
        if fake.latency:
            time.sleep(fake.latency)
        code, body = fake.ec2_call(action, params)
        self._reply(code, body, ctype="text/xml;charset=UTF-8")
        t_sent = time.perf_counter()
        with fake.cond:
            fake.log.append({"t_recv": t_recv, "t_sent": t_sent, "action": action, "status": code,
                             "mutating": action in MUTATING, "params": params})
            fake.cond.notify_all()

    def do_GET(self):          # query protocol via GET is legal but unused by our clients
        self._reply(405, _error("InvalidAction", "use POST"), ctype="text/xml")


if __name__ == "__main__":     # manual use: python fake_aws.py [latency_ms]; stops on Ctrl-C
    import sys
    fake = FakeAWS(latency_ms=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
    ip, ep = fake.start()
    print(f"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{ip}/ AWS_ENDPOINT_URL_EC2=http://127.0.0.1:{ep}",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()
