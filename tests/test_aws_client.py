"""botocore, the only AWS client: its trimmed-model cache, its set-up errors, and what the
product promises about endpoints and credentials.

In-process tests talk only to servers on 127.0.0.1; the others run the tool in the router
namespaces against moto and the metadata-service emulator.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import botocore
import pytest

from aws_vrrp_notify import botomodel
from aws_vrrp_notify.config import AwsSettings
from aws_vrrp_notify.deadline import Deadline
from aws_vrrp_notify.ec2 import AwsError, Ec2, make_client
from aws_vrrp_notify.state import StateStore
from test_failover import VIP, assign, cfg, ok, record

VERSION = botocore.__version__
OFFLINE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": "/dev/null",
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def offline(monkeypatch):
    """botocore in this process: static credentials, no shared files, no metadata service."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def built_copy(tmp_path_factory) -> Path:
    """A cache directory holding a trimmed copy (building one loads botocore's full model)."""
    root = tmp_path_factory.mktemp("built")
    root.chmod(0o700)
    botomodel.build(str(root))
    return root


def store_with_cache(tmp_path: Path, cache: Path) -> StateStore:
    return StateStore(str(tmp_path / "state"), str(cache)).ensure()


def copy_of(built_copy: Path, cache: Path) -> Path:
    """``cache`` holding the built copy; returns the copy's path."""
    shutil.copytree(built_copy, cache, dirs_exist_ok=True)
    cache.chmod(0o700)
    return Path(botomodel.directory(str(cache), VERSION))


# --------------------------------------------------------------------------- the cache


def test_copy_is_keyed_by_botocore_and_by_the_operations(built_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    copy = copy_of(built_copy, cache)
    assert copy.name.startswith(f"botocore-{VERSION}-")
    assert botomodel.loader(str(cache)) is not None
    assert botomodel.directory(str(cache), "0.0.0") != str(copy)
    # a package upgrade that needs one more operation, with the same botocore: the old copy is not used
    monkeypatch.setitem(botomodel.OPERATIONS, "ec2", botomodel.OPERATIONS["ec2"] + ("DescribeInstances",))
    assert botomodel.directory(str(cache), VERSION) != str(copy)
    assert botomodel.loader(str(cache)) is None
    new = Path(botomodel.build(str(cache)))
    model = json.loads(next(new.glob("ec2/*/service-2.json")).read_text())
    assert "DescribeInstances" in model["operations"]


def _chown_away(path: Path) -> None:
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize("case,prepare,trusted", [
    ("missing: created 0700", lambda p: None, True),
    ("ours, 0755", lambda p: (p.mkdir(), p.chmod(0o755)), True),
    ("group-writable", lambda p: (p.mkdir(), p.chmod(0o770)), False),
    ("other-writable", lambda p: (p.mkdir(), p.chmod(0o757)), False),
    ("another user's", lambda p: (p.mkdir(mode=0o700), _chown_away(p)), False),
    ("a file", lambda p: p.write_text(""), False),
    ("under a missing parent", None, False),
])
def test_where_the_model_is_cached(tmp_path, case, prepare, trusted):
    cache = tmp_path / "var-cache"
    if prepare is None:
        cache = tmp_path / "missing" / "var-cache"
    else:
        prepare(cache)
    store = store_with_cache(tmp_path, cache)
    root = botomodel.cache_root(store)
    if trusted:
        assert root == str(cache)
        assert cache.is_dir() and (cache.stat().st_mode & 0o077) in (0, 0o055)
    else:
        assert root == store.cache_dir, case
        assert not (tmp_path / "missing").exists()


def test_no_cache_at_all_when_neither_directory_can_be_trusted(tmp_path):
    cache = tmp_path / "var-cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    store = store_with_cache(tmp_path, cache)
    _chown_away(Path(store.cache_dir))
    assert botomodel.cache_root(store) is None
    botomodel.keep_trimmed_model(store)  # writes nowhere, raises nothing
    assert not list(cache.iterdir()) and not list(Path(store.cache_dir).iterdir())


@pytest.mark.parametrize("mode,used", [(0o700, True), (0o770, False), (0o707, False)])
def test_a_copy_is_only_read_from_a_directory_nobody_else_can_write(built_copy, tmp_path, offline, mode, used):
    """A tampered copy (AssociateAddress removed) shows whether the client was built from it."""
    cache = tmp_path / "cache"
    copy = copy_of(built_copy, cache)
    model_file = next(copy.glob("ec2/*/service-2.json"))
    model = json.loads(model_file.read_text())
    del model["operations"]["AssociateAddress"]
    model_file.write_text(json.dumps(model))
    cache.chmod(mode)
    client = make_client(AwsSettings(), "eu-west-3", Deadline(10), store_with_cache(tmp_path, cache))
    assert hasattr(client, "describe_addresses")
    assert hasattr(client, "associate_address") is not used


def test_copy_is_written_atomically_private_and_race_free(tmp_path, offline):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    results = []
    threads = [threading.Thread(target=lambda: results.append(botomodel.build(str(cache)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [botomodel.directory(str(cache), VERSION)] * 2
    assert [p.name for p in cache.iterdir()] == [Path(results[0]).name]  # no temporary copy left
    for path in Path(results[0]).rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    client = make_client(AwsSettings(), "eu-west-3", Deadline(10), store_with_cache(tmp_path, cache))
    assert client.meta.endpoint_url == "https://ec2.eu-west-3.amazonaws.com"


def test_an_unusable_copy_is_replaced(built_copy, tmp_path, offline):
    cache = tmp_path / "cache"
    copy = copy_of(built_copy, cache)
    model_file = next(copy.glob("ec2/*/service-2.json"))
    model_file.write_text('{"truncated')  # e.g. a power loss on a file system without ordering
    store = store_with_cache(tmp_path, cache)
    client = make_client(AwsSettings(), "eu-west-3", Deadline(10), store)
    assert hasattr(client, "associate_address")  # from botocore's own model
    assert not copy.exists()
    botomodel.keep_trimmed_model(store)
    assert "AssociateAddress" in json.loads(model_file.read_text())["operations"]


# --------------------------------------------------------------------------- client set-up errors


def _garbage(tmp: Path, name: str) -> str:
    path = tmp / name
    path.write_text("[default\nthis is not an ini file nor a certificate\n")
    return str(path)


@pytest.mark.parametrize("env,expected,problem", [
    (lambda tmp: {"AWS_PROFILE": "missing"}, "ProfileNotFound: The config profile (missing) could not be found", ""),
    (lambda tmp: {"AWS_CONFIG_FILE": _garbage(tmp, "aws-config")}, "ConfigParseError: Unable to parse config file",
     "aws-config"),
    (lambda tmp: {"AWS_CA_BUNDLE": "/nonexistent/ca.pem"},
     "InvalidCABundle: CA bundle /nonexistent/ca.pem (AWS_CA_BUNDLE or the profile's ca_bundle)", "does not exist"),
    (lambda tmp: {"AWS_CA_BUNDLE": str(tmp)}, "InvalidCABundle: CA bundle ", "is not a regular file"),
    (lambda tmp: {"AWS_CA_BUNDLE": _garbage(tmp, "ca.pem")}, "InvalidCABundle: CA bundle ",
     "cannot be used: [X509: NO_CERTIFICATE_OR_CRL_FOUND]"),
], ids=["missing-profile", "bad-shared-config", "missing-ca-bundle", "ca-bundle-directory", "garbage-ca-bundle"])
def test_client_set_up_errors_fail_at_once(routers, run_tool, env, expected, problem):
    r1 = routers.r1
    start = time.monotonic()
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), deadline=30), env=env(run_tool.tmp))
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 5, f"{elapsed:.1f}s: retried instead of failing at once"
    assert f"MASTER failed: creating the EC2 client failed: {expected}" in proc.stderr, proc.stderr
    assert problem in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpectedly" not in proc.stderr
    assert record(run_tool, r1)["outcome"] == "failed" and expected in record(run_tool, r1)["detail"]
    assert routers.cloud.count_actions() == {}
    assert routers.cloud.who_holds(VIP) == []


class _Canned(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    BODY = (b'<DescribeAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            b"<requestId>r-1</requestId><addressesSet/></DescribeAddressesResponse>")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args):
        pass


def _self_signed(cert: Path, key: Path) -> None:
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")


@pytest.fixture
def tls_endpoint(tmp_path):
    """(URL, its certificate, another certificate): an HTTPS EC2 stand-in on 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _self_signed(cert, key)
    _self_signed(tmp_path / "other.pem", tmp_path / "other-key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", str(cert), str(tmp_path / "other.pem")
    finally:
        server.shutdown()
        server.server_close()


def test_an_untrusted_certificate_is_not_retried(tls_endpoint, tmp_path, offline, monkeypatch):
    url, cert, other = tls_endpoint
    store = store_with_cache(tmp_path, tmp_path / "cache")
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    deadline = Deadline(20)
    ec2 = Ec2(make_client(AwsSettings(endpoint_url=url), "eu-west-3", deadline, store), deadline)
    assert ec2.call("describe_addresses")["Addresses"] == []
    monkeypatch.setenv("AWS_CA_BUNDLE", other)  # a good bundle that does not know this certificate
    ec2 = Ec2(make_client(AwsSettings(endpoint_url=url), "eu-west-3", deadline, store), deadline)
    start = time.monotonic()
    with pytest.raises(AwsError) as failure:
        ec2.call("describe_addresses")
    assert failure.value.attempts == 1 and time.monotonic() - start < 2
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value)


# --------------------------------------------------------------------------- endpoints and credentials


def test_endpoint_url_with_a_path(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2", path_prefix="/ec2")
    config = cfg(assign()).replace("[aws]\n", f'[aws]\nendpoint-url = "{proxy.url}/ec2"\n')
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]
    assert proxy.seen and {path for _, path, _ in proxy.seen} == {"/ec2"}


def _instance_profile(imds, role: str = "vrrp-role") -> None:
    from datetime import datetime, timedelta, timezone

    expiration = (datetime.now(timezone.utc) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    imds.overrides["meta-data/iam/security-credentials"] = role
    imds.overrides[f"meta-data/iam/security-credentials/{role}"] = json.dumps(
        {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIALAB", "SecretAccessKey": "labsecret",
         "Token": "labtoken", "Expiration": expiration, "LastUpdated": expiration})


NO_ENV_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}


def test_instance_profile_credentials_from_the_metadata_service(routers, run_tool):
    r1 = routers.r1
    _instance_profile(r1.imds)
    ok(run_tool(r1, "master", "VI_1", config=cfg(assign()), env=NO_ENV_CREDENTIALS))
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]
    assert r1.imds.count("GET", "/latest/meta-data/iam/security-credentials/vrrp-role") >= 1


def test_no_credentials_anywhere_fails_at_once(routers, run_tool):
    r1 = routers.r1
    r1.imds.overrides["meta-data/iam/security-credentials"] = None  # an instance without a profile
    r1.imds.overrides["meta-data/iam/security-credentials/"] = None
    start = time.monotonic()
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign(), deadline=30), env=NO_ENV_CREDENTIALS)
    assert proc.returncode == 1 and time.monotonic() - start < 10
    assert "NoCredentialsError: Unable to locate credentials" in proc.stderr, proc.stderr
    assert routers.cloud.who_holds(VIP) == []


# --------------------------------------------------------------------------- the cache, end to end


def test_first_master_after_a_boot_loads_only_the_trimmed_model(routers, run_tool, tmp_path):
    r1, r2 = routers.r1, routers.r2
    cache = tmp_path / "var-cache"  # not there yet: the first run creates it
    env = {"AWS_VRRP_NOTIFY_CACHE_DIR": cache}
    first = ok(run_tool(r1, "-vv", "master", "VI_1", config=cfg(assign()), env=env))
    assert "botocore model: botocore's full data" in first.stderr
    assert cache.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in cache.iterdir()] == [Path(botomodel.directory(str(cache), VERSION)).name]
    # a reboot empties the state directory (/run), not the cache
    after_boot = ok(run_tool(r2, "-vv", "master", "VI_1", config=cfg(assign()), env=env,
                             state_dir=tmp_path / "state-after-boot"))
    assert f"botocore model: the trimmed copy in {cache}" in after_boot.stderr
    assert "full data" not in after_boot.stderr
    assert routers.cloud.who_holds(VIP) == [r2.eni("eth0")]
    assert not list((tmp_path / "state-after-boot" / "cache").glob("botocore-*"))


def test_an_untrusted_cache_directory_is_left_alone(routers, run_tool, tmp_path):
    r1 = routers.r1
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = ok(run_tool(r1, "-vv", "master", "VI_1", config=cfg(assign()), env={"AWS_VRRP_NOTIFY_CACHE_DIR": shared}))
    state_cache = run_tool.state_dir(r1) / "cache"
    assert f"model cache {shared} not used (writable by group or others); using {state_cache}" in proc.stderr
    assert not list(shared.iterdir())
    assert list(state_cache.glob(f"botocore-{VERSION}-*"))
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]
