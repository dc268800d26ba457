"""The guest that the cgroup v2 tests rely on: a pure cgroup2 kernel, an unprivileged user that owns a subtree
delegated as systemd delegates one (never the cgroup root), and rootless containers that run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")
NEEDED = {"cpu", "memory", "pids"}
# the files systemd's Delegate=yes hands to the user, besides the directory itself
DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


def own_cgroup() -> Path:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::/"), f"not a cgroup2-only process: {lines}"
    return CGROUP_ROOT / lines[0].removeprefix("0::/")


def delegated_root() -> Path:
    """The topmost directory above our own cgroup that belongs to us: what was delegated to the user."""
    uid, leaf = os.getuid(), own_cgroup()
    found = None
    for directory in [leaf, *leaf.parents]:
        if not directory.is_relative_to(CGROUP_ROOT) or directory.stat().st_uid != uid:
            break
        found = directory
    assert found is not None, f"{own_cgroup()} is not the user's"
    return found


def controllers(directory: Path) -> set[str]:
    return set((directory / "cgroup.controllers").read_text().split())


def test_the_kernel_has_only_cgroup2_at_sys_fs_cgroup():
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert [fstype for _, target, fstype, *_ in mounts if target == str(CGROUP_ROOT)] == ["cgroup2"]
    assert [target for _, target, fstype, *_ in mounts if fstype == "cgroup"] == [], "a cgroup v1 hierarchy"
    assert controllers(CGROUP_ROOT) >= NEEDED
    own_cgroup()


def test_the_tests_run_as_an_unprivileged_user():
    assert os.getuid() != 0 and os.geteuid() != 0
    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines())
    assert int(status["CapEff"], 16) == 0


def test_our_cgroup_lies_in_a_subtree_delegated_with_the_needed_controllers():
    uid, delegated = os.getuid(), delegated_root()
    assert delegated != own_cgroup(), "the user's processes must sit in a leaf below the delegated directory"
    assert controllers(delegated) >= NEEDED
    assert controllers(own_cgroup()) >= NEEDED
    for name in DELEGATED_FILES:
        assert (delegated / name).stat().st_uid == uid, name


def test_the_cgroup_root_stays_roots():
    delegated = delegated_root()
    assert delegated != CGROUP_ROOT
    assert CGROUP_ROOT.stat().st_uid == 0
    assert not os.access(CGROUP_ROOT / "cgroup.procs", os.W_OK)
    assert not os.access(delegated.parent / "cgroup.procs", os.W_OK)


def test_the_user_moves_a_process_into_a_cgroup_it_makes_and_limits():
    probe = delegated_root() / f"probe-{os.getpid()}"
    probe.mkdir()
    try:
        (probe / "memory.max").write_text("64M\n")
        (probe / "pids.max").write_text("8\n")
        child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            (probe / "cgroup.procs").write_text(f"{child.pid}\n")
            assert Path(f"/proc/{child.pid}/cgroup").read_text() == f"0::/{probe.relative_to(CGROUP_ROOT)}\n"
            assert (probe / "memory.max").read_text() == f"{64 << 20}\n"
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait()
    finally:
        probe.rmdir()


@pytest.mark.container
def test_a_container_runs_without_network(cli):
    result = cli("--net", "none", "/bin/true", timeout=120)
    assert result.code == 0, result.stderr


@pytest.mark.container
def test_a_container_maps_the_subordinate_ids(cli):
    """newuidmap and newgidmap stay setuid through the guest's 9p root and overlays (neither is nosuid)."""
    result = cli("--net", "none", "/bin/sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map", timeout=120)
    assert result.code == 0, result.stderr
    mappings = [line.split() for line in result.stdout.splitlines()]
    assert len(mappings) == 4 and all(inside in ("0", "1") for inside, _, _ in mappings), result.stdout


@pytest.mark.container
def test_a_container_gets_slirp4netns_networking(cli):
    result = cli("/bin/sh", "-c", "ip -4 addr show tap0", timeout=120)
    assert result.code == 0, result.stderr
    assert "inet 10.0.2.100/" in result.stdout
