"""The configuration loader: valid files, the bad-input corpus, and property-based fuzzing."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from aws_vrrp_notify.actions import AssignPrivateIp, AssociateAddress, ChangeRoute
from aws_vrrp_notify.config import ConfigError, load, parse
from aws_vrrp_notify.state import StateStore

HERE = pathlib.Path(__file__).parent
BAD = HERE / "bad_configs"
CORPUS = sorted(p.stem for p in BAD.glob("*.toml"))

GOOD = """
[aws]
region = "eu-west-3"
endpoint-url = "https://vpce-0123.ec2.eu-west-3.vpce.amazonaws.com"
profile = "ha"
role-arn = "arn:aws:iam::123456789012:role/vrrp-failover"
deadline = 12.5

[groups.VI_1]
[[groups.VI_1.assign-private-ip]]
ip = "10.0.1.100"
interface = "ens6"

[[groups.VI_1.change-route]]
subnet = "10.0.2.0/24"
destination = "0.0.0.0/0"
interface = "ens7"
vrf = "blue"

[[groups.VI_1.change-route]]
route-table = "rtb-0123456789abcdef0"
destination = "2001:db8::/32"
interface = "ens7"

[[groups.VI_1.associate-address]]
allocation-id = "eipalloc-0123456789abcdef0"
interface = "ens6"
private-ip = "10.0.1.100"

[groups."G_2"]
[[groups."G_2".associate-address]]
public-ip = "203.0.113.10"
interface = "ens6"
"""


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


def test_good_config_is_typed(tmp_path):
    cfg = load(write(tmp_path, GOOD))
    assert cfg.aws.region == "eu-west-3" and cfg.aws.deadline == 12.5
    assert cfg.aws.role_arn.endswith(":role/vrrp-failover") and cfg.aws.profile == "ha"
    vi1 = cfg.groups["VI_1"].actions
    assert [type(a) for a in vi1] == [AssignPrivateIp, ChangeRoute, ChangeRoute, AssociateAddress]
    assert vi1[0].vrf == "main" and vi1[1].vrf == "blue"
    assert vi1[2].ipv6 and vi1[2].route_table == "rtb-0123456789abcdef0"
    assert vi1[3].depends_on(vi1[0]) and not vi1[0].depends_on(vi1[3])
    assert cfg.groups["G_2"].actions[0].public_ip == "203.0.113.10"
    assert vi1[1].describe() == "change-route 10.0.2.0/24 0.0.0.0/0 interface ens7 vrf blue"


def test_defaults(tmp_path):
    cfg = load(write(tmp_path, '[groups.A]\n[[groups.A.assign-private-ip]]\nip = "10.0.1.5"\ninterface = "eth0"\n'))
    assert cfg.aws.deadline == 30.0 and cfg.aws.region is None and cfg.aws.endpoint_url is None


def test_prefix_is_normalised(tmp_path):
    cfg = load(write(tmp_path, '[groups.A]\n[[groups.A.change-route]]\nroute-table = "rtb-0123456789abcdef0"\n'
                               'destination = "2001:DB8:0::/32"\ninterface = "eth0"\n'))
    assert cfg.groups["A"].actions[0].destination == "2001:db8::/32"


def test_prefix_list_destination_and_route_table_tag(tmp_path):
    cfg = load(write(tmp_path, '[groups.A]\n[[groups.A.change-route]]\nroute-table-tag = "ha group=VI 1=x"\n'
                               'destination = "pl-0123456789abcdef0"\ninterface = "eth0"\n'
                               '[[groups.A.change-route]]\nroute-table-tag = "ha-group="\n'
                               'destination = "0.0.0.0/0"\ninterface = "eth0"\n'))
    tagged, empty_value = cfg.groups["A"].actions
    assert tagged.route_table_tag == "ha group=VI 1=x" and tagged.destination_key == "DestinationPrefixListId"
    assert not tagged.ipv6 and tagged.subnet is None and tagged.route_table is None
    assert tagged.describe() == "change-route tag:ha group=VI 1=x pl-0123456789abcdef0 interface eth0 vrf main"
    assert tagged.to_dict() == {"type": "change-route", "route-table-tag": "ha group=VI 1=x",
                                "destination": "pl-0123456789abcdef0", "interface": "eth0", "vrf": "main"}
    assert empty_value.route_table_tag == "ha-group=" and empty_value.destination_key == "DestinationCidrBlock"


@pytest.mark.parametrize("name", CORPUS)
def test_bad_config_corpus(name):
    expected = (BAD / f"{name}.expected").read_text().splitlines()
    path = str(BAD / f"{name}.toml")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == path
    assert info.value.problems == expected


@pytest.mark.parametrize("name", CORPUS)
def test_validate_command_reports_every_problem(name, tmp_path):
    """The whole corpus through the command line: exit 2, one line per problem, no traceback."""
    path = str(BAD / f"{name}.toml")
    os.chmod(path, 0o600)
    proc = subprocess.run([sys.executable, "-m", "aws_vrrp_notify", "-c", path, "validate"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"aws-vrrp-notify: configuration error in {path}:"
    assert [l.strip() for l in lines[1:]] == (BAD / f"{name}.expected").read_text().splitlines()


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "nope.toml"))
    assert "no such file" in info.value.problems[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="file ownership rules apply when running as root")
def test_group_writable_file_is_refused(tmp_path):
    path = write(tmp_path, GOOD)
    os.chmod(path, 0o664)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ["refusing a configuration file writable by group or others (chmod go-w)"]
    os.chmod(path, 0o644)
    os.chown(path, 65534, 0)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ["refusing a configuration file not owned by root but by uid 65534 (chown root)"]


toml_scalars = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.booleans())
keys = st.sampled_from(["ip", "interface", "vrf", "subnet", "route-table", "route-table-tag", "destination",
                        "allocation-id", "public-ip", "private-ip", "deadline", "region", "x"])
action_tables = st.dictionaries(keys, st.one_of(toml_scalars, st.sampled_from(
    ["10.0.1.5", "eth0", "main", "10.0.2.0/24", "0.0.0.0/0", "::/0", "rtb-0123456789abcdef0",
     "eipalloc-0123456789abcdef0", "subnet-0123456789abcdef0", "pl-0123456789abcdef0", "k=v"])), max_size=6)
documents = st.fixed_dictionaries({}, optional={
    "aws": st.dictionaries(keys, toml_scalars, max_size=3),
    "groups": st.dictionaries(st.text(min_size=1, max_size=12), st.dictionaries(
        st.sampled_from(["assign-private-ip", "change-route", "associate-address", "other"]),
        st.one_of(st.lists(action_tables, max_size=3), action_tables, toml_scalars), max_size=3), max_size=3),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_gives_a_config_or_a_clean_error(doc):
    try:
        cfg = parse(doc, "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert all(g.actions for g in cfg.groups.values())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_config_or_a_clean_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    try:
        load(str(path))
    except ConfigError as exc:
        assert exc.problems


def test_decoded_document_cache(tmp_path):
    store = StateStore(str(tmp_path / "state")).ensure()
    cache = tmp_path / "state" / "cache"
    path = write(tmp_path, GOOD)
    first = load(path, store)
    files = list(cache.glob("config-*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert load(path, store) == first  # read back from the cache
    # a changed file is decoded again, and a cached document is validated again
    pathlib.Path(path).write_text(GOOD.replace("deadline = 12.5", "deadline = 7"))
    assert load(path, store).aws.deadline == 7
    pathlib.Path(path).write_text("[groups.A]\n")
    with pytest.raises(ConfigError):
        load(path, store)
    with pytest.raises(ConfigError):
        load(path, store)


def test_cached_document_is_bound_to_the_files_content(tmp_path):
    """Same inode, size and times, other bytes (a clock step, a coarse timestamp): decoded again."""
    store = StateStore(str(tmp_path / "state")).ensure()
    path = write(tmp_path, GOOD)
    assert load(path, store).aws.deadline == 12.5
    before = os.stat(path)
    with open(path, "r+") as fh:  # same size, same inode
        fh.write(GOOD.replace("deadline = 12.5", "deadline = 17.5"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load(path, store).aws.deadline == 17.5


nested = st.recursive(toml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested, st.integers(min_value=0, max_value=60), st.sampled_from(["ip", "x", "vrf"]))
def test_nested_values_anywhere_give_a_clean_error(value, depth, key):
    for _ in range(depth):
        value = [value]
    doc = {"groups": {"A": {"assign-private-ip": [{"ip": "10.0.1.5", "interface": "eth0", key: value}]}}}
    try:
        parse(doc, "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems and all("\n" not in p for p in exc.problems)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=20000), st.sampled_from(["[", "{a = ", "[{b = ["]))
def test_deeply_nested_text_gives_a_clean_error(tmp_path_factory, depth, opener):
    closer = {"[": "]", "{a = ": "}", "[{b = [": "]}]"}[opener]
    path = tmp_path_factory.mktemp("deep") / "c.toml"
    path.write_text("x = " + opener * depth + "1" + closer * depth + "\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.problems
