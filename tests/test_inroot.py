"""Paths inside a container's root (child/inroot.py): opened there, whatever symlinks lead elsewhere, and
mounted on through their fd, so that a directory swapped for a symlink meanwhile cannot move a mount out."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiocontain.child import inroot


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with symlinks of every kind an image may hold, and a host directory beside it."""
    found = tmp_path / "root"
    (found / "a" / "b").mkdir(parents=True)
    (tmp_path / "host").mkdir()
    (found / "abs").symlink_to("/a")  # absolute: starts again at the root
    (found / "a" / "b" / "back").symlink_to("/a")  # from below it, too
    (found / "a" / "up").symlink_to("../../../../../../host")  # '..' never climbs above the root
    (found / "out").symlink_to(tmp_path / "host")  # a host path, which inside the root names nothing yet
    (found / "loop").symlink_to("loop")
    (found / "file").write_text("")
    return found


def opened(root: Path, path: str, make: str | None = None) -> tuple[str, str, str]:
    """(what the Target's fd names, its parent's, its name), every fd closed again."""
    fd = inroot.open_root(str(root))
    try:
        with inroot.open_path(fd, path, make) as target:
            return os.readlink(target.path), os.readlink(inroot.at(target.parent)), target.name
    finally:
        os.close(fd)


def test_symlinks_are_followed_as_inside_the_container(root: Path, tmp_path: Path) -> None:
    r = str(root)
    assert opened(root, "/a/b") == (f"{r}/a/b", f"{r}/a", "b")
    assert opened(root, "abs/b") == (f"{r}/a/b", f"{r}/a", "b")
    assert opened(root, "a/b/back/b") == (f"{r}/a/b", f"{r}/a", "b")
    assert opened(root, "/a/b/../../..") == (r, r, ".")  # the root is its own parent
    with pytest.raises(FileNotFoundError) as missing:
        opened(root, "/a/up")  # the root's /host, which does not exist: never the host's
    assert missing.value.filename == "/a/up"
    with pytest.raises(FileNotFoundError):
        opened(root, "/out")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        opened(root, "/loop/x")
    with pytest.raises(NotADirectoryError):
        opened(root, "/file/x")
    with pytest.raises(NotADirectoryError):
        opened(root, "/file", "dir")
    assert os.listdir(tmp_path / "host") == []


def test_what_is_missing_is_made_inside_the_root(root: Path, tmp_path: Path) -> None:
    r, host = str(root), tmp_path / "host"
    assert opened(root, "/out/new", "dir")[0] == f"{r}{host}/new"  # the link's target, made in the root
    assert opened(root, "/a/up/deeper/file", "file")[0] == f"{r}/host/deeper/file"
    assert (root / "host" / "deeper" / "file").is_file()
    assert opened(root, "/file", "file")[0] == f"{r}/file"  # there already: taken as it is
    assert os.listdir(host) == []


def test_no_fd_is_left_open(root: Path) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    for path, make in [("/a/b", None), ("/a/up", None), ("/loop", None), ("/file/x", "dir"), ("/x/y", "file")]:
        try:
            opened(root, path, make)
        except OSError:
            pass
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_directory_removed_each_time_it_is_made_fails_rather_than_loops(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A co-tenant deleting what is made as fast as it is made: the set-up fails with one reason, never spins."""
    made: list[str] = []
    monkeypatch.setattr(inroot.os, "mkdir", lambda name, mode, dir_fd: made.append(name))  # made, then gone
    with pytest.raises(OSError, match="removed each time it was made") as failed:
        opened(root, "/a/new/deeper", "dir")
    assert failed.value.errno == errno.EAGAIN and made == ["new"] * 10


# Run in a user and mount namespace of the test user's: a co-tenant's swap, at the worst moment for us (just
# after the target was opened, just before it is mounted on), of the target's directory for a symlink to a
# host directory. The mount must land on the directory opened, wherever it was moved; nothing on the host.
SWAP = r"""
import json, os, sys
from aiocontain import syscalls as sc
from aiocontain.child import inroot, mounts
from aiocontain.oci import config as oci_config, rootfs as oci_rootfs

root, host, volume = sys.argv[1:4]
sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
real_open = inroot.open_path

def swapping(root_fd, path, make=None):
    target = real_open(root_fd, path, make)
    name = root + path
    os.rename(name, name + ".moved")
    os.symlink(host, name)
    return target

inroot.open_path = swapping

def mount_points():
    with open("/proc/self/mountinfo") as lines:
        return {line.split()[4] for line in lines}

CLI = {
    "bind": {"type": "bind", "source": volume, "flags": sc.MS_RDONLY, "propagation": sc.MS_PRIVATE},
    "bind-plain": {"type": "bind", "source": volume, "flags": 0, "propagation": 0},
    "tmpfs": {"type": "tmpfs", "flags": sc.MS_NOSUID, "data": "mode=755", "propagation": 0},
}
OCI = {
    "oci-bind": {"type": "bind", "source": volume, "options": ["rbind", "ro", "rprivate"]},
    "oci-tmpfs": {"type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
    "oci-tmpfs-rprivate": {"type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "rprivate"]},
}
found = {}
fd = inroot.open_root(root)
for kind in [*CLI, *OCI]:
    path = "/" + kind
    os.mkdir(root + path)
    try:
        if kind in OCI:
            plan = oci_config.Plan()
            oci_config._read_mounts(plan, [{"destination": path, **OCI[kind]}])
            (entry,) = plan.mounts
            with inroot.open_path(fd, path, "dir") as target:
                oci_rootfs._mount(target, entry)
        else:
            mounts._mount_one(fd, {"target": path, "source": None, "data": None, "dir": True, **CLI[kind]})
        error = None
    except OSError as exc:
        error = exc.strerror
    moved = root + path + ".moved"
    found[kind] = {
        "error": error,
        "moved_is_mount": moved in mount_points(),
        "moved_holds": sorted(os.listdir(moved)),
        "moved_read_only": bool(os.statvfs(moved).f_flag & os.ST_RDONLY),
        "host_is_mount": host in mount_points(),
        "host_holds": sorted(os.listdir(host)),
    }
print(json.dumps(found))
"""


def test_a_target_swapped_for_a_symlink_after_it_was_opened_is_still_the_one_mounted_on(tmp_path: Path) -> None:
    """The CLI's -v and --tmpfs, and the OCI runtime's bind and tmpfs mounts, each with a swap between the
    target's opening and its mount, as a container sharing the volume would race them (runc's
    a flaw runc once had). The volume, its read-only remount and its propagation land on the directory opened;
    nothing is mounted on, or made in, the host directory the symlink names. A new file system's propagation,
    which must reach it by its name again, is refused rather than set on whatever the name now leads to."""
    root, host, volume = tmp_path / "root", tmp_path / "host", tmp_path / "volume"
    for directory in (root, host, volume):
        directory.mkdir()
    (volume / "marker").write_text("")
    package = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        ["unshare", "-Urm", sys.executable, "-c", SWAP, str(root), str(host), str(volume)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": package},
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    for kind in ("bind", "oci-bind"):
        assert found[kind]["moved_holds"] == ["marker"] and found[kind]["moved_read_only"], found[kind]
    assert found["bind-plain"]["moved_holds"] == ["marker"] and not found["bind-plain"]["moved_read_only"]
    for kind in ("tmpfs", "oci-tmpfs", "oci-tmpfs-rprivate"):
        assert found[kind]["moved_holds"] == [] and not found[kind]["moved_read_only"], found[kind]
    assert found["oci-tmpfs-rprivate"]["error"] == "the mount point was replaced while it was being mounted on"
    for kind, seen in found.items():
        assert seen["moved_is_mount"] and not seen["host_is_mount"] and seen["host_holds"] == [], (kind, seen)
        assert seen["error"] is None or kind == "oci-tmpfs-rprivate", (kind, seen)
