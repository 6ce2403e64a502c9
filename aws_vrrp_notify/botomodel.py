"""A trimmed botocore data directory: only the EC2 (Route 53, STS) operations this tool calls.

Loading botocore's full EC2 model (4.3 MB of JSON, 830 operations) and endpoints.json
costs a process ~100 ms and ~60 MB more; the trimmed copy loads in a few ms. It is
derived from the installed botocore and cached in a directory that survives a reboot
(state.DEFAULT_CACHE_DIR, or --cache-dir), so that even the first ``master`` after a boot
does not load the full model. Its name holds botocore's version and a hash of what is
trimmed (OPERATIONS, GLOBAL_FILES): an upgrade of botocore or of this package that needs
another operation builds a new copy instead of using an old one.

The cache directory is only trusted when it is ours and nobody else can write to it (the
same rule as for the configuration file); otherwise the state directory's cache is used.
A copy is written to a temporary directory and renamed into place, so readers see a
complete copy or none. Any problem with it falls back to botocore's own data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from typing import Any, Dict, Iterable, Optional, Set

from .logsetup import log

def _operations(service: str) -> tuple:
    """What the action types declare they write to ``service`` with, and the calls behind the reads."""
    from .actions import operations
    from .ec2 import READ_OPERATIONS, read_service

    reads = {op for kind, op in READ_OPERATIONS.items() if read_service(kind) == service}
    return tuple(sorted(set(operations(service)) | reads))


OPERATIONS = {"ec2": _operations("ec2"), "route53": _operations("route53"), "sts": ("AssumeRole",)}
GLOBAL_FILES = ("partitions", "sdk-default-configuration", "_retry")


def contents_key() -> str:
    """Names what a copy holds: it changes whenever OPERATIONS or GLOBAL_FILES do."""
    text = json.dumps({"operations": OPERATIONS, "files": GLOBAL_FILES}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def directory(root: str, version: str) -> str:
    return os.path.join(root, f"botocore-{version}-{contents_key()}")


def _untrusted(path: str) -> Optional[str]:
    """Why ``path`` cannot hold the model (None: it can). Creates it (0700) when missing;
    never its parents."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create it: {exc.strerror}"
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def cache_root(store: Any) -> Optional[str]:
    """The directory for the trimmed model: store.model_cache when it can be trusted, else
    the state directory's cache; None when neither can."""
    problem = _untrusted(store.model_cache)
    if problem is None:
        return store.model_cache
    fallback_problem = _untrusted(store.cache_dir)
    log.debug("model cache %s not used (%s); %s", store.model_cache, problem,
              f"using {store.cache_dir}" if fallback_problem is None
              else f"nor {store.cache_dir} ({fallback_problem}): no trimmed model")
    return store.cache_dir if fallback_problem is None else None


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


def _private_dirs(path: str) -> None:
    """os.makedirs, with 0700 for every directory it creates (not only the last)."""
    if not os.path.isdir(path):
        _private_dirs(os.path.dirname(path))
        os.mkdir(path, 0o700)


def _dump(path: str, data: Dict[str, Any]) -> None:
    _private_dirs(os.path.dirname(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())  # renamed into place below: it must be whole after a power loss


def build(root: str) -> str:
    """Write the trimmed data directory for the installed botocore under ``root``; returns its path."""
    import botocore
    from botocore.loaders import Loader

    target = directory(root, botocore.__version__)
    if os.path.isdir(target):
        return target
    return _write(Loader(), target)


def _write(loader: Any, target: str) -> str:
    parent = os.path.dirname(target)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".botocore-")  # 0700
    try:
        for service, operations in OPERATIONS.items():
            version = loader.determine_latest_version(service, "service-2")
            model = loader.load_service_model(service, "service-2", version)
            _dump(os.path.join(tmp, service, version, "service-2.json"), trim_service(model, operations))
            rules = loader.load_service_model(service, "endpoint-rule-set-1", version)
            _dump(os.path.join(tmp, service, version, "endpoint-rule-set-1.json"), rules)
        for name in GLOBAL_FILES:
            _dump(os.path.join(tmp, f"{name}.json"), loader.load_data(name))
        _dump(os.path.join(tmp, "endpoints.json"), trim_endpoints(loader.load_data("endpoints"), OPERATIONS))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(target):  # another process renamed its copy first
            return target
        raise
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(parent)
    return target


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def loader(root: str) -> Optional[Any]:
    """A botocore Loader restricted to the trimmed copy under ``root``, if there is one for
    this botocore and these operations."""
    import botocore
    from botocore.loaders import Loader

    path = directory(root, botocore.__version__)
    if not os.path.isfile(os.path.join(path, "endpoints.json")):
        return None
    return Loader(extra_search_paths=[path], include_default_search_paths=False,
                  include_default_extras=False)


def discard(root: str) -> None:
    """Remove an unusable copy, so that keep_trimmed_model writes a good one."""
    import botocore

    shutil.rmtree(directory(root, botocore.__version__), ignore_errors=True)


def keep_trimmed_model(store: Any) -> None:
    """Make sure the next process finds a trimmed model; never fails the caller."""
    try:
        import botocore

        root = cache_root(store)
        if root is not None and not os.path.isdir(directory(root, botocore.__version__)):
            build(root)
            log.debug("trimmed botocore model written to %s", root)
    except Exception as exc:  # only speed is at stake
        log.debug("could not write the trimmed botocore model: %s", exc)
