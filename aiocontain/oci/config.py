"""A bundle's config.json, read and checked in the runtime before anything is built.

``load`` turns it into a ``Plan``: plain values the container's init uses after the fork (namespaces to make
or join, id maps, mounts with their flags, paths, sysctls, devices, hooks) plus the ``process.Prepared``
process. Every field this runtime does not support is refused here, with one line naming it, so nothing is
left behind by a config it cannot honour.
"""

from __future__ import annotations

import json
import os

from aiocontain import syscalls as sc
from aiocontain.oci import hooks, process
from aiocontain.oci.errors import OciError

NAMESPACE_FLAGS = {
    "user": sc.CLONE_NEWUSER,
    "mount": sc.CLONE_NEWNS,
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "cgroup": sc.CLONE_NEWCGROUP,
}
# The order namespaces are joined in: the user namespace first (it owns the others), mount last but one.
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "mount")

# mount(8) option -> (flags to set, flags to clear); runc's table.
MOUNT_FLAGS = {
    "async": (0, 16),
    "atime": (0, sc.MS_NOATIME),
    "bind": (sc.MS_BIND, 0),
    "defaults": (0, 0),
    "dev": (0, sc.MS_NODEV),
    "diratime": (0, sc.MS_NODIRATIME),
    "dirsync": (128, 0),
    "exec": (0, sc.MS_NOEXEC),
    "mand": (64, 0),
    "noatime": (sc.MS_NOATIME, 0),
    "nodev": (sc.MS_NODEV, 0),
    "nodiratime": (sc.MS_NODIRATIME, 0),
    "noexec": (sc.MS_NOEXEC, 0),
    "nomand": (0, 64),
    "norelatime": (0, sc.MS_RELATIME),
    "nostrictatime": (0, sc.MS_STRICTATIME),
    "nosuid": (sc.MS_NOSUID, 0),
    "rbind": (sc.MS_BIND | sc.MS_REC, 0),
    "relatime": (sc.MS_RELATIME, 0),
    "remount": (sc.MS_REMOUNT, 0),
    "ro": (sc.MS_RDONLY, 0),
    "rw": (0, sc.MS_RDONLY),
    "silent": (32768, 0),
    "strictatime": (sc.MS_STRICTATIME, 0),
    "suid": (0, sc.MS_NOSUID),
    "sync": (16, 0),
}
PROPAGATION = sc.PROPAGATION
EXTENSIONS = ("tmpcopyup",)  # runc's and crun's: a tmpfs starts with what the image had at its place


class Mount:
    """One entry of config.json's mounts, with its options split as mount(2) takes them."""

    def __init__(self, destination: str, kind: str, source: str, flags: int, propagation: int, data: str) -> None:
        self.destination = destination
        self.kind = kind
        self.source = source
        self.flags = flags
        self.propagation = propagation
        self.data = data
        self.copy_up = False

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND) or self.kind == "bind"


class Plan:
    """Everything ``create`` builds, checked: what the init needs after the fork, as plain values."""

    def __init__(self) -> None:
        self.config: dict[str, object] = {}
        self.config_path = ""
        self.bundle = ""
        self.rootfs = ""
        self.rootfs_readonly = False
        self.process = process.Prepared()
        self.hostname: str | None = None
        self.domainname: str | None = None
        self.new_namespaces = 0  # CLONE_NEW* flags to unshare
        self.join: list[tuple[str, str]] = []  # (type, path), in JOIN_ORDER
        self.uid_mappings: list[tuple[int, int, int]] = []  # (containerID, hostID, size)
        self.gid_mappings: list[tuple[int, int, int]] = []
        self.mounts: list[Mount] = []
        self.masked_paths: list[str] = []
        self.readonly_paths: list[str] = []
        self.sysctl: dict[str, str] = {}
        self.devices: list[dict[str, object]] = []
        self.rootfs_propagation = 0  # linux.rootfsPropagation's flags for the new root; 0: as set up (rslave)
        self.hooks: dict[str, list[dict[str, object]]] = {}
        self.annotations: dict[str, str] = {}
        self.cgroups_path: str | None = None
        self.resources: dict[str, object] = {}


def load(bundle: str) -> Plan:
    """Read BUNDLE/config.json and check it; OciError with one line for the first thing wrong."""
    plan = Plan()
    plan.bundle = os.path.abspath(bundle)
    plan.config_path = os.path.join(plan.bundle, "config.json")
    try:
        with open(plan.config_path, "rb") as f:
            config = json.loads(f.read())
    except FileNotFoundError:
        raise OciError(f"no config.json in the bundle {plan.bundle}") from None
    except OSError as exc:
        raise OciError(f"cannot read {plan.config_path}: {exc.strerror}") from None
    except ValueError as exc:
        raise OciError(f"{plan.config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise OciError(f"{plan.config_path} is not a JSON object")
    plan.config = config
    _check_version(config.get("ociVersion"))
    try:
        _read(plan, config)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise OciError(f"config.json is malformed: {exc!r}") from None
    return plan


def _check_version(version: object) -> None:
    """ociVersion is SemVer 2.0.0 of the spec's major version 1 (pre-release and build suffixes allowed)."""
    import re

    text = str(version) if isinstance(version, str) else ""
    if not re.fullmatch(r"1\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?", text):
        raise OciError(f"config.json: ociVersion {version!r} is not a version 1.x.y of the runtime spec")


def _object(config: dict[str, object], name: str) -> dict[str, object]:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OciError(f"config.json: {name} must be an object")
    return value


def _read(plan: Plan, config: dict[str, object]) -> None:
    root = _object(config, "root")
    path = root.get("path")
    if not isinstance(path, str) or not path:
        raise OciError("config.json: root.path is missing")
    plan.rootfs = os.path.normpath(os.path.join(plan.bundle, path))
    if not os.path.isdir(plan.rootfs):
        raise OciError(f"config.json: root.path {plan.rootfs} is not a directory")
    plan.rootfs_readonly = bool(root.get("readonly"))
    linux = _object(config, "linux")
    for name in ("hostname", "domainname"):
        value = config.get(name)
        if value is not None and not isinstance(value, str):
            raise OciError(f"config.json: {name} must be a string")
        setattr(plan, name, value or None)
    _read_namespaces(plan, linux)
    plan.process = process.prepare(config.get("process"), linux.get("seccomp"))
    _read_mounts(plan, config.get("mounts") or [])
    hooks.check(config.get("hooks"))
    plan.hooks = config.get("hooks") or {}  # type: ignore[assignment]
    plan.annotations = {str(k): str(v) for k, v in _object(config, "annotations").items()}
    plan.masked_paths = _paths(linux, "maskedPaths")
    plan.readonly_paths = _paths(linux, "readonlyPaths")
    plan.sysctl = {str(k): str(v) for k, v in _object(linux, "sysctl").items()}
    devices = linux.get("devices") or []
    if not isinstance(devices, list) or not all(isinstance(d, dict) and d.get("path") for d in devices):
        raise OciError("config.json: linux.devices must be a list of objects with a path")
    plan.devices = devices
    propagation = linux.get("rootfsPropagation")
    if propagation:
        if propagation not in PROPAGATION:
            raise OciError(f"config.json: unknown linux.rootfsPropagation {propagation!r}")
        plan.rootfs_propagation = PROPAGATION[str(propagation)]
    cgroups_path = linux.get("cgroupsPath")
    plan.cgroups_path = str(cgroups_path) if cgroups_path else None
    plan.resources = _object(linux, "resources")
    for unsupported in ("intelRdt", "personality", "timeOffsets", "memoryPolicy"):
        if linux.get(unsupported):
            raise OciError(f"config.json: linux.{unsupported} is not supported")
    if linux.get("mountLabel"):
        raise OciError("config.json: linux.mountLabel is not supported (no SELinux here)")
    if plan.hostname and not plan.new_namespaces & sc.CLONE_NEWUTS and not _joins(plan, "uts"):
        raise OciError("config.json: a hostname needs a uts namespace of the container's own")
    if plan.sysctl and not plan.new_namespaces & (sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS):
        raise OciError("config.json: linux.sysctl needs namespaces of the container's own")


def _joins(plan: Plan, kind: str) -> bool:
    return any(joined == kind for joined, _ in plan.join)


def _read_namespaces(plan: Plan, linux: dict[str, object]) -> None:
    namespaces = linux.get("namespaces") or []
    if not isinstance(namespaces, list):
        raise OciError("config.json: linux.namespaces must be a list")
    seen = set()
    joins = {}
    for entry in namespaces:
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in NAMESPACE_FLAGS:
            raise OciError(f"config.json: namespace type {kind!r} is not supported")
        if kind in seen:
            raise OciError(f"config.json: namespace {kind} is listed twice")
        seen.add(kind)
        path = entry.get("path")
        if path:
            if not os.path.exists(str(path)):
                raise OciError(f"config.json: the {kind} namespace to join, {path}, does not exist")
            joins[kind] = str(path)
        else:
            plan.new_namespaces |= NAMESPACE_FLAGS[str(kind)]
    plan.join = [(kind, joins[kind]) for kind in JOIN_ORDER if kind in joins]
    if "mount" not in seen:
        raise OciError("config.json: the container needs a mount namespace (linux.namespaces has no mount)")
    plan.uid_mappings = _mappings(linux, "uidMappings")
    plan.gid_mappings = _mappings(linux, "gidMappings")
    if plan.new_namespaces & sc.CLONE_NEWUSER and not (plan.uid_mappings and plan.gid_mappings):
        raise OciError("config.json: a new user namespace needs linux.uidMappings and linux.gidMappings")
    if (plan.uid_mappings or plan.gid_mappings) and not plan.new_namespaces & sc.CLONE_NEWUSER:
        raise OciError("config.json: uidMappings and gidMappings need a new user namespace")


def _mappings(linux: dict[str, object], name: str) -> list[tuple[int, int, int]]:
    entries = linux.get(name) or []
    if not isinstance(entries, list):
        raise OciError(f"config.json: linux.{name} must be a list")
    mappings = []
    for entry in entries:
        values = [entry.get(key) for key in ("containerID", "hostID", "size")] if isinstance(entry, dict) else []
        if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise OciError(f"config.json: linux.{name} entries need containerID, hostID and size")
        mappings.append((values[0], values[1], values[2]))
    return mappings  # type: ignore[return-value]


def _paths(linux: dict[str, object], name: str) -> list[str]:
    paths = linux.get(name) or []
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise OciError(f"config.json: linux.{name} must be a list of absolute paths")
    return paths


def _read_mounts(plan: Plan, mounts: object) -> None:
    if not isinstance(mounts, list):
        raise OciError("config.json: mounts must be a list")
    for entry in mounts:
        if not isinstance(entry, dict) or not isinstance(entry.get("destination"), str):
            raise OciError("config.json: every mount needs a destination")
        destination = str(entry["destination"])
        if not destination.startswith("/"):
            raise OciError(f"config.json: mount destination {destination!r} is not an absolute path")
        flags, propagation, data = 0, 0, []
        copy_up = False
        for option in entry.get("options") or []:
            if option in MOUNT_FLAGS:
                set_flags, clear_flags = MOUNT_FLAGS[option]
                flags = (flags | set_flags) & ~clear_flags
            elif option in PROPAGATION:
                propagation = PROPAGATION[option]
            elif option in EXTENSIONS:
                copy_up = True
            elif option.startswith(("idmap", "ridmap")):
                raise OciError(f"config.json: mount {destination}: option {option} is not supported")
            else:
                data.append(str(option))  # the file system's own (mode=755, size=..., newinstance, ...)
        kind = str(entry.get("type") or ("bind" if flags & sc.MS_BIND else "none"))
        source = str(entry.get("source") or kind)
        if kind == "bind" or flags & sc.MS_BIND:
            flags |= sc.MS_BIND
            if not os.path.isabs(source):
                source = os.path.join(plan.bundle, source)
            if not os.path.exists(source):
                raise OciError(f"config.json: mount {destination}: source {source} does not exist")
        mount = Mount(destination, kind, source, flags, propagation, ",".join(data))
        mount.copy_up = copy_up
        plan.mounts.append(mount)
