"""Where a container's cgroup goes: discovery of the delegated subtree, checked on a prepared tree.

The tree is ordinary directories shaped like a cgroup2 mount (the kernel boundary
doubled: what discovery reads and which files it may write); the real kernel's
behaviour is the VM tier's (tests/vm).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontain.cgroups import Limits, hierarchy, place
from aiocontain.cgroups.leaf import prepare
from aiocontain.errors import AiocontainError

pytestmark = pytest.mark.skipif(os.geteuid() == 0, reason="root may write every group: delegation cannot be shown")

MEMORY = Limits.parse(memory="2m")


def group(path: Path, controllers: str = "cpu memory pids", procs: str = "", ours: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    for name in ("cgroup.subtree_control", "cgroup.procs"):
        (path / name).write_text(procs if name == "cgroup.procs" else "")
        (path / name).chmod(0o644 if ours else 0o444)
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """systemd's layout: the root and user-1000.slice are root's, user@1000.service is delegated."""
    root = tmp_path / "cgroup"
    group(root, ours=False)
    group(root / "user.slice" / "user-1000.slice", ours=False)
    group(root / "user.slice", ours=False)
    service = group(root / "user.slice" / "user-1000.slice" / "user@1000.service")
    group(service / "session.scope", procs="4242\n")
    monkeypatch.setattr(hierarchy, "CGROUP_ROOT", root)
    set_mounts(tmp_path, monkeypatch, f"41 23 0:38 / {root} rw - cgroup2 cgroup2 rw\n")
    set_own_group(tmp_path, monkeypatch, "/user.slice/user-1000.slice/user@1000.service/session.scope")
    yield root


def set_mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mountinfo: str) -> None:
    (tmp_path / "mountinfo").write_text(mountinfo)
    monkeypatch.setattr(hierarchy, "MOUNTINFO_PATH", tmp_path / "mountinfo")


def set_own_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str) -> None:
    (tmp_path / "self-cgroup").write_text(f"0::{own}\n")
    monkeypatch.setattr(hierarchy, "PROC_CGROUP_PATH", tmp_path / "self-cgroup")


def service(root: Path) -> Path:
    return root / "user.slice" / "user-1000.slice" / "user@1000.service"


def test_leaves_go_under_the_delegated_subtree_we_run_in(tree: Path) -> None:
    placement = place(MEMORY)
    assert placement is not None
    assert placement.delegation_root == service(tree)
    assert placement.parent == service(tree) / "aiocontain"
    assert placement.controllers == ("cpu", "memory", "pids")  # all delegated ones, so usage can be reported
    assert not placement.evict


def test_without_limits_a_delegated_host_still_gives_a_leaf(tree: Path) -> None:
    placement = place(Limits())
    assert placement is not None and placement.parent == service(tree) / "aiocontain"


def test_processes_in_the_delegation_root_are_moved_out_first(tree: Path, tmp_path: Path, monkeypatch) -> None:
    group(service(tree), procs="99\n")
    set_own_group(tmp_path, monkeypatch, "/user.slice/user-1000.slice/user@1000.service")
    placement = place(MEMORY)
    assert placement is not None and placement.evict
    runtime = group(service(tree) / hierarchy.RUNTIME_LEAF)  # the kernel fills a new group's files; a tmp dir not
    group(service(tree) / "aiocontain")
    prepare(placement)
    assert (runtime / "cgroup.procs").read_text() == "99"
    assert (service(tree) / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (service(tree) / "aiocontain" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_a_controller_that_is_not_delegated_is_named_with_the_fix(tree: Path) -> None:
    group(service(tree), controllers="cpu pids")
    with pytest.raises(AiocontainError) as caught:
        place(MEMORY)
    line = caught.value.line()
    assert "memory controller is not delegated" in line and "Delegate=cpu cpuset io memory pids" in line
    assert place(Limits.parse(pids=10)) is not None  # what is delegated still works


def test_not_delegated_refuses_limits_and_runs_without(tree: Path) -> None:
    for name in ("cgroup.procs", "cgroup.subtree_control"):
        (service(tree) / "session.scope" / name).chmod(0o444)
    with pytest.raises(AiocontainError) as caught:
        place(MEMORY)
    assert (
        "is not delegated" in caught.value.line()
        and "systemd-run --user --scope -p Delegate=yes" in caught.value.line()
    )
    assert place(Limits()) is None


def test_hybrid_and_v1_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_own_group(tmp_path, monkeypatch, "/")
    set_mounts(tmp_path, monkeypatch, "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    with pytest.raises(AiocontainError) as caught:
        place(MEMORY)
    assert "hybrid" in caught.value.line()
    assert place(Limits()) is None
    set_mounts(tmp_path, monkeypatch, "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    with pytest.raises(AiocontainError) as caught:
        place(MEMORY)
    assert "no cgroup v2" in caught.value.line()


def test_cgroups_disabled(tree: Path) -> None:
    assert place(Limits(), enabled=False) is None
    with pytest.raises(AiocontainError) as caught:
        place(MEMORY, enabled=False)
    assert "--cgroups=disabled" in caught.value.line()


def test_cgroup_parent_inside_which_we_run(tree: Path, tmp_path: Path, monkeypatch) -> None:
    # The README's manual set-up: the user owns parent/, and aiocontain runs in parent/session.
    parent = group(tree / "manual")
    group(parent / "session", procs="77\n")
    set_own_group(tmp_path, monkeypatch, "/manual/session")
    placement = place(MEMORY, parent)
    assert placement is not None
    assert (placement.parent, placement.delegation_root, placement.evict) == (parent, parent, False)


def test_cgroup_parent_we_run_in_directly_is_evicted_first(tree: Path, tmp_path: Path, monkeypatch) -> None:
    parent = group(tree / "manual", procs="77\n")
    set_own_group(tmp_path, monkeypatch, "/manual")
    placement = place(MEMORY, parent)
    assert placement is not None and placement.evict


def test_cgroup_parent_whose_common_ancestor_is_not_ours(tree: Path) -> None:
    # We run in user@1000.service/session.scope; parent is beside it under the root, which is not ours:
    # the kernel would refuse the move, and a "chown -R the whole mount" is what we must not ask for.
    parent = group(tree / "manual")
    with pytest.raises(AiocontainError) as caught:
        place(MEMORY, parent)
    line = caught.value.line()
    assert f"needs write access to {tree}/cgroup.procs" in line and f"{parent}/session" in line


def test_cgroup_parent_checks(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    not_ours = group(tree / "theirs", ours=False)
    no_memory = group(service(tree) / "nomem", controllers="pids")
    for parent, needle in [
        (outside, "not a cgroup v2 directory"),
        (tree / "missing", "no such directory"),
        (not_ours, "not writable by"),
        (no_memory, "memory controller is not available there"),
    ]:
        with pytest.raises(AiocontainError) as caught:
            place(MEMORY, parent)
        assert needle in caught.value.line(), caught.value.line()


def test_mounts_read_escaped_paths_and_the_deepest_mount_holds_a_directory(tmp_path: Path, monkeypatch) -> None:
    # mountinfo escapes a space as \040; a cgroup2 mount nested in another (a container's own view) is the one
    # a directory below it lies in, whichever line comes first.
    set_mounts(
        tmp_path,
        monkeypatch,
        "50 40 0:40 /deleg /srv/my\\040cgroups/inner rw - cgroup2 cgroup2 rw\n"
        "41 23 0:38 / /srv/my\\040cgroups rw - cgroup2 cgroup2 rw\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
    )
    found = hierarchy.mounts()
    outer, inner = Path("/srv/my cgroups"), Path("/srv/my cgroups/inner")
    assert [(m.point, m.root) for m in found] == [(inner, "/deleg"), (outer, "/")]
    for order in (found, found[::-1]):
        assert hierarchy.mount_of(inner / "leaf", order) == found[0]
        assert hierarchy.mount_of(outer / "other", order) == found[1]
    assert hierarchy.mount_of(Path("/sys/fs/cgroup/memory"), found) is None
