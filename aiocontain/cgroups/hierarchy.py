"""Find where this user may make cgroup v2 groups, before anything starts.

In this order, as podman's users expect: an explicit ``--cgroup-parent DIR``
(any directory of a cgroup2 mount the user owns, such as the subtree of the
README's manual set-up); else the subtree delegated to the user that
aiocontain's own process runs in (systemd's ``user@UID.service`` with
``Delegate=yes``, or a ``systemd-run --user --scope -p Delegate=yes``); else
nowhere: the container runs without a cgroup of its own, and limits asked for
are refused with the fix.
cgroup v1 hierarchies are never touched: only cgroup2 mounts are considered.

The kernel lets a process move another between two groups only with write
access to ``cgroup.procs`` of their common ancestor, so the containers' groups
go inside the subtree aiocontain itself runs in, never beside it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from aiocontain import hostuser
from aiocontain.cgroups.limits import Limits
from aiocontain.errors import CgroupError

# Module-level so tests can point discovery at a prepared tree.
MOUNTINFO_PATH = Path("/proc/self/mountinfo")
PROC_CGROUP_PATH = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")

CONTAINERS_DIR = "aiocontain"  # under the delegation root: one leaf per container inside
RUNTIME_LEAF = "aiocontain-runtime"  # where processes of a group that needs controllers are moved
REPORTED = ("cpu", "memory", "pids")  # enabled when delegated, so usage can be reported without limits

FIX_V2 = (
    "boot with systemd.unified_cgroup_hierarchy=1 (pure cgroup v2) and delegate to users, "
    "or give --cgroup-parent DIR on a cgroup2 mount you own; --cgroups=disabled runs without limits"
)
FIX_SCOPE = "run aiocontain in a delegated scope: systemd-run --user --scope -p Delegate=yes aiocontain run ..."


def fix_delegate(controllers: str) -> str:
    return (
        "delegate them to users with a systemd drop-in: sudo mkdir -p /etc/systemd/system/user@.service.d && "
        f"printf '[Service]\\nDelegate={controllers}\\n' | sudo tee /etc/systemd/system/user@.service.d/delegate.conf"
        " && sudo systemctl daemon-reload, then log in again"
    )


@dataclass(frozen=True)
class Mount:
    """One cgroup2 mount: where it is, and which group of the hierarchy it shows as its root."""

    point: Path
    root: str


@dataclass(frozen=True)
class Placement:
    """Where the leaves go and what to enable on the way; decided before anything is created."""

    parent: Path  # the leaves' directory (created if missing)
    delegation_root: Path  # the highest group this user may write; controllers are enabled from here down
    controllers: tuple[str, ...]  # required by the limits, plus those of REPORTED that are delegated
    evict: bool  # the delegation root holds processes: move them into a leaf before enabling controllers


def mounts() -> list[Mount]:
    """Every cgroup2 mount, from mountinfo (statvfs cannot tell cgroup2 from cgroup v1)."""
    found: list[Mount] = []
    for line in MOUNTINFO_PATH.read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and tail and tail[0] == "cgroup2":
            found.append(Mount(Path(_unescape(fields[4])), _unescape(fields[3])))
    return found


def own_group() -> str | None:
    """This process's group in the cgroup2 hierarchy (the "0::" line), or None on a v1-only host."""
    for line in PROC_CGROUP_PATH.read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def is_hybrid(found: list[Mount]) -> bool:
    """systemd's hybrid layout: v1 controllers at /sys/fs/cgroup/*, a near-empty cgroup2 beside them."""
    return bool(found) and all(mount.point != CGROUP_ROOT for mount in found)


def own_directory(found: list[Mount]) -> Path | None:
    """Our own group as a directory, on the mount that shows it (the one at /sys/fs/cgroup first)."""
    group = own_group()
    if group is None:
        return None
    for mount in sorted(found, key=lambda m: m.point != CGROUP_ROOT):
        root = mount.root.rstrip("/")
        if group == root or group.startswith(root + "/") or root == "":
            directory = mount.point / group[len(root) :].lstrip("/")
            if directory.is_dir():
                return directory
    return None


def mount_of(path: Path, found: list[Mount]) -> Mount | None:
    """The cgroup2 mount a directory lies in (the deepest mount point above it)."""
    best: Mount | None = None
    for mount in found:
        if (path == mount.point or mount.point in path.parents) and (
            best is None or len(mount.point.parts) > len(best.point.parts)
        ):
            best = mount
    return best


def controllers_of(group: Path, name: str = "cgroup.controllers") -> list[str]:
    try:
        return (group / name).read_text().split()
    except OSError:
        return []


def writable(group: Path) -> bool:
    """Delegated to us the way systemd delegates: the directory and its procs and subtree_control files."""
    return all(os.access(path, os.W_OK) for path in (group, group / "cgroup.procs", group / "cgroup.subtree_control"))


def has_processes(group: Path) -> bool:
    try:
        return bool((group / "cgroup.procs").read_text().split())
    except OSError:
        return False


def delegation_root(start: Path, mount: Mount) -> Path | None:
    """The highest group from start upwards that is delegated to this user; None if start itself is not."""
    if not writable(start):
        return None
    root = start
    while root != mount.point and writable(root.parent):
        root = root.parent
    return root


def place(limits: Limits, cgroup_parent: Path | None = None, *, enabled: bool = True) -> Placement | None:
    """Where this container's leaf goes; None to run without one (nothing asked for and nothing delegated).

    Raises CgroupError, one line with the fix, when limits are asked for and cannot be had.
    """
    required = limits.controllers()
    if not enabled:
        if limits:
            raise CgroupError(
                "resource limits need a cgroup, and --cgroups=disabled was given",
                fix="drop --cgroups=disabled or the limit options",
            )
        return None
    found = mounts()
    if cgroup_parent is not None:
        return _explicit(Path(cgroup_parent), found, required)
    if not found:
        return _unavailable(limits, "this host has no cgroup v2 (cgroup v1 only), which resource limits need", FIX_V2)
    if is_hybrid(found):
        return _unavailable(
            limits,
            "this host's cgroups are hybrid: the memory, pids and cpu controllers are on cgroup v1, "
            "which aiocontain never uses",
            FIX_V2,
        )
    own = own_directory(found)
    mount = mount_of(own, found) if own is not None else None
    top = delegation_root(own, mount) if own is not None and mount is not None else None
    if own is None or top is None:
        reason = f"aiocontain's cgroup {own or '(unknown)'} is not delegated to {hostuser.name()}"
        return _unavailable(limits, reason, FIX_SCOPE)
    available = controllers_of(top)
    missing = [name for name in required if name not in available]
    if missing:
        names, user = "/".join(missing), hostuser.name()
        raise CgroupError(
            f"the {names} controller{'s are' if len(missing) > 1 else ' is'} not delegated to {user} in {top}",
            fix=fix_delegate("cpu cpuset io memory pids"),
        )
    is_hierarchy_root = top == (mount.point if mount is not None else None) and mount is not None and mount.root == "/"
    return Placement(
        parent=top / CONTAINERS_DIR,
        delegation_root=top,
        controllers=_wanted(required, available),
        # The root group may hold processes and enable controllers at once; any other may not.
        evict=has_processes(top) and not is_hierarchy_root,
    )


def _explicit(parent: Path, found: list[Mount], required: tuple[str, ...]) -> Placement:
    option = f"--cgroup-parent {parent}"
    if not parent.is_absolute():
        raise CgroupError(f"{option}: not an absolute path", fix="give a directory of a cgroup2 mount")
    if not parent.is_dir():
        raise CgroupError(f"{option}: no such directory", fix="give a directory of a cgroup2 mount")
    mount = mount_of(parent, found)
    if mount is None:
        raise CgroupError(
            f"{option}: not a cgroup v2 directory",
            fix="give a directory inside a cgroup2 mount (findmnt -t cgroup2 lists them)",
        )
    if not writable(parent):
        user = hostuser.name()
        raise CgroupError(
            f"{option}: not writable by {user}",
            fix=f"delegate it: sudo chown {user} {parent} {parent}/cgroup.procs {parent}/cgroup.subtree_control "
            f"{parent}/cgroup.threads",
        )
    own = own_directory(found)
    if own is None or mount_of(own, found) != mount:
        raise CgroupError(
            f"{option}: aiocontain's own process is not in that cgroup2 hierarchy",
            fix=f"start aiocontain from a group inside {parent}",
        )
    common = Path(os.path.commonpath([own, parent]))
    if not os.access(common / "cgroup.procs", os.W_OK):
        raise CgroupError(
            f"{option}: moving the container there needs write access to {common}/cgroup.procs, "
            f"the common ancestor with aiocontain's own group {own}",
            fix=f"start aiocontain from a group inside {parent}, e.g. as root once: mkdir {parent}/session && "
            f"chown {hostuser.name()} {parent}/session/cgroup.procs, then echo $$ > {parent}/session/cgroup.procs",
        )
    available = controllers_of(parent)
    missing = [name for name in required if name not in available]
    if missing:
        controllers = " ".join(f"+{name}" for name in missing)
        raise CgroupError(
            f"{option}: the {'/'.join(missing)} controller is not available there",
            fix=f"enable it in the parent: echo '{controllers}' | sudo tee {parent.parent}/cgroup.subtree_control",
        )
    # Our own process inside the parent itself (the README's manual set-up) is moved to a leaf of its own first.
    return Placement(parent, parent, _wanted(required, available), evict=has_processes(parent))


def _wanted(required: tuple[str, ...], available: list[str]) -> tuple[str, ...]:
    return tuple(name for name in REPORTED if name in required or name in available)


def _unavailable(limits: Limits, reason: str, fix: str) -> Placement | None:
    """No leaf: fine without limits (the container runs unlimited, as podman's rootless cgroup v1 does)."""
    if limits:
        raise CgroupError(f"cannot apply resource limits: {reason}", fix=fix)
    return None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
