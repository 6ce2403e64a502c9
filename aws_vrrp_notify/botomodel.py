"""A trimmed botocore data directory: only the EC2 (and STS) operations this tool calls.

Loading botocore's full EC2 model (4.3 MB of JSON, 830 operations) and endpoints.json
costs ~150-180 ms per process (PERF.md §4); the trimmed copy loads in a few ms. It is
derived from the installed botocore, kept in the state directory keyed by botocore's
version, and written atomically. Any problem with it falls back to botocore's own data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Iterable, Optional, Set

from .logsetup import log

OPERATIONS = {
    "ec2": ("AssignPrivateIpAddresses", "ReplaceRoute", "CreateRoute", "AssociateAddress",
            "DescribeNetworkInterfaces", "DescribeRouteTables", "DescribeSubnets", "DescribeAddresses"),
    "sts": ("AssumeRole",),
}
GLOBAL_FILES = ("partitions", "sdk-default-configuration", "_retry")


def directory(state_root: str, version: str) -> Optional[str]:
    """The trimmed data of botocore ``version`` in the state directory's checked cache/ (reached
    through its descriptor, see state.trusted_cache_dir); None when it was not opened."""
    from .state import trusted_cache_dir

    cache = trusted_cache_dir(state_root)
    return None if cache is None else os.path.join(cache, f"botocore-{version}")


def _shapes_used(model: Dict[str, Any], operations: Iterable[str]) -> Set[str]:
    shapes = model["shapes"]
    todo = []
    for name in operations:
        op = model["operations"][name]
        for key in ("input", "output"):
            if key in op:
                todo.append(op[key]["shape"])
        todo.extend(e["shape"] for e in op.get("errors", []))
    seen: Set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        shape = shapes[name]
        for member in shape.get("members", {}).values():
            todo.append(member["shape"])
        for key in ("member", "key", "value"):
            if key in shape:
                todo.append(shape[key]["shape"])
    return seen


def _strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_docs(v) for k, v in node.items() if k not in ("documentation", "documentationUrl")}
    if isinstance(node, list):
        return [_strip_docs(v) for v in node]
    return node


def trim_service(model: Dict[str, Any], operations: Iterable[str]) -> Dict[str, Any]:
    operations = tuple(operations)
    used = _shapes_used(model, operations)
    return _strip_docs({
        "version": model.get("version", "2.0"),
        "metadata": model["metadata"],
        "operations": {name: model["operations"][name] for name in operations},
        "shapes": {name: model["shapes"][name] for name in sorted(used)},
    })


def trim_endpoints(endpoints: Dict[str, Any], services: Iterable[str]) -> Dict[str, Any]:
    keep = set(services)
    out = dict(endpoints)
    out["partitions"] = []
    for partition in endpoints.get("partitions", []):
        p = dict(partition)
        p["services"] = {k: v for k, v in partition.get("services", {}).items() if k in keep}
        out["partitions"].append(p)
    return out


def _dump(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))


def build(state_root: str) -> Optional[str]:
    """Write the trimmed data directory for the installed botocore; returns its path."""
    import botocore
    from botocore.loaders import Loader

    target = directory(state_root, botocore.__version__)
    if target is None or os.path.isdir(target):
        return target
    loader = Loader()
    old_umask = os.umask(0o077)
    try:
        return _write(loader, target)
    finally:
        os.umask(old_umask)


def _write(loader: Any, target: str) -> str:
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".botocore-")
    try:
        for service, operations in OPERATIONS.items():
            version = loader.determine_latest_version(service, "service-2")
            model = loader.load_service_model(service, "service-2", version)
            _dump(os.path.join(tmp, service, version, "service-2.json"), trim_service(model, operations))
            rules = loader.load_service_model(service, "endpoint-rule-set-1", version)
            _dump(os.path.join(tmp, service, version, "endpoint-rule-set-1.json"), rules)
        _dump(os.path.join(tmp, "endpoints.json"), trim_endpoints(loader.load_data("endpoints"), OPERATIONS))
        for name in GLOBAL_FILES:
            _dump(os.path.join(tmp, f"{name}.json"), loader.load_data(name))
        os.replace(tmp, target)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def loader(state_root: Optional[str]) -> Optional[Any]:
    """A botocore Loader restricted to the trimmed directory, if one exists for this botocore."""
    if not state_root:
        return None
    import botocore
    from botocore.loaders import Loader

    path = directory(state_root, botocore.__version__)
    if path is None or not os.path.isfile(os.path.join(path, "endpoints.json")):
        return None
    return Loader(extra_search_paths=[path], include_default_search_paths=False,
                  include_default_extras=False)


def keep_trimmed_model(store: Any) -> None:
    """Make sure the next process finds a trimmed model; never fails the caller."""
    try:
        import botocore

        store.ensure()
        build(store.root)
    except Exception as exc:  # only speed is at stake
        log.debug("could not write the trimmed botocore model: %s", exc)
