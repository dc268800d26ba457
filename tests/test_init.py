"""``--init``: PID 1 is the host's static catatonit, bound read-only, with the container's environment only;
and slirp4netns runs in its own sandbox. Each probe runs under podman too, which does the same."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aiocontain import Container, ContainerSpec, NetworkMode, init_binary
from aiocontain.errors import AiocontainError
from tests.conftest import cli_argv, leftovers
from tests.test_terminal import Terminal

pytestmark = pytest.mark.container

# What a container's environment may hold by default, in aiocontain and in podman: nothing of the caller's.
CONTAINER_VARIABLES = {"PATH", "HOME", "HOSTNAME", "TERM", "container", "FOO"}
MARKER = "AIOCONTAIN_HOST_MARKER"


def _environ_names(stdout: str) -> set[str]:
    return {line.split("=", 1)[0] for line in stdout.splitlines() if line}


def test_pid_1_has_the_container_environment_only(cli, podman):
    probe = ("--net", "none", "--init", "-e", "FOO=bar", "--", "/bin/sh", "-c", "tr '\\0' '\\n' </proc/1/environ")
    host = {**os.environ, MARKER: "from-the-host"}
    ours = cli(*probe, env=host)
    assert ours.code == 0, ours.stderr
    assert "FOO=bar" in ours.stdout.splitlines()  # the probe reads PID 1's environment...
    assert _environ_names(ours.stdout) <= CONTAINER_VARIABLES  # ...and finds none of the caller's
    # Control: passed on with -e, the marker does show there.
    passed = cli(*probe[:3], "-e", MARKER, *probe[3:], env=host)
    assert f"{MARKER}=from-the-host" in passed.stdout.splitlines(), passed.stderr
    theirs = podman("--network", "none", "--init", "-e", "FOO=bar", "/bin/sh", "-c", "tr '\\0' '\\n' </proc/1/environ")
    assert theirs.code == 0, theirs.stderr
    assert "FOO=bar" in theirs.stdout.splitlines() and _environ_names(theirs.stdout) <= CONTAINER_VARIABLES


# PID 1's binary: where it is, its size, its mount's options, and whether it or the file behind /proc/1/exe
# opens for writing; then a control: the same /dev takes a new file.
EXE_PROBE = (
    "exe=$(readlink /proc/1/exe); echo $exe; wc -c <$exe; grep \" $exe \" /proc/self/mountinfo | cut -d' ' -f6; "
    "(: >>$exe) 2>/dev/null && echo writable || echo refused; "
    "(: >>/proc/1/exe) 2>/dev/null && echo writable || echo refused; "
    "touch /dev/probe-file && echo dev-writable"
)


def test_pid_1_is_the_read_only_static_init(cli, podman, rootfs):
    catatonit = os.path.realpath(init_binary.find())
    size = str(os.stat(catatonit).st_size)
    ours = cli("--net", "none", "--init", "--", "/bin/sh", "-c", EXE_PROBE)
    assert ours.code == 0, ours.stderr
    path, exe_size, options, *opened = ours.stdout.split()
    assert (path, exe_size) == ("/dev/init", size)  # catatonit, not the host's Python
    assert options.split(",")[0] == "ro"
    assert opened == ["refused", "refused", "dev-writable"]
    assert not (rootfs / "dev" / "init").exists()  # in the container's own /dev tmpfs, not the rootfs on disk
    theirs = podman("--network", "none", "--init", "/bin/sh", "-c", EXE_PROBE)
    assert theirs.code == 0, theirs.stderr
    path, exe_size, options, *opened = theirs.stdout.split()
    assert (path, exe_size, options.split(",")[0]) == ("/run/podman-init", size, "ro")
    assert opened == ["refused", "refused", "dev-writable"]


def test_pid_1_command_line_is_the_init_and_the_command(cli, podman):
    probe = "tr '\\0' '\\n' </proc/1/cmdline"
    ours = cli("--net", "none", "--init", "--", "/bin/sh", "-c", probe)
    assert ours.code == 0, ours.stderr
    assert ours.stdout.splitlines() == ["/dev/init", "--", "/bin/sh", "-c", probe]
    theirs = podman("--network", "none", "--init", "/bin/sh", "-c", probe)
    assert theirs.stdout.splitlines() == ["/run/podman-init", "--", "/bin/sh", "-c", probe]


def test_without_init_pid_1_is_the_command(cli):
    result = cli("--net", "none", "--", "/bin/sh", "-c", "tr '\\0' ' ' </proc/1/cmdline; echo")
    assert result.stdout.split()[:2] == ["/bin/sh", "-c"]


@pytest.mark.parametrize(
    "command, code, line",
    [
        ("no-such-command", 127, "aiocontain: no-such-command: command not found in the container"),
        ("/etc/passwd", 126, "aiocontain: cannot execute /etc/passwd: Permission denied"),
        ("/etc", 126, "aiocontain: cannot execute /etc: Permission denied"),
    ],
)
def test_a_command_that_cannot_run_under_init_fails_in_one_line(cli, command, code, line):
    result = cli("--net", "none", "--init", "--", command)
    assert result.code == code
    assert result.stderr.splitlines()[0].startswith(line), result.stderr
    assert len(result.stderr.splitlines()) <= 2  # the line, and its fix


@pytest.mark.parametrize(
    "init_path, says",
    [
        ("/nonexistent/catatonit", "--init-path /nonexistent/catatonit cannot be used: No such file or directory"),
        ("/etc/passwd", "--init-path /etc/passwd is not an executable file"),
        ("/usr/bin/python3", "is dynamically linked: the container cannot load its libraries"),
    ],
)
def test_an_unusable_init_is_one_line_and_leaves_nothing(cli, init_path, says):
    before = leftovers()
    result = cli("--net", "none", "--init", "--init-path", init_path, "--", "true")
    assert result.code == 125
    (line,) = result.stderr.splitlines()
    assert line.startswith("aiocontain: ") and says in line and "catatonit" in line, line
    assert leftovers() == before


def test_no_catatonit_is_one_line_with_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(init_binary, "_PODMAN_PATH", str(tmp_path / "catatonit"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AiocontainError) as caught:
        init_binary.find()
    assert caught.value.line() == (
        "--init needs catatonit, a small static init, and it is not installed (fix: sudo apt-get install catatonit)"
    )


def test_tini_is_another_init_with_the_same_syntax(cli):
    result = cli("--net", "none", "--init", "--init-path", "/usr/bin/tini-static", "--", "/bin/sh", "-c", "echo $$")
    if "cannot be used" in result.stderr:
        pytest.skip("tini-static is not installed")
    assert (result.code, result.stdout) == (0, "2\n"), result.stderr


def _command_pid(init_pid: int) -> int:
    """The host pid of the container's PID 2, the init's only child."""
    (child,) = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
    return int(child)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _until_stopped(pid: int) -> None:
    # Only the stopped process's parent (the init) can wait for a stop; from here, /proc is all there is.
    with anyio.fail_after(10):
        while _state(pid) != "T":
            await anyio.sleep(0.01)


def _spec(rootfs: Path, script: str, **options: object) -> ContainerSpec:
    return ContainerSpec(  # type: ignore[arg-type]
        ["/bin/sh", "-c", script], rootfs=rootfs, network=NetworkMode.NONE, init=True, stdout=subprocess.PIPE, **options
    )


WINCH_PROBE = "trap 'echo winch; exit 0' WINCH; echo ready; sleep 60 & wait"


@pytest.mark.anyio
async def test_a_stop_sent_to_the_container_does_not_stop_the_command(rootfs):
    # catatonit drops SIGTSTP (and SIGTTIN, SIGTTOU) sent to PID 1 and passes SIGWINCH on: the command answers.
    async with Container(_spec(rootfs, WINCH_PROBE)) as container:
        assert container.stdout is not None
        assert await container.stdout.receive() == b"ready\n"
        container.send_signal(signal.SIGTSTP)
        container.send_signal(signal.SIGWINCH)  # the init reads pending signals in number order: TSTP first
        status = await container.wait()
        output = await container.stdout.receive()
    assert (status.code, output) == (0, b"winch\n")


@pytest.mark.anyio
async def test_control_tini_passes_the_stop_on_and_leaves_the_command_stopped(rootfs):
    async with Container(_spec(rootfs, WINCH_PROBE, init_path=Path("/usr/bin/tini-static"))) as container:
        assert container.stdout is not None and container.pid is not None
        assert await container.stdout.receive() == b"ready\n"
        container.send_signal(signal.SIGTSTP)
        await _until_stopped(_command_pid(container.pid))
        container.send_signal(signal.SIGCONT)  # what resumes it
        container.send_signal(signal.SIGWINCH)
        status = await container.wait()
        output = await container.stdout.receive()
    assert (status.code, output) == (0, b"winch\n")


@pytest.mark.anyio
async def test_a_command_that_stopped_itself_continues_on_sigcont(rootfs):
    async with Container(_spec(rootfs, "echo ready; kill -STOP $$; echo resumed")) as container:
        assert container.stdout is not None and container.pid is not None
        assert await container.stdout.receive() == b"ready\n"
        await _until_stopped(_command_pid(container.pid))
        container.send_signal(signal.SIGCONT)  # the init passes it on
        status = await container.wait()
        output = await container.stdout.receive()
    assert (status.code, output) == (0, b"resumed\n")


def test_a_stopped_command_does_not_hang_the_teardown(rootfs):
    # It ignores SIGTERM and is stopped: the stop timeout's SIGKILL of PID 1 still ends the container.
    argv = cli_argv(rootfs, "--net", "none", "--init", "--stop-timeout", "1", "--")
    argv += ["/bin/sh", "-c", "trap '' TERM; echo ready; kill -STOP $$; echo resumed"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 137
    assert proc.stdout.read() == ""  # it never ran on


def _slirp4netns_of(pid: int) -> int:
    """The slirp4netns process that the process pid started (or a process it started: podman may re-exec)."""
    (slirp,) = [p for p in _descendants(pid) if _exe_name(p) == "slirp4netns"]
    return slirp


def _exe_name(pid: int) -> str | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return None  # gone already: podman's short-lived helpers come and go


def _descendants(pid: int) -> list[int]:
    """Every process under pid, depth first, from all of its threads' children (those still there)."""
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += [int(child), *_descendants(int(child))]
    return found


def _sandbox_facts(pid: int) -> tuple[str, str, bool]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    own_mounts = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    return status["Seccomp"].strip(), status["NoNewPrivs"].strip(), own_mounts


def test_slirp4netns_runs_in_its_sandbox(rootfs, cli, loopback_server):
    proc = subprocess.Popen(
        cli_argv(rootfs, "--", "/bin/sh", "-c", "echo ready; read line"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        facts = _sandbox_facts(_slirp4netns_of(proc.pid))
        assert facts == ("2", "1", True)  # a seccomp filter, no_new_privs, and a mount namespace of its own
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    # and networking still works through it: the host's loopback when allowed (port forwards: the plugin's tests)
    port, token = loopback_server
    fetched = cli("--allow-host-loopback", "--", "/bin/sh", "-c", f"nc 10.0.2.2 {port} </dev/null")
    assert (fetched.code, fetched.stdout.strip()) == (0, token.decode()), fetched.stderr


def test_podmans_slirp4netns_has_the_same_sandbox(podman, tmp_path):
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    results = []

    def run() -> None:
        try:
            results.append(podman("--network=slirp4netns", f"--volume={tmp_path}:/x", "/bin/sh", "-c", "cat /x/fifo"))
        finally:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # a reader, should podman fail before its own

    thread = threading.Thread(target=run)
    thread.start()
    writer = os.open(fifo, os.O_WRONLY)  # returns once the container has it open (or podman failed)
    try:
        assert not results, results[0].stderr
        (podman_process,) = Path(f"/proc/{os.getpid()}/task/{thread.native_id}/children").read_text().split()
        assert _sandbox_facts(_slirp4netns_of(int(podman_process))) == ("2", "1", True)
    finally:
        os.close(writer)
        thread.join()
    assert results[0].code == 0, results[0].stderr


def _descendant(pid: int, argv0: bytes) -> int:
    """The first process under pid (depth first) whose argv[0] is argv0."""
    for child in _descendants(pid):
        if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == argv0:
            return child
    raise LookupError(argv0)


# Output tokens are computed ($((...))), so that the command line echoed by the terminal never matches them.
CTRL_Z_PROBE = "echo $((1+1))ready; read line; echo $((6*7))$line"


def _run_in_terminal(rootfs: Path, *init: str) -> Terminal:
    argv = [sys.executable, "-m", "aiocontain", "run", "--net", "none", "--rootfs", str(rootfs), *init]
    return Terminal([*argv, "--", "/bin/sh", "-c", CTRL_Z_PROBE])


def test_ctrl_z_from_a_terminal_does_not_stop_the_command_under_init(rootfs):
    # catatonit starts the command with the terminal's stop signals blocked, as under podman: a ^Z stops nothing
    # that nothing inside could continue, and the terminal stays usable.
    term = _run_in_terminal(rootfs, "--init")
    try:
        term.expect(b"2ready")
        term.send(b"\x1a")
        term.send(b"go\n")
        term.expect(b"42go")
        assert term.proc.wait(timeout=10) == 0
    finally:
        term.close()


@pytest.mark.anyio
async def test_control_ctrl_z_stops_the_command_under_tini(rootfs):
    term = _run_in_terminal(rootfs, "--init", "--init-path", "/usr/bin/tini-static")
    try:
        term.expect(b"2ready")
        term.send(b"\x1a")
        await _until_stopped(_descendant(term.proc.pid, b"/bin/sh"))  # and nothing in the container continues it
    finally:
        term.close()


def test_the_command_starts_with_the_stop_signals_blocked_as_under_podman(cli, podman):
    probe = "grep SigBlk /proc/self/status"
    ours = cli("--net", "none", "--init", "--", "/bin/sh", "-c", probe)
    theirs = podman("--network", "none", "--init", "/bin/sh", "-c", probe)
    assert ours.stdout == theirs.stdout == "SigBlk:\t0000000000380000\n", (ours, theirs)  # SIGTSTP, SIGTTIN, SIGTTOU
