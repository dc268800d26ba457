"""The container's cgroup v2 group (``linux.cgroupsPath``) and its resources (memory, pids, cpu, unified).

Only cgroup v2, and only where the hierarchy is ours to write (delegated, or a cgroup2 mount we own): a
cgroupsPath that cannot be made is skipped when no resource is asked for (podman on a cgroup v1 or hybrid
host passes one it cannot use either), and is an error naming the resource when one is. cgroup v1 is never
touched (docs/host.md: its hierarchies belong to the machine's supervisor). ``linux.resources.devices`` is
not a cgroup matter here: a rootless container has only the device nodes bound into its /dev.
"""

from __future__ import annotations

import errno
import os

from aiocontain.oci.errors import OciError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.state import ContainerState

UNSUPPORTED = ("blockIO", "hugepageLimits", "network", "rdma")


def _v2_mount() -> tuple[str, str] | None:
    """(mount point, the group it shows as its root) of the first cgroup2 mount, or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup2":
            return fields[4].replace("\\040", " "), fields[3]
    return None


def _own_group() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def asked(resources: dict[str, object]) -> list[str]:
    """The resources that need a cgroup: memory, pids, cpu and unified with a value set."""
    found = []
    for name in ("memory", "pids", "cpu", "unified"):
        value = resources.get(name)
        if isinstance(value, dict) and any(v not in (None, 0, "") for v in value.values()):
            found.append(name)
    return found


def check(resources: dict[str, object], systemd: bool, cgroups_path: str | None) -> None:
    """Refuse what this runtime cannot do before anything is built."""
    for name in UNSUPPORTED:
        if resources.get(name):
            raise OciError(f"config.json: linux.resources.{name} is not supported")
    if systemd and (cgroups_path or asked(resources)):
        if os.path.isdir("/run/systemd/system"):
            raise OciError(
                "--systemd-cgroup is not supported (aiocontain-oci does not talk to systemd): "
                "use the cgroupfs manager (podman --cgroup-manager=cgroupfs)"
            )
        raise OciError("--systemd-cgroup: this host runs no systemd to place the container; use cgroupfs")


def prepare(cgroups_path: str | None, resources: dict[str, object], container_id: str) -> str:
    """Make the container's group and write its limits; its directory, or "" when it has none."""
    wanted = asked(resources)
    if not cgroups_path and not wanted:
        return ""
    mount = _v2_mount()
    if mount is None:
        return _impossible(wanted, "this host has no cgroup v2 hierarchy")
    point, mount_root = mount
    if cgroups_path and cgroups_path.startswith("/"):
        relative = cgroups_path.lstrip("/")
    else:
        own = _own_group()
        if own is None or not (own + "/").startswith(mount_root.rstrip("/") + "/"):
            return _impossible(wanted, "this process's cgroup v2 group is not under the cgroup2 mount")
        below = own[len(mount_root.rstrip("/")) :].lstrip("/")
        relative = os.path.join(below, cgroups_path or f"aiocontain-oci-{container_id}")
    directory = os.path.normpath(os.path.join(point, relative))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        return _impossible(wanted, f"cannot make the group {directory}: {exc.strerror}")
    try:
        _write_limits(directory, resources)
    except OciError:
        remove_directory(directory)
        raise
    return directory


def _impossible(wanted: list[str], reason: str) -> str:
    if wanted:
        raise OciError(
            f"cannot apply linux.resources.{', '.join(wanted)}: {reason} "
            "(it needs a cgroup v2 hierarchy delegated to this user; see docs/host.md)"
        )
    return ""


def _write_limits(directory: str, resources: dict[str, object]) -> None:
    values: dict[str, str] = {}
    memory = resources.get("memory") or {}
    assert isinstance(memory, dict)
    limit = memory.get("limit")
    if limit:
        values["memory.max"] = "max" if limit < 0 else str(limit)
    if memory.get("reservation"):
        values["memory.low"] = str(memory["reservation"])
    swap = memory.get("swap")
    if swap:
        values["memory.swap.max"] = "max" if swap < 0 or not limit or limit < 0 else str(max(swap - limit, 0))
    pids = resources.get("pids") or {}
    assert isinstance(pids, dict)
    if pids.get("limit"):
        values["pids.max"] = "max" if pids["limit"] <= 0 else str(pids["limit"])
    cpu = resources.get("cpu") or {}
    assert isinstance(cpu, dict)
    if cpu.get("quota") or cpu.get("period"):
        quota = cpu.get("quota")
        values["cpu.max"] = f"{'max' if not quota or quota < 0 else quota} {cpu.get('period') or 100000}"
    if cpu.get("shares"):
        values["cpu.weight"] = str(1 + (int(cpu["shares"]) - 2) * 9999 // 262142)  # runc's conversion
    if cpu.get("cpus"):
        values["cpuset.cpus"] = str(cpu["cpus"])
    if cpu.get("mems"):
        values["cpuset.mems"] = str(cpu["mems"])
    for name, value in (resources.get("unified") or {}).items():  # type: ignore[attr-defined]
        if "/" in name:
            raise OciError(f"config.json: linux.resources.unified key {name!r} is not a file name")
        values[name] = str(value)
    _enable_controllers(directory, {name.partition(".")[0] for name in values})
    for name, value in values.items():
        path = os.path.join(directory, name)
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            controller = name.partition(".")[0]
            reason = "controller not delegated" if exc.errno == errno.ENOENT else exc.strerror
            raise OciError(f"cannot set {name} to {value} in {directory}: {reason} ({controller})") from None


def _enable_controllers(directory: str, controllers: set[str]) -> None:
    """Enable them in the parent's subtree_control where we may; a failure shows when the file is written."""
    parent = os.path.dirname(directory)
    for controller in sorted(controllers):
        try:
            with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                f.write("+" + controller)
        except OSError:
            pass


def enter(directory: str, pid: int) -> None:
    """Move pid into the container's group (before it forks the container's process)."""
    if not directory:
        return
    try:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    except OSError as exc:
        raise OciError(f"cannot move the container into its cgroup {directory}: {exc.strerror}") from None


def remove_directory(directory: str) -> None:
    """rmdir the group, and first any group the container made below it (a nested cgroup namespace's own, or
    systemd's inside), deepest first; the walk only then, as it lists each group's interface files too."""
    if directory:
        try:
            try:
                os.rmdir(directory)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                from aiocontain.child.cgroup import remove_below

                remove_below(directory)
                os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OciError(f"cannot remove the cgroup {directory}: {exc.strerror}") from None


def remove(container: ContainerState) -> None:
    """Remove the container's group, if it has one (delete, once its processes are gone)."""
    remove_directory(container.cgroup)
