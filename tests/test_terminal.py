"""`aiocontain run` from a terminal: the container gets a terminal of its own (-t), relayed to the caller's.

Each test runs the CLI in a session of its own on a pty of the test's (its controlling terminal), as a shell
would, and plays the user at the pty's master.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import anyio
import pytest

from aiocontain import Container, ContainerSpec, NetworkMode
from aiocontain.terminal import Relay

pytestmark = pytest.mark.container


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """argv run as a session leader with a pty as its controlling terminal and stdio; ``master`` is ours.

    ``stdin``, ``stdout`` or ``stderr``, given, replace the terminal on that fd (a pipe, say: ``echo | aiocontain
    run``)."""

    def __init__(
        self,
        argv: list[str],
        size: tuple[int, int] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.master, slave = os.openpty()
        self.slave = os.dup(slave)  # kept: the outer terminal's modes and input queue are read through it
        if size is not None:
            set_size(self.master, *size)
        self.modes = termios.tcgetattr(self.slave)

        on_terminal = 2 if stderr is None else 1 if stdout is None else 0

        def take_controlling_terminal() -> None:
            fcntl.ioctl(on_terminal, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave if stdin is None else stdin,
            stdout=slave if stdout is None else stdout,
            stderr=slave if stderr is None else stderr,
            start_new_session=True,
            preexec_fn=take_controlling_terminal,
            env={**(os.environ if env is None else env), "TERM": "dumb"},
        )
        os.close(slave)
        self.exited = os.pidfd_open(self.proc.pid)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, token: bytes | re.Pattern[bytes], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self._found(token):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"{token!r} not seen within {timeout}s; got {self.seen!r}")
            self._read()

    def _found(self, token: bytes | re.Pattern[bytes]) -> bool:
        return (token.search(self.seen) is not None) if isinstance(token, re.Pattern) else token in self.seen

    def _read(self) -> None:
        try:
            self.seen += os.read(self.master, 65536)
        except OSError as exc:  # EIO: the terminal was hung up
            raise AssertionError(f"terminal closed; got {self.seen!r}") from exc

    def wait(self, timeout: float = 30) -> int:
        """Its exit code, reading its output meanwhile (so that it never blocks on a full terminal)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.master, self.exited], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"still running after {timeout}s; got {self.seen!r}")
            if self.master in ready:
                self._read()
            elif self.exited in ready:
                code = self.proc.wait()
                while select.select([self.master], [], [], 0)[0]:
                    self._read()
                return code

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave, self.exited):
            os.close(fd)


def run_argv(rootfs: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "aiocontain", "run", "--net", "none", "--rootfs", str(rootfs), *args]


def test_interactive_shell_and_ctrl_c(rootfs):
    with Terminal(run_argv(rootfs, "--log-format", "json", "--log-level", "info", "/bin/sh")) as term:
        term.expect(b"# ")
        term.send(b"echo $((6*7))x\n")
        term.expect(b"42x")
        term.send(b"sleep 30\n")
        term.expect(b"sleep 30\r\n")
        time.sleep(0.3)  # let the shell start sleep; ^C typed before that would only reach the shell
        term.send(b"\x03")
        # ^C ended sleep (not aiocontain): the same shell answers long before sleep's 30 s were up
        term.send(b"echo $((40+3))y\n")
        term.expect(b"43y", timeout=10)
        term.send(b"exit 5\n")
        assert term.wait() == 5
        term.expect(b'"teardown.finished"')
        assert b'"command.started"' in term.seen
        assert b'"signal.forwarded"' not in term.seen  # the terminal's ^C went to the container alone


def test_ctrl_c_reaches_a_plain_command_not_aiocontain(rootfs):
    # The caller's terminal is raw: ^C is a byte for the container's own terminal, whose line discipline
    # signals its foreground group. Output tokens are computed ($((...))), so the echoed command never matches.
    script = "trap 'echo $((6*7))int; exit 7' INT; echo $((1+1))ready; while true; do sleep 1; done"
    argv = run_argv(rootfs, "--log-format", "json", "--log-level", "info", "/bin/sh", "-c", script)
    with Terminal(argv) as term:
        term.expect(b"2ready")
        term.send(b"\x03")
        term.expect(b"42int")
        assert term.wait() == 7, term.seen
        term.expect(b'"teardown.finished"')
        assert b'"signal.forwarded"' not in term.seen


def test_tty_is_the_containers_own_pts(rootfs):
    with Terminal(run_argv(rootfs, "/bin/sh", "-c", "tty; echo term=$TERM; ls /dev/pts"), size=(33, 101)) as term:
        assert term.wait() == 0, term.seen
        lines = term.seen.decode().split("\r\n")
        assert lines[0] == "/dev/pts/0", term.seen  # the container's devpts instance, not the caller's pty
        assert "term=xterm" in lines  # podman's TERM, not the caller's (dumb)
        assert lines[2].split() == ["0", "ptmx"], term.seen


def test_tty_with_init(rootfs):
    # --init stays PID 1 and leads the session; the command, its child, has the same terminal and ^C reaches it.
    script = "tty; trap 'echo $((6*7))int; exit 7' INT; echo $((1+1))ready; sleep 60 & wait"
    with Terminal(run_argv(rootfs, "--init", "/bin/sh", "-c", script)) as term:
        term.expect(b"2ready")
        assert term.seen.startswith(b"/dev/pts/0\r\n"), term.seen
        term.send(b"\x03")
        term.expect(b"42int")
        assert term.wait() == 7, term.seen


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_window_size_at_start_and_after_a_resize(rootfs, backend):
    script = "trap 'echo resized $(stty size); exit 0' WINCH; echo start $(stty size); sleep 60 & wait"
    with Terminal(run_argv(rootfs, "--backend", backend, "/bin/sh", "-c", script), size=(33, 101)) as term:
        term.expect(b"start 33 101")
        set_size(term.master, 40, 120)  # the kernel sends SIGWINCH to the CLI, the terminal's foreground group
        term.expect(b"resized 40 120")
        assert term.wait() == 0, term.seen


def test_terminal_modes_are_restored_after_stty_inside(rootfs):
    script = "stty -echo -icanon; echo $((2+3))done"
    with Terminal(run_argv(rootfs, "/bin/sh", "-c", script)) as term:
        assert term.wait() == 0, term.seen
        assert b"5done" in term.seen
        assert termios.tcgetattr(term.slave) == term.modes  # the container changed its own terminal, not ours


def test_terminal_modes_are_restored_when_the_container_is_killed(rootfs):
    script = "echo $((2+3))ready; exec sleep 60"
    with Terminal(run_argv(rootfs, "--log-format", "json", "--log-level", "info", "/bin/sh", "-c", script)) as term:
        term.expect(b"5ready")
        started = re.compile(rb'\{[^\n]*"command\.started"[^\n]*\n')
        term.expect(started)
        match = started.search(term.seen)
        assert match, term.seen
        pid = json.loads(match.group(0))["pid"]
        raw = termios.tcgetattr(term.slave)
        assert raw != term.modes  # raw while the container runs (so ^C, ^Z are the container's keys)
        os.kill(pid, signal.SIGKILL)
        assert term.wait() == 137, term.seen
        assert termios.tcgetattr(term.slave) == term.modes


def test_terminal_modes_are_restored_after_a_signal_to_the_cli(rootfs):
    with Terminal(run_argv(rootfs, "--init", "/bin/sh", "-c", "echo $((2+3))ready; exec sleep 60")) as term:
        term.expect(b"5ready")
        assert termios.tcgetattr(term.slave) != term.modes
        term.proc.send_signal(signal.SIGTERM)  # forwarded; --init passes it on and sleep dies of it
        assert term.wait() == 128 + signal.SIGTERM, term.seen
        assert termios.tcgetattr(term.slave) == term.modes


# A command without -t tries every way to the caller's terminal that a terminal on its stdio would give it: the
# terminal's modes through each fd (they would outlive the run), and what the user types next, read through
# stderr (a terminal is opened for reading and writing). Then the order of its stdout and stderr, and its stdin.
NO_TTY_PROBE = (
    "tty; for fd in 0 1 2; do stty -echo <&$fd 2>/dev/null && echo changed-$fd; done; "
    '[ "$(readlink /proc/$$/fd/1)" = "$(readlink /proc/$$/fd/2)" ] && echo one-stream; '
    "echo $((2+3))out; echo $((3+3))err >&2; echo $((3+4))probed >&2; "
    'stolen=$(head -n 1 <&2 2>/dev/null); [ -n "$stolen" ] && echo stolen=$stolen; '
    "read -r line; echo got-$line; exit 3"
)


def _probe_callers_terminal(argv: list[str], stdio: str, env: dict[str, str] | None = None) -> tuple[str, bytes]:
    """NO_TTY_PROBE's output, and what is left in the caller's terminal's input queue after it.

    stdio: "terminal" (all three the caller's terminal), "stdin-pipe" (``echo line | aiocontain run ...``) or
    "stdout-pipe" (``aiocontain run ... | cat``: stdin is then /dev/null, as -i is off by default)."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    try:
        kept_stdin = stdin_r if stdio == "stdin-pipe" else None
        kept_stdout = stdout_w if stdio == "stdout-pipe" else None
        with Terminal(argv, stdin=kept_stdin, stdout=kept_stdout, env=env) as term:
            for fd in (stdin_r, stdout_w):
                os.close(fd)
            stdin_r = stdout_w = -1
            term.expect(b"7probed")
            # While the command runs: the caller's modes are its own (echo still on).
            assert termios.tcgetattr(term.slave) == term.modes, term.seen
            # The user types: meant for whoever reads the caller's stdin. Typed before the pipe's line is written,
            # so a probe reading its stderr, were that the terminal, would take it, whenever its read starts.
            term.send(b"secret\n")
            if stdio == "stdin-pipe":
                os.write(stdin_w, b"piped\n")
            os.close(stdin_w)
            stdin_w = -1
            assert term.wait() == 3, term.seen
            assert termios.tcgetattr(term.slave) == term.modes, term.seen
            pending = int.from_bytes(fcntl.ioctl(term.slave, termios.TIOCINQ, b"\0\0\0\0"), sys.byteorder)
            left = os.read(term.slave, 4096) if pending else b""
            seen = term.seen
        if stdio == "stdout-pipe":
            seen += os.read(stdout_r, 65536)
        return seen.decode(errors="replace").replace("\r\n", "\n"), left
    finally:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("stdio", ["terminal", "stdin-pipe", "stdout-pipe"])
def test_without_tty_the_callers_terminal_is_relayed_never_handed_over(rootfs, stdio):
    output, left = _probe_callers_terminal(run_argv(rootfs, "-t=false", "/bin/sh", "-c", NO_TTY_PROBE), stdio)
    assert "not a tty\n" in output, output  # stdin, a pipe or /dev/null: no terminal on any fd
    assert "changed-" not in output and "stolen=" not in output, output
    if stdio == "stdout-pipe":
        assert "6err\n7probed\n" in output and "5out\n" in output and "one-stream" not in output, output
    else:  # stdout and stderr on one terminal: one pipe, so in the command's order
        assert "one-stream\n" in output and "5out\n6err\n7probed\n" in output, output
    if stdio == "terminal":
        assert "got-secret" in output and left == b"", (output, left)  # typed into the relayed stdin
    else:
        assert ("got-piped" if stdio == "stdin-pipe" else "got-\n") in output, output
        assert left == b"secret\n", (output, left)  # still the caller's to read: the container took nothing


def test_without_tty_the_callers_terminal_under_podman(rootfs, podman):
    argv = podman.argv("--network", "none", "-i", "/bin/sh", "-c", NO_TTY_PROBE)
    output, left = _probe_callers_terminal(argv, "terminal", env=podman.env)
    # podman's conmon relays through pipes too; its stdout and stderr are two streams, so no order is checked
    assert "not a tty\n" in output, output
    assert "changed-" not in output and "stolen=" not in output, output
    assert "got-secret" in output and left == b"", (output, left)


def test_without_tty_stdout_and_stderr_on_two_terminals_each_keep_their_own(rootfs):
    other_master, other_slave = os.openpty()
    try:
        script = "echo $((2+3))out; echo $((3+3))err >&2"
        with Terminal(run_argv(rootfs, "-t=false", "/bin/sh", "-c", script), stderr=other_slave) as term:
            os.close(other_slave)
            other_slave = -1
            assert term.wait() == 0, term.seen
            other = b""
            while select.select([other_master], [], [], 5)[0]:
                try:
                    chunk = os.read(other_master, 4096)
                except OSError:  # EIO: every holder of its other end has gone, and all it wrote was read
                    break
                other += chunk
                if b"6err" in other:
                    break
        assert b"5out" in term.seen and b"6err" not in term.seen, term.seen
        assert b"6err" in other and b"5out" not in other, other
    finally:
        os.close(other_master)
        if other_slave >= 0:
            os.close(other_slave)


def test_without_tty_a_large_output_is_relayed_whole_before_the_exit(rootfs):
    script = "head -c 300000 /dev/zero | tr '\\0' x; echo; echo $((2+3))end"
    with Terminal(run_argv(rootfs, "-t=false", "/bin/sh", "-c", script)) as term:
        assert term.wait() == 0, term.seen
        assert term.seen.count(b"x") == 300000 and term.seen.endswith(b"5end\r\n"), term.seen[-200:]


def test_a_pipe_without_a_terminal_still_works(rootfs):
    proc = subprocess.run(run_argv(rootfs, "/bin/sh"), input=b"echo hi $((6*7))\n", capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, b"hi 42\n"), proc.stderr


def test_interactive_false_gives_dev_null(rootfs):
    proc = subprocess.run(
        run_argv(rootfs, "-i=false", "/bin/sh", "-c", "cat; echo end"), input=b"x\n", capture_output=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (0, b"end\n"), proc.stderr


def test_tty_with_a_pipe_as_stdin(rootfs):
    proc = subprocess.run(
        run_argv(rootfs, "-t", "/bin/sh", "-c", "tty; read x; echo got-$x"),
        input=b"abc\n",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"/dev/pts/0\r\n" in proc.stdout and b"got-abc\r\n" in proc.stdout, proc.stdout


def test_tty_with_a_pipe_as_stdin_takes_the_window_size_from_stdout(rootfs):
    inner = shlex.join(run_argv(rootfs, "-t", "/bin/sh", "-c", "read x; echo got-$x $(stty size)"))
    with Terminal(["/bin/sh", "-c", f"echo abc | {inner}"], size=(33, 101)) as term:
        term.expect(b"got-abc 33 101")
        assert term.wait() == 0, term.seen


def test_the_relay_writes_through_a_non_blocking_description_of_its_own():
    """A full pipe or a stopped terminal then waits in the event loop (resizes and stdin still go through)
    rather than in write(2); and the caller's own file description, which its shell shares, stays blocking."""
    r, w = os.pipe()
    relay = Relay.__new__(Relay)  # only its fds: no container needed for the reopen
    relay._fds = []
    try:
        own = relay._reopen(w, os.O_WRONLY)
        assert own != w and relay._fds == [own]
        assert fcntl.fcntl(own, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        for fd in (r, w, *relay._fds):
            os.close(fd)


def test_tty_with_dev_null_as_stdin(rootfs):
    """epoll refuses /dev/null: the relay reads it directly (end of file at once) instead of failing."""
    proc = subprocess.run(
        run_argv(rootfs, "-t", "/bin/sh", "-c", "tty; echo end"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"/dev/pts/0\r\n" in proc.stdout and proc.stdout.endswith(b"end\r\n"), proc.stdout


@pytest.mark.anyio
async def test_embedded_tty_stream(rootfs, anyio_backend):
    script = "tty; stty size; read x; echo got-$x; exit 3"
    spec = ContainerSpec(["/bin/sh", "-c", script], rootfs=rootfs, network=NetworkMode.NONE, tty=True)
    spec.tty_size = (30, 90)
    seen = b""
    async with Container(spec) as container:
        assert container.tty is not None and container.stdout is None
        with anyio.fail_after(20):  # a size never set must fail here, not hang the suite
            while b"30 90" not in seen:
                seen += await container.tty.receive()
        container.resize(31, 91)
        await container.tty.send(b"hello\n")
        with anyio.fail_after(20):
            async for chunk in container.tty:  # end of stream once nothing inside holds the terminal
                seen += chunk
        status = await container.wait()
    assert status.code == 3
    assert seen.startswith(b"/dev/pts/0\r\n30 90\r\n"), seen
    assert b"got-hello\r\n" in seen, seen


@pytest.mark.anyio
async def test_embedded_without_tty_has_no_terminal(rootfs, anyio_backend):
    spec = ContainerSpec(["/bin/true"], rootfs=rootfs, network=NetworkMode.NONE)
    async with Container(spec) as container:
        assert container.tty is None
        with pytest.raises(RuntimeError):
            container.resize(1, 1)
        await container.wait()
