"""validate --environment: check this instance the way a failover needs it, before one is needed.

One finding per check (findings.py): the configuration file and the state directory (owner
and mode), the metadata service (IMDSv2, and the PUT hop limit from a container or another
network namespace), every configured interface resolving to an ENI, which credentials are
used and that they work, the EC2 endpoint (through which proxy, how far), the clock against
AWS's, then the configuration against the VPC (vpc_checks.py) and keepalived's script
settings (keepalived_conf.py, warnings only).

AWS is asked one thing: DescribeNetworkInterfaces of the configured interfaces' VPCs
(of this instance alone without a usable configuration). Its answer proves the
credentials, times the endpoint, dates AWS's clock and describes every ENI.
"""

from __future__ import annotations

import http.client
import os
import stat
import time
import urllib.parse
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from .config import AwsSettings, Config, ConfigError, load
from .deadline import Deadline
from .findings import FAIL, PASS, WARN, EXIT_STATUS, Finding, not_checked, text, to_json, worst
from .imds import ImdsClient, ImdsError, ImdsUnavailable, dmi_says_ec2
from .keepalived_conf import DEFAULT_PATH as KEEPALIVED_CONF, KeepalivedConf, KeepalivedConfError, read_keepalived_conf
from .logsetup import log
from .reachability import failure_kind

IMDS_BUDGET = 10.0
AWS_BUDGET = 15.0
KEEPALIVED_CONF_ENV = "AWS_VRRP_NOTIFY_KEEPALIVED_CONF"
IAM_FIX = ("grant the role the policy of contrib/iam/ (installed under share/doc/aws-vrrp-notify/iam/), "
           "then prove every action with validate --permissions")
ENDPOINT_FIX = ("allow HTTPS from this instance to the endpoint (security group egress, network ACL, a route to "
                "a NAT or internet gateway), or use an interface VPC endpoint for ec2 with private DNS, or set "
                "HTTPS_PROXY in keepalived's environment")
CLOCK_FIX = "synchronise the clock (chrony or systemd-timesyncd with the Amazon Time Sync Service, 169.254.169.123)"



ROUTE53_FIX = ("allow HTTPS from this instance to Route 53's global endpoint (route53.amazonaws.com in the aws "
               "partition; through a NAT or internet gateway, or a proxy), or set [aws] route53-endpoint-url")


def run(opts: Any, as_json: bool, keepalived_path: Optional[str], with_permissions: bool) -> int:
    """validate --environment [--json] [--permissions]: print the findings; 0, 1 or 2."""
    from .logsetup import setup

    setup(opts.verbose)
    inspection = Inspection(opts, keepalived_path)
    findings = inspection.findings()
    print(to_json(findings) if as_json else text(findings), flush=True)
    status = EXIT_STATUS[worst(findings)]
    if with_permissions and inspection.config is not None:
        from .permissions import check_permissions

        print()
        if check_permissions(inspection.config, opts) != 0:
            status = EXIT_STATUS[FAIL]
    return status


def isolation() -> Optional[str]:
    """Where this process runs when it is not the host itself: a container and/or another
    network namespace (each is one more hop for the metadata service's answers), else None."""
    places = [name for path, name in (("/.dockerenv", "a Docker container"), ("/run/.containerenv", "a Podman container"))
              if os.path.exists(path)]
    if not places and os.environ.get("container"):
        places.append(f"a {os.environ['container']} container")
    namespace = _network_namespace()
    if namespace:
        places.append(namespace)
    return ", ".join(places) or None


def _network_namespace() -> Optional[str]:
    """This process's network namespace when it is a named one (``ip netns``) or not PID 1's."""
    from .links import list_namespaces, netns_path

    try:
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    for name in list_namespaces():
        try:
            st = os.stat(netns_path(name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
            return f"network namespace {name}"
    try:
        hosts = os.stat("/proc/1/ns/net")
    except OSError:  # PID 1's namespace is not ours to see
        return None
    return None if hosts.st_ino == ours.st_ino else "a network namespace other than PID 1's"


def status_without_token(endpoint: str, timeout: float = 1.0) -> Optional[int]:
    """The HTTP status of a GET without a token (401 when IMDSv2 is required), None without an
    answer: tells a lost PUT answer (the hop limit) from a metadata service that is not there."""
    parts = urllib.parse.urlsplit(endpoint)
    https = parts.scheme == "https"
    connection = http.client.HTTPSConnection if https else http.client.HTTPConnection
    conn = connection(parts.hostname, parts.port or (443 if https else 80), timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + "/latest/meta-data/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _owner(st: os.stat_result) -> str:
    try:
        import pwd

        return pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        return f"uid {st.st_uid}"


def _ownership_fix(path: str, problem: str) -> str:
    if "owned" in problem:
        return f"chown {'root' if os.geteuid() == 0 else os.geteuid()} {path}; chmod go-w {path}"
    if "writable" in problem:
        return f"chmod go-w {path}"
    return ""


class Answer(NamedTuple):
    """What EC2 said to DescribeNetworkInterfaces (every page), or how it failed."""
    enis: Optional[List[dict]]
    error: Optional[BaseException]
    date: Optional[str]        # the Date header of the first answer (or error)
    sent: float                # time.time() around the first request
    received: float
    scope: str                 # what was asked for, in words


class Inspection:
    """One run of the checks: each method checks one thing and keeps what later checks need."""

    def __init__(self, opts: Any, keepalived_path: Optional[str]):
        self.opts = opts
        self.keepalived_path = keepalived_path or os.environ.get(KEEPALIVED_CONF_ENV) or KEEPALIVED_CONF
        self.keepalived_given = bool(keepalived_path or os.environ.get(KEEPALIVED_CONF_ENV))
        self.config: Optional[Config] = None
        self.store: Any = None
        self.imds: Optional[ImdsClient] = None
        self.identity: Dict[str, Any] = {}
        self.locals: Dict[Tuple[str, str], Any] = {}
        self.cidrs: Dict[str, str] = {}
        self.local_ips: Dict[str, List[str]] = {}
        self.enis: Optional[Dict[str, dict]] = None
        self.enis_unknown = "EC2 did not describe the ENIs (see credentials and ec2-endpoint)"

    def findings(self) -> List[Finding]:
        from . import vpc_checks

        out = self.config_file() + self.state_dir() + self.metadata() + self.interfaces() + self.aws()
        out += self.route53()
        keepalived, conf = self.keepalived()
        if self.config is not None:
            facts = vpc_checks.VpcFacts(self.identity.get("instanceId"), self.locals, self.cidrs, self.enis,
                                        self.enis_unknown, conf.unicast_peers if conf else ())
            out += vpc_checks.source_dest_findings(self.config, facts)
            out += vpc_checks.private_ip_findings(self.config, facts)
            out += vpc_checks.peer_subnet_findings(self.config, facts)
            out += vpc_checks.elastic_ip_findings(self.config, facts, self.local_ips)
        return out + keepalived

    # ------------------------------------------------------------ files

    def config_file(self) -> List[Finding]:
        from .commands import config_path

        path = config_path(self.opts.config)
        try:
            self.config = load(path)
        except ConfigError as exc:
            problems = "; ".join(exc.problems)
            fix = next((_ownership_fix(path, p) for p in exc.problems if "refusing" in p),
                       "aws-vrrp-notify validate lists every problem")
            return [Finding(FAIL, "config-file", path, problems, fix)]
        st = os.lstat(path)
        actions = sum(len(g.actions) for g in self.config.groups.values())
        return [Finding(PASS, "config-file", path, f"owned by {_owner(st)}, mode {stat.S_IMODE(st.st_mode):04o}, "
                        f"{len(self.config.groups)} group(s), {actions} action(s)")]

    def state_dir(self) -> List[Finding]:
        from .commands import cache_dir, state_dir
        from .state import StateError, StateStore

        root = state_dir(self.opts.state_dir)
        store = StateStore(root, cache_dir(getattr(self.opts, "cache_dir", None)))
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            self.store = store
            return [Finding(PASS, "state-dir", root, "does not exist yet: the first transition creates it (0700)")]
        except OSError as exc:
            return [Finding(FAIL, "state-dir", root, exc.strerror or str(exc))]
        try:
            self.store = store.open(create=False)
        except StateError as exc:
            problem = str(exc)
            return [Finding(FAIL, "state-dir", root, problem, _ownership_fix(root, problem))]
        return [Finding(PASS, "state-dir", root, f"owned by {_owner(st)}, mode {stat.S_IMODE(st.st_mode):04o}")]

    def keepalived(self) -> Tuple[List[Finding], Optional[KeepalivedConf]]:
        path = self.keepalived_path
        if not os.path.exists(path):
            if self.keepalived_given:
                return [Finding(WARN, "keepalived", path, "no such file",
                                f"give the right path with --keepalived-conf or {KEEPALIVED_CONF_ENV}")], None
            return [Finding(PASS, "keepalived", path, "no such file: nothing to check "
                            "(--keepalived-conf names another one)")], None
        try:
            conf = read_keepalived_conf(path)
        except KeepalivedConfError as exc:
            return [Finding(WARN, "keepalived", path, f"cannot be read: {exc}")], None
        return [_script_security(conf)], conf

    # ------------------------------------------------------------ the metadata service

    def metadata(self) -> List[Finding]:
        try:
            imds = ImdsClient(deadline=Deadline(IMDS_BUDGET), attempts=2, connect_timeout=1.0, read_timeout=1.0)
        except ImdsError as exc:  # a bad AWS_EC2_METADATA_SERVICE_ENDPOINT(_MODE)
            return [Finding(FAIL, "metadata", "", str(exc), "correct or unset the variable")]
        where = isolation()
        if imds.disabled:
            return [Finding(FAIL, "metadata", imds.endpoint, "disabled by AWS_EC2_METADATA_DISABLED=true: "
                            "the tool finds no ENI without it", "unset AWS_EC2_METADATA_DISABLED")]
        start = time.monotonic()
        try:
            imds.token()
        except ImdsUnavailable as exc:
            return [self._no_token(imds.endpoint, str(exc), where)]
        except ImdsError as exc:
            return [Finding(FAIL, "metadata", imds.endpoint, str(exc),
                            "aws ec2 modify-instance-metadata-options --http-endpoint enabled --http-tokens required")]
        took = time.monotonic() - start
        try:
            self.identity = imds.identity()
        except ImdsError as exc:
            return [Finding(FAIL, "metadata", imds.endpoint, f"IMDSv2 token granted, but {exc}")]
        self.imds = imds
        ident = self.identity
        hop = f"; from {where}: the token's hop limit reaches it" if where else ""
        return [Finding(PASS, "metadata", imds.endpoint, f"IMDSv2 token in {took * 1000:.0f} ms, instance "
                        f"{ident.get('instanceId')} in {ident.get('availabilityZone')}{hop}")]

    def _no_token(self, endpoint: str, error: str, where: Optional[str]) -> Finding:
        answered = status_without_token(endpoint)
        if answered is not None:
            place = where or "this process"
            return Finding(FAIL, "metadata", endpoint,
                           f"the IMDSv2 token request (PUT) got no answer, yet a GET without token did (HTTP "
                           f"{answered}): the instance's PUT response hop limit is too low to reach {place}; the "
                           "tool uses IMDSv2 only", "aws ec2 modify-instance-metadata-options --instance-id "
                           "<this instance> --http-put-response-hop-limit 2 (one more per extra hop)")
        if dmi_says_ec2():
            return Finding(FAIL, "metadata", endpoint, f"no answer on this EC2 instance: {error}",
                           "aws ec2 modify-instance-metadata-options --instance-id <this instance> "
                           "--http-endpoint enabled; check AWS_EC2_METADATA_SERVICE_ENDPOINT")
        return Finding(FAIL, "metadata", endpoint, f"no metadata service: {error}; not an EC2 instance, where "
                       "aws-vrrp-notify does nothing", "run it on the EC2 instance (or fix "
                       "AWS_EC2_METADATA_SERVICE_ENDPOINT)")

    def interfaces(self) -> List[Finding]:
        from .plan import PlanError, local_eni

        if self.config is None:
            return []
        keys = list(dict.fromkeys((a.interface, a.vrf) for g in self.config.groups.values() for a in g.actions))
        out = []
        for interface, vrf in keys:
            subject = f"{interface} (vrf {vrf})"
            if self.imds is None:
                out.append(not_checked("interface", subject, "the metadata service is needed (above)"))
                continue
            try:
                local = local_eni(self.imds, None, interface, vrf, use_cache=False)
                cidr = self.imds.mac_data(local.mac, "subnet-ipv4-cidr-block")
                device = self.imds.mac_data(local.mac, "device-number")
                self.local_ips[local.eni_id] = self.imds.local_ipv4s(local.mac)
            except (PlanError, ImdsError) as exc:
                out.append(Finding(FAIL, "interface", subject, str(exc), "check interface and vrf in the "
                                   "configuration against `ip -br link` (and `ip netns list` for a VRF)"))
                continue
            self.locals[(interface, vrf)] = local
            self.cidrs[local.eni_id] = cidr
            out.append(Finding(PASS, "interface", subject, f"MAC {local.mac} is {local.eni_id} (device {device}) "
                               f"in {local.subnet_id} ({cidr}) of {local.vpc_id}"))
        return out

    # ------------------------------------------------------------ AWS

    def aws(self) -> List[Finding]:
        from .ec2 import AwsError, make_client
        from .reachability import credential_method, describe_credentials, reach

        settings = self.config.aws if self.config is not None else AwsSettings()
        note = "" if self.config is not None else " (default [aws] settings: the configuration file is not usable)"
        region = settings.region or self.identity.get("region")
        if not region:
            why = "no region: the metadata service did not answer and [aws] sets none"
            return [not_checked(c, "", why) for c in ("credentials", "ec2-endpoint", "clock")]
        out = []
        if settings.region and self.identity.get("region") not in (None, settings.region):
            out.append(Finding(FAIL, "region", settings.region, f"this instance is in {self.identity['region']}: "
                               "its ENIs are not in the configured region", "remove [aws] region, or correct it"))
        try:
            client = make_client(settings, region, Deadline(AWS_BUDGET), self.store)
        except AwsError as exc:
            return out + [Finding(FAIL, "credentials", "", f"the EC2 client cannot be set up: {exc.code}: "
                                  f"{exc.message}{note}", "correct the profile, CA bundle or shared configuration")] \
                + [not_checked(c, "", "no EC2 client (see credentials)") for c in ("ec2-endpoint", "clock")]
        method = credential_method(client)
        who = describe_credentials(method, settings, self._role() if method == "iam-role" else None) + note
        reached = reach(client.meta.endpoint_url)
        answer = self._describe(client)
        if answer.enis is not None:
            self.enis = {e["NetworkInterfaceId"]: e for e in answer.enis}
        return out + [_credentials(who, answer), _endpoint(client.meta.endpoint_url, reached, answer),
                      _clock(answer)]

    def route53(self) -> List[Finding]:
        """When a group has update-dns: Route 53's endpoint answers (one read of a configured zone)."""
        from .ec2 import AwsError, make_client
        from .reachability import reach

        zones = sorted({a.zone_id for g in (self.config.groups.values() if self.config else ())
                        for a in g.actions if getattr(a, "SERVICE", "ec2") == "route53"})
        if not zones:
            return []
        region = self.config.aws.region or self.identity.get("region")
        if not region:
            return [not_checked("route53-endpoint", "", "no region: the metadata service did not answer")]
        try:
            client = make_client(self.config.aws, region, Deadline(AWS_BUDGET), self.store, "route53")
        except AwsError as exc:
            return [Finding(FAIL, "route53-endpoint", "", f"the Route 53 client cannot be set up: {exc.code}: "
                            f"{exc.message}", "correct the profile, CA bundle or shared configuration")]
        url = client.meta.endpoint_url
        reached = reach(url)
        if not reached.ok:
            return [Finding(FAIL, "route53-endpoint", url, f"{reached.error}; {_via(reached)}",
                            ROUTE53_FIX)]
        sent = time.monotonic()
        try:
            client.list_resource_record_sets(HostedZoneId=zones[0], MaxItems="1")
        except Exception as exc:  # botocore's errors: a refusal still proves the endpoint answers
            code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
            if not code:
                return [Finding(FAIL, "route53-endpoint", url, f"TCP connects ({_via(reached)}) but the "
                                f"request failed: {_short(str(exc))}", ROUTE53_FIX)]
            return [Finding(PASS, "route53-endpoint", url, f"answers ({code} for hosted zone {zones[0]}: see "
                            f"validate --permissions): {_via(reached)}; API round trip "
                            f"{(time.monotonic() - sent) * 1000:.0f} ms")]
        return [Finding(PASS, "route53-endpoint", url, f"answers: {_via(reached)}; API round trip "
                        f"{(time.monotonic() - sent) * 1000:.0f} ms")]

    def _role(self) -> Optional[str]:
        try:
            return self.imds.get("meta-data/iam/security-credentials/").split()[0] if self.imds else None
        except (ImdsError, IndexError):
            return None

    def _describe(self, client: Any) -> Answer:
        vpcs = sorted({l.vpc_id for l in self.locals.values()})
        if vpcs:
            params, scope = {"Filters": [{"Name": "vpc-id", "Values": vpcs}]}, f"in {', '.join(vpcs)}"
        elif self.identity.get("instanceId"):
            params = {"Filters": [{"Name": "attachment.instance-id", "Values": [self.identity["instanceId"]]}]}
            scope = f"of {self.identity['instanceId']}"
        else:
            params, scope = {}, "visible to these credentials"
        from .reachability import date_of

        sent = time.time()
        try:
            page = client.describe_network_interfaces(MaxResults=1000, **params)
        except Exception as exc:  # botocore's errors, classified by the findings
            return Answer(None, exc, date_of(getattr(exc, "response", None)), sent, time.time(), scope)
        received = time.time()
        date, enis = date_of(page), list(page.get("NetworkInterfaces", []))
        try:
            while page.get("NextToken"):
                page = client.describe_network_interfaces(MaxResults=1000, NextToken=page["NextToken"], **params)
                enis.extend(page.get("NetworkInterfaces", []))
        except Exception as exc:  # the first page proved the rest; later pages only add ENIs
            log.warning("DescribeNetworkInterfaces, a later page: %s", exc)
        return Answer(enis, None, date, sent, received, scope)


# ---------------------------------------------------------------- findings of the AWS call


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _credentials(who: str, answer: Answer) -> Finding:
    if answer.error is None:
        took = (answer.received - answer.sent) * 1000
        return Finding(PASS, "credentials", "", f"{who}: they work: ec2:DescribeNetworkInterfaces answered "
                       f"({len(answer.enis or [])} ENIs {answer.scope}) in {took:.0f} ms; write permissions: "
                       "validate --permissions")
    kind, code, message = failure_kind(answer.error)
    if kind == "denied":
        return Finding(FAIL, "credentials", "", f"{who}: ec2:DescribeNetworkInterfaces is denied ({code}: "
                       f"{_short(message)})", IAM_FIX)
    if kind == "rejected":
        fix = CLOCK_FIX if code == "RequestExpired" or "expired" in message.lower() else \
            "renew or replace the credentials (for an instance profile: check the role still exists)"
        return Finding(FAIL, "credentials", "", f"{who}: EC2 rejects them ({code}: {_short(message)})", fix)
    if kind == "no-credentials":
        return Finding(FAIL, "credentials", "", f"none found ({_short(message)})",
                       "attach an IAM role (instance profile) to the instance, or set [aws] profile")
    if kind == "throttled":
        return Finding(WARN, "credentials", "", f"{who}: not proved, EC2 throttled the request ({code})",
                       "run it again")
    if kind == "server":
        return Finding(WARN, "credentials", "", f"{who}: not proved, EC2 answered {code}: {_short(message)}",
                       "run it again")
    if kind == "answered":
        return Finding(PASS, "credentials", "", f"{who}: accepted (EC2 answered {code}: {_short(message)})")
    return not_checked("credentials", "", f"{who}: the EC2 endpoint did not answer (see ec2-endpoint)")


def _via(reached: Any) -> str:
    from .reachability import address_kind

    route = reached.route
    hop = f"through proxy {route.proxy} at" if route.proxy else "direct to"
    kind = address_kind(reached.address)
    return f"{hop} {reached.address or route.host}" + (f" ({kind})" if kind else "")


def _endpoint(url: str, reached: Any, answer: Answer) -> Finding:
    via = _via(reached)
    if not reached.ok:
        return Finding(FAIL, "ec2-endpoint", url, f"{reached.error}; {via}", ENDPOINT_FIX)
    tcp = f"TCP connect {reached.seconds * 1000:.0f} ms"
    if answer.error is not None:
        kind, code, message = failure_kind(answer.error)
        if kind == "network":
            return Finding(FAIL, "ec2-endpoint", url, f"TCP connects ({via}, {tcp}) but the request failed: "
                           f"{code}: {_short(message)}", ENDPOINT_FIX)
        if kind == "server":
            return Finding(WARN, "ec2-endpoint", url, f"answers {code} ({via})", "run it again")
    took = (answer.received - answer.sent) * 1000
    return Finding(PASS, "ec2-endpoint", url, f"answers: {via}; {tcp}; API round trip {took:.0f} ms")


def _clock(answer: Answer) -> Finding:
    from .reachability import MAX_CLOCK_SKEW, clock_offset

    offset = clock_offset(answer.date, answer.sent, answer.received)
    if offset is None:
        if answer.error is not None and failure_kind(answer.error)[0] in ("network", "no-credentials"):
            return not_checked("clock", "", "no answer from EC2 to read its Date from")
        return Finding(WARN, "clock", "", "EC2's answer had no Date header to compare with",
                       "compare with AWS's time by other means (chronyc tracking)")
    side = "ahead of" if offset.seconds > 0 else "behind"
    text_ = f"{abs(offset.seconds):.1f} s {side} AWS (the Date of EC2's answer, within {offset.uncertainty:.1f} s)"
    if abs(offset.seconds) - offset.uncertainty > MAX_CLOCK_SKEW:
        return Finding(FAIL, "clock", "", f"{text_}: more than {MAX_CLOCK_SKEW:g} s", CLOCK_FIX)
    return Finding(PASS, "clock", "", text_)


# ---------------------------------------------------------------- keepalived


def _user_exists(name: str) -> bool:
    try:
        import pwd

        pwd.getpwnam(name)
        return True
    except (ImportError, KeyError):
        return False


def _script_security(conf: KeepalivedConf) -> Finding:
    """keepalived runs the tool only with script_user (root) and enable_script_security."""
    where = conf.path
    fix = "in global_defs: enable_script_security and script_user root"
    if not conf.script_security:
        return Finding(WARN, "keepalived", where, "no enable_script_security in global_defs: keepalived runs "
                       "scripts any user could have changed (and logs SECURITY VIOLATION)", fix)
    if conf.script_user is None:
        if not _user_exists("keepalived_script"):
            return Finding(WARN, "keepalived", where, "no script_user and no user keepalived_script: keepalived "
                           "runs no notify script at all, so no failover reaches AWS", fix)
        return Finding(WARN, "keepalived", where, "no script_user: scripts run as keepalived_script, who cannot "
                       "enter network namespaces nor write the state directory", fix)
    if conf.script_user != "root":
        known = "" if _user_exists(conf.script_user) else " (no such user: keepalived runs no script)"
        return Finding(WARN, "keepalived", where, f"script_user {conf.script_user}{known}: the tool needs root "
                       "(network namespaces, its state directory)", fix)
    untracked = [s for s in conf.health_scripts if s not in conf.tracked_scripts]
    if untracked:
        return Finding(WARN, "keepalived", where, f"vrrp_script {', '.join(untracked)} runs aws-vrrp-notify health "
                       "but no vrrp_instance tracks it (track_script)", "add it to the instance's track_script")
    health = f"; health tracked by vrrp_script {', '.join(conf.health_scripts)}" if conf.health_scripts else ""
    return Finding(PASS, "keepalived", where, f"enable_script_security, script_user root{health}")
