"""AWS client construction (EC2, and Route 53 when a group needs it), calls with retries
under a deadline, and batched reads.

botocore is the only AWS client. It is imported lazily, only by the commands that talk to
AWS, and loads the trimmed model of botomodel.py when one is cached. A client of another
service than EC2 is made on first use (Ec2.for_service), with the same settings. Retries are ours, not
botocore's: every attempt is checked against the transition's deadline and against
supersession, and the attempt count is reported when it fails. A problem in the client's
own set-up (a missing profile, an unreadable CA bundle, ...) fails at once: no retry helps.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .config import AwsSettings
from .deadline import Deadline

from .logsetup import log

THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled", "SlowDown",
    "PriorRequestNotComplete", "EC2ThrottledException", "BandwidthLimitExceeded",
})
TRANSIENT_CODES = frozenset({
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
    "RequestTimeoutException", "IDPCommunicationError", "TransactionInProgressException",
})
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 10.0


class AwsError(Exception):
    """An EC2 call that failed for good: names the operation, the AWS code and the attempts."""

    def __init__(self, operation: str, code: str, message: str, attempts: int):
        self.operation = operation
        self.code = code
        self.message = message
        self.attempts = attempts
        tries = f" ({attempts} attempt{'s' if attempts != 1 else ''})" if attempts else ""
        super().__init__(f"{operation} failed: {code}: {message}{tries}")


class Superseded(Exception):
    """A later transition of the same group was recorded: start no further write."""


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "") or type(exc).__name__)
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "") or exc)
    return str(exc) or type(exc).__name__


def _retryable_answer(exc: Any) -> bool:
    code = error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in THROTTLING_CODES or code in TRANSIENT_CODES or status >= 500 or status == 429


def _certificate_rejected(exc: Any) -> bool:
    """A TLS failure that no retry can fix: the endpoint's certificate is not trusted, or
    the CA bundle cannot be read or holds no certificate."""
    import ssl

    error = getattr(exc, "kwargs", {}).get("error")  # urllib3's SSLError, wrapping the cause
    cause = error.args[0] if error is not None and error.args and isinstance(error.args[0], BaseException) else error
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    if isinstance(cause, ssl.SSLError):
        return getattr(cause, "library", None) in ("X509", "PEM")
    return isinstance(cause, OSError)  # the bundle file itself: missing, a directory, unreadable


def is_retryable(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError, SSLError
    from botocore.parsers import ResponseParserError

    if isinstance(exc, ClientError):
        return _retryable_answer(exc)
    if isinstance(exc, SSLError) and _certificate_rejected(exc):
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ResponseParserError, OSError))


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: 50 ms base, 2 s cap."""
    import random

    return random.uniform(0, min(2.0, 0.05 * 2 ** attempt))


class Ec2:
    """A botocore EC2 client bound to a deadline and an optional supersession check.

    ``clients(service)`` makes the botocore client of another service (plan.other_clients);
    for_service wraps it the same way, once, on first use."""

    def __init__(self, client: Any, deadline: Deadline,
                 still_current: Optional[Callable[[], bool]] = None,
                 clients: Optional[Callable[[str], Any]] = None):
        self.client = client
        self.deadline = deadline
        self.still_current = still_current or (lambda: True)
        self.throttled = 0  # throttled answers received
        self._lock = threading.Lock()
        self._clients = clients
        self._services: Dict[str, "Ec2"] = {}
        self._making = threading.Lock()  # not self._lock: calls go on while a client is made

    def for_service(self, service: str) -> "Ec2":
        """The same deadline, supersession check and call tally, for ``service`` (e.g. route53)."""
        with self._making:
            if service not in self._services:
                if self._clients is None:
                    raise AwsError(f"creating the {service} client", "NoClient",
                                   f"no {service} client can be made here", 0)
                other = Ec2(self._clients(service), self.deadline, self.still_current)
                other._lock = self._lock
                self._services[service] = other
            return self._services[service]

    def call(self, operation: str, write: bool = False, **params: Any) -> Dict[str, Any]:
        """Call ``operation`` (botocore snake_case name), retrying transient errors until the deadline.

        Every attempt first waits for its token in the client-side bucket of its class
        (ratelimit.py), so a large group never fires more than EC2's buckets accept."""
        from .ratelimit import bucket

        method = getattr(self.client, operation)
        api_name = self.client.meta.method_to_api_mapping.get(operation, operation)
        tokens = bucket(api_name, getattr(self.client.meta, "service_model", None) and
                        self.client.meta.service_model.service_name or "ec2")
        attempts = 0
        last: Optional[BaseException] = None
        while True:
            if write and not self.still_current():
                raise Superseded(api_name)
            wait = tokens.reserve()
            if wait >= self.deadline.remaining():
                tokens.give_back()
                break
            if wait:
                time.sleep(wait)
                if write and not self.still_current():
                    raise Superseded(api_name)
            attempts += 1
            try:
                return method(**params)
            except Exception as exc:  # classified below
                if not is_retryable(exc):
                    raise AwsError(api_name, error_code(exc), error_message(exc), attempts) from exc
                last = exc
                code = error_code(exc)
                log.debug("%s attempt %d: %s, retrying", api_name, attempts, code)
                throttled = code in THROTTLING_CODES
                if throttled:
                    tokens.drain()  # the account's bucket is empty: queue behind its refill
                    with self._lock:
                        self.throttled += 1
                # throttled: the token bucket paces the retry; otherwise back off
                pause = backoff(0 if throttled else attempts)
                if pause >= self.deadline.remaining():
                    break
                time.sleep(pause)
        if last is None:
            raise AwsError(api_name, "DeadlineExceeded",
                           f"deadline of {self.deadline.seconds:g}s reached before the call", attempts)
        raise AwsError(api_name, error_code(last),
                       f"{error_message(last)}; gave up at the {self.deadline.seconds:g}s deadline",
                       attempts)

    def paginate(self, operation: str, key: str, **params: Any) -> List[Dict[str, Any]]:
        items: List[Dict[str, Any]] = []
        token: Optional[str] = None
        while True:
            page = self.call(operation, **params, **({"NextToken": token} if token else {}))
            items.extend(page.get(key, []))
            token = page.get("NextToken")
            if not token:
                return items


# Sessions made ahead of a transition by the standby process (standby.py): creating one costs
# ~10 ms of registering handlers. Each is used once, by one forked child, untouched before: a
# new session reads nothing but AWS_EXECUTION_ENV (for its user agent) from the environment.
_SESSIONS_MADE_AHEAD: List[Tuple[Optional[str], Any]] = []


def make_session_ahead() -> None:
    import botocore.session

    _SESSIONS_MADE_AHEAD.append((os.environ.get("AWS_EXECUTION_ENV"), botocore.session.get_session()))


def _new_session() -> Any:
    import botocore.session

    if _SESSIONS_MADE_AHEAD:
        execution_env, session = _SESSIONS_MADE_AHEAD.pop()
        if execution_env == os.environ.get("AWS_EXECUTION_ENV"):
            return session
    return botocore.session.get_session()


def _session(settings: AwsSettings):
    session = _new_session()
    if settings.profile:
        session.set_config_variable("profile", settings.profile)
    session.set_config_variable("metadata_service_timeout", 1)
    session.set_config_variable("metadata_service_num_attempts", 3)
    return session


def _assume_role(session, settings: AwsSettings, region: str, data_loader: Any) -> None:
    """Make ``session`` use refreshable AssumeRole credentials for settings.role_arn.

    The source credentials (and the STS client) come from a session of their own: a
    session caches the first credentials it resolves, so ``session`` must not resolve any
    before the AssumeRole provider is first in its chain."""
    from botocore.credentials import (AssumeRoleCredentialFetcher, CredentialProvider,
                                      DeferredRefreshableCredentials)

    source_session = _session(settings)
    if data_loader is not None:
        source_session.register_component("data_loader", data_loader)
    source = source_session.get_credentials()
    if source is None:
        raise AwsError("AssumeRole", "NoCredentials", "no source credentials to assume "
                       f"{settings.role_arn} with", 0)

    def create_sts(service_name: str, **kwargs: Any) -> Any:
        kwargs.setdefault("region_name", region)
        return source_session.create_client(service_name, **kwargs)

    fetcher = AssumeRoleCredentialFetcher(
        client_creator=create_sts, source_credentials=source, role_arn=settings.role_arn,
        extra_args={"RoleSessionName": "aws-vrrp-notify"})

    class AssumeRoleProvider(CredentialProvider):
        METHOD = "assume-role"

        def load(self):
            return DeferredRefreshableCredentials(method=self.METHOD, refresh_using=fetcher.fetch_credentials)

    # first in the chain (with a profile set, botocore has dropped its "env" provider)
    session.get_component("credential_provider").providers.insert(0, AssumeRoleProvider())


def client_timeouts(deadline: Deadline) -> Tuple[float, float]:
    budget = deadline.seconds or 30.0
    return min(CONNECT_TIMEOUT, max(0.5, budget / 4)), min(READ_TIMEOUT, max(1.0, budget / 3))


# The [aws] key naming each service's endpoint (botocore's AWS_ENDPOINT_URL_<SERVICE> otherwise).
ENDPOINT_SETTINGS = {"ec2": "endpoint_url", "route53": "route53_endpoint_url"}
# Global services: one endpoint per partition, signed for the region botocore's endpoint
# data gives it (us-east-1 in the aws partition), whatever the instance's region.
GLOBAL_SERVICES = frozenset({"route53"})
SERVICE_LABELS = {"ec2": "EC2", "route53": "Route 53"}


def creating(service: str) -> str:
    return f"creating the {SERVICE_LABELS.get(service, service)} client"


def make_client(settings: AwsSettings, region: str, deadline: Deadline, store: Any = None,
                service: str = "ec2") -> Any:
    """botocore's client of ``service`` (EC2 by default), from the trimmed model cached for
    ``store`` (botomodel.cache_root) when there is one. Raises AwsError at once when the
    client cannot be set up."""
    import gc

    collecting = gc.isenabled()  # keepalived's one-shot calls run without the cyclic GC (__main__.py)
    gc.disable()  # importing botocore allocates a lot, nothing worth a collection
    try:
        from botocore.exceptions import BotoCoreError

        try:
            return _botocore_client(settings, region, deadline, store, service)
        except BotoCoreError as exc:  # a missing profile, bad shared config, ...: an error, not a crash
            raise AwsError(creating(service), type(exc).__name__, str(exc), 0) from exc
    finally:
        if collecting:
            gc.freeze()  # a long-running reader (fifo) never walks botocore's objects again
            gc.enable()


def _botocore_client(settings: AwsSettings, region: str, deadline: Deadline, store: Any, service: str) -> Any:
    from json import JSONDecodeError

    from botocore.exceptions import DataNotFoundError, UnknownServiceError

    from . import botomodel

    root = botomodel.cache_root(store) if store is not None else None
    trimmed = botomodel.loader(root) if root else None
    if trimmed is not None:
        try:
            client = _make_client(settings, region, deadline, trimmed, service)
            log.debug("botocore model: the trimmed copy in %s (%s client)", root, service)
            return client
        except (DataNotFoundError, UnknownServiceError, KeyError, JSONDecodeError, UnicodeDecodeError) as exc:
            log.debug("trimmed botocore model in %s unusable (%s); using botocore's own", root, exc)
            botomodel.discard(root)
    log.debug("botocore model: botocore's full data (no usable trimmed copy cached) (%s client)", service)
    return _make_client(settings, region, deadline, None, service)


def _global_region(session: Any, service: str, region: str) -> str:
    """The region botocore's endpoint data signs a global service for from ``region``'s
    partition (route53: us-east-1, cn-northwest-1, us-gov-west-1, ...): also right behind a
    custom endpoint, where botocore would sign for the instance's region."""
    from botocore.regions import EndpointResolver

    endpoint = EndpointResolver(session.get_component("data_loader").load_data("endpoints")) \
        .construct_endpoint(service, region)
    return ((endpoint or {}).get("credentialScope") or {}).get("region") or region


def _check_ca_bundle(session: Any, service: str) -> None:
    """A CA bundle that cannot serve is a configuration error, reported before any call
    (botocore would only fail at the first HTTPS connection, and every retry the same)."""
    path = session.get_config_variable("ca_bundle")
    if not path:
        return
    import ssl

    where = f"CA bundle {path} (AWS_CA_BUNDLE or the profile's ca_bundle)"
    if not os.path.isfile(path):
        problem = "does not exist" if not os.path.exists(path) else "is not a regular file"
        raise AwsError(creating(service), "InvalidCABundle", f"{where} {problem}", 0)
    try:
        ssl.create_default_context(cafile=path)
    except OSError as exc:  # ssl.SSLError included
        reason = str(exc).split(" (_ssl.c:")[0]
        raise AwsError(creating(service), "InvalidCABundle", f"{where} cannot be used: {reason}", 0) from None


def _make_client(settings: AwsSettings, region: str, deadline: Deadline, data_loader: Any,
                 service: str = "ec2") -> Any:
    from botocore.config import Config

    session = _session(settings)
    if data_loader is not None:
        session.register_component("data_loader", data_loader)
    _check_ca_bundle(session, service)
    if settings.role_arn:
        _assume_role(session, settings, region, data_loader)
    if service in GLOBAL_SERVICES:
        region = _global_region(session, service, region)
    connect_timeout, read_timeout = client_timeouts(deadline)
    config = Config(
        region_name=region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1},  # ours: see Ec2.call
        max_pool_connections=16,
        user_agent_extra="aws-vrrp-notify",
    )
    kwargs: Dict[str, Any] = {"config": config}
    endpoint_url = getattr(settings, ENDPOINT_SETTINGS.get(service, ""), None)
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return session.create_client(service, **kwargs)


# ---------------------------------------------------------------- batched reads


class Snapshot:
    """What AWS says now, fetched with one (paginated) describe call per resource kind."""

    def __init__(self) -> None:
        self.enis: Dict[str, Dict[str, Any]] = {}
        self.route_tables: List[Dict[str, Any]] = []
        self.subnets: List[Dict[str, Any]] = []
        self.addresses: List[Dict[str, Any]] = []
        # (hosted zone id, name, type) -> the record set, None when it does not exist
        self.records: Dict[Tuple[str, str, str], Optional[Dict[str, Any]]] = {}

    def route_table(self, rtb_id: str) -> Optional[Dict[str, Any]]:
        return next((t for t in self.route_tables if t["RouteTableId"] == rtb_id), None)

    def subnet_id_for(self, ref: str, vpc_id: str) -> Optional[str]:
        if ref.startswith("subnet-"):
            return ref
        return next((s["SubnetId"] for s in self.subnets
                     if s.get("CidrBlock") == ref and s.get("VpcId") == vpc_id), None)

    def table_for_subnet(self, subnet_id: str, vpc_id: str) -> Optional[str]:
        """The explicitly associated table, else the VPC's main table."""
        main = None
        for table in self.route_tables:
            if table.get("VpcId") != vpc_id:
                continue
            for assoc in table.get("Associations", []):
                if assoc.get("SubnetId") == subnet_id:
                    return table["RouteTableId"]
                if assoc.get("Main"):
                    main = table["RouteTableId"]
        return main

    def holder_of_ip(self, ip: str) -> Optional[str]:
        for eni_id, eni in self.enis.items():
            if any(p.get("PrivateIpAddress") == ip for p in eni.get("PrivateIpAddresses", [])):
                return eni_id
        return None

    def holder_of_address(self, address: str) -> Optional[str]:
        """The ENI that holds ``address``: one of its private IPv4 or IPv6 addresses, or a
        public IPv4 associated with it (needs "enis", and "addresses" for Elastic IPs)."""
        import ipaddress

        wanted = str(ipaddress.ip_address(address))
        for eni_id, eni in self.enis.items():
            for private in eni.get("PrivateIpAddresses", []):
                if wanted in (private.get("PrivateIpAddress"), (private.get("Association") or {}).get("PublicIp")):
                    return eni_id
            if any(_same_ipv6(a.get("Ipv6Address"), wanted) for a in eni.get("Ipv6Addresses", [])):
                return eni_id
        return next((a.get("NetworkInterfaceId") for a in self.addresses
                     if a.get("PublicIp") == wanted and a.get("NetworkInterfaceId")), None)

    def address(self, allocation_id: Optional[str], public_ip: Optional[str]) -> Optional[Dict[str, Any]]:
        for addr in self.addresses:
            if allocation_id and addr.get("AllocationId") == allocation_id:
                return addr
            if public_ip and addr.get("PublicIp") == public_ip:
                return addr
        return None


def _same_ipv6(found: Optional[str], wanted: str) -> bool:
    import ipaddress

    return bool(found) and ":" in wanted and str(ipaddress.ip_address(found)) == wanted


READ_KINDS = ("enis", "route_tables", "subnets", "addresses", "records")
# The call behind each snapshot kind (API names; the IAM actions are <service>:<name>, the
# service being EC2 unless READ_SERVICES says otherwise).
READ_OPERATIONS = {"enis": "DescribeNetworkInterfaces", "route_tables": "DescribeRouteTables",
                   "subnets": "DescribeSubnets", "addresses": "DescribeAddresses",
                   "records": "ListResourceRecordSets"}
READ_SERVICES = {"records": "route53"}


def read_service(kind: str) -> str:
    return READ_SERVICES.get(kind, "ec2")


def fetch_snapshot(ec2: Ec2, kinds: Iterable[str], vpc_ids: Sequence[str] = (),
                   keys: Optional[Dict[str, Sequence[Any]]] = None) -> Snapshot:
    """Fetch the requested kinds concurrently; the number of calls never depends on the
    number of groups or actions. ``keys``: what a kind reads beyond the VPCs
    (actions.read_keys; "records": (hosted zone, name, type) tuples)."""
    from concurrent.futures import ThreadPoolExecutor

    vpcs = sorted(set(vpc_ids))
    vpc_filter = [{"Name": "vpc-id", "Values": vpcs}]
    snapshot = Snapshot()

    def enis() -> None:
        # Every ENI of the VPCs, not only ours: observing an address must name its holder
        # (another instance, or nobody). Paginated; the count follows the VPC, not the config.
        if vpcs:
            items = ec2.paginate("describe_network_interfaces", "NetworkInterfaces", Filters=vpc_filter,
                                 MaxResults=1000)
            snapshot.enis = {e["NetworkInterfaceId"]: e for e in items}

    def route_tables() -> None:
        if vpcs:
            snapshot.route_tables = ec2.paginate("describe_route_tables", "RouteTables", Filters=vpc_filter)

    def subnets() -> None:
        if vpcs:
            snapshot.subnets = ec2.paginate("describe_subnets", "Subnets", Filters=vpc_filter)

    def addresses() -> None:
        snapshot.addresses = ec2.call("describe_addresses").get("Addresses", [])

    def records() -> None:
        wanted = (keys or {}).get("records", ())
        if wanted:
            from .route53 import read_records

            snapshot.records = read_records(ec2.for_service("route53"), wanted)

    jobs = {"enis": enis, "route_tables": route_tables, "subnets": subnets, "addresses": addresses,
            "records": records}
    wanted = [jobs[k] for k in READ_KINDS if k in set(kinds)]
    if len(wanted) == 1:
        wanted[0]()
    elif wanted:
        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            for future in [pool.submit(job) for job in wanted]:
                future.result()
    return snapshot

