"""exec into a running container: ``Container.exec`` (the embedding), the implementation every front end shares.

Each isolation probe runs in an exec'd process and tries to reach outside: the PID namespace (it sees the
container's pids, not the host's), the fds (none of the runtime's), the capabilities (PID 1's, no more), the
session (its own: kill(0) reaches nothing of the caller's), and the root (the container's). The same probes run
under ``podman exec`` where podman is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.errors import AiocontainError, CommandNotExecutable, CommandNotFound
from tests.conftest import PODMAN_FLAGS, leftovers, open_fds, user_processes

pytestmark = [pytest.mark.anyio, pytest.mark.container]

SLEEPER = ["/bin/sh", "-c", "exec sleep 1000"]
CAPS = "grep -e CapPrm -e CapEff -e CapBnd -e Seccomp: /proc/self/status"
KILL_ZERO = 'trap "" USR1; kill -USR1 0; echo sent=$?'
PID_PROBE = "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep '^[0-9]'"
# The fds of a child of the exec'd shell (busybox runs ls inside the shell itself, so not the shell's own).
# The shell's own fds, listed by a child while the shell waits for it. (A background job's were racy: the
# shell closes and reopens its stdin on /dev/null after the fork, and ls could find fd 0 gone.)
FDS_PROBE = "ls /proc/$$/fd; true"  # "; true": not the last command, which the shell would exec in its place
SESSION_PROBE = "cut -d' ' -f6 /proc/self/stat; echo $$"  # the session id, then the pid: equal when it leads one


def check_pid_view(text: str, pid1: str) -> int:
    """PID_PROBE's output: PID 1 is the container's command, and the processes in view are a handful of the
    container's (PID 1, the probe's shell, its ls and grep while they run), never the host's hundreds. Returns
    the probe's pid inside."""
    inside, command, *pids = text.splitlines()
    seen = {int(pid) for pid in pids}
    assert command.strip() == pid1 and {1, int(inside)} <= seen and len(seen) <= 4, text
    return int(inside)


def spec(rootfs: Path, **options: object) -> ContainerSpec:
    options.setdefault("network", NetworkMode.NONE)
    return ContainerSpec(list(SLEEPER), rootfs=rootfs, **options)  # type: ignore[arg-type]


async def run_in(container: Container, argv: list[str], **options: object) -> tuple[int, str]:
    """Exec argv, read its stdout to the end; (exit code, output)."""
    process = await container.exec(argv, stdout=subprocess.PIPE, **options)  # type: ignore[arg-type]
    async with process:
        assert process.stdout is not None
        data = b"".join([chunk async for chunk in process.stdout])
        return await process.wait(), data.decode()


async def test_exit_code_env_cwd_and_user(rootfs):
    before = leftovers()
    async with Container(spec(rootfs, env={"FROM_RUN": "yes"}, workdir="/tmp", hostname="box")) as container:
        assert await run_in(container, ["/bin/sh", "-c", "exit 7"]) == (7, "")
        script = 'echo "$FROM_RUN $MINE $(pwd) $(id -u):$(id -g) $HOSTNAME $HOME $(hostname)"'
        code, text = await run_in(container, ["/bin/sh", "-c", script], env={"MINE": "1"})
        assert (code, text.split()) == (0, ["yes", "1", "/tmp", "0:0", "box", "/root", "box"])
        who = ["/bin/sh", "-c", "pwd; id -u; id -g; echo $HOME"]
        code, text = await run_in(container, who, cwd="/etc", user="nobody")
        assert (code, text.split()) == (0, ["/etc", "65534", "65534", "/nonexistent"])
        code, text = await run_in(container, ["/bin/sh", "-c", "kill -9 $$"])
        assert code == 128 + signal.SIGKILL
        async with await container.exec(["tr", "a-z", "A-Z"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as tr:
            assert tr.stdin is not None and tr.stdout is not None
            await tr.stdin.send(b"piped in\n")
            await tr.stdin.aclose()
            assert b"".join([chunk async for chunk in tr.stdout]) == b"PIPED IN\n"
            assert await tr.wait() == 0
    assert leftovers() == before


async def test_run_user_is_the_default_and_command_errors_are_runs(rootfs):
    async with Container(spec(rootfs, user="nobody")) as container:
        assert (await run_in(container, ["id", "-u"]))[1].split() == ["65534"]
        assert (await run_in(container, ["id", "-u"], user="0"))[1].split() == ["0"]
        with pytest.raises(CommandNotFound) as found:
            await container.exec(["no-such-command"])
        assert found.value.exit_code == 127
        with pytest.raises(CommandNotExecutable):
            await container.exec(["/etc"])
        with pytest.raises(CommandNotExecutable, match="/no/such/dir"):
            await container.exec(["true"], cwd="/no/such/dir")
        with pytest.raises(AiocontainError, match="no-such-user"):
            await container.exec(["true"], user="no-such-user")


async def test_pid_namespace_root_and_fds_are_the_containers(rootfs):
    host_fd = os.open("/dev/null", os.O_RDONLY)  # inheritable on purpose: the runtime's own fds must not leak
    os.set_inheritable(host_fd, True)
    try:
        async with Container(spec(rootfs)) as container:
            process = await container.exec(["/bin/sh", "-c", PID_PROBE], stdout=subprocess.PIPE)
            async with process:
                assert process.stdout is not None
                text = b"".join([chunk async for chunk in process.stdout]).decode()
                assert await process.wait() == 0
            assert process.pid != check_pid_view(text, "sleep 1000")  # a container pid; the host's is other
            code, fds = await run_in(container, ["/bin/sh", "-c", FDS_PROBE])
            assert (code, fds.split()) == (0, ["0", "1", "2"])
            code, root = await run_in(container, ["/bin/sh", "-c", "ls /; cat /proc/self/mountinfo | head -1"])
            assert "probes" not in root and root.split()[:3] == sorted(os.listdir(rootfs))[:3]
    finally:
        os.close(host_fd)


@pytest.mark.parametrize("options", [{}, {"cap_drop": ["ALL"]}, {"cap_add": ["NET_ADMIN"], "cap_drop": ["CHOWN"]}])
async def test_capabilities_and_seccomp_are_pid_1s(rootfs, options):
    async with Container(spec(rootfs, **options)) as container:
        code, mine = await run_in(container, ["/bin/sh", "-c", CAPS])
        assert code == 0
        _, pid1 = await run_in(container, ["/bin/sh", "-c", CAPS.replace("self", "1")])
        assert mine == pid1 and "Seccomp:\t2" in mine
        assert "CapBnd:\t000001ffffffffff" not in mine  # what joining the user namespace alone would give
        # Another user than root: nothing effective or permitted (podman's rule), the same bounding set.
        _, nobody = await run_in(container, ["/bin/sh", "-c", CAPS], user="nobody")
        bounding = [line for line in pid1.splitlines() if line.startswith("CapBnd")]
        assert "CapPrm:\t0000000000000000" in nobody and "CapEff:\t0000000000000000" in nobody
        assert [line for line in nobody.splitlines() if line.startswith("CapBnd")] == bounding


async def test_own_session_kill_zero_reaches_nothing_of_the_callers(rootfs):
    """The exec'd process leads a session and process group of its own: kill(0) from it reaches only the
    container. Were it in ours, SIGUSR1 would end this very test process."""
    async with Container(spec(rootfs)) as container:
        assert await run_in(container, ["/bin/sh", "-c", KILL_ZERO]) == (0, "sent=0\n")
        code, text = await run_in(container, ["/bin/sh", "-c", SESSION_PROBE])
        sid, pid = text.split()
        assert (code, sid) == (0, pid)


async def test_tty_is_a_terminal_of_the_containers_own(rootfs):
    async with Container(spec(rootfs)) as container:
        script = "tty; echo $(cut -d' ' -f6 /proc/self/stat) $$"
        async with await container.exec(["/bin/sh", "-c", script], tty=True) as process:
            assert process.tty is not None
            seen = b""
            with anyio.fail_after(30):
                try:
                    while True:
                        seen += await process.tty.receive()
                except anyio.EndOfStream:
                    pass
            assert await process.wait() == 0
        terminal, session = seen.decode().split("\r\n")[:2]
        sid, pid = session.split()
        assert terminal.startswith("/dev/pts/") and sid == pid, seen  # its own terminal, in its own session


async def test_a_container_that_is_gone_is_one_clear_error(rootfs):
    async with Container(spec(rootfs)) as container:
        container.kill()  # not waited for: the exec finds PID 1 gone (or a zombie) itself
        with pytest.raises(AiocontainError, match="not running"):
            await container.exec(["true"])
        await container.wait()
        with pytest.raises(AiocontainError, match="not running"):
            await container.exec(["true"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_an_exec_helper_killed_by_a_host_signal_is_one_line_and_no_traceback(rootfs, tmp_path, signum):
    """The exec helper (outside the container, the command's parent) killed from the host, by SIGINT as by
    SIGTERM: the default action, with no KeyboardInterrupt traceback on the command's stderr; the wait says so in
    one line, and the command, killed with it, leaves nothing."""
    err = tmp_path / "err"
    before = leftovers()
    async with Container(spec(rootfs)) as container:
        with err.open("wb") as stderr:
            process = await container.exec(["sleep", "1000"], stderr=stderr)
        async with process:
            stat = Path(f"/proc/{process.pid}/stat").read_text()
            helper = int(stat[stat.rindex(")") + 2 :].split()[1])  # the command's parent, on the host
            os.kill(helper, signum)
            with pytest.raises(AiocontainError) as caught:
                await process.wait()
        assert caught.value.message == (
            f"the exec helper (pid {helper}) was killed: the command was killed with it and its exit status is lost"
        )
        assert err.read_bytes() == b""
        container.kill()
        await container.wait()
    assert leftovers() == before


async def test_cancelled_wait_kills_the_exec_and_leaves_nothing(rootfs):
    before = leftovers()
    async with Container(spec(rootfs)) as container:
        with anyio.CancelScope() as scope:
            process = await container.exec(["sleep", "1000"])
            assert process.pid in user_processes()
            scope.cancel()
            await process.wait()
        assert process.pid not in user_processes() and process.returncode == 128 + signal.SIGKILL
        assert (await run_in(container, ["echo", "still"])) == (0, "still\n")  # the container itself runs on
        container.kill()
        await container.wait()
    assert leftovers() == before


async def test_an_exec_closed_holds_no_fd_of_ours(rootfs):
    # Its pidfds (the command's and the joining helper's), control socket and pipes all go with its close.
    async with Container(spec(rootfs)) as container:
        assert await run_in(container, ["true"]) == (0, "")  # the first exec's one-time imports and sockets
        fds = open_fds()
        assert await run_in(container, ["echo", "x"]) == (0, "x\n")
        process = await container.exec(["sleep", "1000"])
        async with process:
            process.kill()
            assert await process.wait() == 128 + signal.SIGKILL
        assert open_fds() == fds
        container.kill()
        await container.wait()


async def test_container_end_kills_its_execs(rootfs):
    before = leftovers()
    async with Container(spec(rootfs)) as container:
        process = await container.exec(["sleep", "1000"])
        left_running = await container.exec(["sleep", "1000"])
        container.kill()
        await container.wait()
        assert await process.wait() == 128 + signal.SIGKILL  # the PID namespace went with its init
    assert left_running.returncode == 128 + signal.SIGKILL  # reaped by the container's teardown, never waited for
    assert leftovers() == before


# --- the same probes under podman exec


@contextlib.contextmanager
def podman_running(rootfs: Path) -> Iterator[Callable[..., list[str]]]:
    """A running rootless podman container (runc) that sleeps; yields argv(exec's options, *command): the argv
    of ``podman exec`` into it. Removed, with podman's state, on the way out."""
    base = Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))
    (base / "home").mkdir()
    (base / "run").mkdir(mode=0o700)
    env = {"HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "run")}
    podman = ["env", *(f"{key}={value}" for key, value in env.items()), "podman", *PODMAN_FLAGS]
    name = "exec-" + uuid.uuid4().hex[:8]
    try:
        started = subprocess.run(
            [*podman, "run", "-d", "--network", "none", "--name", name, "--rootfs", str(rootfs), *SLEEPER],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr
        yield lambda options, *command: [*podman, "exec", *options, name, *command]
    finally:
        subprocess.run([*podman, "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def podman_exec(podman, rootfs) -> Iterator[Callable[..., tuple[int, str]]]:
    """exec a command in a running rootless podman container: (exit code, stdout)."""
    with podman_running(rootfs) as exec_argv:

        def run(*argv: str) -> tuple[int, str]:
            done = subprocess.run(exec_argv([], *argv), capture_output=True, text=True, timeout=60)
            return done.returncode, done.stdout

        yield run


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_the_same_probes_under_podman_exec(podman_exec, anyio_backend):
    _, text = podman_exec("/bin/sh", "-c", PID_PROBE)  # first: the probes after it leave zombies in view
    check_pid_view(text, "sleep 1000")
    assert podman_exec("/bin/sh", "-c", KILL_ZERO) == (0, "sent=0\n")
    code, text = podman_exec("/bin/sh", "-c", SESSION_PROBE)
    sid, pid = text.split()
    assert (code, sid) == (0, pid)
    code, fds = podman_exec("/bin/sh", "-c", FDS_PROBE)
    assert (code, fds.split()) == (0, ["0", "1", "2"])
    code, mine = podman_exec("/bin/sh", "-c", CAPS)
    assert mine == podman_exec("/bin/sh", "-c", CAPS.replace("self", "1"))[1] and "Seccomp:\t2" in mine


# --- the cgroup to join, as the host's mount table shows it


HYBRID = [
    "35 29 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755",
    "41 35 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw",
    "42 35 0:39 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory",
]
PURE = ["30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw"]
# Inside a cgroup namespace (an OCI engine's): the mount shows the subtree below the namespace's root.
NAMESPACED = ["50 40 0:26 /user.slice/engine /sys/fs/cgroup rw - cgroup2 cgroup2 rw"]


@pytest.mark.parametrize(
    "group, mountinfo, expected",
    [
        ("/user.slice/box", HYBRID, "/sys/fs/cgroup/unified/user.slice/box/cgroup.procs"),
        ("/user.slice/box", PURE, "/sys/fs/cgroup/user.slice/box/cgroup.procs"),
        ("/user.slice/engine/box", NAMESPACED, "/sys/fs/cgroup/box/cgroup.procs"),
        ("/elsewhere/box", NAMESPACED, None),  # not below the mount's root: not reachable from here
        ("/user.slice/engine2", NAMESPACED, None),  # a sibling whose name starts alike is not below it
    ],
)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_cgroup_procs_path(group, mountinfo, expected, anyio_backend):
    from aiocontain.child.join import procs_path

    assert procs_path(group, mountinfo) == expected
