"""What a network helper holds: its own fds, nothing of the runtime's or of the caller's.

slirp4netns reads the container's traffic: a flaw in its network stack is the container's way onto the host,
where it runs as the user, and its own sandbox leaves it every fd it holds. So it must hold only its own: not
another container's sockets and pipes (the runtime receives them from the fork server and from PID 1), nor
an embedding program's inheritable fds, nor those a shell leaked to the command. Its 0-4 are its stdio, its
exit pipe and its ready pipe.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from aiocontain import Container, ContainerSpec, processes
from tests.conftest import cli_argv, leftovers, slirp4netns_pids, started

pytestmark = pytest.mark.container


def held(pid: int, first: int = 0) -> set[str]:
    """The pipes, sockets and pidfds that process pid holds at fd first and above, as /proc names them."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        if int(name) >= first:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except FileNotFoundError:
                continue  # closed meanwhile
            if link.startswith(("pipe:", "socket:", "anon_inode:[pidfd]")):
                found.add(link)
    return found


def inheritable_pipe() -> tuple[int, int]:
    """A pipe whose ends are inheritable, as an embedding program's or a shell's leaked fds are."""
    read, write = os.pipe()
    os.set_inheritable(read, True)
    os.set_inheritable(write, True)
    return read, write


@pytest.mark.anyio
async def test_slirp4netns_holds_nothing_of_the_runtimes_or_of_the_embedding_programs(rootfs: Path) -> None:
    """Two containers at once in one process, which holds an inheritable pipe of its own: neither helper holds
    anything the process holds (the other container's and its own sockets, pipes and pidfds, the pipe)."""
    before = leftovers()
    pipe = inheritable_pipe()
    try:
        first_spec, second_spec = (ContainerSpec(["sleep", "60"], rootfs=rootfs) for _ in range(2))
        async with Container(first_spec) as first, Container(second_spec) as second:
            helpers = slirp4netns_pids()
            assert len(helpers) == 2
            ours = held(os.getpid())
            assert {f"pipe:[{os.fstat(fd).st_ino}]" for fd in pipe} <= ours
            for helper in helpers:
                theirs = held(helper, first=5)
                assert not theirs & ours, (helper, theirs & ours)
                assert "anon_inode:[pidfd]" not in theirs
            for container in (first, second):
                await container.stop(timeout=0)
    finally:
        for fd in pipe:
            os.close(fd)
    assert leftovers() == before


def test_slirp4netns_holds_no_fd_the_shell_leaked_to_the_command(rootfs: Path) -> None:
    """`aiocontain run` given an inheritable pipe (run in the command's own process, as when no run server
    stands in): its slirp4netns does not hold it."""
    before = leftovers()
    read, write = inheritable_pipe()
    try:
        env = {**os.environ, "AIOCONTAIN_RUN_SERVER": "0"}
        argv = cli_argv(rootfs, "/bin/sh", "-c", "echo ready; sleep 60")
        with started(argv, env=env, pass_fds=(read, write)) as proc:
            (helper,) = slirp4netns_pids()
            assert f"pipe:[{os.fstat(read).st_ino}]" not in held(helper)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    finally:
        for fd in (read, write):
            os.close(fd)
    assert leftovers() == before


def test_before_glibc_2_34_what_is_inheritable_is_closed_all_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without posix_spawn's closefrom (glibc 2.34), os.posix_spawn closes the inheritable fds found in /proc."""
    monkeypatch.setattr(processes.syscalls, "spawn_closes_other_fds", lambda: False)
    read, write = inheritable_pipe()
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = processes._spawn(["/bin/sh", "-c", "ls /proc/self/fd >&2"], [(null, 0), (null, 1), (out_w, 2)], 3)
        os.close(out_w)
        status = os.waitpid(pid, 0)[1]
        listed = os.read(out_r, 4096).split()
    finally:
        for fd in (read, write, out_r, null):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(int(fd) for fd in listed) == [0, 1, 2, 3]  # 3: ls's own listing
