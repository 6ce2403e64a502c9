"""A standard-library-only EC2 client for the failover hot path (botocore stays the fallback).

Importing botocore costs 150-220 ms per process, which is most of a failover's client-side time
(PERF.md §6b, §10 rec. 8a).  This module speaks EC2's query protocol itself, for exactly the
operations the tool calls, with the same method names, keyword arguments, response dicts
(PascalCase keys, ``[]`` lists, bool/int/datetime values) and error shape as a botocore client::

    client = FastEc2Client("eu-west-3", credentials=credentials_from_env())
    client.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": ["vpc-1"]}])
    client.meta.method_to_api_mapping["replace_route"]      # "ReplaceRoute"

* Requests are serialized as botocore's EC2 serializer does (``Action``, ``Version=2016-11-15``,
  ``PrivateIpAddress.1``, ``Filter.1.Name``, ``Filter.1.Value.1``, ``true``/``false``, parameters in
  the caller's order, ``application/x-www-form-urlencoded`` with ``quote_plus``) and signed with
  SigV4 over the same headers botocore signs (content-type, host, x-amz-date and, with a session
  token, x-amz-security-token): bodies and signatures are byte-for-byte botocore's.
* Responses are converted by a generic EC2-XML walker (``fooSet``/``item`` lists, camelCase tags)
  driven by a small table taken from botocore's model for these operations (list names, booleans,
  integers, timestamps, structures); tests check the table against the installed botocore.
  Fields botocore's model does not know are kept (botocore drops them).
* Errors: :class:`FastClientError` (``.response`` shaped like botocore's ``ClientError``),
  :class:`FastConnectionError` (an :class:`OSError`: refused, reset, timeouts, TLS, broken HTTP),
  :class:`FastResponseParserError` (a 2xx body that is not EC2 XML),
  :class:`FastCredentialsError` and :class:`FastParamValidationError` (nothing was sent).
* Transport: ``http.client`` keep-alive connections, one per concurrently calling thread
  (a small LIFO pool shared by the client's threads, so short-lived worker threads reuse
  connections), a dropped keep-alive connection is reopened once, connect and read timeouts are
  separate, HTTPS through ``ssl.create_default_context()`` (``AWS_CA_BUNDLE`` when set).  No
  retries otherwise: the caller (``ec2.Ec2.call``) owns them.
* :func:`fast_path_allowed` says whether botocore would do the same thing in this environment
  (no profile, role, web identity, container credentials, shared config/credentials files,
  proxies, FIPS/dual-stack endpoints ...); :func:`client_from_settings` builds the client or
  says why not.

Everything but ``os``, ``threading`` and ``time`` is imported on first use (``typing`` only for
type checkers), so importing this module costs about a millisecond.  It never imports botocore
or urllib3.
"""

from __future__ import annotations

import os
import threading
import time

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (postponed): typing is not imported at run time
    from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

    Credentials = Tuple[str, str, Optional[str]]
    CredentialsProvider = Callable[[], Credentials]
    _Answer = Tuple[int, str, List[Tuple[str, str]], bytes]  # status, reason, headers, body

__all__ = [
    "API_VERSION", "USER_AGENT", "FastEc2Client", "FastEc2Error", "FastClientError",
    "FastConnectionError", "FastConnectTimeoutError", "FastReadTimeoutError", "FastResponseParserError",
    "FastCredentialsError", "FastParamValidationError", "StaticCredentials", "InstanceProfileCredentials",
    "credentials_from_env", "fast_path_allowed", "resolve_endpoint", "default_endpoint",
    "client_from_settings", "sigv4_headers", "serialize", "parse_response", "parse_error",
]

API_VERSION = "2016-11-15"
SERVICE = "ec2"
USER_AGENT = f"aws-vrrp-notify/{__version__} fast-ec2"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 10.0
MAX_IDLE_CONNECTIONS = 16

# ------------------------------------------------------------------------------------ the model
#
# Per operation (botocore's snake_case method name): the API name, the input members in model
# order (kind[:wire name]; s string, b boolean, i integer, L list of strings -> Wire.N,
# F filters -> Wire.N.Name / Wire.N.Value.M), the required members, and the output members'
# XML tags (a ReplaceRoute answer's <return> is not in botocore's output shape: it is dropped).
# Taken from botocore's EC2 model (2016-11-15); tests/test_fastec2.py re-derives it.

_OPERATIONS: Dict[str, Tuple[str, Dict[str, str], Tuple[str, ...], Tuple[str, ...]]] = {
    "assign_private_ip_addresses": (
        "AssignPrivateIpAddresses",
        {"Ipv4Prefixes": "L:Ipv4Prefix", "Ipv4PrefixCount": "i", "NetworkInterfaceId": "s",
         "PrivateIpAddresses": "L:PrivateIpAddress", "SecondaryPrivateIpAddressCount": "i",
         "AllowReassignment": "b"},
        ("NetworkInterfaceId",),
        ("networkInterfaceId", "assignedPrivateIpAddressesSet", "assignedIpv4PrefixSet")),
    "replace_route": (
        "ReplaceRoute",
        {"DestinationPrefixListId": "s", "VpcEndpointId": "s", "LocalTarget": "b", "TransitGatewayId": "s",
         "LocalGatewayId": "s", "CarrierGatewayId": "s", "CoreNetworkArn": "s", "OdbNetworkArn": "s",
         "DryRun": "b", "RouteTableId": "s", "DestinationCidrBlock": "s", "GatewayId": "s",
         "DestinationIpv6CidrBlock": "s", "EgressOnlyInternetGatewayId": "s", "InstanceId": "s",
         "NetworkInterfaceId": "s", "VpcPeeringConnectionId": "s", "NatGatewayId": "s"},
        ("RouteTableId",),
        ()),
    "create_route": (
        "CreateRoute",
        {"DestinationPrefixListId": "s", "VpcEndpointId": "s", "TransitGatewayId": "s", "LocalGatewayId": "s",
         "CarrierGatewayId": "s", "CoreNetworkArn": "s", "OdbNetworkArn": "s", "DryRun": "b",
         "RouteTableId": "s", "DestinationCidrBlock": "s", "GatewayId": "s", "DestinationIpv6CidrBlock": "s",
         "EgressOnlyInternetGatewayId": "s", "InstanceId": "s", "NetworkInterfaceId": "s",
         "VpcPeeringConnectionId": "s", "NatGatewayId": "s"},
        ("RouteTableId",),
        ("return",)),
    "associate_address": (
        "AssociateAddress",
        {"AllocationId": "s", "InstanceId": "s", "PublicIp": "s", "DryRun": "b", "NetworkInterfaceId": "s",
         "PrivateIpAddress": "s", "AllowReassociation": "b"},
        (),
        ("associationId",)),
    "describe_network_interfaces": (
        "DescribeNetworkInterfaces",
        {"NextToken": "s", "MaxResults": "i", "IncludeManagedResources": "b", "DryRun": "b",
         "NetworkInterfaceIds": "L:NetworkInterfaceId", "Filters": "F:Filter"},
        (),
        ("networkInterfaceSet", "nextToken")),
    "describe_route_tables": (
        "DescribeRouteTables",
        {"NextToken": "s", "MaxResults": "i", "DryRun": "b", "RouteTableIds": "L:RouteTableId",
         "Filters": "F:Filter"},
        (),
        ("routeTableSet", "nextToken")),
    "describe_subnets": (
        "DescribeSubnets",
        {"Filters": "F:Filter", "SubnetIds": "L:SubnetId", "NextToken": "s", "MaxResults": "i", "DryRun": "b"},
        (),
        ("nextToken", "subnetSet")),
    "describe_addresses": (
        "DescribeAddresses",
        {"PublicIps": "L:PublicIp", "DryRun": "b", "Filters": "F:Filter", "AllocationIds": "L:AllocationId"},
        (),
        ("addressesSet",)),
}

METHOD_TO_API_MAPPING: Dict[str, str] = {name: spec[0] for name, spec in _OPERATIONS.items()}

# Output XML tags, everywhere in these operations' answers: a tag's key is the tag with its first
# letter upper-cased (networkInterfaceId -> NetworkInterfaceId), except for lists, named here.
# Lists are <tagSet><item>...</item></tagSet>; "d": items are structures, "s": strings.
_LISTS: Dict[str, Tuple[str, str]] = {
    "addressesSet": ("Addresses", "d"),
    "assignedIpv4PrefixSet": ("AssignedIpv4Prefixes", "d"),
    "assignedPrivateIpAddressesSet": ("AssignedPrivateIpAddresses", "d"),
    "associatedSubnetSet": ("AssociatedSubnets", "s"),
    "associationSet": ("Associations", "d"),
    "groupSet": ("Groups", "d"),
    "ipv4PrefixSet": ("Ipv4Prefixes", "d"),
    "ipv6AddressesSet": ("Ipv6Addresses", "d"),
    "ipv6CidrBlockAssociationSet": ("Ipv6CidrBlockAssociationSet", "d"),
    "ipv6PrefixSet": ("Ipv6Prefixes", "d"),
    "networkInterfaceSet": ("NetworkInterfaces", "d"),
    "privateIpAddressesSet": ("PrivateIpAddresses", "d"),
    "propagatingVgwSet": ("PropagatingVgws", "d"),
    "routeSet": ("Routes", "d"),
    "routeTableSet": ("RouteTables", "d"),
    "subnetSet": ("Subnets", "d"),
    "tagSet": ("Tags", "d"),
}
# (tag of the list whose items hold it, tag) -> key, where botocore's model names a list otherwise
_LIST_KEY_OVERRIDES: Dict[Tuple[str, str], str] = {
    ("networkInterfaceSet", "tagSet"): "TagSet",
}
_BOOLEANS = frozenset({
    "assignIpv6AddressOnCreation", "defaultForAz", "deleteOnTermination", "denyAllIgwTraffic", "enaSrdEnabled",
    "enaSrdUdpEnabled", "enableDns64", "enableResourceNameDnsAAAARecord", "enableResourceNameDnsARecord",
    "hiddenByDefault", "ipv6Native", "isPrimaryIpv6", "main", "managed", "mapCustomerOwnedIpOnLaunch",
    "mapPublicIpOnLaunch", "primary", "requesterManaged", "return", "sourceDestCheck",
})
_INTEGERS = frozenset({
    "availableIpAddressCount", "deviceIndex", "enaQueueCount", "enableLniAtDeviceIndex", "networkCardIndex",
    "tcpEstablishedTimeout", "udpStreamTimeout", "udpTimeout",
})
_TIMESTAMPS = frozenset({"attachTime"})
_STRUCTURES = frozenset({
    "association", "associationState", "attachment", "blockPublicAccessStates", "connectionTrackingConfiguration",
    "enaSrdSpecification", "enaSrdUdpSpecification", "igwFirewall", "ipv6CidrBlockState", "operator",
    "privateDnsNameOptionsOnLaunch", "publicIpDnsNameOptions",
})


# ------------------------------------------------------------------------------------ errors


class FastEc2Error(Exception):
    """Base of this module's exceptions."""


class FastClientError(FastEc2Error):
    """EC2 answered with an error: ``.response`` is shaped like botocore's ``ClientError.response``."""

    def __init__(self, error_response: Dict[str, Any], operation_name: str):
        self.response = error_response
        self.operation_name = operation_name
        err = error_response.get("Error", {})
        super().__init__(f"An error occurred ({err.get('Code') or 'Unknown'}) when calling the "
                         f"{operation_name} operation: {err.get('Message') or 'Unknown'}")

    def __reduce__(self):
        return (type(self), (self.response, self.operation_name))


class FastConnectionError(FastEc2Error, OSError):
    """No (complete) answer: connection refused or reset, timeout, TLS or HTTP framing failure."""

    def __init__(self, message: str, endpoint: str = "", operation_name: str = ""):
        super().__init__(message)
        self.endpoint = endpoint
        self.operation_name = operation_name

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class FastConnectTimeoutError(FastConnectionError):
    """The TCP connection (or TLS handshake) did not complete within the connect timeout."""


class FastReadTimeoutError(FastConnectionError):
    """The request was sent (it may have been applied) but no answer came within the read timeout."""


class FastResponseParserError(FastEc2Error):
    """A 2xx answer whose body is not the XML expected (botocore: ResponseParserError)."""


class FastCredentialsError(FastEc2Error):
    """No usable credentials (botocore: NoCredentialsError / CredentialRetrievalError)."""


class FastParamValidationError(FastEc2Error, ValueError):
    """Unknown, missing or mistyped parameter (botocore: ParamValidationError); nothing was sent."""


# ------------------------------------------------------------------------------------ credentials


class StaticCredentials:
    """A credentials provider that always returns the same (access key, secret key, token)."""

    def __init__(self, access_key: str, secret_key: str, token: Optional[str] = None):
        self._creds: Credentials = (access_key, secret_key, token or None)

    def __call__(self) -> Credentials:
        return self._creds

    def __repr__(self) -> str:  # never show the keys
        return f"StaticCredentials(access_key={self._creds[0][:4]}..., token={'yes' if self._creds[2] else 'no'})"


def credentials_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[StaticCredentials]:
    """botocore's ``env`` provider: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN,
    or the older AWS_SECURITY_TOKEN).  None unless both keys are set and non-empty."""
    env = os.environ if environ is None else environ
    access_key = env.get("AWS_ACCESS_KEY_ID", "")
    secret_key = env.get("AWS_SECRET_ACCESS_KEY", "")
    if not access_key or not secret_key:
        return None
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return StaticCredentials(access_key, secret_key, token)


def _parse_iso8601(text: str):
    """A timezone-aware datetime from EC2/IMDS ISO 8601 text (``Z`` or offset; naive = local time)."""
    import datetime

    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    if "." in s:  # Python < 3.11 accepts only 3 or 6 fractional digits
        head, _, rest = s.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits):]
        s = f"{head}.{(digits + '000000')[:6]}{tz}"
    dt = datetime.datetime.fromisoformat(s)
    return dt if dt.tzinfo is not None else dt.astimezone()


class InstanceProfileCredentials:
    """The instance profile's role credentials, read through the tool's IMDSv2 client.

    ``imds_get(path) -> str`` GETs ``/latest/<path>`` (``ImdsClient.get``).  Credentials are kept
    in memory and fetched again ``refresh_before`` seconds (5 min) before their Expiration; when
    that refresh fails, credentials that have not expired yet are still used.
    """

    PATH = "meta-data/iam/security-credentials/"

    def __init__(self, imds_get: Callable[[str], str], *, refresh_before: float = 300.0,
                 clock: Callable[[], float] = time.time):
        self._get = imds_get
        self.refresh_before = refresh_before
        self._clock = clock
        self._lock = threading.Lock()
        self._creds: Optional[Credentials] = None
        self._expires = 0.0
        self.role: Optional[str] = None
        self.fetches = 0

    @property
    def expiration(self) -> float:
        """Expiration of the cached credentials (epoch seconds; 0 when none)."""
        return self._expires

    def __call__(self) -> Credentials:
        with self._lock:
            now = self._clock()
            if self._creds is not None and now < self._expires - self.refresh_before:
                return self._creds
            try:
                creds, expires = self._fetch()
            except Exception as exc:  # noqa: BLE001 - IMDS errors of any kind
                if self._creds is not None and now < self._expires:
                    return self._creds  # refresh failed, the old ones are still valid
                raise FastCredentialsError(f"no instance profile credentials from the metadata service: "
                                           f"{type(exc).__name__}: {exc}") from exc
            self._creds, self._expires = creds, expires
            return creds

    def _fetch(self) -> Tuple[Credentials, float]:
        import json

        self.fetches += 1
        roles = [line.strip() for line in self._get(self.PATH).splitlines() if line.strip()]
        if not roles:
            raise ValueError("the instance has no IAM role (instance profile)")
        self.role = roles[0]
        doc = json.loads(self._get(self.PATH + self.role))
        if not isinstance(doc, dict):
            raise ValueError("role credentials are not a JSON object")
        if doc.get("Code", "Success") != "Success":
            raise ValueError(f"role credentials: Code {doc.get('Code')!r}: {doc.get('Message', '')}")
        missing = [k for k in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration") if not doc.get(k)]
        if missing:
            raise ValueError(f"role credentials lack {', '.join(missing)}")
        expires = _parse_iso8601(str(doc["Expiration"])).timestamp()
        return (str(doc["AccessKeyId"]), str(doc["SecretAccessKey"]), str(doc["Token"])), expires


# ------------------------------------------------------------------------------------ endpoints

# botocore's partitions.json (region regex -> DNS suffix); EC2's rule set gives
# https://ec2.{region}.{dnsSuffix} without FIPS or dual-stack.  Unmatched regions: "aws".
_PARTITIONS: Tuple[Tuple[str, str], ...] = (
    (r"^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$", "amazonaws.com"),
    (r"^cn\-\w+\-\d+$", "amazonaws.com.cn"),
    (r"^eusc\-(de)\-\w+\-\d+$", "amazonaws.eu"),
    (r"^us\-iso\-\w+\-\d+$", "c2s.ic.gov"),
    (r"^us\-isob\-\w+\-\d+$", "sc2s.sgov.gov"),
    (r"^eu\-isoe\-\w+\-\d+$", "cloud.adc-e.uk"),
    (r"^us\-isof\-\w+\-\d+$", "csp.hci.ic.gov"),
    (r"^us\-gov\-\w+\-\d+$", "amazonaws.com"),
)


def _dns_suffix(region: str) -> Optional[str]:
    import re

    for pattern, suffix in _PARTITIONS:
        if re.match(pattern, region):
            return suffix
    return None


def default_endpoint(region: str) -> str:
    """The EC2 endpoint botocore resolves for ``region`` (no FIPS, no dual-stack)."""
    return f"https://ec2.{region}.{_dns_suffix(region) or 'amazonaws.com'}"


def _true(value: Optional[str]) -> bool:
    return (value or "").strip().lower() == "true"


def resolve_endpoint(settings: Any, environ: Optional[Mapping[str, str]] = None,
                     region: Optional[str] = None) -> Optional[str]:
    """The EC2 endpoint URL, in botocore's order: the client's ``endpoint_url`` (the tool's
    ``[aws] endpoint-url``), then AWS_ENDPOINT_URL_EC2, then AWS_ENDPOINT_URL (both ignored when
    AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true), then the region's default (None without a region)."""
    env = os.environ if environ is None else environ
    configured = getattr(settings, "endpoint_url", None)
    if configured:
        return configured
    if not _true(env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")):
        for name in ("AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"):
            if env.get(name):
                return env[name]
    return default_endpoint(region) if region else None


# ------------------------------------------------------------------------------------ fast path?

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_FORBIDDEN_VARS = (
    ("AWS_PROFILE", "a profile is selected"),
    ("AWS_DEFAULT_PROFILE", "a profile is selected"),
    ("AWS_WEB_IDENTITY_TOKEN_FILE", "web identity credentials are configured"),
    ("AWS_ROLE_ARN", "a role to assume is configured"),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "container credentials are configured"),
    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "container credentials are configured"),
)


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def _expand(path: str, env: Mapping[str, str]) -> str:
    if path == "~" or path.startswith("~/"):
        return _home(env) + path[1:]
    return os.path.expanduser(path)


def _file_has_content(path: str) -> bool:
    """True when ``path`` may hold settings: an existing file that is not empty (/dev/null is
    empty; anything that cannot be checked counts as content)."""
    import stat

    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    if stat.S_ISREG(st.st_mode):
        return st.st_size > 0
    if stat.S_ISCHR(st.st_mode):
        try:
            return not os.path.samefile(path, os.devnull)
        except OSError:
            return True
    return True


def fast_path_allowed(settings: Any, environ: Optional[Mapping[str, str]] = None,
                      region: Optional[str] = None) -> Tuple[bool, str]:
    """(allowed, reason): True only where botocore would sign with the same credentials and call
    the same endpoint the same way, i.e. env credentials or the instance profile, no proxy.

    ``settings``: the tool's ``[aws]`` settings (``config.AwsSettings``: ``profile``, ``role_arn``,
    ``endpoint_url``); ``environ``: the environment (default ``os.environ``); ``region``: when
    given, also checked (a region of no known partition is left to botocore)."""
    env = os.environ if environ is None else environ
    if getattr(settings, "profile", None):
        return False, "[aws] profile is set"
    if getattr(settings, "role_arn", None):
        return False, "[aws] role-arn is set"
    for name, why in _FORBIDDEN_VARS:
        if env.get(name):
            return False, f"{name} is set: {why}"
    for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        if _true(env.get(name)):
            return False, f"{name}=true"
    for name in _PROXY_VARS:
        if env.get(name):
            return False, f"{name} is set: proxies are botocore's"
    config_file = _expand(env.get("AWS_CONFIG_FILE") or "~/.aws/config", env)
    if _file_has_content(config_file):
        return False, f"shared config file {config_file} is not empty"
    env_creds = credentials_from_env(env) is not None
    if not env_creds:
        if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_SECRET_ACCESS_KEY"):
            return False, "partial credentials in the environment"
        creds_file = _expand(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", env)
        if _file_has_content(creds_file):
            return False, f"shared credentials file {creds_file} is not empty"
        if env.get("AWS_CREDENTIAL_FILE"):
            return False, "AWS_CREDENTIAL_FILE is set"
        boto = [env["BOTO_CONFIG"]] if env.get("BOTO_CONFIG") else ["/etc/boto.cfg", "~/.boto"]
        for path in boto:
            if _file_has_content(_expand(path, env)):
                return False, f"boto config file {path} is not empty"
    endpoint = resolve_endpoint(settings, env, region)
    if endpoint is not None:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(endpoint)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return False, f"endpoint {endpoint!r} is not a valid URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False, f"endpoint {endpoint!r} is not an http(s) URL"
    if region is not None and endpoint == default_endpoint(region) and _dns_suffix(region) is None:
        return False, f"region {region!r} is in no known partition"
    return True, "environment credentials" if env_creds else "instance profile credentials"


def client_from_settings(settings: Any, region: str, *, imds_get: Optional[Callable[[str], str]] = None,
                         environ: Optional[Mapping[str, str]] = None,
                         connect_timeout: float = CONNECT_TIMEOUT,
                         read_timeout: float = READ_TIMEOUT) -> Tuple[Optional["FastEc2Client"], str]:
    """(client, reason): a FastEc2Client when the fast path is allowed, else (None, why not).

    Credentials: the environment's, else the instance profile's through ``imds_get`` (without
    ``imds_get`` and without environment credentials: no fast client)."""
    env = os.environ if environ is None else environ
    ok, reason = fast_path_allowed(settings, env, region)
    if not ok:
        return None, reason
    creds: Optional[CredentialsProvider] = credentials_from_env(env)
    if creds is None:
        if imds_get is None:
            return None, "no environment credentials and no metadata service to read the instance profile"
        creds = InstanceProfileCredentials(imds_get)
    client = FastEc2Client(region, resolve_endpoint(settings, env, region), creds,
                           connect_timeout=connect_timeout, read_timeout=read_timeout,
                           ca_bundle=env.get("AWS_CA_BUNDLE") or "")
    return client, reason


# ------------------------------------------------------------------------------------ requests


def serialize(operation: str, params: Mapping[str, Any]) -> Tuple[str, bytes]:
    """(API name, form body) of a call, as botocore's EC2 serializer writes it."""
    from urllib.parse import urlencode

    try:
        action, members, required, _ = _OPERATIONS[operation]
    except KeyError:
        raise FastParamValidationError(f"unsupported operation {operation!r}") from None
    problems = [f"Missing required parameter: {name!r}" for name in required if name not in params]
    pairs: List[Tuple[str, str]] = [("Action", action), ("Version", API_VERSION)]
    for name, value in params.items():
        spec = members.get(name)
        if spec is None:
            problems.append(f"Unknown parameter: {name!r}, must be one of: {', '.join(members)}")
            continue
        kind, _, wire = spec.partition(":")
        wire = wire or name
        if kind == "s":
            if isinstance(value, str):
                pairs.append((wire, value))
                continue
        elif kind == "b":
            if isinstance(value, bool):
                pairs.append((wire, "true" if value else "false"))
                continue
        elif kind == "i":
            if isinstance(value, int):
                pairs.append((wire, str(int(value))))
                continue
        elif kind == "L":
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                pairs.extend((f"{wire}.{i}", v) for i, v in enumerate(value, 1))
                continue
        elif kind == "F":
            bad = _filters_problem(value)
            if bad is None:
                for i, flt in enumerate(value, 1):
                    for key, val in flt.items():
                        if key == "Name":
                            pairs.append((f"{wire}.{i}.Name", val))
                        else:
                            pairs.extend((f"{wire}.{i}.Value.{j}", v) for j, v in enumerate(val, 1))
                continue
            problems.append(f"Invalid type for parameter {name}: {bad}")
            continue
        problems.append(f"Invalid type for parameter {name}, value: {value!r}, type: {type(value).__name__}")
    if problems:
        raise FastParamValidationError("Parameter validation failed:\n" + "\n".join(problems))
    return action, urlencode(pairs).encode("utf-8")


def _filters_problem(value: Any) -> Optional[str]:
    if not isinstance(value, (list, tuple)):
        return f"{value!r} is not a list"
    for flt in value:
        if not isinstance(flt, dict):
            return f"filter {flt!r} is not a dict"
        for key, val in flt.items():
            if key == "Name":
                if not isinstance(val, str):
                    return f"filter name {val!r} is not a string"
            elif key == "Values":
                if not isinstance(val, (list, tuple)) or not all(isinstance(v, str) for v in val):
                    return f"filter values {val!r} are not a list of strings"
            else:
                return f"unknown filter key {key!r}"
    return None


def _host_header(scheme: str, hostname: str, port: Optional[int]) -> str:
    """The Host value botocore signs: lower case, [IPv6], no default port."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return host


_KEY_CACHE: Dict[Tuple[str, str, str, str], bytes] = {}


def sigv4_headers(host: str, path: str, body: bytes, region: str, credentials: Credentials,
                  amz_date: Optional[str] = None, *, service: str = SERVICE,
                  content_type: str = CONTENT_TYPE) -> Dict[str, str]:
    """The SigV4 headers of a POST (X-Amz-Date, [X-Amz-Security-Token], Authorization), signed
    over content-type, host, x-amz-date [and x-amz-security-token] as botocore's SigV4Auth does."""
    import hashlib
    import hmac
    from urllib.parse import quote

    access_key, secret_key, token = credentials
    if amz_date is None:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    day = amz_date[:8]
    signed = {"content-type": content_type, "host": host, "x-amz-date": amz_date}
    if token:
        signed["x-amz-security-token"] = token
    names = sorted(signed)
    canonical_headers = "".join(f"{k}:{' '.join(signed[k].split())}\n" for k in names)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(["POST", quote(path or "/", safe="/~"), "", canonical_headers,
                                   signed_headers, hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                                hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])
    cache_key = (secret_key, day, region, service)
    key = _KEY_CACHE.get(cache_key)
    if key is None:
        key = ("AWS4" + secret_key).encode("utf-8")
        for part in (day, region, service, "aws4_request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        if len(_KEY_CACHE) > 8:
            _KEY_CACHE.clear()
        _KEY_CACHE[cache_key] = key
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out = {"X-Amz-Date": amz_date}
    if token:
        out["X-Amz-Security-Token"] = token
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                            f"SignedHeaders={signed_headers}, Signature={signature}")
    return out


# ------------------------------------------------------------------------------------ responses


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _scalar(tag: str, text: Optional[str]) -> Any:
    text = text or ""
    if tag in _BOOLEANS:
        return text == "true"
    if tag in _INTEGERS:
        return int(text)
    if tag in _TIMESTAMPS:
        try:
            return _parse_iso8601(text)
        except ValueError:
            return text
    return text


def _structure(node: Any, container: str) -> Dict[str, Any]:
    """Children of ``node`` as a dict; ``container``: the tag of the list ``node`` is an item of
    (or ``node``'s own tag)."""
    out: Dict[str, Any] = {}
    for child in node:
        tag = _local(child.tag)
        key, value = _member(child, tag, container)
        out[key] = value
    return out


def _member(node: Any, tag: str, container: str) -> Tuple[str, Any]:
    spec = _LISTS.get(tag)
    if spec is not None:
        key = _LIST_KEY_OVERRIDES.get((container, tag), spec[0])
        if spec[1] == "d":
            return key, [_structure(item, tag) for item in node if _local(item.tag) == "item"]
        return key, [item.text or "" for item in node if _local(item.tag) == "item"]
    key = tag[:1].upper() + tag[1:]
    if tag in _STRUCTURES:
        return key, _structure(node, tag)
    if len(node) == 0:
        if tag.endswith("Set") and tag not in _BOOLEANS:  # a list botocore's model does not know (yet)
            return key, []
        return key, _scalar(tag, node.text)
    # something botocore's model does not know (yet): keep it, shaped as well as can be guessed
    if all(_local(c.tag) == "item" for c in node):
        return key, [_structure(c, tag) if len(c) else (c.text or "") for c in node]
    return key, _structure(node, tag)


def _metadata(status: int, headers: Sequence[Tuple[str, str]],
              request_id: Optional[str]) -> Dict[str, Any]:
    meta: Dict[str, Any] = {}
    if request_id:
        meta["RequestId"] = request_id
    meta["HTTPStatusCode"] = status
    joined: Dict[str, str] = {}
    for name, value in headers:  # repeated headers joined with ", " (as urllib3 does)
        name = name.lower()
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    meta["HTTPHeaders"] = joined
    meta["RetryAttempts"] = 0
    return meta


def parse_response(operation: str, status: int, headers: Sequence[Tuple[str, str]],
                   body: bytes) -> Dict[str, Any]:
    """The dict botocore returns for a successful answer of ``operation`` (snake_case name)."""
    import xml.etree.ElementTree as ET

    _, _, _, outputs = _OPERATIONS[operation]
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise FastResponseParserError(f"unable to parse the {METHOD_TO_API_MAPPING[operation]} answer "
                                      f"(HTTP {status}): {exc}: {body[:200]!r}") from None
    nodes = {}
    request_id = None
    for child in root:
        tag = _local(child.tag)
        nodes.setdefault(tag, child)
        if tag in ("requestId", "RequestId", "RequestID") and request_id is None:
            request_id = child.text
    result: Dict[str, Any] = {}
    try:
        for tag in outputs:
            node = nodes.get(tag)
            if node is not None:
                key, value = _member(node, tag, _local(root.tag))
                result[key] = value
    except ValueError as exc:
        raise FastResponseParserError(f"unexpected value in the {METHOD_TO_API_MAPPING[operation]} "
                                      f"answer: {exc}") from None
    result["ResponseMetadata"] = _metadata(status, headers, request_id)
    return result


def parse_error(status: int, headers: Sequence[Tuple[str, str]], body: bytes,
                reason: str = "") -> Dict[str, Any]:
    """botocore's error dict for an EC2 error answer: {"Error": {"Code", "Message"},
    "ResponseMetadata": {...}}; a body that is no EC2 error XML gives Code ``HTTP<status>``."""
    import xml.etree.ElementTree as ET

    code = message = request_id = None
    try:
        root = ET.fromstring(body) if body.strip() else None
    except ET.ParseError:
        root = None
    if root is not None:
        for node in root.iter():
            tag = _local(node.tag)
            if tag == "Error" and code is None:
                for field in node:
                    ftag = _local(field.tag)
                    if ftag == "Code":
                        code = field.text or ""
                    elif ftag == "Message":
                        message = field.text or ""
            elif tag in ("RequestID", "RequestId", "requestId") and request_id is None:
                request_id = node.text
    if not code:
        import http.client

        code = f"HTTP{status}"
        message = reason or http.client.responses.get(status, "") or body[:200].decode("utf-8", "replace")
    return {"Error": {"Code": code, "Message": message or ""},
            "ResponseMetadata": _metadata(status, headers, request_id)}


# ------------------------------------------------------------------------------------ the client


class ClientMeta:
    """The parts of botocore's ``client.meta`` the tool reads."""

    def __init__(self, region_name: str, endpoint_url: str):
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self.method_to_api_mapping: Dict[str, str] = dict(METHOD_TO_API_MAPPING)
        self.service_name = SERVICE


_SSL_CONTEXTS: Dict[Optional[str], Any] = {}
_SSL_LOCK = threading.Lock()


def _ssl_context(ca_bundle: Optional[str]) -> Any:
    with _SSL_LOCK:
        ctx = _SSL_CONTEXTS.get(ca_bundle)
        if ctx is None:
            import ssl

            ctx = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
            _SSL_CONTEXTS[ca_bundle] = ctx
        return ctx


def _stale(conn: Any) -> bool:
    """An idle keep-alive connection the server has closed (readable: EOF or stray bytes)."""
    import select

    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class FastEc2Client:
    """botocore-compatible EC2 client for the operations in METHOD_TO_API_MAPPING (see the module
    docstring).  Thread-safe; call :meth:`close` (or use ``with``) to drop idle connections.

    ``region``; ``endpoint_url`` (None: the region's default, as botocore resolves it);
    ``credentials``: a callable returning (access key, secret key, session token or None), called
    for every request (None: the environment's, else FastCredentialsError); ``connect_timeout``
    (TCP + TLS handshake) and ``read_timeout`` (each wait for the answer), in seconds;
    ``ca_bundle``: CA file for HTTPS (None: AWS_CA_BUNDLE if set; "" or unset: the system's CAs).
    """

    def __init__(self, region: str, endpoint_url: Optional[str] = None,
                 credentials: Optional[CredentialsProvider] = None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT, *, ca_bundle: Optional[str] = None,
                 user_agent: str = USER_AGENT, max_idle: int = MAX_IDLE_CONNECTIONS):
        from urllib.parse import urlsplit

        if not region:
            raise ValueError("FastEc2Client needs a region")
        endpoint_url = endpoint_url or default_endpoint(region)
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid EC2 endpoint {endpoint_url!r}: expected http(s)://host[:port][/path]")
        if credentials is None:
            credentials = credentials_from_env()
            if credentials is None:
                raise FastCredentialsError("no credentials given and none in the environment")
        self.region = region
        self.endpoint_url = endpoint_url
        self.meta = ClientMeta(region, endpoint_url)
        self._credentials = credentials
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # like botocore: AWS_CA_BUNDLE unless told otherwise ("" = the system's default CAs)
        self.ca_bundle = (os.environ.get("AWS_CA_BUNDLE") or None) if ca_bundle is None else (ca_bundle or None)
        self.user_agent = user_agent
        self.max_idle = max_idle
        self._https = parts.scheme == "https"
        self._hostname = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._host = _host_header(parts.scheme, parts.hostname, parts.port)
        path = parts.path
        # botocore joins the endpoint's path with the operation's "/"
        self._path = "/" if not path or path == "/" else (path if path.endswith("/") else path + "/")
        self._idle: List[Any] = []
        self._lock = threading.Lock()
        self.connections_opened = 0
        self.requests_sent = 0

    # -- operations (same names and keyword arguments as botocore's client)

    def assign_private_ip_addresses(self, **params: Any) -> Dict[str, Any]:
        return self._call("assign_private_ip_addresses", params)

    def replace_route(self, **params: Any) -> Dict[str, Any]:
        return self._call("replace_route", params)

    def create_route(self, **params: Any) -> Dict[str, Any]:
        return self._call("create_route", params)

    def associate_address(self, **params: Any) -> Dict[str, Any]:
        return self._call("associate_address", params)

    def describe_network_interfaces(self, **params: Any) -> Dict[str, Any]:
        return self._call("describe_network_interfaces", params)

    def describe_route_tables(self, **params: Any) -> Dict[str, Any]:
        return self._call("describe_route_tables", params)

    def describe_subnets(self, **params: Any) -> Dict[str, Any]:
        return self._call("describe_subnets", params)

    def describe_addresses(self, **params: Any) -> Dict[str, Any]:
        return self._call("describe_addresses", params)

    # -- plumbing

    def __enter__(self) -> "FastEc2Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FastEc2Client(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def close(self) -> None:
        """Close the idle connections (connections in use close when their call ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _call(self, operation: str, params: Dict[str, Any]) -> Dict[str, Any]:
        action, body = serialize(operation, params)
        try:
            creds = self._credentials()
        except FastEc2Error:
            raise
        except Exception as exc:  # noqa: BLE001 - a provider's own failure
            raise FastCredentialsError(f"credentials provider failed: {type(exc).__name__}: {exc}") from exc
        if not creds or not creds[0] or not creds[1]:
            raise FastCredentialsError("the credentials provider returned no access key / secret key")
        headers = {
            "Host": self._host,
            "Content-Type": CONTENT_TYPE,
            "User-Agent": self.user_agent,
        }
        headers.update(sigv4_headers(self._host, self._path, body, self.region, creds))
        status, reason, resp_headers, data = self._send(action, body, headers)
        if 200 <= status < 300:
            return parse_response(operation, status, resp_headers, data)
        raise FastClientError(parse_error(status, resp_headers, data, reason), action)

    def _new_connection(self) -> Any:
        import http.client

        if self._https:
            return http.client.HTTPSConnection(self._hostname, self._port, timeout=self.connect_timeout,
                                               context=_ssl_context(self.ca_bundle))
        return http.client.HTTPConnection(self._hostname, self._port, timeout=self.connect_timeout)

    def _checkout(self) -> Any:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new_connection()
            if _stale(conn):
                conn.close()
                continue
            return conn

    def _checkin(self, conn: Any) -> None:
        if conn.sock is None:  # the server said Connection: close; nothing to keep
            return
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _exchange(self, conn: Any, body: bytes, headers: Dict[str, str]) -> _Answer:
        import socket

        if conn.sock is None:
            conn.timeout = self.connect_timeout
            try:
                conn.connect()
            except socket.timeout as exc:
                raise FastConnectTimeoutError(
                    f"connect timeout ({self.connect_timeout:g}s) to {self.endpoint_url}") from exc
            with self._lock:
                self.connections_opened += 1
            conn.sock.settimeout(self.read_timeout)
        conn.request("POST", self._path, body=body, headers=headers)
        with self._lock:
            self.requests_sent += 1
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.reason, resp.getheaders(), data

    def _send(self, action: str, body: bytes, headers: Dict[str, str]) -> _Answer:
        import http.client
        import socket

        conn = self._checkout()
        try:
            reused = conn.sock is not None
            try:
                result = self._exchange(conn, body, headers)
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.BadStatusLine):
                # includes RemoteDisconnected: a keep-alive connection the server had dropped
                if not reused:
                    raise
                conn.close()
                result = self._exchange(conn, body, headers)  # once, on a new connection
        except FastConnectionError as exc:
            conn.close()
            exc.endpoint, exc.operation_name = self.endpoint_url, action
            raise
        except socket.timeout as exc:
            conn.close()
            raise FastReadTimeoutError(f"{action}: no answer from {self.endpoint_url} within "
                                       f"{self.read_timeout:g}s (read timeout)",
                                       self.endpoint_url, action) from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise FastConnectionError(f"{action}: {self.endpoint_url}: {text}", self.endpoint_url, action) from exc
        except BaseException:
            conn.close()
            raise
        self._checkin(conn)
        return result
