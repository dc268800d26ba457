"""A spare's prebuilt /proc, /sys and /dev (child/prebuilt.py), with the syscall boundary doubled: which parts it
builds, when it stops, and that it holds no fd of a part it gave up. The real trees, attached in a real
container, are compared with a fresh container's in tests/test_forkserver.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiocontain import syscalls
from aiocontain.child import mounts, prebuilt


class Boundary:
    """Stands in for aiocontain.syscalls: the same constants; mounts recorded, each clone an fd of /dev/null."""

    def __init__(self, fail_clone: int | None = None, fail_private: bool = False) -> None:
        for name in dir(syscalls):
            if name.isupper():
                setattr(self, name, getattr(syscalls, name))
        self.mounted: list[str | None] = []
        self.clones: list[int] = []
        self.fail_clone = fail_clone
        self.fail_private = fail_private

    def mount(self, source, target, fstype, flags=0, data=None):
        if self.fail_private and flags & syscalls.MS_PRIVATE:
            raise OSError(1, "mount: Operation not permitted")
        self.mounted.append(fstype)

    def umount2(self, target, flags=0):
        raise AssertionError("nothing was mounted for real: the scratch place is never covered here")

    def clone_tree(self, path):
        if len(self.clones) == self.fail_clone:
            raise OSError(38, "open_tree: Function not implemented")
        self.clones.append(os.open(os.devnull, os.O_RDONLY))
        return self.clones[-1]


@pytest.fixture
def boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def make(**options: object) -> Boundary:
        fake = Boundary(**options)  # type: ignore[arg-type]
        monkeypatch.setattr(prebuilt, "sc", fake)
        monkeypatch.setattr(mounts, "sc", fake)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        monkeypatch.setattr(prebuilt, "_SCRATCH", str(scratch))
        return fake

    return make


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_every_part_when_no_request_comes(boundary):
    fake = boundary()
    trees = prebuilt.build(True, lambda: False)
    dev, proc, sys_ = fake.clones  # built in this order: /dev fits every Config
    assert trees is not None and (trees.proc, trees.sys, trees.dev) == (proc, sys_, dev)
    assert fake.mounted.index("tmpfs") < fake.mounted.index("proc") < fake.mounted.index("sysfs")
    trees.close()


def test_a_request_stops_it_after_the_part_under_way(boundary):
    fake = boundary()
    asked = iter([False, True])
    trees = prebuilt.build(True, lambda: next(asked))
    assert trees is not None and (trees.proc, trees.sys, trees.dev) == (-1, -1, fake.clones[0])
    assert "proc" not in fake.mounted and "sysfs" not in fake.mounted
    trees.close()


def test_the_hosts_network_namespace_gets_its_dev_alone(boundary):
    fake = boundary()
    trees = prebuilt.build(False, lambda: False)
    assert trees is not None and (trees.proc, trees.sys, trees.dev) == (-1, -1, fake.clones[0])
    assert "sysfs" not in fake.mounted
    trees.close()


def test_a_part_that_cannot_be_built_gives_none_and_keeps_no_fd(boundary):
    before = open_fds()
    fake = boundary(fail_clone=1)
    assert prebuilt.build(True, lambda: False) is None
    assert len(fake.clones) == 1 and open_fds() == before  # the part built is closed again


def test_a_mount_namespace_it_cannot_make_private_gives_none(boundary):
    # Nothing is built where it could propagate to the host: PID 1 builds its root as a fresh clone's then.
    fake = boundary(fail_private=True)
    assert prebuilt.build(True, lambda: False) is None
    assert fake.clones == [] and fake.mounted == []
