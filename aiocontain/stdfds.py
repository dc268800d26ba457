"""Standard fds 0, 1 and 2: never left closed, and a broken stdout or stderr ends a command quietly (stdlib only).

A process started with stdin, stdout or stderr closed gives that number to the
next fd it opens. In aiocontain, that would be one of its own fds, such as the fork
server's request socket. The next container started with the caller's stdio would
then get that socket as its stdin, stdout or stderr. Through it, the container could
ask the fork server for a PID 1 with a Config of its own making, such as the host's
root as its rootfs. So the commands fill closed standard fds before anything else,
as sshd does and as glibc does for setuid programs. The runtime fills them again
before each container or exec that takes the caller's stdio. A container then gets
/dev/null for a stream its caller did not have, as podman gives a container
/dev/null for stdin.

A command whose stdout or stderr is a pipe that its reader has closed
(``aiocontain ps | head -1``, ``aiocontain --help | true``) stops saying
anything and exits 141, as a Unix tool that SIGPIPE ends would, rather than
print a traceback or call it a bug. Python ignores SIGPIPE, so it raises
BrokenPipeError instead.
"""

from __future__ import annotations

import os
import sys

_STREAMS = (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w"))


def fill(python_streams: bool = False) -> None:
    """Open /dev/null onto whichever of fds 0, 1 and 2 is closed. python_streams is for our own commands only.
    With it, ``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` that Python left as None, because their fd was
    closed at start-up, become streams on /dev/null. An embedding program's ``sys`` is never touched.
    OSError when /dev/null cannot be opened: nothing may start then."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
        return  # all open, nearly always: three system calls
    except OSError:
        pass
    # Each open takes the lowest free number, so the holes among 0-2 fill in order. Inheritable, as stdio is:
    # a process this one starts with its stdio gets /dev/null there too, not a closed fd again.
    while (fd := os.open(os.devnull, os.O_RDWR)) <= 2:
        os.set_inheritable(fd, True)
    os.close(fd)
    if python_streams:
        for name, number, mode in _STREAMS:
            if getattr(sys, name) is None:
                stream = open(number, mode, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
                setattr(sys, name, stream)
                setattr(sys, f"__{name}__", stream)


def fill_for_command(program: str, code: int) -> None:
    """``fill`` first of all in our commands (with Python's streams): where a closed fd cannot be filled, one
    line (on stderr, if that is not the closed one) and exit code, before anything else has started."""
    try:
        fill(python_streams=True)
    except OSError as exc:
        try:
            os.write(
                2, f"{program}: a standard fd is closed and {os.devnull} cannot stand in: {exc.strerror}\n".encode()
            )
        except OSError:
            pass  # stderr is the closed one: the exit code says it
        os._exit(code)


def ensure() -> None:
    """``fill`` for the runtime, before a container or an exec takes this process's stdio and before the fork
    server's socket is made: refused in one line where a closed fd cannot be filled."""
    try:
        fill()
    except OSError as exc:
        from aiocontain.errors import AiocontainError

        raise AiocontainError(
            f"a standard fd of this process (stdin, stdout or stderr) is closed and {os.devnull} cannot stand in for"
            f" it: {exc.strerror}",
            fix="start the program with its standard fds open, or pass stdin, stdout and stderr explicitly",
        ) from None


# What a shell reports for a command that SIGPIPE ended, as a broken pipe ends any Unix tool.
BROKEN_PIPE_EXIT = 128 + 13


def output_broken() -> bool:
    """Whether stdout or stderr is a pipe or socket whose reader has gone (poll says POLLERR or POLLHUP on it)."""
    import select

    poller = select.poll()
    for fd in (1, 2):
        poller.register(fd, select.POLLOUT)
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def silence_output() -> int:
    """After a broken stdout or stderr: point both at /dev/null, so that nothing more (no flush at exit, no
    traceback) fails on them, and give the exit code a shell would show (``BROKEN_PIPE_EXIT``)."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)
    return BROKEN_PIPE_EXIT
