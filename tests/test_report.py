"""status, check and validate --permissions against moto + IMDS in router namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_failover import VIP, assign, cfg, eip, ok, route


def two_actions(topo, window=0):
    """No consistency window by default: moto shows writes at once unless a test lags it."""
    return cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), window=window)


def test_status_instance_text_and_json(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    proc = ok(run_tool(r1, "status", "instance"))
    ident = json.loads(r1.imds.get("/latest/dynamic/instance-identity/document")[1])
    assert proc.stdout.splitlines() == [
        "aws",
        f"    account-id {ident['accountId']}",
        f"    architecture {ident['architecture']}",
        f"    availability-zone {ident['availabilityZone']}",
        f"    image-id {ident['imageId']}",
        f"    instance-id {r1.instance_id}",
        f"    instance-type {ident['instanceType']}",
        f"    region {topo.region}",
        f"    private-ip {r1.addrs['eth0']}",
    ]
    data = json.loads(ok(run_tool(r1, "status", "instance", "--json")).stdout)
    assert list(data) == ["instance"]
    assert data["instance"]["instance-id"] == r1.instance_id and data["instance"]["region"] == topo.region


def test_status_ha_notification_lists_only_actions_in_sync(routers, run_tool):
    r1, r2, topo = routers.r1, routers.r2, routers.topology
    config = two_actions(topo)
    ok(run_tool(r1, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    assert ok(run_tool(r1, "status", "ha-notification", config=config)).stdout.splitlines() == [
        "ha-notification",
        "    group VI_1",
        f"        assign-private-ip {VIP} interface eth0 vrf main",
        f"        change-route {topo.subnet_cidrs['wan']} 0.0.0.0/0 interface eth1 vrf main",
    ]
    assert ok(run_tool(r2, "status", "ha-notification", config=config)).stdout.splitlines() == [
        "ha-notification", "    group VI_1"]
    data = json.loads(ok(run_tool(r2, "status", "ha-notification", "--json", config=config)).stdout)
    group = data["ha-notification"]["groups"][0]
    assert group["name"] == "VI_1" and group["state"] == "BACKUP"
    first, second = group["actions"]
    assert first == {"type": "assign-private-ip", "ip": VIP, "interface": "eth0", "vrf": "main", "in-sync": False,
                     "reason": f"{VIP} is assigned to {r1.eni('eth0')}, not to {r2.eni('eth0')} (eth0)"}
    assert second["in-sync"] is False and second["destination"] == "0.0.0.0/0"
    assert second["reason"] == (f"route 0.0.0.0/0 in {topo.route_tables['wan']} targets {r1.eni('eth1')} "
                                "of another instance or interface")


def test_status_eip_in_and_out_of_sync(routers, run_tool):
    r1, r2, topo = routers.r1, routers.r2, routers.topology
    config = cfg(eip(allocation_id=topo.eip_alloc))
    ok(run_tool(r2, "master", "VI_1", config=config))
    out = json.loads(ok(run_tool(r1, "status", "ha-notification", "--json", config=config)).stdout)
    action = out["ha-notification"]["groups"][0]["actions"][0]
    assert action["in-sync"] is False and r2.eni("eth0") in action["reason"]
    out = json.loads(ok(run_tool(r2, "status", "ha-notification", "--json", config=config)).stdout)
    assert out["ha-notification"]["groups"][0]["actions"][0]["in-sync"] is True


def test_status_all_sections(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    data = json.loads(ok(run_tool(r1, "status", "--json", config=two_actions(topo))).stdout)
    assert set(data) == {"instance", "network-ports", "ha-notification"}
    assert data["ha-notification"]["groups"][0]["state"] is None


def test_not_on_aws(routers, run_tool, tmp_path):
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9/", "AWS_VRRP_NOTIFY_SYSFS": str(tmp_path)}
    proc = ok(run_tool(routers.r1, "status", config=cfg(assign()), env=env))
    assert proc.stdout.startswith("not running on AWS")
    proc = run_tool(routers.r1, "check", config=cfg(assign()), env=env)
    assert proc.returncode == 3 and "UNKNOWN" in proc.stdout


def many_groups(n):
    text = "[aws]\ndeadline = 20\nprepare = false\n"
    for i in range(n):
        text += (f'[groups.G{i}]\n[[groups.G{i}.assign-private-ip]]\nip = "10.0.1.{100 + i}"\ninterface = "eth0"\n'
                 f'[[groups.G{i}.change-route]]\nsubnet = "10.0.2.0/24"\ndestination = "10.{100 + i}.0.0/16"\n'
                 f'interface = "eth1"\n'
                 f'[[groups.G{i}.associate-address]]\nallocation-id = "eipalloc-0123456789abcde{i:02x}"\n'
                 f'interface = "eth0"\n')
    return text


def test_call_count_does_not_grow_with_groups(routers, run_tool):
    aws, r1 = routers.cloud, routers.r1
    counts = []
    for n in (1, 50):
        aws.reset_counts()
        ok(run_tool(r1, "status", "ha-notification", config=many_groups(n)))
        counts.append(aws.count_actions())
        aws.reset_counts()
        run_tool(r1, "check", config=many_groups(n))
        counts.append(aws.count_actions())
    assert counts[0] == counts[2] and counts[1] == counts[3], counts
    assert sum(counts[2].values()) <= 4


def test_check_outcomes(routers, run_tool):
    r1, r2, topo = routers.r1, routers.r2, routers.topology
    config = two_actions(topo)
    proc = run_tool(r1, "check", config=config)  # nothing recorded yet
    assert proc.returncode == 3 and proc.stdout.startswith("VI_1 UNKNOWN: no transition recorded")
    ok(run_tool(r1, "master", "VI_1", config=config))
    ok(run_tool(r2, "backup", "VI_1", config=config))
    for r in (r1, r2):
        proc = run_tool(r, "check", config=config)
        assert proc.returncode == 0, proc.stdout
        assert proc.stdout.splitlines()[-1].startswith("aws-vrrp-notify check OK: 1 group(s)")
    ok(run_tool(r1, "backup", "VI_1", config=config))  # r1 says BACKUP but AWS still points to it
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 1 and proc.stdout.startswith("VI_1 WARNING: BACKUP but AWS still points here")
    ok(run_tool(r2, "master", "VI_1", config=config))
    routers.cloud.ec2.replace_route(RouteTableId=topo.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                                    NetworkInterfaceId=r1.eni("eth1"))  # drift behind r2's back
    proc = run_tool(r2, "check", "--json", config=config)
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert data["status"] == "CRITICAL" and data["groups"][0]["status"] == "CRITICAL"
    assert [a["in-sync"] for a in data["groups"][0]["actions"]] == [True, False]


def test_check_within_the_consistency_window_is_converging_not_critical(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    config = two_actions(topo, window=30)
    ok(run_tool(r1, "master", "VI_1", config=config))
    routers.cloud.ec2.replace_route(RouteTableId=topo.route_tables["wan"], DestinationCidrBlock="0.0.0.0/0",
                                    NetworkInterfaceId=routers.r2.eni("eth1"))
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.startswith("VI_1 WARNING: MASTER but 1/2 actions point here (converging")
    proc = run_tool(r1, "check", "--repair", config=config)  # converging: left to the transition
    assert proc.returncode == 1
    assert routers.cloud.route_target(topo.route_tables["wan"], "0.0.0.0/0") == routers.r2.eni("eth1")
    proc = run_tool(r1, "check", config=two_actions(topo, window=0))
    assert proc.returncode == 2 and proc.stdout.startswith("VI_1 CRITICAL: MASTER but 1/2 actions point here")


def test_check_unknown_on_bad_config(routers, run_tool):
    proc = run_tool(routers.r1, "check", config="[groups.A]\n")
    assert proc.returncode == 3 and "UNKNOWN" in proc.stdout and "group has no action" in proc.stderr
    assert routers.cloud.count_actions() == {}


def parse_prometheus(text):
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_prometheus_file_and_repair(routers, run_tool, tmp_path):
    r1, topo = routers.r1, routers.topology
    config = two_actions(topo)
    ok(run_tool(r1, "master", "VI_1", config=config))
    routers.cloud.ec2.assign_private_ip_addresses(NetworkInterfaceId=routers.r2.eni("eth0"),
                                                  PrivateIpAddresses=[VIP], AllowReassignment=True)
    prom = tmp_path / "aws_vrrp_notify.prom"
    proc = run_tool(r1, "check", "--prometheus", str(prom), config=config)
    assert proc.returncode == 2
    samples = parse_prometheus(prom.read_text())
    assert samples['aws_vrrp_notify_group_in_sync{group="VI_1"}'] == 0
    assert samples['aws_vrrp_notify_group_status{group="VI_1"}'] == 2
    assert samples['aws_vrrp_notify_group_state{group="VI_1",state="MASTER"}'] == 1
    assert samples['aws_vrrp_notify_group_state{group="VI_1",state="BACKUP"}'] == 0
    assert samples["aws_vrrp_notify_check_error"] == 0 and samples["aws_vrrp_notify_check_timestamp_seconds"] > 0
    assert samples[f'aws_vrrp_notify_action_in_sync{{group="VI_1",type="assign-private-ip",'
                   f'action="assign-private-ip {VIP} interface eth0 vrf main"}}'] == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # atomic: no temp file left
    proc = run_tool(r1, "check", "--repair", "--prometheus", str(prom), config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert routers.cloud.who_holds(VIP) == [r1.eni("eth0")]
    assert parse_prometheus(prom.read_text())['aws_vrrp_notify_group_in_sync{group="VI_1"}'] == 1


def test_repair_leaves_backup_groups_alone(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    config = two_actions(topo)
    ok(run_tool(r1, "backup", "VI_1", config=config))
    ok(run_tool(r1, "check", "--repair", config=config))
    assert routers.cloud.who_holds(VIP) == [] and routers.cloud.count_actions().get("AssignPrivateIpAddresses") is None


def test_validate_permissions(routers, run_tool):
    r1, topo = routers.r1, routers.topology
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]), eip(allocation_id=topo.eip_alloc))
    before = (routers.cloud.who_holds(VIP), routers.cloud.route_target(topo.route_tables["wan"], "0.0.0.0/0"),
              routers.cloud.eip_association())
    proc = ok(run_tool(r1, "validate", "--permissions", config=config))
    lines = proc.stdout.splitlines()
    assert any(l.startswith("groups.VI_1.change-route[0]: change-route") and "DryRun" in l for l in lines)
    assert any(l.startswith("groups.VI_1.assign-private-ip[0]:") and "allowed (no-op request" in l for l in lines)
    assert "contrib/iam" in lines[-1]
    after = (routers.cloud.who_holds(VIP), routers.cloud.route_target(topo.route_tables["wan"], "0.0.0.0/0"),
             routers.cloud.eip_association())
    assert after == before  # proving permissions changed nothing
    assert routers.cloud.eni_private_ips(r1.eni("eth0")) == [r1.addrs["eth0"]]


def test_validate_permissions_reports_a_denied_action(routers, run_tool, fault_proxy):
    r1, topo = routers.r1, routers.topology
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"ReplaceRoute"})
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]))
    proc = run_tool(r1, "validate", "--permissions", config=config, env=proxy.env)
    assert proc.returncode == 1
    line = next(l for l in proc.stdout.splitlines() if l.startswith("groups.VI_1.change-route[0]: "))
    assert "DENIED: UnauthorizedOperation" in line
    assert any(l.startswith("groups.VI_1.assign-private-ip") and "allowed" in l for l in proc.stdout.splitlines())
    assert "contrib/iam" in proc.stdout.splitlines()[-1]


def test_denied_write_fails_fast_and_is_named(routers, run_tool, fault_proxy):
    r1 = routers.r1
    proxy = fault_proxy(r1, "ec2")
    proxy.add_fault("denied", actions={"AssignPrivateIpAddresses"})
    proc = run_tool(r1, "master", "VI_1", config=cfg(assign()), env=proxy.env)
    assert proc.returncode == 1
    assert "AssignPrivateIpAddresses failed: UnauthorizedOperation" in proc.stderr and "(1 attempt)" in proc.stderr


def test_validate_permissions_reports_a_missing_interface(routers, run_tool):
    proc = run_tool(routers.r1, "validate", "--permissions", config=cfg(assign(interface="ens42")))
    assert proc.returncode == 1
    assert "interface ens42 does not exist" in proc.stdout


def test_what_does_not_exist_is_not_sent_to_iam(routers, run_tool):
    """A missing interface or Elastic IP is named with its key path, and is no permission problem."""
    topo = routers.topology
    config = cfg(assign(), route(subnet=topo.subnet_cidrs["wan"]),
                 route(destination="::/0", interface="eth9", route_table=topo.route_tables["wan"]),
                 eip(public_ip="198.51.100.77"))
    proc = run_tool(routers.r1, "validate", "--permissions", config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(l.startswith("groups.VI_1.change-route[1]: ") and "interface eth9 does not exist" in l for l in lines)
    assert any(l.startswith("groups.VI_1.associate-address[0]: ") and "FAILED" in l and "198.51.100.77" in l
               for l in lines)
    assert any(l.startswith("groups.VI_1.change-route[0]: ") and "allowed" in l for l in lines)
    assert "permissions are missing" not in proc.stdout and "contrib/iam" not in proc.stdout
    assert "not a permission problem" in lines[-1]


def test_status_network_port_without_any_port_prints_nothing(routers, run_tool, tmp_path):
    proc = ok(run_tool(routers.r1, "status", "network-port", env={"AWS_VRRP_NOTIFY_SYSFS": str(tmp_path)}))
    assert proc.stdout == ""
    data = json.loads(ok(run_tool(routers.r1, "status", "network-port", "--json",
                                  env={"AWS_VRRP_NOTIFY_SYSFS": str(tmp_path)})).stdout)
    assert data == {"network-ports": []}


def test_check_names_a_corrupt_record(routers, run_tool):
    r1 = routers.r1
    config = cfg(assign())
    groups = run_tool.state_dir(r1) / "groups"
    groups.mkdir(mode=0o700)
    (groups / "VI_1.json").write_text('{"group": "VI_1", "state": "MASTER", "seq": "x"}')
    proc = run_tool(r1, "check", config=config)
    assert proc.returncode == 3 and "corrupt" in proc.stderr and "VI_1.json" in proc.stderr
    ok(run_tool(r1, "master", "VI_1", config=config))
    assert ok(run_tool(r1, "check", config=config)).stdout.startswith("VI_1 OK: MASTER")


def test_validate_alone_touches_nothing(routers, run_tool):
    proc = ok(run_tool(routers.r1, "validate", config=cfg(assign(interface="ens42"))))
    assert proc.stdout.strip().endswith("OK (1 group(s), 1 action(s))")
    assert routers.cloud.count_actions() == {} and routers.r1.imds.count() == 0


# ---------------------------------------------------------------- network ports


def fake_sysfs(root):
    """Three layouts: ENA at function 0, a second function, and virtio-net below a PCI function."""
    devices = root / "devices" / "pci0000:00"
    for addr, vendor, device in (("0000:00:05.0", "0x1d0f", "0xec20"), ("0000:00:06.1", "0x1d0f", "0xec20"),
                                 ("0000:00:03.0", "0x1af4", "0x1041")):
        d = root / "bus" / "pci" / "devices" / addr
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
        (devices / addr).mkdir(parents=True, exist_ok=True)
    (devices / "0000:00:03.0" / "virtio2").mkdir()
    net = root / "class" / "net"
    for name, mac, target in (("ens5", "0e:00:00:00:00:05", devices / "0000:00:05.0"),
                              ("ens6", "0e:00:00:00:00:06", devices / "0000:00:06.1"),
                              ("eth0", "0e:00:00:00:00:03", devices / "0000:00:03.0" / "virtio2"),
                              ("lo", "00:00:00:00:00:00", None)):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        if target:
            (net / name / "device").symlink_to(target)


def test_network_ports_from_a_sysfs_tree(tmp_path, monkeypatch):
    from aws_vrrp_notify.ports import PciIds, main_namespace_ports

    fake_sysfs(tmp_path)
    ids = tmp_path / "pci.ids"
    ids.write_text("1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n"
                   "1d0f  Amazon.com, Inc.\n\tec20  Elastic Network Adapter (ENA)\n")
    ports = main_namespace_ports(str(tmp_path), PciIds(str(ids)))
    assert [(p.name, p.bus_addr, p.interface, p.vendor, p.model) for p in ports] == [
        ("pci-b0s5", "0000:00:05.0", "ens5", "Amazon.com, Inc.", "Elastic Network Adapter (ENA)"),
        ("pci-b0s6f1", "0000:00:06.1", "ens6", "Amazon.com, Inc.", "Elastic Network Adapter (ENA)"),
        ("pci-b0s3", "0000:00:03.0", "eth0", "Red Hat, Inc.", "Virtio 1.0 network device"),
    ]
    numeric = main_namespace_ports(str(tmp_path), PciIds(str(tmp_path / "missing.ids")))
    assert (numeric[0].vendor, numeric[0].model) in (("0x1d0f", "0xec20"), ("Amazon.com, Inc.", "Elastic Network Adapter (ENA)"))


def test_network_port_text_with_eni_ids(routers, run_tool, tmp_path):
    """The tool run in r1 with a sysfs tree whose NICs carry r1's ENI MACs."""
    r1 = routers.r1
    fake_sysfs(tmp_path)
    for name, ifname in (("ens5", "eth0"), ("ens6", "eth1")):
        (tmp_path / "class" / "net" / name / "address").write_text(r1.mac(ifname) + "\n")
    proc = ok(run_tool(r1, "status", "network-port", env={"AWS_VRRP_NOTIFY_SYSFS": str(tmp_path),
                                                          "AWS_VRRP_NOTIFY_PCI_IDS": "/nonexistent"}))
    text = proc.stdout.splitlines()
    block = text[text.index("network-port pci-b0s5"):][:7]
    assert block[1:] == ["    bus-addr 0000:00:05.0", "    vendor 0x1d0f", "    model 0xec20",
                         f"    mac-address {r1.mac('eth0')}", "    interface ens5",
                         f"    aws-interface-id {r1.eni('eth0')}"]
    data = json.loads(ok(run_tool(r1, "status", "network-port", "--json",
                                  env={"AWS_VRRP_NOTIFY_SYSFS": str(tmp_path)})).stdout)
    by_name = {p["name"]: p for p in data["network-ports"]}
    assert by_name["pci-b0s6f1"]["aws-interface-id"] == r1.eni("eth1")
    assert by_name["pci-b0s3"]["aws-interface-id"] is None and by_name["pci-b0s3"]["vrf"] == "main"


def test_this_machines_real_nic_matches_sysfs(cloud):
    """The machine's own PCI NICs, listed from the root namespace (IMDS on loopback knows no MAC)."""
    net = "/sys/class/net"
    expected = {}
    for name in os.listdir(net):
        dev = os.path.join(net, name, "device")
        if os.path.exists(dev):
            parts = [p for p in os.path.realpath(dev).split("/") if len(p) == 12 and p[4] == ":" and p[10] == "."]
            if parts:
                expected[name] = (parts[-1], open(os.path.join(net, name, "address")).read().strip())
    if not expected:
        pytest.skip("this machine has no PCI network device")
    env = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": cloud.serve_imds("r1")}
    proc = subprocess.run([sys.executable, "-m", "aws_vrrp_notify", "status", "network-port", "--json"],
                          capture_output=True, text=True, env=env, check=True)
    ports = {p["interface"]: p for p in json.loads(proc.stdout)["network-ports"] if p["vrf"] == "main"}
    for name, (addr, mac) in expected.items():
        assert ports[name]["bus-addr"] == addr and ports[name]["mac-address"] == mac
        bus, slot, fn = int(addr[5:7], 16), int(addr[8:10], 16), addr[11]
        assert ports[name]["name"] == f"pci-b{bus}s{slot}" + ("" if fn == "0" else f"f{fn}")
