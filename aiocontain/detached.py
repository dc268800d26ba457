"""``aiocontain run -d``: a container supervised by a detached monitor, with no CLI process left alive.

The monitor is the runtime itself, executed again: ``run -d`` starts ``python -m aiocontain`` with the same
arguments in a new session (setsid, no controlling terminal), stdin /dev/null, stdout and stderr appended to
the container's log file (``aiocontain.registry.log_path``), and ``AIOCONTAIN_MONITOR`` naming a report pipe
and the container id. The monitor runs the container exactly as a foreground ``run`` does: its own fork server,
slirp4netns, port forwards, cgroup leaf, runtime directory and name claim are all held by it and all undone by
it when the container exits. Two things differ: the container's output goes to the log, and whatever the run
says on stderr during set-up (a published port, a warning, the one-line error) goes through the report pipe to
the ``run -d`` that waits for it. Once set-up is done and the container is recorded (``aiocontain.registry``),
the monitor writes a NUL byte and closes the pipe; ``run -d`` prints the id and exits 0. End of file without
it means set-up failed: ``run -d`` exits with the monitor's own code (125, 126, 127), its line relayed.

Why executed again rather than forked after set-up: by then the runtime has an event loop, threads and a fork
server of its own, none of which survive a fork; a fresh process on the ordinary path is simple and supervises
the container exactly as a foreground run does. The price is one interpreter start-up a ``run -d``.

A monitor killed with SIGKILL takes everything with it as a killed foreground run does: its fork server ends
at the end of its request socket (or its owner's pidfd) and kills PID 1 and removes the cgroup first,
slirp4netns exits at the end of its exit fd, the kernel drops the name's lock; the record reads as
exited from then on (``Record.state``).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

ENV = "AIOCONTAIN_MONITOR"  # "FD:ID": the report pipe's write end and the container id
READY = b"\0"


class Monitor:
    """The monitor's side: stderr goes to the ``run -d`` that waits until ``ready``, then to the log."""

    def __init__(self, fd: int, container_id: str) -> None:
        os.set_inheritable(fd, False)  # no helper or container process may hold the pipe open
        self.container_id = container_id
        self._report: io.TextIOWrapper | None = io.TextIOWrapper(os.fdopen(fd, "wb", buffering=0), "utf-8")
        self._report.reconfigure(line_buffering=True, errors="replace")
        self.stream = _Handoff(self._report)
        sys.stderr = self.stream  # what the run prints (and structlog, set up later) reaches run -d first

    @classmethod
    def from_environment(cls) -> Monitor | None:
        value = os.environ.pop(ENV, None)
        if value is None:
            return None
        fd, _, container_id = value.partition(":")
        try:
            os.fstat(int(fd))
        except (ValueError, OSError):
            from aiocontain.errors import AiocontainError

            raise AiocontainError(f"{ENV}={value!r} is not a monitor's report pipe (set only by run -d)") from None
        return cls(int(fd), container_id)

    def ready(self) -> None:
        """Set-up is done and recorded: tell ``run -d``, and from now on write to the log (fd 2)."""
        report, self._report = self._report, None
        if report is None:
            return
        self.stream.target = sys.__stderr__
        try:
            report.flush()
            report.buffer.write(READY)
            report.close()
        except OSError:
            pass  # run -d was killed meanwhile: the container runs on, detached as asked


class _Handoff(io.TextIOBase):
    """A text stream that writes to target, which changes once (from the report pipe to the log)."""

    def __init__(self, target: io.TextIOBase | io.TextIOWrapper | None) -> None:
        self.target = target

    def write(self, text: str) -> int:
        target = self.target
        if target is None:
            return len(text)
        try:
            target.write(text)
            target.flush()
        except (OSError, ValueError):
            pass  # nobody reads the report pipe any more: the log is where the rest goes
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


def start(argv: Sequence[str]) -> int:
    """``run -d``: start the monitor, relay what it says during set-up, print the id once it is running."""
    from aiocontain import registry

    container_id = os.urandom(32).hex()
    log = registry.log_path(container_id)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    read_fd, write_fd = os.pipe()
    try:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "aiocontain", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(write_fd,),
            start_new_session=True,
            env={**os.environ, ENV: f"{write_fd}:{container_id}"},
        )
    except BaseException:
        os.close(read_fd)
        _unlink(log)
        raise
    finally:
        os.close(write_fd)
        os.close(log_fd)
    held = _forward_stop_signals(monitor.pid)
    with open(read_fd, "rb") as report:
        said = report.read()  # to end of file: READY last, or the monitor ended
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)  # the container runs: a late Ctrl-C must not stop it
    ready = said.endswith(READY)
    if ready:
        said = said[: -len(READY)]
    if said:
        sys.stderr.write(said.decode(errors="replace"))
        sys.stderr.flush()
    if ready:
        print(container_id, flush=True)
        return 0
    code = monitor.wait()
    _unlink(log)  # nothing ran: nothing of it stays
    return code if code > 0 else 125


def _forward_stop_signals(monitor: int) -> set[signal.Signals]:
    """Ctrl-C (SIGINT, SIGTERM, SIGHUP) while run -d waits goes to the monitor, which stops the set-up as a
    foreground run does (exit 128+N, nothing left); run -d then exits with its code. Only where the command
    holds those signals (aiocontain.command): a Python caller's own handlers are not ours to replace."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if not held <= signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return set()

    def forward(signum: int, _: object) -> None:
        try:
            os.kill(monitor, signum)
        except ProcessLookupError:
            pass  # it has ended: its report's end of file follows

    for signum in held:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    return held


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
