"""health [GROUP...]: for keepalived's vrrp_script, whether a MASTER transition of the groups
could succeed now. Exit 0 when it could, else 1 with one line saying why (on stdout, and to
syslog when the answer changes).

Checks: the configuration and the state directory, the metadata service (an IMDSv2 token
and one GET), every interface of the groups resolving to an ENI, the credentials and the
EC2 endpoint: one DescribeNetworkInterfaces of those ENIs (all listed, attached to this
instance). A good EC2 answer is kept in the state directory's cache for ``max_age``
seconds, during which no AWS call is made (the instance profile's credentials are still
read from the metadata service); a failure is never kept, so the next run asks again.

It answers within ANSWER_WITHIN seconds whatever the network does: the checks run in a
thread, which is abandoned when it has not finished by then. It takes no lock (transitions
never wait for it) and imports botocore only when the cached EC2 answer is too old.
"""

from __future__ import annotations

import os
import threading
import time
TYPE_CHECKING = False  # typing costs milliseconds of a run every few seconds: annotations only
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence

from .logsetup import INFO, WARNING, log

DEFAULT_MAX_AGE = 10.0
MAX_MAX_AGE = 3600.0
BUDGET = 1.2           # seconds for the checks' network calls
ANSWER_WITHIN = 1.7    # seconds after the start: the answer is printed by then (keepalived: within 2 s)
IMDS_CONNECT_TIMEOUT = 0.3
IMDS_READ_TIMEOUT = 0.5
CREDENTIALS_PATH = "meta-data/iam/security-credentials/"
CHAIN_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
KEY_VARIABLES = CHAIN_VARIABLES + ("AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL", "HTTPS_PROXY", "https_proxy",
                                   "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                                   "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


class NotReady(Exception):
    """Why a MASTER transition would fail now (one line)."""


class Verdict:
    __slots__ = ("ready", "text", "abandoned")

    def __init__(self, ready: bool, text: str, abandoned: bool = False):
        self.ready = ready
        self.text = text
        self.abandoned = abandoned  # the checks' thread is still running

    @property
    def line(self) -> str:
        return f"{'ready' if self.ready else 'not ready'}: {self.text}"


def run(config: Optional[str], state: Optional[str], cache: Optional[str], verbosity: int,
        groups: Sequence[str], max_age: float) -> int:
    """The health command: print the verdict, log a change of it, exit 0 (ready) or 1."""
    from .logsetup import START, setup

    setup(verbosity)
    verdict = assess_within(config, state, cache, groups, max_age, START + ANSWER_WITHIN, create=True)
    print(verdict.line, flush=True)
    _log_change(state, cache, groups, verdict)
    if verdict.abandoned:  # leave now: the checks' thread may sit in a DNS lookup or a connect
        os._exit(1)
    return 0 if verdict.ready else 1


def ready_for_metrics(config: Optional[str], state: Optional[str], cache: Optional[str]) -> bool:
    """What `health` says of every group (check --prometheus exports it)."""
    return assess_within(config, state, cache, (), DEFAULT_MAX_AGE, time.monotonic() + ANSWER_WITHIN).ready


def assess_within(config: Optional[str], state: Optional[str], cache: Optional[str], groups: Sequence[str],
                  max_age: float, until: float, create: bool = False) -> Verdict:
    """assess() in a thread, given up at time.monotonic() ``until``; ``create``: make the state
    directory when it is missing (as a transition does), else do without a cache."""
    progress = {"stage": "reading the configuration", "groups": ", ".join(groups) or "every group"}
    result: Dict[str, Verdict] = {}

    def work() -> None:
        try:
            result["verdict"] = assess(config, state, cache, groups, max_age, progress, create)
        except NotReady as exc:
            result["verdict"] = Verdict(False, f"{progress['groups']}: {exc}")
        except Exception as exc:  # a bug must still give keepalived an answer, and say what
            result["verdict"] = Verdict(False, f"{progress['groups']}: unexpected error: {type(exc).__name__}: {exc}")

    worker = threading.Thread(target=work, name="health", daemon=True)
    worker.start()
    worker.join(max(0.1, until - time.monotonic()))
    if "verdict" in result:
        return result["verdict"]
    return Verdict(False, f"{progress['groups']}: no answer within {ANSWER_WITHIN:g} s from {progress['stage']}",
                   abandoned=True)


def assess(config: Optional[str], state: Optional[str], cache: Optional[str], groups: Sequence[str],
           max_age: float, progress: Dict[str, str], create: bool = False) -> Verdict:
    """The checks, in the order a MASTER transition meets them; NotReady at the first failure."""
    from .deadline import Deadline

    deadline = Deadline(BUDGET)
    store = _state(state, cache, create)
    cfg = _configuration(config, store)
    names = list(groups) or sorted(cfg.groups)
    unknown = [n for n in names if n not in cfg.groups]
    if unknown:
        raise NotReady(f"no group {', '.join(unknown)} in {cfg.path} (configured: {', '.join(sorted(cfg.groups))})")
    progress["groups"] = ", ".join(names)
    progress["stage"] = "the metadata service"
    imds, instance = _metadata(deadline, progress)
    progress["stage"] = "the interfaces"
    enis = _enis(imds, store, [a for n in names for a in cfg.groups[n].actions])
    key = _cache_key(cfg.aws, enis)
    good = store.cache_get(key) or {}
    age = time.time() - good.get("time", 0) if isinstance(good.get("time"), (int, float)) else None
    subject = f"{progress['groups']}: {len(enis)} ENI(s) of {instance}"
    if age is not None and 0 <= age < max_age:
        progress["stage"] = "the instance profile's credentials"
        _credentials_without_aws(cfg.aws, imds)
        return Verdict(True, f"{subject}; metadata service answers, EC2 answered {age:.0f} s ago")
    took = _ask_ec2(cfg, imds, store, deadline, enis, instance, progress)
    store.cache_put(key, {"time": time.time(), "enis": enis})
    return Verdict(True, f"{subject}; metadata service and EC2 answer (EC2 in {took * 1000:.0f} ms)")


def _state(state: Optional[str], cache: Optional[str], create: bool) -> Any:
    from .commands import cache_dir, state_dir
    from .state import StateError, StateStore

    try:  # without it nothing is cached, that is all
        return StateStore(state_dir(state), cache_dir(cache)).open(create)
    except StateError as exc:
        raise NotReady(str(exc)) from None


def _configuration(config: Optional[str], store: Any) -> Any:
    from .commands import load_config
    from .config import ConfigError

    try:
        return load_config(config, store)
    except ConfigError as exc:
        raise NotReady(f"configuration error in {exc.path}: {'; '.join(exc.problems)}") from None


def _metadata(deadline: Any, progress: Dict[str, str]) -> Any:
    """(the metadata service's client, this instance's id): an IMDSv2 token and one GET."""
    from .imds import ImdsClient, ImdsError

    try:
        imds = ImdsClient(deadline=deadline, attempts=2, connect_timeout=IMDS_CONNECT_TIMEOUT,
                          read_timeout=IMDS_READ_TIMEOUT)
        progress["stage"] = f"the metadata service at {imds.endpoint}"
        return imds, imds.get("meta-data/instance-id").strip()
    except ImdsError as exc:
        raise NotReady(str(exc)) from None  # "metadata service at ... did not answer ..."


def _enis(imds: Any, store: Any, actions: Sequence[Any]) -> List[str]:
    """The ENI behind every interface of ``actions`` (MAC -> ENI from the cache or IMDS)."""
    from .plan import PlanError, local_eni

    enis = []
    for interface, vrf in dict.fromkeys((a.interface, a.vrf) for a in actions):
        try:
            enis.append(local_eni(imds, store, interface, vrf).eni_id)
        except PlanError as exc:
            raise NotReady(str(exc)) from None
    return sorted(set(enis))


def _cache_key(settings: Any, enis: Sequence[str]) -> str:
    """The cache entry of a good EC2 answer: valid for these ENIs, settings and environment only."""
    import hashlib
    import json

    facts = [enis, settings.region, settings.endpoint_url, settings.profile, settings.role_arn,
             [os.environ.get(v) for v in KEY_VARIABLES]]
    return "health-" + hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def _instance_profile_in_use(settings: Any) -> bool:
    """botocore would sign with the instance profile: nothing earlier in its chain is set."""
    if settings.profile or settings.role_arn or any(os.environ.get(v) for v in CHAIN_VARIABLES):
        return False
    for variable, default in (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), ("AWS_CONFIG_FILE", "~/.aws/config")):
        try:
            if os.path.getsize(os.path.expanduser(os.environ.get(variable) or default)) > 0:
                return False
        except OSError:
            continue
    return True


def _credentials_without_aws(settings: Any, imds: Any) -> None:
    """With a recent EC2 answer, the instance profile's credentials are still read (cheap): an
    instance whose role was detached cannot fail over."""
    import json

    from .imds import ImdsError, ImdsNotFound

    if not _instance_profile_in_use(settings):
        return
    try:
        role = imds.get(CREDENTIALS_PATH).split()[0]
        document = json.loads(imds.get(CREDENTIALS_PATH + role))
    except ImdsNotFound:
        raise NotReady("credentials: this instance has no instance profile (IAM role)") from None
    except (ImdsError, IndexError, ValueError) as exc:
        raise NotReady(f"credentials: the instance profile's are unreadable: {exc or 'empty'}") from None
    if not isinstance(document, dict) or document.get("Code", "Success") != "Success":
        raise NotReady(f"credentials of role {role}: {document}")


def _ask_ec2(cfg: Any, imds: Any, store: Any, deadline: Any, enis: List[str], instance: str,
             progress: Dict[str, str]) -> float:
    """One DescribeNetworkInterfaces of ``enis`` (no retry); its duration, or NotReady."""
    from .ec2 import AwsError, make_client
    from .plan import PlanError, region_of

    progress["stage"] = "the EC2 client (credentials)"
    try:
        client = make_client(cfg.aws, region_of(imds, store, cfg.aws.region), deadline, store)
    except (AwsError, PlanError) as exc:
        raise NotReady(f"credentials: {exc}") from None
    endpoint = client.meta.endpoint_url
    progress["stage"] = f"the EC2 endpoint {endpoint}"
    start = time.monotonic()
    try:
        answer = client.describe_network_interfaces(NetworkInterfaceIds=enis)
    except Exception as exc:  # botocore's errors: a failed call, no credentials, no connection
        from .reachability import failure_kind

        kind, code, message = failure_kind(exc)
        if kind in ("denied", "rejected", "no-credentials"):
            raise NotReady(f"credentials: ec2:DescribeNetworkInterfaces: {code}: {message}") from None
        if kind == "throttled":  # EC2 answered: a transition would retry and get through
            return time.monotonic() - start
        raise NotReady(f"EC2 endpoint {endpoint}: {code}: {message}") from None
    took = time.monotonic() - start
    listed = {e.get("NetworkInterfaceId"): e for e in answer.get("NetworkInterfaces", [])}
    for eni in enis:
        owner = ((listed.get(eni) or {}).get("Attachment") or {}).get("InstanceId")
        if owner != instance:
            where = "EC2 does not list it" if eni not in listed else f"attached to {owner or 'no instance'}"
            raise NotReady(f"{eni}: {where}, not to {instance}")
    return took


def _log_change(state: Optional[str], cache: Optional[str], groups: Sequence[str], verdict: Verdict) -> None:
    """Syslog gets the verdict when it differs from the last one (a failure's reason included):
    a vrrp_script runs every few seconds."""
    import hashlib

    from .commands import cache_dir, state_dir
    from .state import StateError, StateStore

    name = "health-last-" + hashlib.sha256("\0".join(groups).encode()).hexdigest()[:16]
    now = {"ready": verdict.ready, "why": None if verdict.ready else verdict.text}
    try:
        store = StateStore(state_dir(state), cache_dir(cache)).open(create=False)
    except StateError:
        store = None
    last = store.cache_get(name) if store is not None else None
    if last is not None and {k: last.get(k) for k in now} == now:
        return
    log.log(INFO if verdict.ready else WARNING, "health: %s", verdict.line, stderr=False)
    if store is not None:
        store.cache_put(name, now)
