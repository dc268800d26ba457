"""The container's root filesystem as config.json describes it, built by its init in its mount namespace.

``mount_all`` (before pivot_root, host paths still visible): the root bound onto itself, every entry of
``mounts`` in order at its destination opened inside the root and mounted on through its fd (symlinks stay
in it, and nothing swapped in meanwhile can lead out: child/inroot.py), the devices, /dev's links. ``pivot``
swaps the root. ``finish`` (after pivot_root, paths are the container's): masked and read-only paths, the
read-only root. Rootless, so mknod is impossible: devices are the host's nodes bound in, as runc does in a
user namespace. Reuses child/mounts.py's binding, remounting and masking.
"""

from __future__ import annotations

import errno
import os
import stat

from aiocontain import syscalls as sc
from aiocontain.child import inroot
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
    root_fd = inroot.open_root(root)
    try:
        for entry in plan.mounts:
            with inroot.open_path(root_fd, entry.destination, _kind_of_target(entry)) as target:
                _mount(target, entry)
        _devices(root_fd, plan)
    finally:
        os.close(root_fd)


def _mount(target: inroot.Target, entry: Mount) -> None:
    flags = entry.flags & ~sc.MS_REMOUNT
    if entry.is_bind:
        try:
            _bind(target.path, entry, flags)
        except OSError as exc:
            raise OSError(exc.errno, f"bind mount of {entry.source} on {entry.destination}: {exc.strerror}") from None
        return
    if entry.kind == "cgroup" or entry.kind == "cgroup2":
        _mount_cgroup(target.path, flags)
    elif entry.kind == "sysfs":
        try:
            sc.mount("sysfs", target.path, "sysfs", flags, entry.data or None)
        except PermissionError:
            base.mount_sys(target.path)  # the host's network namespace: bind the host's /sys read-only
    elif entry.kind == "mqueue":
        try:
            sc.mount("mqueue", target.path, "mqueue", flags, entry.data or None)
        except PermissionError:  # the host's ipc namespace: its mqueue, as runc does rootless
            base.bind("/dev/mqueue", target.path, propagation=entry.propagation)
            return
    elif entry.copy_up:
        _tmpfs_copy_up(target, entry, flags)
    else:
        sc.mount(entry.source, target.path, entry.kind, flags, entry.data or None)
    if entry.propagation:
        mounted = target.mounted()  # the file system just mounted; the target's fd names what it covers
        try:
            sc.mount(None, inroot.at(mounted), None, entry.propagation)
        finally:
            os.close(mounted)


def _bind(target: str, entry: Mount, flags: int) -> None:
    """A bind mount and its options (base.bind), where the kernel refuses to change locked atime flags retried
    without them (``_remount_bind``)."""
    options = flags & ~(sc.MS_BIND | sc.MS_REC)
    base.bind(entry.source, target, options, bool(flags & sc.MS_REC), entry.propagation, _remount_bind)


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


def _kind_of_target(entry: Mount) -> str:
    """What to make where the destination is missing: a directory for a file system or a bound directory; an
    empty file for a bound file."""
    return "file" if entry.is_bind and not os.path.isdir(entry.source) else "dir"


def _mount_cgroup(target: str, flags: int) -> None:
    """cgroup2 in the container's cgroup namespace; where the kernel refuses (a hybrid host without a
    cgroup namespace of its own), the host's /sys/fs/cgroup bound read-only, as runc does rootless."""
    try:
        sc.mount("cgroup2", target, "cgroup2", flags)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL, errno.ENOENT):
            raise
        base.bind("/sys/fs/cgroup", target, sc.MS_RDONLY | (flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)))


def _tmpfs_copy_up(target: inroot.Target, entry: Mount, flags: int) -> None:
    """A tmpfs that starts with what the image has at its place (the tmpcopyup option): the old directory
    stays reachable through the target's fd, which names the directory the mount covers."""
    import shutil  # here only: before pivot_root, and most containers have no such mount

    sc.mount(entry.source, target.path, entry.kind, flags, entry.data or None)
    mounted = target.mounted()
    try:
        shutil.copytree(target.path, inroot.at(mounted), symlinks=True, dirs_exist_ok=True)
    finally:
        os.close(mounted)


def _devices(root: int, plan: Plan) -> None:
    """runc's default devices and linux.devices, as the host's nodes bound in (no mknod in a user
    namespace); /dev's standard links where the config's /dev left them out. /dev is the container's, found
    inside the root (root: its fd) like any mount's destination: an image whose /dev is a symlink to a host
    directory gets its links in the root, never in that directory."""
    try:
        dev = inroot.open_path(root, "/dev")
    except FileNotFoundError:
        return
    with dev:
        if not stat.S_ISDIR(dev.mode):
            return
        paths = ["/dev/" + name for name in base.DEVICES]
        paths += [str(device["path"]) for device in plan.devices if str(device["path"]) not in paths]
        for path in paths:
            if not os.path.exists(path):
                raise OSError(errno.ENOENT, f"device {path} does not exist on the host")
            with inroot.open_path(root, path, "file") as target:
                if not _is_device(target.mode):
                    base.bind(path, target.path, recursive=False)
        for name, link in {**base.DEV_LINKS, "ptmx": "pts/ptmx"}.items():
            if name == "ptmx" and not _is_dir(dev.fd, "pts"):
                continue
            if not _exists(dev.fd, name):
                os.symlink(link, name, dir_fd=dev.fd)


def _is_device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _is_dir(directory: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _exists(directory: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


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
