"""The library API under both anyio backends: real containers started in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import aiocontain
from aiocontain import Container, ContainerSpec, NetworkMode, forkserver
from aiocontain.errors import AiocontainError, CommandNotFound
from tests.conftest import leftovers, open_fds, slirp4netns_pids

pytestmark = [pytest.mark.anyio, pytest.mark.container]


def spec(rootfs: Path, *command: str, **options: object) -> ContainerSpec:
    return ContainerSpec(list(command), rootfs=rootfs, **options)  # type: ignore[arg-type]


async def test_run_returns_exit_status(rootfs):
    status = await aiocontain.run(spec(rootfs, "/bin/sh", "-c", "exit 5", network=NetworkMode.NONE))
    assert (status.code, status.signal, status.ok) == (5, None, False)


async def test_output_and_network_info(rootfs):
    s = spec(rootfs, "/bin/sh", "-c", "echo $(id -u) $(hostname); cat /sys/class/net/tap0/mtu", stdout=subprocess.PIPE)
    s.hostname = "embedded"
    async with Container(s) as container:
        network = dict(container.network)
        assert network.pop("address6").startswith("fd00::")  # slirp4netns's IPv6, on by default as in podman
        assert network == {
            "interface": "tap0",
            "address": "10.0.2.100/24",
            "gateway": "10.0.2.2",
            "mtu": 65520,
            "gateway6": "fe80::2",
        }
        output = b"".join([chunk async for chunk in container.stdout])
        status = await container.wait()
    assert status.ok
    assert output.decode().split() == ["0", "embedded", "65520"]


@pytest.mark.parametrize("mapping", ["subordinate", "single"])
async def test_id_maps_seen_from_the_host_and_from_inside(rootfs, mapping, monkeypatch):
    """Host view: 0 is the user, 1..N the subordinate ids (as podman maps them); without newuidmap (here: not
    on PATH) the single mapping. Inside: the container's own user namespace, nested in the fork server's, maps
    the same ids one to one. Each mapping on a fork server of its own, which maps its namespace at its start."""
    from aiocontain import subids

    uid_ranges = subids.ranges(os.getuid(), Path("/etc/subuid"))
    gid_ranges = subids.ranges(os.getuid(), Path("/etc/subgid"))
    if mapping == "subordinate" and not (uid_ranges and gid_ranges):
        pytest.skip("the test user has no subordinate ids (scripts/host-setup.sh gives it some)")
    if mapping == "single":
        monkeypatch.setenv("PATH", "/nonexistent")  # no newuidmap, no newgidmap
    script = "cat /proc/self/uid_map /proc/self/gid_map; read -r _"
    s = spec(rootfs, "/bin/sh", "-c", script, network=NetworkMode.NONE, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    server = forkserver.ForkServer.start()
    try:
        async with Container(s, fork_server=server) as container:
            host = [Path(f"/proc/{container.pid}/{name}").read_text().split() for name in ("uid_map", "gid_map")]
            own = Path(f"/proc/{os.getpid()}/ns/user").stat().st_ino
            assert Path(f"/proc/{container.pid}/ns/user").stat().st_ino != own
            await container.stdin.send(b"\n")
            output = b"".join([chunk async for chunk in container.stdout]).decode()
            inside = [line.split() for line in output.splitlines()]
            assert (await container.wait()).ok
    finally:
        server.close()
    assert server.mapping is not None and server.mapping.mode == mapping
    if mapping == "subordinate":
        (ustart, ucount), (gstart, gcount) = uid_ranges[0], gid_ranges[0]
        assert host == [
            ["0", str(os.getuid()), "1", "1", str(ustart), str(ucount)],
            ["0", str(os.getgid()), "1", "1", str(gstart), str(gcount)],
        ]
        assert inside == [["0", "0", "1"], ["1", "1", str(ucount)], ["0", "0", "1"], ["1", "1", str(gcount)]]
    else:
        assert host == [["0", str(os.getuid()), "1"], ["0", str(os.getgid()), "1"]]
        assert inside == [["0", "0", "1"], ["0", "0", "1"]]


async def test_containers_do_not_share_a_user_namespace(rootfs):
    """Each container has a user namespace of its own, and none is the fork server's."""
    s = [spec(rootfs, "sleep", "30", network=NetworkMode.NONE) for _ in range(2)]
    async with Container(s[0]) as first, Container(s[1]) as second:
        namespaces = {Path(f"/proc/{c.pid}/ns/user").stat().st_ino for c in (first, second)}
        server = forkserver.current()
        assert server is not None
        namespaces.add(Path(f"/proc/{server.pid}/ns/user").stat().st_ino)
        namespaces.add(Path(f"/proc/{os.getpid()}/ns/user").stat().st_ino)
        assert len(namespaces) == 4
        first.kill()
        second.kill()
        await first.wait()
        await second.wait()


async def test_cancelling_the_caller_tears_the_container_down(rootfs):
    before, fds = leftovers(), open_fds()
    pid = None
    with anyio.move_on_after(30) as scope:
        async with Container(spec(rootfs, "sleep", "60")) as container:
            pid = container.pid
            assert pid is not None and Path(f"/proc/{pid}").exists()
            scope.cancel()
            await container.wait()
    assert scope.cancelled_caught
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert leftovers() == before
    assert open_fds() == fds


async def test_the_teardown_ends_only_once_pid_1_is_reaped(rootfs):
    """Exited is not gone: until the fork server reaps it, the killed PID 1 is a zombie whose pid is still
    there. With the fork server held stopped, the teardown is seen waiting for that reap, not only the exit."""
    ended = anyio.Event()
    seen: list[object] = []

    async def watch(pidfd: int, pid: int, server: int) -> None:
        try:
            with anyio.fail_after(30):
                await anyio.wait_readable(pidfd)  # killed by the teardown: exited, and not reaped
            await anyio.wait_all_tasks_blocked()
            seen.extend([Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0], ended.is_set()])
        finally:
            os.kill(server, signal.SIGCONT)
            os.close(pidfd)

    async with anyio.create_task_group() as tg:
        async with Container(spec(rootfs, "sleep", "60", network=NetworkMode.NONE)) as container:
            pid, server = container.pid, forkserver.current()
            assert pid is not None and server is not None
            tg.start_soon(watch, os.pidfd_open(pid), pid, server.pid)
            os.kill(server.pid, signal.SIGSTOP)
        ended.set()
    assert seen == ["Z", False]  # a zombie, and the teardown still waiting for the fork server's word
    assert not Path(f"/proc/{pid}").exists()


async def test_stop_sends_sigterm_then_kills(rootfs):
    command = "trap 'exit 9' TERM; echo ready; sleep 60 & wait"
    async with Container(spec(rootfs, "/bin/sh", "-c", command, stdout=subprocess.PIPE)) as container:
        assert await container.stdout.receive() == b"ready\n"  # the trap is set
        status = await container.stop(timeout=10)
    assert status.code == 9
    async with Container(spec(rootfs, "sleep", "60", network=NetworkMode.NONE)) as container:
        status = await container.stop(timeout=0.5)  # PID 1 without a handler ignores SIGTERM
    assert (status.code, status.signal) == (137, signal.SIGKILL)


async def test_command_not_found_raises_and_leaves_nothing(rootfs):
    before, fds = leftovers(), open_fds()
    with pytest.raises(CommandNotFound) as caught:
        async with Container(spec(rootfs, "does-not-exist")):
            pytest.fail("the container should not start")
    assert caught.value.exit_code == 127
    assert leftovers() == before
    assert open_fds() == fds


async def test_slirp4netns_failure_is_reported_with_its_stderr(rootfs, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "slirp4netns"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'fake failure: cannot join namespace' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    before, fds = leftovers(), open_fds()
    with pytest.raises(AiocontainError, match=r"slirp4netns exited early with status 3: fake failure"):
        async with Container(spec(rootfs, "true")):
            pass
    assert leftovers() == before
    assert open_fds() == fds


async def test_slirp4netns_dying_mid_run_fails_the_run(rootfs):
    before = leftovers()
    async with Container(spec(rootfs, "sleep", "60")) as container:
        (slirp,) = slirp4netns_pids()
        os.kill(slirp, signal.SIGKILL)
        with pytest.raises(AiocontainError, match="slirp4netns was killed by SIGKILL"):
            await container.wait()
    assert leftovers() == before


async def test_unusable_tun_device_is_a_clear_error(rootfs, monkeypatch):
    from aiocontain.network import slirp4netns

    monkeypatch.setattr(slirp4netns, "_TUN", "/nonexistent/tun")
    with pytest.raises(AiocontainError, match=r"chmod 0666 /nonexistent/tun"):
        async with Container(spec(rootfs, "true")):
            pass


async def test_many_containers_concurrently(rootfs):
    before, fds = leftovers(), open_fds()
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        status = await aiocontain.run(spec(rootfs, "/bin/sh", "-c", f"exit {i}", network=NetworkMode.NONE))
        results[i] = status.code

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    assert results == {i: i for i in range(8)}
    assert leftovers() == before
    assert open_fds() == fds


@pytest.mark.parametrize("delay", [0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.25])
async def test_cancellation_during_set_up_leaves_nothing(rootfs, delay, tmp_path):
    # the delays land in different stages (spawn, idmap, network, tap, release) from run to run
    before, fds = leftovers(), open_fds()
    with (tmp_path / "stderr").open("w") as stderr:
        with anyio.move_on_after(delay):
            async with Container(spec(rootfs, "sleep", "60", stderr=stderr)) as container:
                await container.wait()
        assert leftovers() == before
        assert open_fds() == {**fds, stderr.fileno(): str(tmp_path / "stderr")}
    # the container's side leaves quietly too: no traceback on the stderr it shares with the command
    assert (tmp_path / "stderr").read_text() == ""


async def test_state_follows_the_lifecycle(rootfs):
    container = Container(spec(rootfs, "true", network=NetworkMode.NONE))
    assert container.state == "created"
    # The state at the very moment each event is emitted (wrapped here, synchronous): every state is seen.
    seen: dict[str, str] = {}
    emit = container._log.emit  # the private log: what every event goes through

    def recording(level: str, event: str, fields: dict[str, object]) -> None:
        seen.setdefault(event if event != "stage.started" else f"stage.started {fields['stage']}", container.state)
        emit(level, event, fields)

    container._log.emit = recording  # type: ignore[method-assign]
    async with container:
        assert container.state == "running"  # until the status is read, however soon `true` ends
        await container.wait()
        assert container.state == "exited"
    assert seen["container.created"] == seen["stage.started spawn"] == seen["stage.started release"] == "setting-up"
    assert seen["container.released"] == "released"  # released, the command being executed
    assert seen["command.started"] == "running"
    assert seen["container.exited"] == seen["teardown.finished"] == "exited"
    with anyio.move_on_after(30) as scope:
        async with Container(spec(rootfs, "sleep", "60", network=NetworkMode.NONE)) as cancelled:
            assert cancelled.state == "running"
            scope.cancel()
            await cancelled.wait()
    assert cancelled.state == "exited"  # torn down without a wait: nothing of it runs any more


async def test_the_spawn_stages_undoing_is_what_kills_the_container_when_the_runtime_lets_go(rootfs, monkeypatch):
    """Which kill guarantees that nothing of a container outlives its teardown: the spawn stage's undoing.

    Teardown SIGKILLs PID 1 through its pidfd first (``StageContext.kill``), so that the command stops before its
    stages are undone; the guarantee is the spawn stage's undoing (``_stop_child``), which kills PID 1 on every
    path that cloned one, and waits for its exit. Here the early kill is
    skipped: teardown still ends with PID 1 gone. (A runtime that dies leaves it to the fork server:
    test_forkserver's owner tests.)
    """
    import select

    from aiocontain.stages.context import StageContext

    monkeypatch.setattr(StageContext, "kill", lambda self, signum=signal.SIGKILL: False)
    before = leftovers()
    async with Container(spec(rootfs, "sleep", "60", network=NetworkMode.NONE)) as container:
        assert container.pid is not None
        pidfd = os.pidfd_open(container.pid)
    try:
        assert select.select([pidfd], [], [], 0)[0] == [pidfd]  # gone when teardown returned: no waiting
    finally:
        os.close(pidfd)
    assert leftovers() == before


async def test_describe_network_false_names_only_the_interface(rootfs):
    # In a fresh interpreter: the ready fd says when tap0 is configured, and pyroute2 is never imported.
    code = (
        "import sys, anyio, aiocontain\n"
        "async def main():\n"
        f"    spec = aiocontain.ContainerSpec(['/bin/sh', '-c', 'ip -4 addr show tap0'], rootfs={str(rootfs)!r})\n"
        "    async with aiocontain.Container(spec, describe_network=False) as container:\n"
        "        print(container.network, (await container.wait()).code, flush=True)\n"
        "    print('pyroute2' in sys.modules)\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("inet 10.0.2.100/24" in line for line in lines), lines  # the network itself is there
    assert lines[-2:] == ["{'interface': 'tap0'} 0", "False"]


def test_unconfigured_structlog_keeps_stdout_clean(rootfs):
    # a fresh interpreter in which nobody configured structlog: info events must not reach stdout
    code = (
        "import anyio, aiocontain\n"
        f"spec = aiocontain.ContainerSpec(['/bin/sh', '-c', 'echo out'], rootfs={str(rootfs)!r})\n"
        "print(anyio.run(aiocontain.run, spec).code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["out", "0"]
    assert "stage.started" not in proc.stdout + proc.stderr
