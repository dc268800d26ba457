"""The container's root filesystem as config.json describes it, built by its init in its mount namespace.

``mount_all`` (before pivot_root, host paths still visible): the root bound onto itself, every entry of
``mounts`` in order at its destination resolved inside the root (symlinks stay in it, as runc's securejoin),
the devices, /dev's links. ``pivot`` swaps the root. ``finish`` (after pivot_root, paths are the container's):
masked and read-only paths, the read-only root. Rootless, so mknod is impossible: devices are the host's
nodes bound in, as runc does in a user namespace. Reuses child/mounts.py's resolving, remounting and masking.
"""

from __future__ import annotations

import errno
import os
import stat

from aiocontain import syscalls as sc
from aiocontain.child import mounts as base

TYPE_CHECKING = False
if TYPE_CHECKING:
    from aiocontain.oci.config import Mount, Plan


def mount_all(plan: Plan) -> None:
    """Everything up to pivot_root."""
    root = os.path.realpath(plan.rootfs)
    # Nothing of ours propagates to the host. rootfsPropagation is applied to the new root after pivot_root:
    # pivot_root refuses a shared root, and a bind of an unbindable tree fails (as runc's does; crun's order).
    sc.mount(None, "/", None, sc.MS_SLAVE | sc.MS_REC)
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)  # pivot_root needs the new root to be a mount point
    for entry in plan.mounts:
        _mount(root, entry)
    _devices(root, plan)


def _mount(root: str, entry: Mount) -> None:
    target = base.resolve(root, entry.destination)
    _make_target(target, entry)
    flags = entry.flags & ~sc.MS_REMOUNT
    if entry.is_bind:
        sc.mount(entry.source, target, None, sc.MS_BIND | (flags & sc.MS_REC))
        if flags & ~(sc.MS_BIND | sc.MS_REC):
            try:
                _remount_bind(target, flags & ~(sc.MS_BIND | sc.MS_REC))
            except OSError as exc:
                raise OSError(
                    exc.errno, f"bind mount of {entry.source} on {entry.destination}: {exc.strerror}"
                ) from None
    elif entry.kind == "cgroup" or entry.kind == "cgroup2":
        _mount_cgroup(target, flags)
    elif entry.kind == "sysfs":
        try:
            sc.mount("sysfs", target, "sysfs", flags, entry.data or None)
        except PermissionError:
            base.mount_sys(target)  # the host's network namespace: bind the host's /sys read-only
    elif entry.kind == "mqueue":
        try:
            sc.mount("mqueue", target, "mqueue", flags, entry.data or None)
        except PermissionError:  # the host's ipc namespace: its mqueue, as runc does rootless
            sc.mount("/dev/mqueue", target, None, sc.MS_BIND | sc.MS_REC)
    elif entry.copy_up:
        _tmpfs_copy_up(target, entry, flags)
    else:
        sc.mount(entry.source, target, entry.kind, flags, entry.data or None)
    if entry.propagation:
        sc.mount(None, target, None, entry.propagation)


# The atime flags: a user namespace may not change those the kernel locked on a mount made outside it.
_ATIME = sc.MS_NOATIME | sc.MS_NODIRATIME | sc.MS_RELATIME | sc.MS_STRICTATIME


def _remount_bind(target: str, flags: int) -> None:
    """Apply a bind mount's options. Where the kernel refuses to change locked atime flags (a host mount,
    seen from our user namespace), keep the mount's own atime behaviour and apply the rest (ro, nosuid,
    nodev, noexec), rather than fail the container on access-time bookkeeping."""
    try:
        base.remount(target, flags)
    except PermissionError:
        if not flags & _ATIME:
            raise
        base.remount(target, flags & ~_ATIME)


def _make_target(target: str, entry: Mount) -> None:
    """A directory for a file system or a bound directory; an empty file for a bound file."""
    if entry.is_bind and not os.path.isdir(entry.source):
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
    elif not os.path.isdir(target):
        os.makedirs(target, 0o755, exist_ok=True)


def _mount_cgroup(target: str, flags: int) -> None:
    """cgroup2 in the container's cgroup namespace; where the kernel refuses (a hybrid host without a
    cgroup namespace of its own), the host's /sys/fs/cgroup bound read-only, as runc does rootless."""
    try:
        sc.mount("cgroup2", target, "cgroup2", flags)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL, errno.ENOENT):
            raise
        sc.mount("/sys/fs/cgroup", target, None, sc.MS_BIND | sc.MS_REC)
        base.remount(target, sc.MS_RDONLY | (flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)))


def _tmpfs_copy_up(target: str, entry: Mount, flags: int) -> None:
    """A tmpfs that starts with what the image has at its place (the tmpcopyup option): the old directory
    stays reachable through an fd opened before the mount covers it."""
    import shutil  # here only: before pivot_root, and most containers have no such mount

    below = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.mount(entry.source, target, entry.kind, flags, entry.data or None)
        shutil.copytree(f"/proc/self/fd/{below}", target, symlinks=True, dirs_exist_ok=True)
    finally:
        os.close(below)


def _devices(root: str, plan: Plan) -> None:
    """runc's default devices and linux.devices, as the host's nodes bound in (no mknod in a user
    namespace); /dev's standard links where the config's /dev left them out."""
    dev = os.path.join(root, "dev")
    if not os.path.isdir(dev):
        return
    paths = ["/dev/" + name for name in base.DEVICES]
    paths += [str(device["path"]) for device in plan.devices if str(device["path"]) not in paths]
    for path in paths:
        target = base.resolve(root, path)
        if os.path.lexists(target) and _is_device(target):
            continue
        if not os.path.exists(path):
            raise OSError(errno.ENOENT, f"device {path} does not exist on the host")
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        if not os.path.lexists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
        sc.mount(path, target, None, sc.MS_BIND)
    for name, link in {**base.DEV_LINKS, "ptmx": "pts/ptmx"}.items():
        path = os.path.join(dev, name)
        if name == "ptmx" and not os.path.isdir(os.path.join(dev, "pts")):
            continue
        if not os.path.lexists(path):
            os.symlink(link, path)


def _is_device(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def pivot(plan: Plan, no_pivot: bool) -> None:
    """Make the built root the process's root: pivot_root and detach the old one (so no chroot escape
    finds the host above), or with --no-pivot move the mount over / and chroot (for roots on a ramfs)."""
    root = os.path.realpath(plan.rootfs)
    os.chdir(root)
    if no_pivot:
        sc.mount(root, "/", None, 8192)  # MS_MOVE
        os.chroot(".")
    else:
        sc.pivot_root(".", ".")  # the old root now sits under the new one, at the same place
        sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def finish(plan: Plan) -> None:
    """After pivot_root: masked paths, read-only paths, the root itself read-only if asked, then its
    propagation (linux.rootfsPropagation)."""
    base.mask("", plan.masked_paths)
    for path in plan.readonly_paths:
        base.readonly("", path)
    if plan.rootfs_readonly:
        base.remount("/", sc.MS_RDONLY)
    if plan.rootfs_propagation:  # last: the binds above would fail from an unbindable tree
        sc.mount(None, "/", None, plan.rootfs_propagation)
