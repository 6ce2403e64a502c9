"""A fake EC2 instance metadata service (IMDSv2) backed live by in-process moto.

The tree is rebuilt from moto's EC2 backend on every GET (read directly from the
backend objects, no HTTP round trip and no entry in moto's request recording),
so a private IP moved by ``AssignPrivateIpAddresses`` shows up at once in
``network/interfaces/macs/<mac>/local-ipv4s``.

Usage::

    imds = IMDS(instance_id, region="eu-west-3")
    host, port = imds.serve(("127.0.0.1", 0))        # or imds.serve(sock) for a netns socket
    ...
    imds.log            # [(method, path), ...]
    imds.expire_tokens()
    imds.close()

Behaviour (as measured against botocore's IMDSFetcher, TESTBED section 2):

* ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds`` in
  1..21600 (else 400); a PUT carrying ``X-Forwarded-For`` gets 403; the TTL is
  echoed in the response header.
* A GET without a token (when ``require_token``) or with an unknown / expired
  token gets 401.
* Directory listings end sub-directories with ``/``; unknown paths get 404.
* ``meta-data/iam/info`` and ``meta-data/iam/security-credentials/<role>`` serve the
  instance profile's temporary credentials (:mod:`.credentials`), rotated before
  they expire; ``role=None`` gives an instance without a profile.
* ``overrides`` maps a path (relative to ``/latest/``, e.g.
  ``"meta-data/instance-id"``) to a replacement body (str), an HTTP status (int)
  or ``None`` (404), for fault injection.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .credentials import DEFAULT_ROLE, DEFAULT_TTL, InstanceProfile

DEFAULT_ACCOUNT = "123456789012"
MAX_TTL = 21600

__all__ = ["IMDS", "build_tree", "ec2_backend"]


def ec2_backend(account_id: str = DEFAULT_ACCOUNT, region: str = "us-east-1"):
    from moto.ec2.models import ec2_backends

    return ec2_backends[account_id][region]


def _lines(items) -> str:
    return "\n".join(i for i in items if i)


def build_tree(backend, instance_id: str) -> dict:
    """The IMDS tree (``{"latest": {...}}``) of ``instance_id`` from moto's backend objects."""
    inst = backend.get_instance(instance_id)
    nics = sorted(inst.nics.items())
    macs = {}
    primary = inst.nics.get(0) or (nics[0][1] if nics else None)
    vpcs: dict = {}
    for index, eni in nics:
        sub = eni.subnet
        vpc = vpcs.get(sub.vpc_id)
        if vpc is None:
            vpc = vpcs[sub.vpc_id] = backend.get_vpc(sub.vpc_id)
        v4 = [a.get("cidr_block") for a in vpc.get_cidr_block_association_set(ipv6=False)]
        v6 = [a.get("cidr_block") for a in vpc.get_cidr_block_association_set(ipv6=True)]
        sub6 = [a.get("ipv6CidrBlock") for a in sub.ipv6_cidr_block_associations.values()]
        node = {
            "device-number": str(index),
            "interface-id": eni.id,
            "local-hostname": f"ip-{eni.private_ip_address.replace('.', '-')}.{backend.region_name}.compute.internal",
            "local-ipv4s": _lines(p.get("PrivateIpAddress") for p in eni.private_ip_addresses),
            "mac": eni.mac_address,
            "owner-id": eni.owner_id,
            "security-group-ids": _lines(g.id for g in eni.group_set),
            "subnet-id": sub.id,
            "subnet-ipv4-cidr-block": sub.cidr_block,
            "vpc-id": sub.vpc_id,
            "vpc-ipv4-cidr-block": vpc.cidr_block,
            "vpc-ipv4-cidr-blocks": _lines(v4),
        }
        if eni.ipv6_addresses:
            node["ipv6s"] = _lines(eni.ipv6_addresses)
        if sub6:
            node["subnet-ipv6-cidr-blocks"] = _lines(sub6)
        if v6:
            node["vpc-ipv6-cidr-blocks"] = _lines(v6)
        if eni.public_ip:
            node["public-ipv4s"] = eni.public_ip
            node["ipv4-associations"] = {eni.public_ip: eni.private_ip_address}
        macs[eni.mac_address] = dict(sorted(node.items()))
    az = inst.placement.zone
    region = backend.region_name
    local_ipv4 = primary.private_ip_address if primary is not None else ""
    ident = {
        "accountId": backend.account_id,
        "architecture": getattr(inst, "architecture", None) or "x86_64",
        "availabilityZone": az,
        "billingProducts": None,
        "devpayProductCodes": None,
        "imageId": inst.image_id,
        "instanceId": inst.id,
        "instanceType": inst.instance_type,
        "kernelId": None,
        "marketplaceProductCodes": None,
        "pendingTime": inst.launch_time if isinstance(inst.launch_time, str) else str(inst.launch_time),
        "privateIp": local_ipv4,
        "ramdiskId": None,
        "region": region,
        "version": "2017-09-30",
    }
    meta = {
        "ami-id": inst.image_id,
        "hostname": f"ip-{local_ipv4.replace('.', '-')}.{region}.compute.internal",
        "instance-id": inst.id,
        "instance-type": inst.instance_type,
        "local-hostname": f"ip-{local_ipv4.replace('.', '-')}.{region}.compute.internal",
        "local-ipv4": local_ipv4,
        "mac": primary.mac_address if primary is not None else "",
        "network": {"interfaces": {"macs": macs}},
        "placement": {"availability-zone": az, "availability-zone-id": _az_id(backend, az), "region": region},
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    if primary is not None and primary.public_ip:
        meta["public-ipv4"] = primary.public_ip
    return {
        "latest": {
            "meta-data": meta,
            "dynamic": {"instance-identity": {"document": json.dumps(ident, indent=2)}},
        }
    }


def _az_id(backend, az: str) -> str:
    try:
        for zone in backend.describe_availability_zones():
            if zone.name == az:
                return zone.zone_id
    except Exception:  # pragma: no cover - moto internals vary
        pass
    return az


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class IMDS:
    """One fake IMDSv2 for one moto instance; may listen on several sockets."""

    def __init__(self, instance_id: str, *, region: str = "us-east-1", account_id: str = DEFAULT_ACCOUNT,
                 require_token: bool = True, backend=None, role: Optional[str] = DEFAULT_ROLE,
                 credential_ttl: float = DEFAULT_TTL):
        self.instance_id = instance_id
        self.region = region
        self.account_id = account_id
        self.require_token = require_token
        self._backend = backend
        self.tokens: dict[str, float] = {}
        self.log: list[tuple[str, str]] = []
        self.overrides: dict[str, object] = {}
        self.lock = threading.Lock()
        self.servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
        self.profile = InstanceProfile(account_id, role, credential_ttl) if role else None

    # -- state ------------------------------------------------------------------
    @property
    def backend(self):
        return self._backend if self._backend is not None else ec2_backend(self.account_id, self.region)

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid (next GET with it gets 401)."""
        with self.lock:
            for tok in self.tokens:
                self.tokens[tok] = 0.0

    def reset(self) -> None:
        """Forget the log, the tokens and the overrides; default credential lifetime."""
        with self.lock:
            self.log.clear()
            self.tokens.clear()
            self.overrides.clear()
        if self.profile is not None:
            self.profile.reset()

    def count(self, method: str | None = None, prefix: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.log if (method is None or m == method) and p.startswith(prefix))

    def tree(self) -> dict:
        tree = build_tree(self.backend, self.instance_id)
        if self.profile is not None:
            tree["latest"]["meta-data"]["iam"] = self.profile.tree()
        return tree

    def get(self, path: str):
        """(status, body) for a GET of ``path`` (``/latest/...``), token check excluded."""
        rel = "/".join(p for p in path.split("?", 1)[0].split("/") if p)
        key = rel[len("latest/"):] if rel.startswith("latest/") else rel
        if key in self.overrides:
            val = self.overrides[key]
            if val is None:
                return 404, ""
            if isinstance(val, int):
                return val, ""
            return 200, str(val)
        try:
            node = self.tree()
        except Exception:
            return 500, ""
        if rel == "":
            return 200, "latest"
        for part in rel.split("/"):
            if not isinstance(node, dict) or part not in node:
                return 404, ""
            node = node[part]
        if isinstance(node, dict):
            return 200, "\n".join(k + ("/" if isinstance(v, dict) else "") for k, v in node.items())
        return 200, node

    # -- serving ----------------------------------------------------------------
    def _handler(self):
        imds = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "EC2ws"
            disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
            sys_version = ""

            def _send(self, code, body="", headers=()):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _drain(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)

            def do_PUT(self):
                self._drain()
                with imds.lock:
                    imds.log.append(("PUT", self.path))
                if self.headers.get("X-Forwarded-For"):
                    return self._send(403)
                if self.path.split("?", 1)[0].rstrip("/") != "/latest/api/token":
                    return self._send(404)
                ttl = (self.headers.get("X-aws-ec2-metadata-token-ttl-seconds") or "").strip()
                if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
                    return self._send(400)
                tok = "AQAEA" + secrets.token_urlsafe(40)
                with imds.lock:
                    imds.tokens[tok] = time.monotonic() + int(ttl)
                self._send(200, tok, [("X-aws-ec2-metadata-token-ttl-seconds", ttl)])

            def do_GET(self):
                with imds.lock:
                    imds.log.append(("GET", self.path))
                    tok = self.headers.get("X-aws-ec2-metadata-token")
                    valid = tok is not None and imds.tokens.get(tok, 0.0) > time.monotonic()
                if tok is not None and not valid:
                    return self._send(401)
                if tok is None and imds.require_token:
                    return self._send(401)
                code, body = imds.get(self.path)
                self._send(code, body if code == 200 else "")

            def do_POST(self):
                self._drain()
                with imds.lock:
                    imds.log.append(("POST", self.path))
                self._send(405)

            do_DELETE = do_PATCH = do_POST

            def log_message(self, *a):
                pass

        return Handler

    def serve(self, sock_or_addr=("127.0.0.1", 0)) -> tuple[str, int]:
        """Serve on an address (bound here) or on an already listening socket; returns (host, port)."""
        handler = self._handler()
        if isinstance(sock_or_addr, socket.socket):
            srv = _Server(sock_or_addr.getsockname()[:2], handler, bind_and_activate=False)
            srv.socket.close()
            srv.socket = sock_or_addr
            srv.server_address = sock_or_addr.getsockname()[:2]
        else:
            srv = _Server(tuple(sock_or_addr), handler)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                             name=f"imds-{self.instance_id}", daemon=True)
        t.start()
        self.servers.append((srv, t))
        return srv.server_address[0], srv.server_address[1]

    def close(self) -> None:
        for srv, t in self.servers:
            srv.shutdown()
            srv.server_close()
            t.join(timeout=2)
        self.servers.clear()
