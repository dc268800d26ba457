"""Build the container's root filesystem inside its mount namespace, then pivot into it.

Runs in the init (PID 1) once its id maps are written, as root of the user
namespace, while the runtime finishes the host side (as runc's ``create``
builds the root before ``start``); only the cgroup mount waits for the release,
which puts PID 1 in its cgroup first.
pivot_root, not chroot: the host's root is detached afterwards, so the classic
chroot escape (chroot into a subdirectory, then walk up) finds nothing above.
"""

from __future__ import annotations

import contextlib
import os
import stat

from aiocontain import syscalls as sc
from aiocontain.child import inroot
from aiocontain.messages import Config
from aiocontain.security import paths

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from collections.abc import Callable

# --init's PID 1, bound read-only in the container's own /dev tmpfs: nothing is written into the rootfs on disk.
INIT_PATH = "/dev/init"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


class Trees:
    """A spare's /proc, /sys and /dev, built ahead (child/prebuilt.py) as detached trees, fds (close-on-exec):
    each -1 where it was not built (a request came first, or the spare has the host's network namespace)."""

    def __init__(self, proc: int, sys: int, dev: int) -> None:
        self.proc, self.sys, self.dev = proc, sys, dev

    @property
    def fds(self) -> list[int]:
        return [fd for fd in (self.proc, self.sys, self.dev) if fd >= 0]

    def fits(self, config: Config) -> bool:
        """Whether the proc and sys trees are the ones this Config asks for (the /dev tree always is)."""
        return (
            self.proc >= 0
            and self.sys >= 0
            and config.unshare_net
            and config.masked_paths == list(paths.MASKED)
            and config.readonly_paths == list(paths.READONLY)
        )

    def moved(self, fds: list[int]) -> Trees:
        """The same trees at other fd numbers (``fds``, in ``self.fds``'s order)."""
        found = iter(fds)
        return Trees(*(next(found) if fd >= 0 else -1 for fd in (self.proc, self.sys, self.dev)))

    def close(self) -> None:
        """A tree attached stays where it is; one never attached goes with its fd."""
        for fd in self.fds:
            os.close(fd)
        self.proc = self.sys = self.dev = -1


def build(config: Config, trees: Trees | None = None) -> None:
    """trees: a spare's /proc, /sys and /dev, built ahead (child/prebuilt.py), attached rather than built."""
    # The runtime resolved the rootfs (Container): its path has no symlink in it, so no realpath here. The
    # top directories are root + a name, each refused if a symlink; every other target is opened inside the
    # root (child/inroot.py) and mounted on through its fd.
    root = config.rootfs
    mount = sc.mount
    mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing we do here propagates to the host
    if config.overlay:
        _mount_overlay(root, config.overlay)  # also makes the root a mount point
    else:
        mount(root, root, None, sc.MS_BIND | sc.MS_REC)  # pivot_root needs the new root to be a mount point
    if trees is not None and trees.fits(config):
        sc.attach_tree(trees.proc, _top_dir(root, "proc"))  # with the masked and read-only paths
        sc.attach_tree(trees.sys, _top_dir(root, "sys"))
    else:
        mount("proc", _top_dir(root, "proc"), "proc", PROC_FLAGS)
        mount_sys(_top_dir(root, "sys"))
        mask(root, config.masked_paths)
        for path in config.readonly_paths:
            readonly(root, path)
    if trees is not None and trees.dev >= 0:
        sc.attach_tree(trees.dev, _top_dir(root, "dev"))
    else:
        mount_dev(_top_dir(root, "dev"))
    if trees is not None:
        trees.close()
    if config.init_binary:
        _mount_init(root + INIT_PATH, config.init_binary)
    mount("tmpfs", _top_dir(root, "tmp"), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")
    if config.etc_files or config.mounts or config.read_only:
        root_fd = inroot.open_root(root)
        try:
            if config.etc_files:
                _bind_etc_files(root_fd, config.etc_files)
            for spec in config.mounts:
                _mount_one(root_fd, spec)
            if config.read_only:
                with contextlib.suppress(OSError):  # as podman, -w is made first; a failure is init's to report
                    inroot.open_path(root_fd, config.workdir, "dir").close()
        finally:
            os.close(root_fd)
        if config.read_only:
            _remount_readonly(root)  # the root mount alone: what is mounted on it keeps its own mode
    os.chdir(root)
    sc.pivot_root(".", ".")  # the old root now sits under the new one, at the same place
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


PROC_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
_HIDDEN_FLAGS = sc.MS_RDONLY | PROC_FLAGS


def _mount_overlay(root: str, holder: str) -> None:
    """--rootfs DIR:O: a throwaway overlay on root, its lower layer the rootfs on disk. The upper layer is a
    tmpfs mounted at holder (a directory of the runtime's) in this mount namespace only: pivot_root's detach
    hides it, the overlay keeps it, and it goes with the namespace however the runtime ends."""
    sc.mount("tmpfs", holder, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=700")
    upper, work = os.path.join(holder, "upper"), os.path.join(holder, "work")
    os.mkdir(upper)
    os.mkdir(work)
    top = os.stat(root)  # the merged root takes the upper directory's owner and mode: the rootfs's own
    os.chown(upper, top.st_uid, top.st_gid)
    os.chmod(upper, stat.S_IMODE(top.st_mode))
    lower = root.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")
    sc.mount("overlay", root, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work},userxattr")


def _mount_one(root: int, spec: dict[str, object]) -> None:
    """One of -v, --mount, --tmpfs or a plugin's, at its target inside the root (root: its fd)."""
    flags = int(spec["flags"])  # type: ignore[call-overload]
    propagation = int(spec["propagation"])  # type: ignore[call-overload]
    with inroot.open_path(root, str(spec["target"]), "dir" if spec["dir"] else "file") as target:
        if spec["type"] == "tmpfs":
            sc.mount("tmpfs", target.path, "tmpfs", flags, spec["data"])  # type: ignore[arg-type]
            if propagation:
                mounted = target.mounted()
                try:
                    sc.mount(None, inroot.at(mounted), None, propagation)
                finally:
                    os.close(mounted)
        else:
            bind(str(spec["source"]), target.path, flags, propagation=propagation)


def bind(
    source: str,
    target: str,
    flags: int = 0,
    recursive: bool = True,
    propagation: int = 0,
    remount_with: Callable[[str, int], None] | None = None,
) -> None:
    """Bind source (a host path) at target (a path, or an fd's /proc/self/fd path), then remount it with flags
    (ro, nosuid, ...; through ``remount_with``, else ``remount``) and give it propagation. Through a copy of
    source's mount held by an fd (``clone_tree``): that fd, not target's path, names the new mount, so no path
    is looked up again to reach it."""
    if not flags and not propagation:  # nothing to reach the new mount for: one mount(2)
        sc.mount(source, target, None, sc.MS_BIND | (sc.MS_REC if recursive else 0))
        return
    tree = sc.clone_tree(source, recursive)
    try:
        sc.attach_tree(tree, target)
        if flags:
            (remount_with or remount)(inroot.at(tree), flags)
        if propagation:
            sc.mount(None, inroot.at(tree), None, propagation)
    finally:
        os.close(tree)


def mount_cgroup() -> None:
    """After pivot_root, in the container's own cgroup namespace: its cgroup (the namespace's root) with its
    limits at /sys/fs/cgroup, read-only as in podman."""
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    sc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", flags)


def mount_sys(target: str) -> None:
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    try:
        sc.mount("sysfs", target, "sysfs", flags)
    except PermissionError:
        # Sharing the host's network namespace: a new sysfs is not ours to mount; bind the host's read-only.
        tree = sc.clone_tree("/sys")
        try:
            sc.attach_tree(tree, target)
            with contextlib.suppress(OSError):
                sc.mount(None, inroot.at(tree), None, sc.MS_BIND | sc.MS_REMOUNT | flags)
        finally:
            os.close(tree)


# statvfs flags a bind remount must keep: the kernel refuses to drop a locked one in a user namespace
_KEPT_FLAGS = (
    (os.ST_NOSUID, sc.MS_NOSUID),
    (os.ST_NODEV, sc.MS_NODEV),
    (os.ST_NOEXEC, sc.MS_NOEXEC),
    (os.ST_NOATIME, sc.MS_NOATIME),
    (os.ST_NODIRATIME, sc.MS_NODIRATIME),
    (os.ST_RELATIME, sc.MS_RELATIME),
)


def _remount_readonly(path: str) -> None:
    remount(path, sc.MS_RDONLY)


def remount(path: str, flags: int) -> None:
    """Bind-remount path with flags added to the ones the kernel locked on it (it refuses to drop those)."""
    found = os.statvfs(path).f_flag
    kept = 0
    for st_flag, ms_flag in _KEPT_FLAGS:
        if found & st_flag:
            kept |= ms_flag
    sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | flags | kept)


def mask(root: str, paths: list[str]) -> None:
    """Hide kernel files of /proc and /sys, as runc does: a file under /dev/null, a directory under an empty
    read-only tmpfs. What this kernel does not have is skipped. The paths lie in the proc and sysfs just
    mounted, which hold nothing of the container's own, so no symlink of its making is followed."""
    lstat, mount = os.lstat, sc.mount
    for path in paths:
        target = root + path
        try:
            mode = lstat(target).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            mount("tmpfs", target, "tmpfs", _HIDDEN_FLAGS)
        else:
            mount("/dev/null", target, None, sc.MS_BIND)


def readonly(root: str, path: str) -> None:
    """Bind a path of /proc onto itself, read-only (e.g. /proc/sys: the network namespace's own sysctls stay
    readable, and nothing of the host's kernel is writable even where the user namespace would allow it)."""
    target = root + path
    if not os.path.lexists(target):
        return
    sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
    _remount_readonly(target)


def mount_dev(dev: str) -> None:
    mount = sc.mount
    mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name in DEVICES:
        node = dev + "/" + name
        os.mknod(node, stat.S_IFREG | 0o666)  # an empty file to bind the host's node on (one call, not two)
        mount("/dev/" + name, node, None, sc.MS_BIND)
    os.mkdir(dev + "/pts", 0o755)
    mount("devpts", dev + "/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", dev + "/ptmx")
    os.mkdir(dev + "/shm", 0o1777)
    mount("shm", dev + "/shm", "tmpfs", PROC_FLAGS, "mode=1777,size=65536k")
    os.mkdir(dev + "/mqueue", 0o755)
    mount("mqueue", dev + "/mqueue", "mqueue", PROC_FLAGS)
    for name, target in DEV_LINKS.items():
        os.symlink(target, dev + "/" + name)


def _mount_init(target: str, host_path: str) -> None:
    """The host's init, read-only (as podman does): the container may run it, never change the host's file."""
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o755))
    sc.mount(host_path, target, None, sc.MS_BIND)
    _remount_readonly(target)


def _top_dir(root: str, name: str) -> str:
    """root/name, a directory directly under the root, made if missing; a symlink there is refused: it could
    point at the host."""
    path = root + "/" + name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        os.makedirs(path, 0o755, exist_ok=True)
        return path
    if stat.S_ISLNK(mode):
        raise OSError(0, f"{name} in the root filesystem is a symlink; refusing to mount over it")
    if not stat.S_ISDIR(mode):
        os.makedirs(path, 0o755, exist_ok=True)  # raises as it is there: not a directory
    return path


def _bind_etc_files(root: int, files: dict[str, str]) -> None:
    """Bind each of the runtime's files at /etc/NAME (root: the root's fd). A symlink that stays inside the
    root and ends at a file is bound through (as the container will open it), so the rootfs on disk keeps it;
    any other symlink is replaced by the file (e.g. etc/resolv.conf -> a host path). A symlinked /etc itself
    is refused."""
    try:
        etc = os.open("etc", _DIR | os.O_NOFOLLOW, dir_fd=root)
    except FileNotFoundError:
        os.mkdir("etc", 0o755, dir_fd=root)
        etc = os.open("etc", _DIR | os.O_NOFOLLOW, dir_fd=root)
    except OSError as exc:
        if stat.S_ISLNK(os.stat("etc", dir_fd=root, follow_symlinks=False).st_mode):
            raise OSError(0, "etc in the root filesystem is a symlink; refusing to mount over it") from None
        raise exc from None
    try:
        for name, source in files.items():
            _bind_etc_file(root, etc, name, source)
    finally:
        os.close(etc)


_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _bind_etc_file(root: int, etc: int, name: str, source: str) -> None:
    try:
        mode: int | None = os.stat(name, dir_fd=etc, follow_symlinks=False).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        try:
            through = inroot.open_path(root, "/etc/" + name)
        except OSError:
            through = None  # dangling, a loop, or not below directories
        if through is not None:
            with through:
                if stat.S_ISREG(through.mode):
                    bind(source, through.path, recursive=False)
                    return
        os.unlink(name, dir_fd=etc)
        mode = None
    if mode is None:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(name, flags, 0o644, dir_fd=etc))
    elif not stat.S_ISREG(mode):
        raise OSError(0, f"etc/{name} in the root filesystem is not a regular file")
    target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=etc)
    try:
        if not stat.S_ISREG(os.fstat(target).st_mode):
            raise OSError(0, f"etc/{name} in the root filesystem is not a regular file")
        bind(source, inroot.at(target), recursive=False)
    finally:
        os.close(target)
