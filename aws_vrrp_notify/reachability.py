"""How this instance reaches the EC2 API: the endpoint's address, the proxy in the way, the TCP
round trip, the clock offset read from the API's ``Date`` header, and which credentials
botocore signs with. Used by validate --environment (environment.py).

Standard library only, except what inspects a botocore client it is given.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime
from typing import Any, Dict, NamedTuple, Optional, Tuple

DNS_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
MAX_CLOCK_SKEW = 5.0  # seconds; SigV4 tolerates 5 minutes, but lease times and logs need better


class Route(NamedTuple):
    """Where a request to an endpoint goes first: the endpoint itself, or a proxy."""
    host: str
    port: int
    proxy: Optional[str]  # the proxy URL without credentials, None when direct


class Reach(NamedTuple):
    ok: bool
    route: Route
    address: Optional[str]      # the IP address connected to (or that failed)
    seconds: float              # DNS + TCP connect
    error: str = ""


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def route_to(endpoint_url: str) -> Route:
    """The first hop of a request to ``endpoint_url``: HTTPS_PROXY / HTTP_PROXY unless NO_PROXY
    exempts the host, as botocore decides it (urllib's reading of the environment)."""
    parts = urllib.parse.urlsplit(endpoint_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass_environment(host, proxies):
        if "://" not in proxy:
            proxy = "http://" + proxy
        p = urllib.parse.urlsplit(proxy)
        return Route(p.hostname or "", p.port or (443 if p.scheme == "https" else 80), _without_credentials(proxy))
    return Route(host, port, None)


def _resolve(host: str, port: int, timeout: float) -> Tuple[Optional[list], str]:
    """getaddrinfo with a bound on the wait (it cannot be interrupted: a thread waits for it)."""
    result: Dict[str, Any] = {}

    def lookup() -> None:
        try:
            result["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = f"cannot resolve {host}: {exc.strerror or exc}"

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None, f"no DNS answer for {host} within {timeout:g} s"
    return result.get("addresses"), result.get("error", "")


def reach(endpoint_url: str, timeout: float = CONNECT_TIMEOUT) -> Reach:
    """Resolve the first hop and open a TCP connection to it (then close it)."""
    route = route_to(endpoint_url)
    start = time.monotonic()
    addresses, error = _resolve(route.host, route.port, DNS_TIMEOUT)
    if not addresses:
        return Reach(False, route, None, time.monotonic() - start, error)
    family, kind, proto, _, sockaddr = addresses[0]
    sock = socket.socket(family, kind, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except socket.timeout:
        return Reach(False, route, sockaddr[0], time.monotonic() - start,
                     f"TCP connect to {sockaddr[0]} port {route.port}: no answer within {timeout:g} s")
    except OSError as exc:
        return Reach(False, route, sockaddr[0], time.monotonic() - start,
                     f"TCP connect to {sockaddr[0]} port {route.port}: {exc.strerror or exc}")
    finally:
        sock.close()
    return Reach(True, route, sockaddr[0], time.monotonic() - start)


def address_kind(address: Optional[str]) -> str:
    """A few words on what an endpoint address says about the path to it."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return ""
    if ip.is_loopback:
        return "loopback"
    if ip.is_private:
        return "private address: a VPC interface endpoint or a proxy in the VPC"
    return "public address: through an internet or NAT gateway"


# ---------------------------------------------------------------- clock


class ClockOffset(NamedTuple):
    seconds: float      # local clock minus AWS's (positive: ahead)
    uncertainty: float  # the Date header has whole seconds, and the answer took time


def clock_offset(date_header: Optional[str], sent: float, received: float) -> Optional[ClockOffset]:
    """This clock against the ``Date`` of an answer requested at ``sent`` and read at
    ``received`` (both time.time()); None without a usable header."""
    if not date_header:
        return None
    try:
        server = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    # the server wrote a time in [server, server + 1) at a local time in [sent, received]
    local = (sent + received) / 2
    return ClockOffset(local - (server + 0.5), 0.5 + (received - sent) / 2)


def date_of(response: Any) -> Optional[str]:
    """The Date header of a botocore answer (or of the ``response`` of a ClientError)."""
    if not isinstance(response, dict):
        return None
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    return headers.get("date")


# ---------------------------------------------------------------- credentials

_METHODS = {
    "env": "environment (AWS_ACCESS_KEY_ID)",
    "iam-role": "instance profile",
    "shared-credentials-file": "shared credentials file",
    "config-file": "shared config file",
    "assume-role": "assumed role",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
    "container-role": "container credentials",
    "sso": "IAM Identity Center (SSO)",
    "custom-process": "credential_process",
    "boto-config": "boto configuration file",
}


def credential_method(client: Any) -> Optional[str]:
    """botocore's name for the credentials a client signs with (None: it has none)."""
    signer = getattr(client, "_request_signer", None)
    credentials = getattr(signer, "_credentials", None)
    return getattr(credentials, "method", None) if credentials is not None else None


def describe_credentials(method: Optional[str], settings: Any, role: Optional[str] = None) -> str:
    """Which credentials, in an operator's words: ``role`` is the instance profile's role."""
    if settings.role_arn:
        return f"assumed role {settings.role_arn}"
    text = _METHODS.get(method or "", method or "none")
    profile = settings.profile or os.environ.get("AWS_PROFILE")
    if method in ("shared-credentials-file", "config-file", "assume-role", "sso", "custom-process") and profile:
        text += f", profile {profile}"
    if method == "iam-role" and role:
        text += f" (role {role})"
    return text


# ---------------------------------------------------------------- failed calls

# botocore.exceptions names, by what they say about the failure
NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                  "UnknownCredentialError")
REJECTED = frozenset({"AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                      "ExpiredToken", "RequestExpired", "InvalidAccessKeyId", "IncompleteSignature"})
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})


def failure_kind(exc: BaseException) -> Tuple[str, str, str]:
    """(kind, AWS code or exception name, message) of a failed botocore call; kind is one of
    denied, rejected (the credentials), no-credentials, throttled, server (5xx), network (no
    answer), answered (any other error: the request was authenticated)."""
    from .ec2 import THROTTLING_CODES, error_code, error_message

    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code, message = error_code(exc), error_message(exc)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in DENIED:
            return "denied", code, message
        if code in REJECTED:
            return "rejected", code, message
        if code in THROTTLING_CODES:
            return "throttled", code, message
        return ("server" if status >= 500 else "answered"), code, message
    name = type(exc).__name__
    if name in NO_CREDENTIALS:
        return "no-credentials", name, str(exc)
    return "network", name, str(exc) or name
