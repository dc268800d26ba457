"""``aiocontain exec``: a command in a detached container, found by name, as a real process.

The isolation probes of tests/test_exec.py again, through the command line, plus what only a command line
has: a caller's terminal (TIOCSTI from inside must not reach it, with -t or without), the caller's process
group (kill(0) from inside), and fds the CLI inherited (none reaches the command).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Result, leftovers, started
from tests.test_exec import (
    CAPS,
    FDS_PROBE,
    KILL_ZERO,
    PID_PROBE,
    SESSION_PROBE,
    SLEEPER,
    check_pid_view,
    podman_running,
)
from tests.test_hardening import DENIED, KEY_PROBE, NOT_FOUND, run_with_key
from tests.test_session import KILL_ZERO as CALLER_WITH_SENTINEL
from tests.test_session import LINE_LENGTH, TIOCSTI_PROBE, _run_then_read_a_line

pytestmark = pytest.mark.container


def aiocontain(*args: str, timeout: float = 60, **options: object) -> Result:
    options.setdefault("stdin", subprocess.DEVNULL)
    argv = [sys.executable, "-m", "aiocontain", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **options)  # type: ignore[call-overload]
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def box(cli) -> Iterator[str]:
    """A detached container that sleeps, by name; removed (rm -f) on every way out."""
    name = "exec-" + uuid.uuid4().hex[:8]
    started = cli("-d", "--name", name, "--net", "none", "-e", "FROM_RUN=yes", "/bin/sh", "-c", "exec sleep 1000")
    assert started.code == 0, started.stderr
    try:
        yield name
    finally:
        aiocontain("rm", "-f", name)


def test_exit_codes_env_cwd_and_user(box):
    before = leftovers()
    assert aiocontain("exec", box, "/bin/sh", "-c", "exit 3").code == 3
    result = aiocontain("exec", "-e", "MINE=1", box, "/bin/sh", "-c", 'echo "$FROM_RUN $MINE $(pwd) $(id -u)"')
    assert (result.code, result.stdout.split(), result.stderr) == (0, ["yes", "1", "/", "0"], "")
    result = aiocontain("exec", "-w", "/etc", "-u", "nobody", box, "/bin/sh", "-c", "pwd; id -u; echo $HOME")
    assert (result.code, result.stdout.split()) == (0, ["/etc", "65534", "/nonexistent"])
    assert aiocontain("exec", "-i", box, "cat", input="piped\n", stdin=None).stdout == "piped\n"
    assert aiocontain("exec", box, "cat").stdout == ""  # without -i: /dev/null
    assert leftovers() == before  # each exec's helper and command are gone; the container runs on


@pytest.mark.parametrize(
    "options, command, code, message",
    [
        ([], ["no-such-command"], 127, "command not found"),
        ([], ["/etc"], 126, "cannot execute /etc"),
        (["-w", "/no/such"], ["true"], 126, "/no/such does not exist"),
        (["-u", "no-such-user"], ["true"], 125, "no-such-user"),
        (["-w", "relative"], ["true"], 125, "invalid working directory"),
    ],
)
def test_errors_are_one_line_with_runs_codes(box, options, command, code, message):
    result = aiocontain("exec", *options, box, *command)
    assert result.code == code, result.stderr
    assert result.stderr.startswith("aiocontain: ") and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_unknown_and_exited_containers_are_one_line_125(box):
    result = aiocontain("exec", "no-such-box", "true")
    assert (result.code, result.stderr.strip()) == (
        125,
        "aiocontain: no such container: no-such-box (fix: aiocontain ps -a lists them)",
    )
    assert aiocontain("kill", box).code == 0
    result = aiocontain("exec", box, "true")
    assert result.code == 125 and len(result.stderr.splitlines()) == 1, result.stderr


def test_pid_namespace_fds_caps_and_session(box):
    check_pid_view(aiocontain("exec", box, "/bin/sh", "-c", PID_PROBE).stdout, "sleep 1000")
    # An fd the CLI inherits (as from a careless caller) is not the command's.
    read, write = os.pipe()
    try:
        result = aiocontain("exec", box, "/bin/sh", "-c", FDS_PROBE, pass_fds=(read, write))
    finally:
        os.close(read)
        os.close(write)
    assert result.stdout.split() == ["0", "1", "2"], result
    mine = aiocontain("exec", box, "/bin/sh", "-c", CAPS).stdout
    assert mine == aiocontain("exec", box, "/bin/sh", "-c", CAPS.replace("self", "1")).stdout
    assert "Seccomp:\t2" in mine
    sid, pid = aiocontain("exec", box, "/bin/sh", "-c", SESSION_PROBE).stdout.split()
    assert sid == pid


def test_kill_zero_inside_reaches_nothing_of_the_callers(box):
    # As tests/test_session.py: a host sleep in the caller's process group stands for the caller's shell.
    argv = [sys.executable, "-m", "aiocontain", "exec", box, "/bin/sh", "-c", KILL_ZERO]
    proc = subprocess.run(
        ["/bin/sh", "-c", CALLER_WITH_SENTINEL, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout.split() == ["sent=0", "cli-exited=0", "sentinel-alive"], (proc.stdout, proc.stderr)


@pytest.mark.parametrize("tty", [["-t"], []], ids=["tty", "no-tty"])
def test_tiocsti_never_reaches_the_callers_terminal(cli, probes, tty):
    name = "exec-" + uuid.uuid4().hex[:8]
    started = cli("-d", "--name", name, "--net", "none", "/bin/sh", "-c", "exec sleep 1000", rootfs_dir=probes.rootfs)
    assert started.code == 0, started.stderr
    try:
        probe = probes.build("tiocsti", TIOCSTI_PROBE)
        argv = [sys.executable, "-m", "aiocontain", "exec", "-i", *tty, name, probe]
        output = _run_then_read_a_line(argv).decode(errors="replace")
    finally:
        aiocontain("rm", "-f", name)
    assert "cli-exited=0" in output and "next-line=[SENTINEL]" in output, output
    # With -t, pushed into the command's own terminal, where it stays; without, no terminal reaches the command
    # at all (the caller's is relayed through pipes): ENOTTY.
    assert (f"tiocsti pushed={LINE_LENGTH} errno=0" if tty else "tiocsti pushed=0 errno=25") in output, output


@pytest.mark.parametrize("tty", [["-t"], []], ids=["tty", "no-tty"])
def test_tiocsti_under_podman_exec(podman, probes, tty):
    probe = probes.build("tiocsti", TIOCSTI_PROBE)
    with podman_running(probes.rootfs) as exec_argv:
        output = _run_then_read_a_line(exec_argv(["-i", *tty], probe)).decode(errors="replace")
    assert "cli-exited=0" in output and "next-line=[SENTINEL]" in output, output
    # Without -t podman's stdin is conmon's pipe, no terminal at all (ENOTTY): nothing pushed either way.
    assert (f"tiocsti pushed={LINE_LENGTH} errno=0" if tty else "tiocsti pushed=0 errno=25") in output, output


def test_host_session_key_is_unreadable(cli, probes):
    """The exec'd command joins the container's session keyring, never keeps the caller's: a key of the
    caller's session is out of reach even in a --privileged container (no seccomp filter). The control: the
    same probe on the host, in that session, reads it."""
    probe = probes.build("keyread", KEY_PROBE)
    secret = "s3cret-" + os.urandom(4).hex()
    host = run_with_key([str(probes.rootfs) + probe, "KEY", "aiocontain-probe"], secret)
    assert host.stdout.splitlines()[0] == f"read {secret}", host
    name = "exec-" + uuid.uuid4().hex[:8]
    started = cli("-d", "--name", name, "--net", "none", "--privileged", *SLEEPER, rootfs_dir=probes.rootfs)
    assert started.code == 0, started.stderr
    try:
        inside = run_with_key(
            [sys.executable, "-m", "aiocontain", "exec", name, probe, "KEY", "aiocontain-probe"], secret
        )
    finally:
        aiocontain("rm", "-f", name)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.splitlines() == [DENIED, NOT_FOUND], inside


def test_a_killed_exec_takes_its_command_along(box):
    """SIGKILL of `aiocontain exec` (nothing of it can clean up): its helper sees its control socket end and
    kills the command; the container runs on, and nothing of the exec is left."""
    before = leftovers()
    argv = [sys.executable, "-m", "aiocontain", "exec", box, "/bin/sh", "-c", "echo ready; exec sleep 999"]
    with started(argv) as proc:
        assert "sleep 999" in aiocontain("exec", box, "ps").stdout
        proc.kill()
    assert leftovers() == before  # the helper and the exec'd sleep are gone (waited for through pidfds)
    assert "sleep 999" not in aiocontain("exec", box, "ps").stdout


def test_without_t_the_callers_terminal_is_relayed_never_handed_over(box):
    """Without -t, a terminal on the caller's stdio reaches the command only through pipes: what the command
    leaves running in the container cannot keep the caller's terminal to write to or read from later."""
    import pty
    import select
    import time

    script = "for fd in 0 1 2; do readlink /proc/self/fd/$fd; done; echo done"
    argv = [sys.executable, "-m", "aiocontain", "exec", "-i", box, "/bin/sh", "-c", script]
    pid, master = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"done" not in output:
            readable, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert readable, output
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break  # EIO: the caller exited
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    lines = output.decode(errors="replace").split()
    assert lines[:3] == [line for line in lines[:3] if line.startswith("pipe:")] and len(lines) >= 4, lines
    assert "/dev/pts" not in output.decode(errors="replace"), output


@pytest.mark.parametrize("closed", ["stdin", "all three"])
def test_a_closed_standard_fd_of_the_exec_caller_is_dev_null_inside(box, closed):
    """As for run (tests/test_stdfds.py): a closed one must not be taken by an fd of the CLI's (its socket to
    the exec helper) and handed to the command, but be /dev/null."""
    from tests.test_stdfds import CLOSED, PROBE

    redirection, fds = CLOSED[closed]
    argv = [sys.executable, "-m", "aiocontain", "exec", box, "/bin/sh", "-c", PROBE, "sh", *fds]
    shell = ["/bin/sh", "-c", f'exec "$@" {redirection}', "sh", *argv]
    proc = subprocess.run(shell, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
