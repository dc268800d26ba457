"""aiocontain-oci's cgroup v2 group on a real kernel: run in the VM tier (`nox -s vm`).

The runtime runs as podman runs it rootless (tests/oci_engine.py: the test user's user namespace with its
subordinate ids mapped, a subreaper like conmon), with ``linux.cgroupsPath`` an absolute path inside the subtree
delegated to the user, as podman's cgroupfs manager passes one. Each container costs seconds under TCG, so each
test checks as much as one container shows. Also ``aiocontain exec`` joining a ``run -d`` container's group:
on the hybrid host both joins are skipped (no group of the container's), so this is their only real test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oci_support import RUNTIME, Engine, engine, make_bundle
from tests.test_cli_exec import aiocontain
from tests.vm.test_limits import MIB, containers_dir, delegated, leaves

pytestmark = pytest.mark.container
assert engine and containers_dir  # the fixtures, imported for the tests below

# A shell probe: its own pid in the container, its group in the container's cgroup namespace, the group's members.
MEMBERSHIP = "echo $$; cat /proc/self/cgroup; cat /sys/fs/cgroup/cgroup.procs"


def group_of(pid: int) -> str:
    """pid's cgroup v2 group, as this process sees it (the engine and the guest share one cgroup namespace)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::/"), lines
    return lines[0].removeprefix("0::")


def check_member(output: str) -> None:
    """MEMBERSHIP's output: the shell at the root of the container's cgroup namespace, and listed in its group."""
    pid, group, *members = output.split()
    assert group == "0::/", output  # a process outside the namespace's root would show a path with ../
    assert pid in members, output


@pytest.fixture
def parent() -> Iterator[Path]:
    """A directory for the containers' groups in the delegated subtree, as podman's cgroupfs manager uses one;
    each container's group must be gone afterwards (delete removes it), then this one is removed."""
    found = delegated() / f"oci-{uuid.uuid4().hex[:8]}"
    yield found
    assert leaves(found) == set(), "a container's cgroup was left behind"
    if found.exists():
        found.rmdir()


@pytest.fixture
def boxed(engine: Engine, rootfs: Path, tmp_path: Path, parent: Path) -> Iterator[tuple[str, int, Path]]:
    """A started container that sleeps with a 64 MiB memory, 16 pids and half a CPU limit, its group
    PARENT/box: (id, pid, group). Killed, reaped and deleted afterwards."""
    group = parent / "box"
    resources = {
        "memory": {"limit": 64 * MIB},
        "pids": {"limit": 16},
        "cpu": {"quota": 50000, "period": 100000},
    }
    linux = {"cgroupsPath": "/" + str(group.relative_to("/sys/fs/cgroup")), "resources": resources}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sleep", "1000"], linux=linux)
    created = engine.create("box", bundle, "--pid-file", str(tmp_path / "pid"))
    assert created.code == 0, created.stderr
    pid = int((tmp_path / "pid").read_text())
    try:
        assert engine.oci("start", "box").code == 0
        yield "box", pid, group
    finally:
        engine.oci("kill", "box", "KILL")
        engine.wait(pid)
        engine.oci("delete", "--force", "box")


def test_limits_membership_exec_join_and_delete(engine: Engine, boxed: tuple[str, int, Path], tmp_path: Path) -> None:
    name, pid, group = boxed
    values = {file: (group / file).read_text().strip() for file in ("memory.max", "pids.max", "cpu.max")}
    assert values == {"memory.max": str(64 * MIB), "pids.max": "16", "cpu.max": "50000 100000"}
    assert group_of(pid) == "/" + str(group.relative_to("/sys/fs/cgroup"))
    assert (group / "cgroup.procs").read_text().split() == [str(pid)]

    # exec joins the container's group (child/join.py writes its cgroup.procs) before its namespaces.
    result = engine.oci("exec", name, "/bin/sh", "-c", MEMBERSHIP)
    assert result.code == 0, result.stderr
    check_member(result.stdout)
    # The same seen from outside, with a detached exec that outlives the command.
    pid_file = tmp_path / "exec.pid"
    argv = [RUNTIME, "--root", str(engine.root), "exec", "--detach", "--pid-file", str(pid_file), name]
    reply = engine.request({"argv": [*argv, "/bin/sleep", "1000"], "output": str(tmp_path / "exec.out")})
    assert reply["code"] == 0, (tmp_path / "exec.out").read_text()
    exec_pid = int(pid_file.read_text())
    assert group_of(exec_pid) == group_of(pid)
    assert sorted((group / "cgroup.procs").read_text().split()) == sorted([str(pid), str(exec_pid)])

    # The container's end takes the exec'd process with it; the dying PID 1 waits for every process of its
    # namespace to be reaped, so the engine reaps the exec'd one first, as conmon would.
    assert engine.oci("kill", name, "KILL").code == 0
    assert engine.wait(exec_pid) == 128 + 9
    assert engine.wait(pid) == 128 + 9
    assert group.is_dir()  # stopped, not yet deleted: the group stays until delete
    # Groups of the container's own below its group (systemd inside makes some): delete removes them too.
    (group / "own" / "deeper").mkdir(parents=True)
    assert engine.oci("delete", name).code == 0
    assert not group.exists()


def test_a_pids_limit_stops_a_fork_loop(engine: Engine, rootfs: Path, tmp_path: Path, parent: Path) -> None:
    # 40 background sleeps under a limit of 8: the kernel refuses the forks past the limit (pids.events counts
    # them) and the shell gives up; the group, kept until delete, shows what happened.
    loop = "i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done; echo all forked"
    group = parent / "bomb"
    linux = {"cgroupsPath": "/" + str(group.relative_to("/sys/fs/cgroup")), "resources": {"pids": {"limit": 8}}}
    bundle = make_bundle(tmp_path / "b", rootfs, ["/bin/sh", "-c", loop], linux=linux)
    assert engine.create("bomb", bundle, "--pid-file", str(tmp_path / "pid")).code == 0
    pid = int((tmp_path / "pid").read_text())
    try:
        assert engine.oci("start", "bomb").code == 0
        status = engine.wait(pid, timeout=120)
        output = (bundle / "output").read_text()
        assert status not in (None, 0) and "all forked" not in output, (status, output)
        assert "can't fork" in output
        assert (group / "pids.max").read_text().strip() == "8"
        events = dict(line.split() for line in (group / "pids.events").read_text().splitlines())
        assert int(events["max"]) > 0, events  # forks were refused at the limit: it was the limit that held
    finally:
        engine.oci("kill", "bomb", "KILL")
        engine.wait(pid)
        engine.oci("delete", "--force", "bomb")
    assert not group.exists()


def test_aiocontain_exec_joins_a_detached_containers_cgroup(cli, containers_dir: Path) -> None:
    name = "cg-" + uuid.uuid4().hex[:8]
    before = leaves(containers_dir)
    started = cli("-d", "--name", name, "--net", "none", "--memory", "32m", "/bin/sh", "-c", "exec sleep 1000")
    assert started.code == 0, started.stderr
    try:
        (leaf,) = leaves(containers_dir) - before  # the detached container's leaf
        assert (containers_dir / leaf / "memory.max").read_text().strip() == str(32 * MIB)
        result = aiocontain("exec", name, "/bin/sh", "-c", "cat /sys/fs/cgroup/memory.max; " + MEMBERSHIP)
        assert result.code == 0, result.stderr
        limit, rest = result.stdout.split("\n", 1)
        assert limit == str(32 * MIB)  # the limit seen from inside: the group's, not the caller's
        check_member(rest)
    finally:
        aiocontain("rm", "-f", name)
