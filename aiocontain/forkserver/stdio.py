"""PID 1's stdin, stdout and stderr: fds to pass to the fork server, and the runtime's streams.

A spec's stdio is what ``anyio.open_process`` takes: None (this process's own),
``subprocess.DEVNULL``, ``subprocess.PIPE``, ``subprocess.STDOUT`` (stderr only),
an fd or a file object. Each becomes an fd of its own (a dup, /dev/null, or a pipe
end) that is passed and then closed here. For PIPE the runtime keeps the other
end of the pipe, non-blocking, as an anyio byte stream: the same API as anyio's
Process streams (``receive``, ``send``, ``aclose``, ``async for``). With a
tty the container's pty master is one ``PtyStream`` both ways instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import termios
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream, ByteStream

_CHUNK = 65536


@dataclass
class Stdio:
    """child_fds: PID 1's stdin, stdout, stderr; the PIPE streams are the runtime's ends."""

    child_fds: list[int] = field(default_factory=list)
    stdin: FdSendStream | None = None
    stdout: FdReceiveStream | None = None
    stderr: FdReceiveStream | None = None

    @classmethod
    def open(cls, stdin: Any, stdout: Any, stderr: Any) -> Stdio:
        stdio = cls()
        try:
            for number, value in enumerate((stdin, stdout, stderr)):
                stdio.child_fds.append(stdio._child_fd(number, value))
        except BaseException:
            stdio.close_child_ends()
            stdio.close()
            raise
        return stdio

    def _child_fd(self, number: int, value: Any) -> int:
        if value is None:
            return _dup_or_null(number)
        if value == subprocess.DEVNULL:
            return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if value == subprocess.STDOUT and number == 2:
            return os.dup(self.child_fds[1])
        if value == subprocess.PIPE:
            read, write = os.pipe()
            if number == 0:
                self.stdin = FdSendStream(write)
                return read
            stream = FdReceiveStream(read)
            if number == 1:
                self.stdout = stream
            else:
                self.stderr = stream
            return write
        return os.dup(value if isinstance(value, int) else value.fileno())

    def close_child_ends(self) -> None:
        """Once passed (or failed to): the fork server has its own copies."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds = []

    def close(self) -> None:
        """Close the runtime's pipe ends (on a failed fork)."""
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close_fd()


def _dup_or_null(fd: int) -> int:
    """This process's own fd, or /dev/null where it has none (a closed stdin)."""
    try:
        return os.dup(fd)
    except OSError:
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


class _FdStream:
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)  # our end only: the pipe's other end is a file description of its own
        self._fd = fd

    def _open_fd(self) -> int:
        if self._fd < 0:
            raise anyio.ClosedResourceError
        return self._fd

    def close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                anyio.notify_closing(fd)  # wakes a task waiting on it with ClosedResourceError
            except RuntimeError:
                pass  # no event loop in this thread: nobody can be waiting
            os.close(fd)

    async def aclose(self) -> None:
        self.close_fd()
        await anyio.lowlevel.checkpoint()


class FdReceiveStream(_FdStream, ByteReceiveStream):
    """The runtime's read end of a pipe (or a pty's master)."""

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        while True:
            try:
                data = os.read(self._open_fd(), max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                data = b""  # a pty's master once nothing holds its terminal: the kernel's end of stream
            if not data:
                raise anyio.EndOfStream
            return data


class FdSendStream(_FdStream, ByteSendStream):
    """The runtime's write end of a pipe (or a pty's master)."""

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            try:
                written = os.write(self._open_fd(), view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO):  # EIO: a pty's master without its terminal
                    raise
                raise anyio.BrokenResourceError from exc
            view = view[written:]


class PtyStream(FdReceiveStream, FdSendStream, ByteStream):
    """The master of a container's pty (``tty``): what the command writes to its terminal, and its input.

    Once every process inside has closed the terminal, reading gives what is left, then end of stream.
    """

    async def send_eof(self) -> None:
        """What ^D does at the start of a line: the terminal's reader sees end of file (in canonical mode)."""
        eof = termios.tcgetattr(self._open_fd())[6][termios.VEOF]
        await self.send(bytes([eof]) if isinstance(eof, int) else eof)  # an int when not canonical (VEOF is VMIN)

    def resize(self, rows: int, cols: int) -> None:
        """Set the window size; the kernel sends SIGWINCH to the terminal's foreground process group."""
        fcntl.ioctl(self._open_fd(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
