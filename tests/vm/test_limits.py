"""cgroup v2 limits on a real kernel: run in the VM tier (`nox -s vm`), as an unprivileged user with delegation.

Each container run costs seconds under QEMU's TCG, so each test checks as much
as one run shows.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.cgroups import hierarchy
from aiocontain.errors import CommandNotFound
from tests.conftest import Result, cli_argv
from tests.test_cli_run import _children, _started

pytestmark = pytest.mark.container

MIB = 1 << 20
NONE = NetworkMode.NONE  # the network is not what these tests are about, and slirp4netns is slow under TCG
FILES = ("memory.max", "memory.swap.max", "pids.max", "cpu.max")
MOUNT = "grep ' /sys/fs/cgroup ' /proc/self/mounts"


def delegated() -> Path:
    """The subtree delegated to us (user@UID.service in the VM tier), found as aiocontain finds it."""
    found = hierarchy.mounts()
    own = hierarchy.own_directory(found)
    assert own is not None
    mount = hierarchy.mount_of(own, found)
    assert mount is not None
    top = hierarchy.delegation_root(own, mount)
    assert top is not None, f"{own} is not delegated to us"
    return top


def leaves(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()


@pytest.fixture
def containers_dir() -> Iterator[Path]:
    """The directory of the containers' leaves; every test must leave it as it found it."""
    parent = delegated() / hierarchy.CONTAINERS_DIR
    before = leaves(parent)
    yield parent
    assert leaves(parent) == before, "a container's cgroup was left behind"


def run(rootfs: Path, *args: str, timeout: float = 90) -> Result:
    argv = cli_argv(rootfs, "--net", "none", "--log-format", "json", "--log-level", "info", *args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def event(result: Result, name: str) -> dict[str, object]:
    found = [e for e in result.events() if e["event"] == name]
    assert found, f"no {name} event in {result.stderr}"
    return found[-1]


def test_2m_limit_oom_kills_a_16m_allocation(rootfs, containers_dir):
    result = run(rootfs, "--memory", "2m", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1")
    assert result.code == 137, result
    last = result.stderr.strip().splitlines()[-1]
    assert last == "aiocontain: the container was killed by the OOM killer at its memory limit of 2 MiB"
    oom = event(result, "container.oom")
    assert oom["memory_limit"] == 2 * MIB and int(str(oom["oom_kills"])) >= 1
    exited = event(result, "container.exited")
    assert exited["oom_killed"] is True and int(str(exited["oom_kills"])) >= 1
    assert 0 < int(str(exited["memory_peak"])) <= 2 * MIB


def test_an_oom_kill_inside_a_surviving_container_is_reported_as_it_happens(rootfs, containers_dir):
    """The memory.events watcher reports the kill while the container runs: its command waits on stdin until
    the test has read container.oom (bounded), so a report made only at the exit cannot pass."""
    script = "dd if=/dev/zero of=/dev/null bs=16M count=1; echo survived $?; read line"
    argv = cli_argv(rootfs, "--net", "none", "--log-format", "json", "--log-level", "info", "-m", "2m")
    proc = subprocess.Popen(
        [*argv, "--", "/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stderr is not None
    seen = b""
    try:
        deadline = time.monotonic() + 90
        while b'"container.oom"' not in seen:
            ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no container.oom while the container runs: {seen!r}"
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, f"the run ended without container.oom: {seen!r}"
            seen += chunk
        out, err = proc.communicate(b"go\n", timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = Result(proc.returncode, out.decode(), (seen + err).decode())
    assert (result.code, result.stdout.strip()) == (0, "survived 137"), result
    oom, exited = event(result, "container.oom"), event(result, "container.exited")
    names = result.names()
    assert names.index("container.oom") < names.index("container.exited")
    assert oom["pid"] == exited["pid"]
    assert exited["oom_killed"] is False and int(str(exited["oom_kills"])) >= 1
    assert "OOM killer" not in result.stderr.strip().splitlines()[-1]


def test_limits_hold_the_values_asked_for_inside_and_out(rootfs, containers_dir):
    async def main() -> None:
        spec = ContainerSpec(
            ["/bin/sh", "-c", f"cd /sys/fs/cgroup && cat /proc/self/cgroup {' '.join(FILES)}; {MOUNT}; read line"],
            rootfs=rootfs,
            network=NONE,
            memory="2m",
            memory_swap="6m",
            pids_limit=10,
            cpus=0.5,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        async with Container(spec) as container:
            leaf = container.cgroup
            assert leaf is not None and leaf.parent == containers_dir
            # its processes one group down, the limits' group itself empty (see the test below)
            assert (leaf / "cgroup.procs").read_text() == ""
            assert (leaf / "container" / "cgroup.procs").read_text().split()[0] == str(container.pid)
            host_side = {name: (leaf / name).read_text().strip() for name in ("memory.max", "pids.max", "cpu.max")}
            await container.stdin.send(b"done\n")
            output = b"".join([chunk async for chunk in container.stdout]).decode().split("\n")
            status = await container.wait()
        assert not leaf.exists()
        assert host_side == {"memory.max": str(2 * MIB), "pids.max": "10", "cpu.max": "50000 100000"}
        # its own cgroup namespace, rooted at the leaf: the same values, at the root of its /sys/fs/cgroup
        assert output[:5] == ["0::/", str(2 * MIB), str(4 * MIB), "10", "50000 100000"]
        # read-only, as podman mounts it, and nothing set-uid, no device, no program on it
        _source, point, kind, options = output[5].split()[:4]
        assert (point, kind) == ("/sys/fs/cgroup", "cgroup2")
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(options.split(",")), output[5]
        assert status.ok and status.usage is not None
        assert status.usage.memory_peak is not None and 0 < status.usage.memory_peak <= 2 * MIB
        assert status.usage.cpu_usec is not None and status.usage.cpu_usec > 0
        assert status.usage.oom_kills == 0 and not status.oom_killed

    anyio.run(main)


# util-linux's unshare from the guest's /usr (busybox's cannot make a cgroup namespace), through its own loader
HOST_UNSHARE = (
    "/host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /host/usr/lib/x86_64-linux-gnu "
    "/host/usr/bin/unshare"
)


def test_a_container_cannot_lift_its_own_limits(rootfs, containers_dir):
    """A nested user and cgroup namespace inside (podman's seccomp profile allows both, with the default
    capabilities) mounts a writable cgroup2 at the root of the container's cgroup namespace. This guest mounts
    its hierarchy without nsdelegate, so the kernel lets it write memory.max and pids.max there: the attempt is
    real. The limits asked for still hold, as they sit in the group above, which it cannot reach."""
    lift = (  # and groups of its own below, which the teardown removes too (containers_dir checks)
        "mkdir /tmp/cg && mount -t cgroup2 none /tmp/cg && mkdir -p /tmp/cg/own/deeper && "
        "for f in memory.max pids.max; do echo max > /tmp/cg/$f; done"
    )
    forks = "i=0; while [ $i -lt 40 ]; do sleep 60 & i=$((i+1)); done"  # the shell gives up at the first refusal
    script = (
        f"{HOST_UNSHARE} -UrmC sh -c '{lift}; cat /tmp/cg/memory.max /tmp/cg/pids.max'; "
        f"dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null; echo dd $?; {forks}"
    )
    options = ("-m", "8m", "--pids-limit", "20", "-v", "/usr:/host/usr:ro")
    result = run(rootfs, *options, "--", "/bin/sh", "-c", script)
    lines = result.stdout.split("\n")
    assert lines[:2] == ["max", "max"], result  # raised where it could reach
    assert "dd 137" in lines, result  # still OOM-killed at 8 MiB
    exited = event(result, "container.exited")
    assert exited["pids_peak"] == 20 and int(str(exited["oom_kills"])) >= 1, exited


def test_concurrent_limited_containers_each_get_their_own_leaf(rootfs, containers_dir):
    async def one(index: int, seen: dict[int, Path]) -> None:
        spec = ContainerSpec(["cat", "/sys/fs/cgroup/pids.max"], rootfs=rootfs, network=NONE, pids_limit=index + 5)
        spec.stdout = subprocess.PIPE
        async with Container(spec) as container:
            assert container.cgroup is not None
            seen[index] = container.cgroup
            output = b"".join([chunk async for chunk in container.stdout])
            assert (await container.wait()).ok
        assert output.decode().strip() == str(index + 5)

    async def main() -> None:
        seen: dict[int, Path] = {}
        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(one, index, seen)
        assert len(set(seen.values())) == 4 and not any(path.exists() for path in seen.values())

    anyio.run(main, backend="trio")


def test_pids_limit_contains_a_fork_loop_and_the_run_ends(rootfs, containers_dir):
    loop = "i=0; while [ $i -lt 50 ]; do sleep 30 & i=$((i+1)); done; echo all forked"
    result = run(rootfs, "--pids-limit", "10", "--backend", "trio", "--", "/bin/sh", "-c", loop)
    assert result.code != 0 and "all forked" not in result.stdout, result
    assert "can't fork" in result.stderr
    exited = event(result, "container.exited")
    assert exited["pids_peak"] == 10


def test_without_limits_a_container_still_gets_its_own_cgroup(rootfs, containers_dir):
    # ... and podman's default pids limit, 2048, as the pids controller is delegated here: a fork bomb inside
    # stops there (the kernel holds pids.max: test_pids_limit_contains_a_fork_loop_and_the_run_ends), not at the
    # user's RLIMIT_NPROC, which the user's every process on the host shares. -1 is no limit, as in podman.
    probe = "cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"
    result = run(rootfs, "--log-level", "debug", "--", "/bin/sh", "-c", probe)
    assert (result.code, result.stdout.split()) == (0, ["0::/", "max", "2048"]), result
    assert event(result, "cgroup.created")["pids_limit"] == 2048
    assert int(str(event(result, "container.exited")["memory_peak"])) > 0
    unlimited = run(rootfs, "--pids-limit", "-1", "--", "cat", "/sys/fs/cgroup/pids.max")
    assert (unlimited.code, unlimited.stdout.strip()) == (0, "max"), unlimited
    assert (
        run(rootfs, "--cgroups", "disabled", "--", "/bin/sh", "-c", "ls /sys/fs/cgroup | wc -l").stdout.strip() == "0"
    )


def test_the_leaf_is_removed_on_failure_and_cancellation(rootfs, containers_dir):
    before = leaves(containers_dir)

    async def main() -> None:
        with pytest.raises(CommandNotFound):
            async with Container(ContainerSpec(["no-such-command"], rootfs=rootfs, memory="8m", network=NONE)):
                pytest.fail("must not start")
        assert leaves(containers_dir) == before
        with anyio.move_on_after(60) as scope:
            async with Container(ContainerSpec(["sleep", "60"], rootfs=rootfs, memory="8m", network=NONE)) as container:
                leaf = container.cgroup
                assert leaf is not None and leaf.exists()
                scope.cancel()
                await container.wait()
        assert scope.cancelled_caught and not leaf.exists()

    anyio.run(main)


def test_sigkill_of_aiocontain_still_removes_the_leaf(rootfs, containers_dir):
    before = leaves(containers_dir)
    proc = subprocess.Popen(
        [*cli_argv(rootfs, "--net", "none", "-m", "8m", "--", "/bin/sh", "-c", "echo ready; exec sleep 60")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _started(proc)
    (leaf,) = leaves(containers_dir) - before
    (server,) = _children(proc.pid)  # the CLI's fork server; the container's PID 1 is its child
    pidfd = os.pidfd_open(server)
    proc.kill()  # no teardown in the runtime: the fork server kills PID 1 and removes the leaf before it exits
    proc.wait()
    try:
        assert select.select([pidfd], [], [], 30)[0] == [pidfd]
    finally:
        os.close(pidfd)
    assert not (containers_dir / leaf).exists()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A group of the test's own in the delegated subtree; removed afterwards, deepest first."""
    group = delegated() / "test-scratch"
    group.mkdir()
    yield group
    for path in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        path.rmdir()
    group.rmdir()


def test_cgroup_parent_inside_the_delegated_subtree(rootfs, containers_dir, scratch):
    result = run(rootfs, "--cgroup-parent", str(scratch), "-m", "4m", "--", "cat", "/sys/fs/cgroup/memory.max")
    assert (result.code, result.stdout.strip()) == (0, str(4 * MIB)), result
    assert leaves(scratch) == set()


def test_runtime_inside_the_cgroup_parent_moves_itself_to_a_leaf_first(rootfs, containers_dir, scratch):
    # The README's manual set-up: aiocontain runs in the very group it is told to use, which holds processes and so
    # cannot enable controllers. It moves itself into a leaf of its own first, as crun does.
    argv = cli_argv(rootfs, "--net", "none", "--cgroup-parent", str(scratch), "-m", "4m", "--", "cat", "/proc/1/cgroup")
    script = f"echo $$ > {scratch / 'cgroup.procs'} && exec " + " ".join(argv)
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=90)
    assert (proc.returncode, proc.stdout.strip()) == (0, "0::/"), proc.stderr
    assert leaves(scratch) == {hierarchy.RUNTIME_LEAF}
    assert set((scratch / "cgroup.subtree_control").read_text().split()) >= {"memory", "pids", "cpu"}


def test_a_controller_that_is_not_delegated_is_refused_and_nothing_made(rootfs, containers_dir, scratch):
    (scratch / "cgroup.subtree_control").write_text("+pids")
    child = scratch / "child"
    child.mkdir()
    result = run(rootfs, "--cgroup-parent", str(child), "-m", "2m", "--", "true")
    assert result.code == 125, result
    (line,) = result.stderr.strip().splitlines()
    assert "memory controller is not available there" in line and "+memory" in line
    assert leaves(child) == set()
    ok = run(rootfs, "--cgroup-parent", str(child), "--pids-limit", "5", "--", "cat", "/sys/fs/cgroup/pids.max")
    assert (ok.code, ok.stdout.strip()) == (0, "5"), ok
    assert leaves(child) == set()


def test_doctor_names_the_delegated_controllers():
    out = subprocess.run([sys.executable, "-m", "aiocontain", "doctor"], capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if "cgroup v2:" in line)
    assert line.startswith("OK") and f"delegated subtree {delegated()}" in line
    assert all(name in line.split("controllers", 1)[1].split() for name in ("cpu", "memory", "pids"))


def test_a_root_that_cannot_be_built_is_one_line_with_a_cgroup_too(tmp_path, containers_dir):
    # PID 1 builds its root as soon as it is mapped, before the cgroup stage moves it: whether it fails before
    # or after the move, the error is the build's, and the leaf is removed.
    from tests.conftest import rootfs_with_symlinked_tmp

    root = rootfs_with_symlinked_tmp(tmp_path)
    result = run(root, "--memory", "8m", "true")
    assert result.code == 125, result
    errors = [event for event in result.events() if event["event"] == "aiocontain.error"]  # --log-format json
    assert len(errors) == 1 and "tmp in the root filesystem is a symlink" in str(errors[0]["message"]), result.stderr
