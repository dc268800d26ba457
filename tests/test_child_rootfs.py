"""The mount plan of the container's root, with the syscall boundary doubled (no privileges needed)."""

from __future__ import annotations

import os

import pytest

from aiocontain import syscalls
from aiocontain.child import mounts
from aiocontain.messages import Config


class RecordingSyscalls:
    """Stands in for aiocontain.syscalls: same constants, calls recorded instead of made.

    Targets are recorded as the paths they name: an fd's /proc/self/fd path as the file that fd has open
    (targets are opened inside the root, then mounted on through their fd), a cloned tree's as where it was
    attached. A bind made as a cloned tree attached is recorded as mount(2)'s bind."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self._trees: dict[int, tuple[str, bool]] = {}
        self._attached: dict[int, str] = {}
        for name in dir(syscalls):
            if name.isupper():
                setattr(self, name, getattr(syscalls, name))

    def _named(self, target):
        if not target.startswith("/proc/self/fd/"):
            return target
        fd = int(target.rsplit("/", 1)[1])
        return self._attached[fd] if fd in self._attached else os.readlink(target)

    def mount(self, source, target, fstype, flags=0, data=None):
        self.calls.append(("mount", source, self._named(target), fstype, flags, data))

    def clone_tree(self, source, recursive=True):
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # closed by the code under test, as a tree's is
        self._trees[fd] = (source, recursive)
        self._attached.pop(fd, None)
        return fd

    def attach_tree(self, tree, target):
        source, recursive = self._trees.pop(tree)
        self._attached[tree] = self._named(target)
        flags = syscalls.MS_BIND | (syscalls.MS_REC if recursive else 0)
        self.calls.append(("mount", source, self._attached[tree], None, flags, None))

    def umount2(self, target, flags=0):
        self.calls.append(("umount2", target, flags))

    def pivot_root(self, new_root, put_old):
        self.calls.append(("pivot_root", new_root, put_old, os.getcwd()))


def config_for(root, **fields) -> Config:
    return Config(
        rootfs=str(root),
        argv=["true"],
        env={},
        workdir="/",
        hostname="h",
        unshare_net=True,
        want_netlink=False,
        **fields,
    )


@pytest.fixture
def plan(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in ("hosts", "hostname", "resolv.conf"):
        (runtime / name).write_text(name)
    fake = RecordingSyscalls()
    monkeypatch.setattr(mounts, "sc", fake)
    chdirs: list[str] = []
    monkeypatch.setattr(mounts.os, "chdir", chdirs.append)

    def build() -> list[tuple[object, ...]]:
        etc_files = {name: str(runtime / name) for name in ("hosts", "hostname", "resolv.conf")}
        mounts.build(config_for(root, etc_files=etc_files))
        return fake.calls

    return root, build, chdirs


def mounts_at(calls, target):
    return [call for call in calls if call[0] == "mount" and call[2] == target]


def test_mount_plan(plan):
    root, build, chdirs = plan
    calls = build()
    r = str(root)
    sc = syscalls
    # first: nothing propagates to the host; then the rootfs becomes a mount point of its own
    assert calls[0] == ("mount", None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    assert calls[1] == ("mount", r, r, None, sc.MS_BIND | sc.MS_REC, None)
    assert mounts_at(calls, f"{r}/proc") == [
        ("mount", "proc", f"{r}/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None)
    ]
    (sysfs,) = mounts_at(calls, f"{r}/sys")
    assert sysfs[3] == "sysfs" and sysfs[4] & sc.MS_RDONLY
    (tmp,) = mounts_at(calls, f"{r}/tmp")
    assert tmp[3] == "tmpfs" and "mode=1777" in tmp[5]
    for device in ("null", "zero", "full", "random", "urandom", "tty"):
        assert mounts_at(calls, f"{r}/dev/{device}") == [
            ("mount", f"/dev/{device}", f"{r}/dev/{device}", None, sc.MS_BIND, None)
        ]
    (devpts,) = mounts_at(calls, f"{r}/dev/pts")
    assert devpts[3] == "devpts" and "newinstance" in devpts[5] and "ptmxmode=0666" in devpts[5]
    assert os.readlink(root / "dev" / "ptmx") == "pts/ptmx"
    assert mounts_at(calls, f"{r}/dev/shm")[0][3] == "tmpfs"
    for name in ("hosts", "hostname", "resolv.conf"):
        (bind,) = mounts_at(calls, f"{r}/etc/{name}")
        assert bind[4] == sc.MS_BIND and (root / "etc" / name).is_file()
    # pivot_root into the new root, then detach the old one: no way back to the host's tree
    assert calls[-2][:3] == ("pivot_root", ".", ".")
    assert calls[-1] == ("umount2", ".", sc.MNT_DETACH)
    assert chdirs == [r, "/"]


def test_a_symlinked_etc_file_is_replaced_not_followed(plan, tmp_path):
    root, build, _ = plan
    host_file = tmp_path / "host-secret"
    host_file.write_text("host")
    (root / "etc" / "resolv.conf").symlink_to(host_file)
    calls = build()
    (bind,) = mounts_at(calls, f"{root}/etc/resolv.conf")
    assert not (root / "etc" / "resolv.conf").is_symlink()
    assert host_file.read_text() == "host"
    assert bind[2] == f"{root}/etc/resolv.conf"


def test_a_symlinked_mount_point_is_refused(plan, tmp_path):
    root, build, _ = plan
    (root / "proc").symlink_to(tmp_path)  # would mount the container's /proc over a host directory
    with pytest.raises(OSError, match="proc in the root filesystem is a symlink"):
        build()


def test_a_symlinked_etc_is_refused(plan, tmp_path):
    """/etc itself a symlink would put the runtime's files over a host directory: refused, as any symlinked
    mount point on the way, and nothing is created where it points."""
    root, build, _ = plan
    (root / "etc").rmdir()
    (root / "etc").symlink_to(tmp_path)
    with pytest.raises(OSError, match=r"etc in the root filesystem is a symlink"):
        build()
    assert not (tmp_path / "hosts").exists()


def test_a_rootfs_without_etc_gets_one(plan):
    root, build, _ = plan
    (root / "etc").rmdir()
    calls = build()
    for name in ("hosts", "hostname", "resolv.conf"):
        assert (root / "etc" / name).is_file() and mounts_at(calls, f"{root}/etc/{name}")


def test_overlay_read_only_and_mounts_plan(tmp_path, monkeypatch):
    """--rootfs DIR:O puts the overlay on the root itself (lower: the rootfs, upper: a tmpfs on the holder
    directory); --read-only remounts the root alone, last; -v targets resolve through symlinks inside the root."""
    root = tmp_path / "ro,ot:x"
    (root / "etc").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # absolute: starts again at the container's root
    holder = tmp_path / "holder"
    holder.mkdir()
    fake = RecordingSyscalls()
    monkeypatch.setattr(mounts, "sc", fake)
    monkeypatch.setattr(mounts.os, "chdir", lambda path: None)
    volume = {"type": "bind", "source": "/src", "target": "/var/run/x", "flags": syscalls.MS_RDONLY}
    volume |= {"data": None, "propagation": syscalls.MS_SHARED, "dir": True}
    mounts.build(config_for(root, mounts=[volume], read_only=True, overlay=str(holder)))
    calls, r, sc = fake.calls, str(root), syscalls
    assert calls[1] == ("mount", "tmpfs", str(holder), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=700")
    lower = str(root).replace(",", "\\,").replace(":", "\\:")
    data = f"lowerdir={lower},upperdir={holder}/upper,workdir={holder}/work,userxattr"
    assert calls[2] == ("mount", "overlay", r, "overlay", 0, data)
    assert (root / "run" / "x").is_dir() and not (root / "var" / "run" / "x").exists()
    binds = mounts_at(calls, f"{r}/run/x")
    assert [c[1] for c in binds] == ["/src", None, None]
    assert binds[1][4] & sc.MS_REMOUNT | sc.MS_RDONLY and binds[2][4] == sc.MS_SHARED
    assert calls[-3][:3] == ("mount", None, r) and calls[-3][4] & sc.MS_RDONLY  # the root, last


@pytest.mark.parametrize(
    ("built", "privileged"),
    [("all", False), ("all", True), ("dev only", False)],
)
def test_a_spares_prebuilt_trees_are_attached_where_the_config_fits_them(tmp_path, monkeypatch, built, privileged):
    # A spare's /proc (its masks and read-only paths in it) and /sys are attached for the default masks; the
    # /dev tree for any Config. What was not built (a request came first), or does not fit (--privileged: no
    # masks), is mounted as a fresh clone's. The trees' fds are closed either way.
    from aiocontain.security import paths

    root = tmp_path / "root"
    root.mkdir()
    fake = RecordingSyscalls()
    fake.attach_tree = lambda fd, target: fake.calls.append(("attach", fd, target))  # type: ignore[attr-defined]
    monkeypatch.setattr(mounts, "sc", fake)
    monkeypatch.setattr(mounts.os, "chdir", lambda path: None)
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    proc, sys_, dev = fds if built == "all" else (-1, -1, fds[2])
    masks = {} if privileged else {"masked_paths": list(paths.MASKED), "readonly_paths": list(paths.READONLY)}
    trees = mounts.Trees(proc, sys_, dev)
    mounts.build(config_for(root, **masks), trees)
    attached = [call[2] for call in fake.calls if call[0] == "attach"]
    fresh = {call[3] for call in fake.calls if call[0] == "mount"} & {"proc", "sysfs"}
    r = str(root)
    if built == "all" and not privileged:
        assert attached == [r + "/proc", r + "/sys", r + "/dev"] and not fresh
    else:
        assert attached == [r + "/dev"] and fresh == {"proc", "sysfs"}
    assert not any(call[0] == "mount" and call[2] == r + "/dev" for call in fake.calls)
    assert trees.fds == []
    for fd in fds[:2] if built != "all" else []:
        os.close(fd)  # never handed over: ours to close


def test_moved_trees_keep_their_places():
    # The fork server moves a spare's tree fds to fixed numbers in PID 1; a tree that was not built stays -1,
    # so the others keep their places (a /dev tree alone must not be taken for /proc).
    assert vars(mounts.Trees(5, -1, 7).moved([10, 11])) == {"proc": 10, "sys": -1, "dev": 11}
    assert vars(mounts.Trees(-1, -1, 7).moved([10])) == {"proc": -1, "sys": -1, "dev": 10}
    assert vars(mounts.Trees(3, 4, 5).moved([10, 11, 12])) == {"proc": 10, "sys": 11, "dev": 12}
