"""The container's session: nothing inside shares the caller's session, process group or terminal.

Each probe tries to reach outside from inside: TIOCSTI into the caller's terminal (the host shell would run
what was pushed once the container exits), a signal to process group 0, and the other way round, a signal the
caller's shell sends to its whole process group, which must reach only the CLI. Each is also run under podman.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios

import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.plugins import Plugin, PrestartContext
from tests.conftest import cli_argv, leftovers, started
from tests.test_terminal import Terminal

pytestmark = pytest.mark.container

JSON_LOGS = ("--log-format", "json", "--log-level", "info")

# Pushes a command line into its stdin's terminal input, one character at a time, as an attacker would.
TIOCSTI_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/ioctl.h>
int main(void) {
    const char *line = "echo INJ$((6*7))\n";
    int pushed = 0, error = 0;
    for (const char *p = line; *p; p++) {
        if (ioctl(0, TIOCSTI, p) == 0) pushed++; else error = errno;
    }
    printf("tiocsti pushed=%d errno=%d\n", pushed, error);
    return 0;
}
"""
LINE_LENGTH = len("echo INJ$((6*7))\n")

# After the command (here the CLI) exits, the shell that ran it reads the next line of its terminal; the test
# types SENTINEL only once the CLI has exited, so a line pushed from inside comes first.
READ_NEXT_LINE = '"$@"; echo cli-exited=$?; read -r line; echo "next-line=[$line]"'


def _run_then_read_a_line(argv: list[str]) -> bytes:
    """What the terminal showed: argv's output, its exit code and the next line its caller read."""
    with Terminal(["/bin/sh", "-c", READ_NEXT_LINE, "sh", *argv]) as term:
        term.expect(b"cli-exited=")
        term.expect(b"\n")
        term.send(b"SENTINEL\n")
        assert term.wait() == 0, term.seen
        return term.seen


@pytest.mark.parametrize("tty", ["-t", "-t=false"])
def test_tiocsti_never_reaches_the_callers_terminal(probes, tty):
    probe = probes.build("tiocsti", TIOCSTI_PROBE)
    output = _run_then_read_a_line(cli_argv(probes.rootfs, "--net", "none", tty, probe)).decode(errors="replace")
    assert "cli-exited=0" in output, output
    assert "next-line=[SENTINEL]" in output, output  # no pushed line ran in the caller's shell
    if tty == "-t":
        # Pushed into the container's own terminal: allowed there, and it stays there.
        assert f"tiocsti pushed={LINE_LENGTH} errno=0" in output, output
    else:
        # The caller's terminal is relayed through a pipe: no terminal inside at all (ENOTTY), as under podman.
        assert "tiocsti pushed=0 errno=25" in output, output


# An embedding program that gives a container its own stdio (None: inherited, as subprocess does).
EMBEDDED_RUN = """
import pathlib, sys, anyio
from aiocontain import Container, ContainerSpec, NetworkMode
async def main():
    spec = ContainerSpec([sys.argv[2]], rootfs=pathlib.Path(sys.argv[1]), network=NetworkMode.NONE)
    async with Container(spec) as container:
        sys.exit((await container.wait()).code)
anyio.run(main)
"""


def test_tiocsti_from_an_embedded_container_given_the_callers_terminal(probes):
    # The library hands the command what the program gives it, here its terminal: the container's own session
    # still keeps it from pushing anything into it (the terminal is an fd inside, not its controlling one).
    probe = probes.build("tiocsti", TIOCSTI_PROBE)
    argv = [sys.executable, "-c", EMBEDDED_RUN, str(probes.rootfs), probe]
    output = _run_then_read_a_line(argv).decode(errors="replace")
    assert "cli-exited=0" in output, output
    assert "next-line=[SENTINEL]" in output, output
    assert "tiocsti pushed=0 errno=1" in output, output  # EPERM


def test_tiocsti_control_a_process_in_the_callers_session_does_inject(probes):
    # The same probe run directly in the caller's session (what the container was before): the line arrives.
    probe = str(probes.rootfs) + probes.build("tiocsti", TIOCSTI_PROBE)
    seen = _run_then_read_a_line([probe])
    assert f"tiocsti pushed={LINE_LENGTH} errno=0" in seen.decode(), seen
    assert b"next-line=[echo INJ$((6*7))]" in seen, seen


@pytest.mark.parametrize("tty", ["-t", "-t=false"])
def test_tiocsti_under_podman(probes, podman, tty):
    probe = probes.build("tiocsti", TIOCSTI_PROBE)
    master, slave = os.openpty()
    try:
        result = podman("--network", "none", tty, probe, rootfs_dir=probes.rootfs, stdin=slave)
        assert result.code == 0, result.stderr
        # podman too: pushed into the container's own terminal with -t; without, stdin is not a terminal at all
        pushed = LINE_LENGTH if tty == "-t" else 0
        assert f"tiocsti pushed={pushed} " in result.stdout, result.stdout
        pending = fcntl.ioctl(slave, termios.TIOCINQ, b"\0\0\0\0")
        assert int.from_bytes(pending, sys.byteorder) == 0  # nothing pushed into the terminal podman was given
    finally:
        os.close(master)
        os.close(slave)


# A host `sleep` in the caller's process group stands for the caller's other processes (its shell included).
KILL_ZERO = (
    'sleep 300 & sentinel=$!; "$@"; echo cli-exited=$?; kill -0 $sentinel && echo sentinel-alive; kill $sentinel'
)
INSIDE = ["/bin/sh", "-c", 'trap "" USR1; kill -USR1 0; echo sent=$?']


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("init", [False, True], ids=["plain", "init"])
def test_kill_zero_inside_reaches_nothing_outside(rootfs, backend, init):
    options = ["--backend", backend, *(["--init"] if init else [])]
    argv = cli_argv(rootfs, *options, *INSIDE)  # slirp4netns too: it must not be in reach either
    # A session of its own for the whole scene: were the signal to escape, it must not hit pytest.
    proc = subprocess.run(
        ["/bin/sh", "-c", KILL_ZERO, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)  # the calling shell survived
    assert proc.stdout.split() == ["sent=0", "cli-exited=0", "sentinel-alive"], (proc.stdout, proc.stderr)


def test_kill_zero_under_podman(podman):
    # podman runs in pytest's own process group: were the signal to escape, this test process would die.
    result = podman("--network", "none", *INSIDE)
    assert (result.code, result.stdout.split()) == (0, ["sent=0"]), result.stderr


def _events(stderr: str) -> dict[str, dict[str, object]]:
    found = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            found[str(event["event"])] = event
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize(
    "command, code",
    [
        (["--init", "/bin/sh", "-c", "echo ready; exec sleep 60"], None),  # the command is killed: 128+N
        (["/bin/sh", "-c", "trap 'exit 0' TERM INT; echo ready; sleep 60 & wait"], 0),  # it exits 0 on it
    ],
    ids=["init", "trap"],
)
def test_a_signal_to_the_callers_process_group_reaches_only_the_cli(rootfs, signum, command, code):
    expected = 128 + signum if code is None else code
    before = leftovers()
    # The CLI leads a process group of its own, as a shell's job does; slirp4netns runs (the default network).
    argv = cli_argv(rootfs, "--log-format", "json", "--log-level", "debug", *command)
    with started(argv, start_new_session=True) as proc:
        os.killpg(proc.pid, signum)  # kill -- -PGID, timeout(1), ^C in a script
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == expected, err
    events = _events(err)
    assert events["container.exited"]["exit_code"] == expected, err
    assert "teardown.finished" in events and "status was lost" not in err, err
    assert leftovers() == before  # slirp4netns, the container, its runtime directory: all gone


def test_sighup_is_followed_by_kill_after_stop_timeout(rootfs):
    # PID 1 without a handler: the kernel drops the forwarded SIGHUP, so the grace period must end in SIGKILL.
    argv = cli_argv(
        rootfs, "--net", "none", "--stop-timeout", "1", *JSON_LOGS, "/bin/sh", "-c", "echo ready; exec sleep 60"
    )
    with started(argv) as proc:
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 137, err
    assert "container.killed" in _events(err), err


def test_the_fork_server_and_slirp4netns_lead_sessions_of_their_own(rootfs):
    with started(cli_argv(rootfs, "/bin/sh", "-c", "echo ready; read x"), stdin=subprocess.PIPE) as proc:
        sessions = {pid: os.getsid(pid) for pid in _descendants(proc.pid)}
        assert len(sessions) >= 3, sessions  # fork server, slirp4netns, the container's PID 1
        assert os.getsid(proc.pid) not in sessions.values(), sessions  # none in the CLI's session
        _, err = proc.communicate("\n", timeout=30)
        assert proc.returncode == 0, err


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    ppid = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


@pytest.mark.anyio
async def test_an_embedded_container_leads_a_session_of_its_own(rootfs, anyio_backend):
    script = "echo $(cut -d' ' -f6 /proc/1/stat); read x"  # field 6: the session id, as seen inside
    spec = ContainerSpec(["/bin/sh", "-c", script], rootfs=rootfs, network=NetworkMode.NONE)
    spec.stdin, spec.stdout = subprocess.PIPE, subprocess.PIPE
    async with Container(spec) as container:
        assert container.pid is not None and container.stdout is not None and container.stdin is not None
        assert (await container.stdout.receive()).strip() == b"1"  # PID 1 leads its session
        assert os.getsid(container.pid) == container.pid != os.getsid(0)
        assert os.getpgid(container.pid) == container.pid
        await container.stdin.send(b"\n")
        assert (await container.wait()).ok


class _SignalsPid1(Plugin):
    """Sends signals from the host to PID 1 while it waits for its release, where it still runs our code."""

    name = "signals-pid1"

    def __init__(self, signums: list[int]) -> None:
        self.signums = signums

    async def prestart(self, context: PrestartContext) -> None:
        for signum in self.signums:
            os.kill(context.pid, signum)


@pytest.mark.anyio
async def test_a_host_signal_to_pid_1_during_set_up_is_dropped_as_by_any_init(rootfs, anyio_backend, tmp_path):
    """PID 1 handles no signal before its exec, so the kernel drops what the host sends it (as for an init
    without handlers): no Python handler runs in it, so nothing raises into the fork server's code it was cloned
    from, and no traceback reaches the container's stderr. The command then runs as if nothing had come."""
    err = tmp_path / "err"
    spec = ContainerSpec(["/bin/sh", "-c", "echo ran"], rootfs=rootfs, network=NetworkMode.NONE)
    signums = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT]
    with err.open("wb") as stderr:
        spec.stdout, spec.stderr = subprocess.PIPE, stderr
        async with Container(spec, [_SignalsPid1(signums)]) as container:
            assert container.stdout is not None
            out = b"".join([chunk async for chunk in container.stdout])
            status = await container.wait()
    assert (status.code, out, err.read_bytes()) == (0, b"ran\n", b"")
