"""Network ports: interfaces backed by a PCI function, in every namespace, with PCI names.

The main namespace is read from sysfs (/sys/class/net/IF/device, walking up the device
path so that virtio-net and other NICs behind a PCI function are found); other
namespaces (VRFs) from netlink's parent-device attributes, then sysfs for that device.
AWS_VRRP_NOTIFY_SYSFS (default /sys) lets tests point at a sysfs tree of their own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .config import MAIN_VRF
from .links import LinkError, links_in, list_namespaces, netns_path

PCI_ADDRESS = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


@dataclass
class NetworkPort:
    name: str
    bus_addr: str
    vendor: str
    model: str
    mac_address: str
    interface: str
    vrf: str
    aws_interface_id: Optional[str] = None

    def to_dict(self) -> Dict[str, Optional[str]]:
        return {"name": self.name, "bus-addr": self.bus_addr, "vendor": self.vendor, "model": self.model,
                "mac-address": self.mac_address, "interface": self.interface, "vrf": self.vrf,
                "aws-interface-id": self.aws_interface_id}


def sysfs_root() -> str:
    return os.environ.get("AWS_VRRP_NOTIFY_SYSFS", "/sys")


def port_name(bus_addr: str) -> str:
    match = PCI_ADDRESS.match(bus_addr)
    assert match
    _domain, bus, slot, fn = match.groups()
    name = f"pci-b{int(bus, 16)}s{int(slot, 16)}"
    return name if fn == "0" else f"{name}f{fn}"


def pci_function_of(device_path: str) -> Optional[str]:
    """The closest PCI address among a device path's components (walking up)."""
    for part in reversed(os.path.realpath(device_path).split(os.sep)):
        if PCI_ADDRESS.match(part):
            return part
    return None


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


class PciIds:
    """Vendor and device names from the PCI ID database, when it is installed."""

    def __init__(self, path: Optional[str] = None):
        self.vendors: Dict[str, str] = {}
        self.devices: Dict[Tuple[str, str], str] = {}
        override = path or os.environ.get("AWS_VRRP_NOTIFY_PCI_IDS")
        candidates = [override] if override else list(PCI_IDS_PATHS)
        for candidate in candidates:
            if candidate and os.path.exists(candidate):
                self._load(candidate)
                break

    def _load(self, path: str) -> None:
        vendor = None
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("#") or not line.strip():
                    continue
                if line.startswith("C "):  # device classes follow: not needed
                    break
                if not line.startswith("\t"):
                    vendor, _, name = line.strip().partition("  ")
                    self.vendors[vendor] = name
                elif not line.startswith("\t\t") and vendor:
                    device, _, name = line.strip().partition("  ")
                    self.devices[(vendor, device)] = name

    def names(self, vendor_id: str, device_id: str) -> Tuple[str, str]:
        v = vendor_id.lower().replace("0x", "")
        d = device_id.lower().replace("0x", "")
        return self.vendors.get(v, f"0x{v}"), self.devices.get((v, d), f"0x{d}")


def _port(sysfs: str, bus_addr: str, interface: str, mac: str, vrf: str, ids: PciIds) -> NetworkPort:
    pci_dir = os.path.join(sysfs, "bus", "pci", "devices", bus_addr)
    vendor, model = ids.names(_read(os.path.join(pci_dir, "vendor")) or "0x0000",
                              _read(os.path.join(pci_dir, "device")) or "0x0000")
    return NetworkPort(port_name(bus_addr), bus_addr, vendor, model, mac, interface, vrf)


def main_namespace_ports(sysfs: str, ids: PciIds) -> List[NetworkPort]:
    ports = []
    net = os.path.join(sysfs, "class", "net")
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return []
    for interface in names:
        device = os.path.join(net, interface, "device")
        if not os.path.exists(device):
            continue
        bus_addr = pci_function_of(device)
        if bus_addr:
            mac = _read(os.path.join(net, interface, "address")) or ""
            ports.append(_port(sysfs, bus_addr, interface, mac, MAIN_VRF, ids))
    return ports


def namespace_ports(namespace: str, sysfs: str, ids: PciIds) -> List[NetworkPort]:
    ports = []
    try:
        found = links_in(namespace)
    except LinkError:
        return []
    for link in found:
        if not link.parent_dev or not link.parent_bus:
            continue
        if link.parent_bus == "pci":
            bus_addr = link.parent_dev if PCI_ADDRESS.match(link.parent_dev) else None
        else:
            bus_addr = pci_function_of(os.path.join(sysfs, "bus", link.parent_bus, "devices", link.parent_dev))
        if bus_addr:
            ports.append(_port(sysfs, bus_addr, link.name, link.mac or "", namespace, ids))
    return ports


def _is_own_namespace(namespace: str) -> bool:
    try:
        own, other = os.stat("/proc/self/ns/net"), os.stat(netns_path(namespace))
    except OSError:
        return False
    return (own.st_dev, own.st_ino) == (other.st_dev, other.st_ino)


def network_ports() -> List[NetworkPort]:
    sysfs = sysfs_root()
    ids = PciIds()
    ports = main_namespace_ports(sysfs, ids)
    for namespace in list_namespaces():
        if not _is_own_namespace(namespace):
            ports.extend(namespace_ports(namespace, sysfs, ids))
    return sorted(ports, key=lambda p: (p.bus_addr, p.vrf, p.interface))
