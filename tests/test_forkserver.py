"""The fork server: real containers forked from one zygote, and its lifetime tied to its owner."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import aiocontain
from aiocontain import Container, ContainerSpec, NetworkMode, messages
from aiocontain.child.forkserver import SPARE_AFTER
from aiocontain.forkserver import ForkServer
from tests.conftest import leftovers, open_fds

pytestmark = [pytest.mark.anyio, pytest.mark.container]
EXIT_WAIT = 30.0  # seconds: a bound on waiting for an exit the kernel reports, not a timing assertion


def spec(rootfs: Path, *command: str, **options: object) -> ContainerSpec:
    options = {"network": NetworkMode.NONE, **options}
    return ContainerSpec(list(command), rootfs=rootfs, **options)  # type: ignore[arg-type]


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def wait_gone(pid: int) -> bool:
    """Wait until pid exits, told by its pidfd (no polling loop); True once it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], EXIT_WAIT)[0])
    finally:
        os.close(pidfd)


async def test_many_containers_from_one_fork_server(rootfs, fork_server):
    before, fds = leftovers(), open_fds()
    parents: set[int] = set()

    async def one(i: int) -> None:
        command = ("/bin/sh", "-c", f"read line; exit {i}")
        async with Container(spec(rootfs, *command, stdin=subprocess.PIPE)) as container:
            assert container.pid is not None
            parents.add(parent_of(container.pid))  # PID 1 -> fork server, with nothing between
            await container.stdin.send(b"go\n")
            assert (await container.wait()).code == i

    for i in range(5):
        await one(i)
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(one, i)
    assert parents == {fork_server}
    assert leftovers() == before
    assert open_fds() == fds


async def test_the_command_starts_clean(rootfs):
    # a PID 1 cloned from the fork server must leave the command as clean as a fresh process would: nothing blocked
    # or ignored, and only stdio open (3 is ls's own directory fd)
    found = []
    for command in (["grep", "-E", "SigBlk|SigIgn", "/proc/self/status"], ["ls", "/proc/self/fd"]):
        async with Container(spec(rootfs, *command, stdout=subprocess.PIPE)) as container:
            found.append(b"".join([chunk async for chunk in container.stdout]).decode().split())
            assert (await container.wait()).ok
    assert found == [["SigBlk:", "0" * 16, "SigIgn:", "0" * 16], ["0", "1", "2", "3"]]


async def test_stdio_pipes(rootfs):
    command = ["/bin/sh", "-c", "tr a-z A-Z; echo done >&2"]
    options = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    async with Container(spec(rootfs, *command, **options)) as container:
        await container.stdin.send(b"hello ")
        await container.stdin.send(b"world\n")
        await container.stdin.aclose()
        output = b"".join([chunk async for chunk in container.stdout])
        errors = b"".join([chunk async for chunk in container.stderr])
        status = await container.wait()
    assert (output, errors, status.code) == (b"HELLO WORLD\n", b"done\n", 0)


async def test_closing_a_fork_server_leaves_nothing(rootfs):
    before, fds = leftovers(), open_fds()
    server = ForkServer.start()
    async with Container(spec(rootfs, "sleep", "60"), fork_server=server) as container:
        assert container.pid is not None and parent_of(container.pid) == server.pid
        with pytest.raises(RuntimeError, match="still open"):
            server.close()  # its container still runs
        container.kill()
    for i in range(3):
        status = await aiocontain.Container(spec(rootfs, "/bin/sh", "-c", f"exit {i}"), fork_server=server).__aenter__()
        assert (await status.wait()).code == i
        await status.__aexit__(None, None, None)
    server.close()
    assert leftovers() == before
    assert open_fds() == fds


def comm(pid: int) -> bytes:
    return Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n")


def spares_of(server: ForkServer) -> list[int]:
    from aiocontain.child.forkserver import SPARE_NAME

    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return [pid for pid in map(int, children) if comm(pid) == SPARE_NAME]


# What a container says of its namespaces: their inodes, its id maps, its hostname and its lo.
FACTS = (
    "for ns in user net pid mnt uts ipc; do readlink /proc/self/ns/$ns; done;"
    " cat /proc/self/uid_map /proc/self/gid_map; echo host=$(hostname); ip -o link show lo; echo end"
)


def facts(output: bytes) -> dict[str, object]:
    lines = output.decode().splitlines()
    namespaces = dict(line.rstrip("]").split(":[") for line in lines[:6])
    host = next(index for index, line in enumerate(lines) if line.startswith("host="))
    return {
        "namespaces": namespaces,
        "maps": [" ".join(line.split()) for line in lines[6:host]],
        "hostname": lines[host][5:],
        "lo_up": any("LOOPBACK,UP" in line for line in lines if ": lo:" in line),
    }


def host_namespaces(pid: int) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}").split(":[")[1].rstrip("]") for ns in NAMESPACES}


NAMESPACES = ("user", "net", "pid", "mnt", "uts", "ipc")


async def run_and_reap(server: ForkServer, rootfs: Path, *command: str, **options: object) -> tuple[bytes, int]:
    """Run a container on server to its end, which is the server's Reaped of its PID 1 (the server clones its
    spare, when it keeps one, right after: ``offered`` waits for it)."""
    async with Container(spec(rootfs, *command, stdout=subprocess.PIPE, **options), fork_server=server) as container:
        output = b"".join([chunk async for chunk in container.stdout])
        code = (await container.wait()).code
    return output, code


async def read_until_end(container: Container) -> bytes:
    output = b""
    while not output.endswith(b"end\n"):
        output += await container.stdout.receive()
    return output


def held(pid: int) -> list[str]:
    """What pid's fds are open on: a path, or the kind of a socket, pipe or anonymous inode."""
    targets = (os.readlink(f"/proc/{pid}/fd/{name}") for name in os.listdir(f"/proc/{pid}/fd"))
    return sorted(target.split(":[")[0] if ":[" in target else target for target in targets)


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_a_spare_becomes_the_next_containers_pid_1(rootfs):
    # After SPARE_AFTER requests the server keeps a PID 1 cloned ahead; the next container's PID 1 is that
    # process, a child of the server as a fresh one is, and its command holds what a fresh one's holds (its
    # stdio only). Closing the server retires the next spare with nothing left.
    from aiocontain.child.forkserver import SPARE_NAME

    before, fds = leftovers(), open_fds()
    server = ForkServer.start()
    try:
        kept = []
        for index in range(SPARE_AFTER + 1):
            spare = await offered(server) if index == SPARE_AFTER else spares_of(server)
            assert len(spare) == (1 if index == SPARE_AFTER else 0)
            async with Container(spec(rootfs, "sleep", "60", stdin=subprocess.PIPE), fork_server=server) as container:
                assert container.pid is not None and parent_of(container.pid) == server.pid
                assert (container.pid in spare) == (index == SPARE_AFTER)
                assert comm(container.pid) != SPARE_NAME  # the command's now
                kept.append(held(container.pid))
                container.kill()
                assert (await container.wait()).code == 137  # Reaped: the server clones its next spare after it
        assert kept[0] == kept[1] == kept[2] and len(kept[0]) == 3  # stdio only
        assert len(await offered(server)) == 1
    finally:
        server.close()
    assert leftovers() == before
    assert open_fds() == fds


async def warm_up(server: ForkServer, rootfs: Path) -> None:
    """Serve the requests after which the fork server keeps a spare, and wait for its offer."""
    for _ in range(SPARE_AFTER):
        assert (await run_and_reap(server, rootfs, "true"))[1] == 0
    await offered(server)


async def offered(server: ForkServer) -> list[int]:
    """Wait until the server has a spare (cloned once a container's PID 1 is reaped) and has offered one: offers
    wait in our end of the request socket, read at the next fork. The spare's pid, in a list.

    An offer whose spare the server let go since (a request crossed it) is read here and let go, as the next
    fork would: offers come in order, so it is read before its replacement's."""
    from aiocontain.forkserver.process import Offer

    with anyio.fail_after(10):
        while True:
            await anyio.wait_readable(server._requests)
            spares = spares_of(server)
            if spares:
                return spares
            message, fds = messages.recv(server._requests)
            assert isinstance(message, messages.Spare), message
            Offer(message, fds).let_go()


@contextlib.asynccontextmanager
async def server_with_spare(rootfs: Path) -> AsyncIterator[ForkServer]:
    """A fork server of our own that keeps a spare (warmed up); closed after, leaving no process, runtime
    directory, record, mount or fd of ours behind."""
    before, fds = leftovers(), open_fds()
    server = ForkServer.start()
    try:
        await warm_up(server, rootfs)
        yield server
    finally:
        os.kill(server.pid, signal.SIGCONT)  # a test may have stopped it: closing waits for it
        server.close()
    assert leftovers() == before
    assert open_fds() == fds


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def stop(child: int) -> None:
    """SIGSTOP a child of ours, and wait until the kernel says it has stopped (the signal is asynchronous)."""
    os.kill(child, signal.SIGSTOP)
    os.waitid(os.P_PID, child, os.WSTOPPED | os.WNOWAIT)


async def test_a_spare_is_a_pid_1_cloned_ahead_holding_only_its_own_socket(rootfs):
    # The spare is PID 1 of its namespaces before any request. It waits under the spare's name for its request,
    # holding nothing but its socket to the server (and the server's /dev/null as stdio): nothing of the
    # server's or of another container's, and no process of its own. The next container's PID 1 is that process,
    # and it runs with the container's own stdio.
    from aiocontain.child.forkserver import SPARE_NAME

    async with server_with_spare(rootfs) as server:
        [spare] = spares_of(server)
        assert comm(spare) == SPARE_NAME and children_of(spare) == []
        # Its socket and its own /proc, /sys and /dev, built before its offer and held detached (child/prebuilt.py).
        assert held(spare) == ["/", "/", "/"] + ["/dev/null"] * 3 + ["socket"]
        command = spec(rootfs, "/bin/sh", "-c", "echo $$; ls /proc/self/fd", stdout=subprocess.PIPE)
        async with Container(command, fork_server=server) as container:
            assert container.pid == spare
            output = b"".join([chunk async for chunk in container.stdout])
            assert (await container.wait()).ok  # Reaped: the server clones its next spare after it
        assert output.split() == [b"1", b"0", b"1", b"2", b"3"]  # PID 1 of its namespace, with only its stdio
        [next_spare] = await offered(server)
        assert next_spare != spare


async def test_a_spares_pid_1_that_fails_and_is_reaped_before_ready_is_read_is_still_its_one_line(
    rootfs, tmp_path, monkeypatch
):
    # A spare's PID 1 has its maps written, so it builds the root as soon as it has said Ready, which may be
    # before the runtime reads it; one that fails is reaped by the fork server at once. Here the runtime reads
    # Ready only once that reap is done, so PID 1's pid names nothing by then: the container's error is still
    # PID 1's own line (its report), never "No such process" from a pidfd opened from that pid.
    from aiocontain import channels
    from aiocontain.errors import AiocontainError
    from tests.conftest import rootfs_with_symlinked_tmp

    broken = rootfs_with_symlinked_tmp(tmp_path)
    read_ready = channels.ChildChannel.wait_ready
    reaped: list[bool] = []

    async def read_once_reaped(self: channels.ChildChannel) -> channels.ReadyFds:
        ready = await read_ready(self)
        reaped.append(await anyio.to_thread.run_sync(wait_reaped, spare))
        return ready

    async with server_with_spare(rootfs) as server:
        [spare] = spares_of(server)  # the container takes it: its PID 1, whose maps are written already
        monkeypatch.setattr(channels.ChildChannel, "wait_ready", read_once_reaped)
        with pytest.raises(AiocontainError, match="tmp in the root filesystem is a symlink"):
            async with Container(spec(broken, "/bin/true"), fork_server=server):
                pass
        assert reaped == [True]


def wait_reaped(pid: int, timeout: float = 10) -> bool:
    """Wait until pid (not our child) is reaped: its pidfd reports POLLHUP then (POLLIN already at its exit)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # reaped already
    try:
        poller = select.poll()
        poller.register(pidfd, 0)  # POLLHUP is reported whatever the mask
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


async def test_an_offered_spare_takes_its_request_from_the_runtime_with_the_server_stopped(rootfs):
    # Once ready, the spare is offered to the runtime (its pidfd, its socket, a reply channel), which hands it
    # the request itself: the container is set up and runs with the fork server SIGSTOPped the whole time, so
    # no step of its start went through the server (a request handed through the server, as before offers,
    # waits for it: this test then fails at the fork's timeout). Its exit status is the server's Reaped, once
    # it runs again.
    async with server_with_spare(rootfs) as server:
        [spare] = spares_of(server)
        stop(server.pid)
        try:
            assert state_of(server.pid) == "T"
            command = spec(rootfs, *FACTS_COMMAND, stdout=subprocess.PIPE)
            async with Container(command, fork_server=server) as container:
                assert container.pid == spare
                found = facts(await read_until_end(container))
                assert state_of(server.pid) == "T"  # stopped throughout
                os.kill(server.pid, signal.SIGCONT)
                assert (await container.wait()).ok
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert wait_gone(spare)
        assert found["lo_up"] and len(found["maps"]) >= 2  # the spare's namespaces, mapped before the offer


FACTS_COMMAND = ("/bin/sh", "-c", FACTS)


async def test_a_spares_container_has_namespaces_of_its_own_mapped_and_set_up_as_a_fresh_ones(rootfs):
    # Two containers alive at once, each from a spare: none of their six namespaces is shared with each other
    # or with the fork server; their id maps are a freshly forked container's; their hostname is the spec's and
    # their lo is up.
    before = leftovers()
    server = ForkServer.start()
    try:
        fresh = []
        for _ in range(SPARE_AFTER):
            output, code = await run_and_reap(server, rootfs, "/bin/sh", "-c", FACTS, hostname="fresh")
            assert code == 0
            fresh.append(facts(output))
        await offered(server)
        alive = []
        async with anyio.create_task_group() as tg:
            release = anyio.Event()

            async def hold(name: str, started: anyio.Event) -> None:
                command = ("/bin/sh", "-c", f"{FACTS}; read line")
                options = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "hostname": name}
                spare = spares_of(server)
                async with Container(spec(rootfs, *command, **options), fork_server=server) as container:
                    assert container.pid is not None and spare == [container.pid]
                    alive.append(facts(await read_until_end(container)))
                    started.set()
                    await release.wait()
                    await container.stdin.send(b"go\n")
                    assert (await container.wait()).ok

            first = anyio.Event()
            tg.start_soon(hold, "first", first)
            await first.wait()
            # A container run and reaped meanwhile makes the next spare.
            assert (await run_and_reap(server, rootfs, "true"))[1] == 0
            await offered(server)
            second = anyio.Event()
            tg.start_soon(hold, "second", second)
            await second.wait()
            release.set()
        own = host_namespaces(server.pid)
        one, two = alive
        for ns in NAMESPACES:
            assert one["namespaces"][ns] != two["namespaces"][ns], ns
            assert own[ns] not in (one["namespaces"][ns], two["namespaces"][ns]), ns
        assert one["maps"] == two["maps"] == fresh[0]["maps"] and len(fresh[0]["maps"]) >= 2
        assert (one["hostname"], two["hostname"], fresh[0]["hostname"]) == ("first", "second", "fresh")
        assert one["lo_up"] and two["lo_up"] and fresh[0]["lo_up"]
    finally:
        server.close()
    assert leftovers() == before


def mount_table(mountinfo: bytes) -> list[tuple[str, ...]]:
    """A container's mounts as (mount point, options, fs type, source, super options), sorted: what is mounted
    where and how, without the ids, which differ from one container to the next."""
    table = []
    for line in mountinfo.decode().splitlines():
        mine, theirs = line.split(" - ")
        table.append((*mine.split()[4:6], *theirs.split()))
    return sorted(table)


KERNEL_FILES_PROBE = (
    "echo keys $(wc -c < /proc/keys) firmware $(ls /sys/firmware | wc -l) >&2;"
    " (echo 1 > /proc/sys/net/ipv4/ip_forward) 2>/dev/null && echo ip_forward-written >&2;"
    " cat /proc/self/mountinfo; echo end"
)


@pytest.mark.parametrize("privileged", [False, True])
async def test_a_spares_container_has_the_mounts_of_a_fresh_ones(rootfs, privileged):
    # A spare builds its /proc (with the masked and read-only paths), /sys and /dev before any request and
    # attaches them in the root once it has one: the container then has exactly the mounts of a container cloned
    # afresh (run while the spare's still runs, so that no spare is there for it), and the same masks hold. A
    # --privileged Config, which the spare's /proc and /sys do not fit (no masks), gets a fresh one's.
    options = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "privileged": privileged}
    tables, probes = [], []
    async with server_with_spare(rootfs) as server:
        [spare] = spares_of(server)
        probe = ("/bin/sh", "-c", KERNEL_FILES_PROBE + "; read line")
        async with Container(spec(rootfs, *probe, **options), fork_server=server) as from_spare:
            assert from_spare.pid == spare
            async with Container(spec(rootfs, *probe, **options), fork_server=server) as fresh:
                assert fresh.pid != spare and spares_of(server) == []
                for container in (from_spare, fresh):
                    tables.append(mount_table((await read_until_end(container)).removesuffix(b"end\n")))
                    await container.stdin.send(b"go\n")
                    probes.append(b"".join([chunk async for chunk in container.stderr]).decode())
                    assert (await container.wait()).ok
    spare_table, fresh_table = tables
    assert spare_table == fresh_table
    points = [entry[0] for entry in fresh_table]
    masked = ["/proc/keys", "/sys/firmware", "/proc/sys"]
    if privileged:
        assert not set(masked) & set(points)
        for probe in probes:  # /proc/keys lists each container's own session keyring: its size differs
            assert probe.startswith("keys ") and "firmware 0" not in probe and "ip_forward-written" in probe
    else:
        assert set(masked) <= set(points) and "/dev/pts" in points
        assert probes == ["keys 0 firmware 0\n"] * 2


async def test_a_spares_container_starts_clean_with_its_own_stdio(rootfs):
    # A spare's container gets the command's stdio with the request, and the command starts as a fresh fork's
    # does (nothing blocked or ignored, only stdio open: 3 is ls's own directory fd).
    async with server_with_spare(rootfs) as server:
        [spare] = spares_of(server)
        command = ["/bin/sh", "-c", "grep -E 'SigBlk|SigIgn' /proc/self/status; ls /proc/self/fd; cat; echo err >&2"]
        options = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        async with Container(spec(rootfs, *command, **options), fork_server=server) as container:
            assert container.pid == spare
            await container.stdin.send(b"in\n")
            await container.stdin.aclose()
            output = b"".join([chunk async for chunk in container.stdout]).decode().split()
            errors = b"".join([chunk async for chunk in container.stderr])
            assert (await container.wait()).ok
    assert output == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16, "0", "1", "2", "3", "in"]
    assert errors == b"err\n"


async def test_a_request_for_other_namespaces_than_the_spares_gets_a_fresh_fork(rootfs):
    # The spare makes the namespaces of the last request's kind. --net host then none, each way round: the
    # request that differs is forked afresh and the spare let go; the next spare is of the new kind.
    own_net = host_namespaces(os.getpid())["net"]
    async with server_with_spare(rootfs) as server:
        for network, via_spare in (("host", False), ("host", True), ("none", False), ("none", True)):
            spare = await offered(server)
            assert len(spare) == 1
            command = ("/bin/sh", "-c", f"{FACTS}; read line")
            options = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "network": NetworkMode(network)}
            async with Container(spec(rootfs, *command, **options), fork_server=server) as container:
                assert container.pid is not None and (container.pid in spare) == via_spare
                found = facts(await read_until_end(container))
                await container.stdin.send(b"go\n")
                assert (await container.wait()).ok
            assert (found["namespaces"]["net"] == own_net) == (network == "host"), network
            assert found["lo_up"]


async def test_a_killed_spare_is_replaced_and_the_next_container_runs(rootfs):
    # SIGKILLed once offered (its offer waits in the runtime's request socket, and the runtime finds it dead); so
    # while the server is stopped, which then reaps it; or once a container has run meanwhile (waiting): the next
    # container runs (cloned afresh, or handed the replacement the server cloned when it reaped the killed one),
    # and a new spare follows it.
    before, fds = leftovers(), open_fds()
    server = ForkServer.start()
    try:
        await warm_up(server, rootfs)
        for stage in ("offered", "offered", "server stopped", "server stopped", "waiting"):
            if stage == "waiting":
                assert (await run_and_reap(server, rootfs, "true"))[1] == 0
                await offered(server)
            if stage == "server stopped":
                os.kill(server.pid, signal.SIGSTOP)
            [spare] = spares_of(server)
            os.kill(spare, signal.SIGKILL)
            assert wait_gone(spare)  # exited: the server, which reaps it, sees it before the next request
            os.kill(server.pid, signal.SIGCONT)
            output, code = await run_and_reap(server, rootfs, "/bin/sh", "-c", "echo ran")
            assert (output, code) == (b"ran\n", 0)
            replacement = await offered(server)
            assert spare not in replacement and len(replacement) == 1
        [spare] = spares_of(server)
        async with Container(spec(rootfs, "sleep", "60"), fork_server=server) as container:
            assert container.pid == spare
            container.kill()
            assert (await container.wait()).code == 137
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.close()
    assert leftovers() == before
    assert open_fds() == fds


async def test_a_spare_dies_with_a_killed_fork_server(rootfs):
    # A spare holds namespaces and nothing else: a SIGKILLed server takes it (its parent-death signal, as
    # every PID 1's), whatever stage of its warm-up it is at.
    before = leftovers()
    server = ForkServer.start()
    try:
        await warm_up(server, rootfs)
        [spare] = spares_of(server)
        os.kill(server.pid, signal.SIGKILL)
        assert wait_gone(server.pid)
        assert wait_gone(spare)
    finally:
        server.close()
    assert leftovers() == before  # this server's spares are not the default's, which leftovers leaves out


async def test_cancelled_while_the_fork_is_in_flight(rootfs):
    # A fresh server is still starting its interpreter when the first Fork request arrives:
    # cancelling then lands while the request is in flight.
    before, fds = leftovers(), open_fds()
    server = ForkServer.start()
    with anyio.move_on_after(0.005) as scope:
        async with Container(spec(rootfs, "sleep", "60"), fork_server=server) as container:
            await container.wait()
    assert scope.cancelled_caught
    async with Container(spec(rootfs, "/bin/sh", "-c", "exit 4"), fork_server=server) as container:
        assert (await container.wait()).code == 4  # the server still serves
    server.close()
    assert leftovers() == before
    assert open_fds() == fds


OWNER = textwrap.dedent(
    """
    import sys, anyio
    from aiocontain import Container, ContainerSpec, NetworkMode, forkserver

    async def main():
        spec = ContainerSpec(["sleep", "600"], rootfs=sys.argv[1], network=NetworkMode(sys.argv[2]))
        async with Container(spec) as container:
            print(forkserver.default().pid, container.pid, flush=True)
            await container.wait()

    anyio.run(main)
    """
)


@pytest.mark.parametrize("network", ["none", "slirp4netns"])
def test_fork_server_and_container_die_with_a_sigkilled_owner(rootfs, network):
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(rootfs), network], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert owner.stdout is not None
    line = owner.stdout.readline().split()
    assert len(line) == 2, "the owner did not start its container"
    server, init = (int(pid) for pid in line)
    assert parent_of(init) == server and parent_of(server) == owner.pid
    owner.kill()
    owner.wait()
    assert wait_gone(server)
    assert wait_gone(init)


def test_a_forked_copy_of_the_owners_request_socket_does_not_keep_the_containers_alive(rootfs):
    # The owner forks (a program embedding aiocontain may): the copy holds the request socket open, so its end
    # of stream never comes. The server watches the owner's own pidfd too: the owner's death still ends the
    # container and the server, while the copy lives on.
    code = OWNER.replace(
        "print(forkserver.default().pid, container.pid, flush=True)",
        "import os, time\n        if os.fork() == 0:\n            time.sleep(600)\n            os._exit(0)\n"
        "        print(forkserver.default().pid, container.pid, flush=True)",
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(rootfs), "none"], stdout=subprocess.PIPE)
    assert owner.stdout is not None
    line = owner.stdout.readline().split()
    assert len(line) == 2, "the owner did not start its container"
    server, init = (int(pid) for pid in line)
    (copy,) = [pid for pid in children_of(owner.pid) if pid != server]  # it holds every fd of the owner's
    try:
        owner.kill()
        owner.wait()
        assert wait_gone(server)
        assert wait_gone(init)
        assert Path(f"/proc/{copy}").exists()
    finally:
        os.kill(copy, signal.SIGKILL)
        wait_gone(copy)


def test_fork_server_exits_when_its_owner_exits_without_closing_it(rootfs):
    code = f"{OWNER}\nimport os\nos._exit(0)\n".replace("await container.wait()", "container.kill()")
    proc = subprocess.run([sys.executable, "-c", code, str(rootfs), "none"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    server, _init = (int(pid) for pid in proc.stdout.split())
    assert wait_gone(server)


async def test_killing_the_fork_server_kills_its_containers_and_says_the_status_is_lost(rootfs):
    # PID 1 is the fork server's child, and dies with it (its parent death signal): a container never outlives
    # both. The runtime says the command's status is lost, in one line, never a made-up code.
    from aiocontain.errors import AiocontainError

    before = leftovers()
    server = ForkServer.start()
    try:
        with pytest.raises(AiocontainError, match="the fork server was killed, and the container with it"):
            async with Container(spec(rootfs, "sleep", "60"), fork_server=server) as c:
                assert c.pid is not None
                os.kill(server.pid, signal.SIGKILL)
                assert wait_gone(server.pid)
                assert wait_gone(c.pid)
                await c.wait()
    finally:
        server.close()
    assert leftovers() == before


async def test_a_dead_default_fork_server_is_replaced_and_reaped_after_its_last_container(rootfs):
    from aiocontain import forkserver

    fds = open_fds()
    old = forkserver.default()
    with pytest.raises(aiocontain.AiocontainError, match="the fork server was killed"):
        async with Container(spec(rootfs, "/bin/sh", "-c", "read line", stdin=subprocess.PIPE)) as first:
            os.kill(old.pid, signal.SIGKILL)
            assert wait_gone(old.pid)
            async with Container(spec(rootfs, "true")) as second:  # a new default serves the next container
                assert (await second.wait()).ok
            new = forkserver.current()
            assert new is not None and new.pid != old.pid
            await first.wait()  # killed with the old server
    # the dead one was reaped (no zombie) and its fds closed once its last container was: the new one
    # holds as many (its request socket and pidfd) as the old one did before
    assert not Path(f"/proc/{old.pid}").exists()
    assert len(open_fds()) == len(fds)


async def test_a_fork_server_whose_namespace_cannot_be_mapped_refuses_every_container(rootfs, tmp_path, monkeypatch):
    from aiocontain import subids
    from aiocontain.errors import AiocontainError

    if not subids.ranges(os.getuid(), Path("/etc/subuid")):
        pytest.skip("without subordinate ids the helpers are not used")
    fake = tmp_path / "newuidmap"
    fake.write_text("#!/bin/sh\necho 'newuidmap: refused' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    before, fds = leftovers(), open_fds()
    server = ForkServer.start()
    try:
        for _ in range(2):  # the same error again: the server stays unmapped, and says so
            with pytest.raises(AiocontainError, match="newuidmap failed: newuidmap: refused"):
                async with Container(spec(rootfs, "true"), fork_server=server):
                    pass
        assert not server.running  # so the process-wide default would be replaced
    finally:
        server.close()
    assert leftovers() == before
    assert open_fds() == fds


_IN_FLIGHT = r"""
import array, os, resource, socket, sys
from aiocontain import messages
from aiocontain.child.forkserver import _reply
from aiocontain.messages import Forked

resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
sink, held = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
null = [os.open("/dev/null", os.O_RDONLY) for _ in range(8)]
for _ in range(5):  # 40 fds in flight, more than the limit of 32: the kernel refuses more (ETOOMANYREFS)
    sink.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", null))])
if sys.argv[1] == "drained":  # the control: the 40 fds received (and closed) first
    for _ in range(5):
        messages.close_fds(messages.recv_raw(held)[1])
ours, runtime = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
_reply(ours, Forked(1), [null[0]])
message, fds = messages.recv(runtime)
print(message.kind, len(fds), getattr(message, "errno", 0), getattr(message, "step", ""))
"""


@pytest.mark.parametrize(
    ("state", "expected"), [("full", f"failed 0 {errno.ETOOMANYREFS} fork"), ("drained", "forked 1 0")]
)
def test_a_pidfd_that_cannot_be_sent_is_a_failed_fork_not_silence(state, expected):
    # The fork server hands each PID 1's pidfd back in Forked. When the user has more fds in flight
    # between its processes than the limit (a burst of containers), the kernel refuses to send it: the runtime
    # then gets Failed(fork, ETOOMANYREFS) at once, rather than nothing until its 10 s timeout.
    done = subprocess.run([sys.executable, "-c", _IN_FLIGHT, state], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


async def test_the_runtime_says_a_failed_fork_for_fds_in_one_line_at_once():
    from aiocontain.errors import AiocontainError
    from aiocontain.forkserver.process import ForkedProcess
    from aiocontain.forkserver.stdio import Stdio
    from aiocontain.messages import STEP_FORK, Failed

    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with server:
        messages.send(server, Failed(STEP_FORK, os.strerror(errno.ETOOMANYREFS), errno.ETOOMANYREFS))
        with anyio.fail_after(5), pytest.raises(AiocontainError) as raised:  # not the fork timeout's 10 s
            await ForkedProcess.wait_forked(ours, Stdio(), lambda: None)
    assert raised.value.line().startswith("too many open files (this process's limit is "), raised.value.line()


@pytest.mark.parametrize(
    ("failure", "line"),
    [
        (
            messages.Failed(messages.STEP_NAMESPACES, "clone3: No space left on device", errno.ENOSPC),
            "cannot create the container's namespaces: clone3: No space left on device",
        ),
        (
            messages.Failed(messages.STEP_IDMAP, "Operation not permitted", errno.EPERM),
            "cannot map the container's user namespace: Operation not permitted",
        ),
    ],
)
async def test_a_clone_or_maps_the_kernel_refused_are_one_line(failure, line):
    # Instead of Forked: a refused clone is the host's user namespaces (a limit reached: ENOSPC), refused maps
    # the container's set-up.
    from aiocontain.errors import AiocontainError
    from aiocontain.forkserver.process import ForkedProcess
    from aiocontain.forkserver.stdio import Stdio

    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with server:
        messages.send(server, failure)
        with anyio.fail_after(5), pytest.raises(AiocontainError) as raised:
            await ForkedProcess.wait_forked(ours, Stdio(), lambda: None)
    assert raised.value.message == line


_CLONE = r"""
import os, signal, socket
from aiocontain import syscalls
flags = syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWPID | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWNS
r, w = os.pipe()
pid, pidfd = syscalls.clone_into_namespaces(flags)
if pid == 0:
    socket.sethostname("cloned")  # root of its new user namespace, which owns its UTS namespace
    os.write(w, f"{os.getpid()} {socket.gethostname()}".encode())
    os._exit(7)
os.close(w)
print(os.read(r, 100).decode(), socket.gethostname() != "cloned")
print(f"Pid:\t{pid}" in open(f"/proc/self/fdinfo/{pidfd}").read())
os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
try:
    syscalls.clone_into_namespaces(0x80000000 | 0x00010000)  # CLONE_IO | CLONE_THREAD without CLONE_VM: refused
except OSError as exc:
    print(exc.errno, exc.strerror)
"""


def test_clone_into_namespaces_makes_pid_1_of_its_own_namespaces_with_a_pidfd():
    done = subprocess.run([sys.executable, "-c", _CLONE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second, third = done.stdout.splitlines()
    assert first == "1 cloned True"  # PID 1 of its namespace; its hostname is its own
    assert second == "True"  # the pidfd names the child
    assert third == f"{errno.EINVAL} clone3: {os.strerror(errno.EINVAL)}"


async def test_a_release_left_unread_at_the_reap_does_not_lose_the_exit_status():
    """The fork server reaps a PID 1 that exited before it read the runtime's Release (a short command under
    load: both in one poll round), and closes the channel with it unread. The kernel then reports
    ECONNRESET once, before the Reaped still queued: that is not the end of the channel."""
    from aiocontain.forkserver import process

    ours, servers = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        ours.setblocking(False)
        messages.send(ours, messages.Release(cgroup="/sys/fs/cgroup/leaf"))
        messages.send(servers, messages.Reaped(status=3 << 8))
        servers.close()  # the Release unread
        message, fds = await process._receive(ours)
        assert (message, fds) == (messages.Reaped(status=3 << 8), [])
        assert await process._receive(ours) == (None, [])  # then the end of the stream
