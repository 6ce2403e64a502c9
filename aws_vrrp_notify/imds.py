"""IMDSv2 client (never IMDSv1), standard library only.

Environment, as botocore reads it:
  AWS_EC2_METADATA_SERVICE_ENDPOINT       base URL (default http://169.254.169.254/)
  AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE  IPv4 (default) or IPv6 (http://[fd00:ec2::254]/)
  AWS_EC2_METADATA_DISABLED               "true": never contact the metadata service
Proxies are never used for the metadata service.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from typing import Dict, List, Optional

from .deadline import Deadline, DeadlineExceeded

DEFAULT_ENDPOINT = "http://169.254.169.254/"
IPV6_ENDPOINT = "http://[fd00:ec2::254]/"
TOKEN_TTL = 60  # seconds: short-lived, kept in memory only, never logged
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
ATTEMPTS = 5          # for GETs, within the transition's deadline
PROBE_ATTEMPTS = 3    # for the first token, which also tells whether this is AWS at all


class ImdsError(Exception):
    """The metadata service answered badly or not at all."""


class ImdsUnavailable(ImdsError):
    """No metadata service: disabled, unreachable, or not answering."""


class ImdsNotFound(ImdsError):
    """The metadata service has no such path (HTTP 404)."""


def endpoint_from_env(env: Optional[Dict[str, str]] = None) -> str:
    env = os.environ if env is None else env
    url = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    if url:
        return url if url.endswith("/") else url + "/"
    mode = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv4")
    if mode.lower() == "ipv6":
        return IPV6_ENDPOINT
    if mode.lower() != "ipv4":
        raise ImdsError(f"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE={mode!r}: expected IPv4 or IPv6")
    return DEFAULT_ENDPOINT


def disabled_by_env(env: Optional[Dict[str, str]] = None) -> bool:
    env = os.environ if env is None else env
    return env.get("AWS_EC2_METADATA_DISABLED", "false").strip().lower() == "true"


class _Response:
    def __init__(self, status: int, body: bytes):
        self.status = status
        self.body = body


class ImdsClient:
    """Token-authenticated GETs with bounded timeouts and retries, safe to share between threads."""

    def __init__(self, endpoint: Optional[str] = None, deadline: Optional[Deadline] = None,
                 attempts: int = ATTEMPTS, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT):
        self.disabled = disabled_by_env()
        self.endpoint = endpoint or endpoint_from_env()
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImdsError(f"metadata endpoint {self.endpoint!r} is not an http URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.deadline = deadline or Deadline(None)
        self.attempts = attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._token: Optional[str] = None
        self._token_expiry = 0.0
        self._lock = threading.Lock()
        self.requests = 0

    # -- transport

    def _request(self, method: str, path: str, headers: Dict[str, str]) -> _Response:
        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self.deadline.timeout(self.connect_timeout))
        try:
            conn.connect()
            conn.sock.settimeout(self.deadline.timeout(self.read_timeout))
            conn.request(method, f"{self._prefix}/{path}", headers=headers)
            resp = conn.getresponse()
            self.requests += 1
            return _Response(resp.status, resp.read())
        finally:
            conn.close()

    def _with_retries(self, method: str, path: str, headers: Dict[str, str],
                      attempts: Optional[int] = None) -> _Response:
        last = "no attempt made"
        answered = False
        attempts = attempts or self.attempts
        for attempt in range(attempts):
            if attempt:
                self.deadline.sleep(0.05 * 2 ** attempt)
            try:
                resp = self._request(method, path, headers)
            except DeadlineExceeded as exc:
                last = str(exc)
                break
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if resp.status >= 500:
                last, answered = f"HTTP {resp.status}", True
                continue
            return resp
        cls = ImdsError if answered else ImdsUnavailable  # a service that answers 5xx is there, but broken
        raise cls(f"metadata service at {self.endpoint} did not answer {method} /{path} "
                  f"({last}, {attempts} attempts max)")

    # -- token

    def _get_token(self, refresh: bool = False) -> str:
        with self._lock:
            if self._token and not refresh and time.monotonic() < self._token_expiry:
                return self._token
            if self.disabled:
                raise ImdsUnavailable("metadata service disabled by AWS_EC2_METADATA_DISABLED")
            resp = self._with_retries("PUT", "latest/api/token",
                                      {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
                                      attempts=PROBE_ATTEMPTS if self._token is None else None)
            if resp.status != 200 or not resp.body:
                raise ImdsError(f"metadata service at {self.endpoint} refused an IMDSv2 token "
                                      f"(HTTP {resp.status})")
            self._token = resp.body.decode("ascii", "replace").strip()
            self._token_expiry = time.monotonic() + TOKEN_TTL - 5
            return self._token

    # -- API

    def token(self) -> str:
        """An IMDSv2 token (the PUT), kept for its lifetime; ImdsUnavailable when nothing answers."""
        return self._get_token()

    def available(self) -> bool:
        """False when nothing answers; raises ImdsError when something answers but badly."""
        try:
            self._get_token()
            return True
        except ImdsUnavailable:
            return False

    def get(self, path: str) -> str:
        """GET ``latest/<path>``; raises ImdsNotFound on 404, ImdsError otherwise."""
        full = f"latest/{path.lstrip('/')}"
        token = self._get_token()
        for refreshed in (False, True):
            resp = self._with_retries("GET", full, {"X-aws-ec2-metadata-token": token})
            if resp.status == 200:
                return resp.body.decode("utf-8", "replace")
            if resp.status == 404:
                raise ImdsNotFound(f"metadata service has no /{full}")
            if resp.status == 401 and not refreshed:
                token = self._get_token(refresh=True)  # expired or revoked token: one fresh try
                continue
            break
        raise ImdsError(f"metadata service answered HTTP {resp.status} for /{full}")

    def identity(self) -> Dict[str, str]:
        try:
            doc = json.loads(self.get("dynamic/instance-identity/document"))
        except ValueError:
            raise ImdsError("instance identity document is not JSON") from None
        if not isinstance(doc, dict):
            raise ImdsError("instance identity document is not a JSON object")
        return doc

    def mac_data(self, mac: str, key: str) -> str:
        return self.get(f"meta-data/network/interfaces/macs/{mac}/{key}").strip()

    def local_ipv4s(self, mac: str) -> List[str]:
        return [line.strip() for line in self.mac_data(mac, "local-ipv4s").splitlines() if line.strip()]

    def ipv6s(self, mac: str) -> List[str]:
        """The IPv6 addresses of the ENI with ``mac``; the service has no ``ipv6s`` for an ENI without any."""
        try:
            text = self.mac_data(mac, "ipv6s")
        except ImdsNotFound:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]


def dmi_says_ec2(sysfs: Optional[str] = None) -> bool:
    """True when firmware data says this machine is an EC2 instance (Nitro or Xen)."""
    root = sysfs or os.environ.get("AWS_VRRP_NOTIFY_SYSFS", "/sys")
    for name in ("class/dmi/id/sys_vendor", "class/dmi/id/board_vendor", "class/dmi/id/bios_vendor",
                 "class/dmi/id/product_name", "class/dmi/id/board_asset_tag"):
        try:
            with open(os.path.join(root, name), encoding="ascii", errors="replace") as fh:
                value = fh.read().strip()
        except OSError:
            continue
        if value.startswith("Amazon EC2") or value == "Amazon EC2" or value.startswith("i-"):
            return True
    for name in ("hypervisor/uuid", "class/dmi/id/product_uuid"):
        try:
            with open(os.path.join(root, name), encoding="ascii", errors="replace") as fh:
                if fh.read().strip().lower().startswith("ec2"):
                    return True
        except OSError:
            continue
    return False
