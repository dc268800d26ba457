"""What a network helper holds: its own fds, nothing of the runtime's or of the caller's.

slirp4netns reads the container's traffic: a flaw in its network stack is the container's way onto the host,
where it runs as the user, and its own sandbox leaves it every fd it holds. So it must hold only its own: not
another container's sockets and pipes (the runtime receives them from the fork server and from PID 1), nor
an embedding program's inheritable fds, nor those a shell leaked to the command. Its 0-4 are its stdio, its
exit pipe and its ready pipe.
"""

from __future__ import annotations

import os
import subprocess
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


def test_slirp4netns_holds_no_fd_the_shell_leaked_to_the_command(rootfs: Path, podman) -> None:
    """`aiocontain run` given an inheritable pipe (run in the command's own process, as when no run server
    stands in): its slirp4netns does not hold it. podman, given the same pipe, passes it on to its
    slirp4netns (podman 4.3: its own fds stay out, the caller's do not)."""
    before = leftovers()
    read, write = inheritable_pipe()
    pipe = f"pipe:[{os.fstat(read).st_ino}]"
    command = ("/bin/sh", "-c", "echo ready; read line")  # ends on the line the test sends
    try:
        env = {**os.environ, "AIOCONTAIN_RUN_SERVER": "0"}
        argv = cli_argv(rootfs, "-i", *command)
        with started(argv, env=env, pass_fds=(read, write), stdin=subprocess.PIPE) as proc:
            (helper,) = slirp4netns_pids()
            ours = held(helper)
            _out, err = proc.communicate("go\n", timeout=30)
        assert proc.returncode == 0, err
        assert pipe not in ours
        assert leftovers() == before

        theirs_argv = podman.argv("-i", "--network", "slirp4netns", *command)
        with started(theirs_argv, env=podman.env, pass_fds=(read, write), stdin=subprocess.PIPE) as proc:
            (helper,) = slirp4netns_pids()
            theirs = held(helper)
            _out, err = proc.communicate("go\n", timeout=60)
        assert proc.returncode == 0, err
        assert pipe in theirs, "podman's slirp4netns no longer holds its caller's fds: update the README's row"
    finally:
        for fd in (read, write):
            os.close(fd)


def own_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.parametrize("closefrom", [True, False], ids=["glibc", "before-glibc-2.34"])
def test_a_helper_starts_with_only_its_own_fds_in_a_session_of_its_own(
    monkeypatch: pytest.MonkeyPatch, closefrom: bool
) -> None:
    """Either way of starting a helper (glibc's posix_spawn with closefrom; before glibc 2.34, os.posix_spawn
    closing the inheritable fds found in /proc) leaves it its stdio alone, and leads a session of its own."""
    monkeypatch.setattr(processes.syscalls, "spawn_closes_other_fds", lambda: closefrom)
    read, write = inheritable_pipe()
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    # ls's own listing is its fd 3; the session is the 6th field of stat (comm "sh" has no blank)
    script = "ls /proc/self/fd >&2; echo pid $$ session $(cut -d' ' -f6 /proc/$$/stat) >&2"
    try:
        pid = processes._spawn(["/bin/sh", "-c", script], [(null, 0), (null, 1), (out_w, 2)], 3)
        os.close(out_w)
        status = os.waitpid(pid, 0)[1]
        listed = os.read(out_r, 4096).split()
    finally:
        for fd in (read, write, out_r, null):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    fds, session = listed[:-4], listed[-4:]
    assert sorted(int(fd) for fd in fds) == [0, 1, 2, 3]
    assert session == [b"pid", str(pid).encode(), b"session", str(pid).encode()]


def test_a_helper_that_cannot_start_leaves_no_fd() -> None:
    before = own_fds()
    with pytest.raises(FileNotFoundError):
        processes.Helper.spawn(["/nonexistent/helper"], [])
    assert own_fds() == before


@pytest.mark.anyio
async def test_closing_a_helper_twice_closes_nothing_more() -> None:
    """aclose is safe to call again (a stop path and a teardown may both reach it): the second call closes no
    fd, the caller's stdio included."""
    before = own_fds()
    helper = processes.Helper.spawn(["/bin/true"], [])
    await helper.wait()
    await helper.aclose()
    assert own_fds() == before
    await helper.aclose()
    assert own_fds() == before
