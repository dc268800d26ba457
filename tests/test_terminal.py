"""`aiocontain run /bin/sh` from a terminal: an interactive shell where ^C reaches the container, not us."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import termios
import time

import pytest

pytestmark = pytest.mark.container


class Terminal:
    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()

        def take_controlling_terminal() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = {**os.environ, "TERM": "dumb"}
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_controlling_terminal,
            env=env,
        )
        os.close(slave)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, token: bytes, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while token not in self.seen:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"{token!r} not seen within {timeout}s; got {self.seen!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError as exc:  # EIO: the terminal was hung up
                raise AssertionError(f"{token!r} not seen; terminal closed; got {self.seen!r}") from exc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_interactive_shell_and_ctrl_c(rootfs):
    term = Terminal(
        [
            sys.executable,
            "-m",
            "aiocontain",
            "run",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--net",
            "none",
            "--rootfs",
            str(rootfs),
            "/bin/sh",
        ]
    )
    try:
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
        assert term.proc.wait(timeout=10) == 5
        term.expect(b'"teardown.finished"')
        assert b'"command.started"' in term.seen
        assert b'"signal.forwarded"' not in term.seen  # the terminal's ^C went to the container alone
    finally:
        term.close()


def test_ctrl_c_reaches_a_plain_command_not_aiocontain(rootfs):
    # No job control here: the container is the terminal's foreground group only because aiocontain made it so.
    # Output tokens are computed ($((...))), so that the command line echoed in the logs never matches them.
    script = "trap 'echo $((6*7))int; exit 7' INT; echo $((1+1))ready; while true; do sleep 1; done"
    argv = [sys.executable, "-m", "aiocontain", "run", "--log-format", "json", "--log-level", "info"]
    term = Terminal([*argv, "--net", "none", "--rootfs", str(rootfs), "/bin/sh", "-c", script])
    try:
        term.expect(b"2ready")
        term.send(b"\x03")
        term.expect(b"42int")
        assert term.proc.wait(timeout=10) == 7, term.seen
        term.expect(b'"teardown.finished"')
        assert b'"signal.forwarded"' not in term.seen
    finally:
        term.close()
