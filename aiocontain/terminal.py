"""The CLI's side of ``-t``: the caller's terminal relayed to the container's own.

The container's command has a pty of the container's devpts as its controlling
terminal (child/console.py); the runtime holds its master. While the command
runs, what it writes is copied to the CLI's stdout and, with ``-i``, the CLI's
stdin to it. A caller's terminal on stdin is put in raw mode meanwhile, so that
every key (^C, ^Z, ^D) reaches the container's line discipline as a byte and
does its work there, and is restored on every way out. Its window size is the
pty's at start and follows SIGWINCH.

Without ``-t``, the caller's terminal is not handed to the command either
(``Piped``): a stdin, stdout or stderr that is one is relayed through a pipe the
command gets in its place, as podman's conmon does. A terminal is opened for
reading and writing, so the command could otherwise read what the user types
through its stdout, and change the terminal's modes for the caller
(``stty -echo`` outlives the run).

The caller's stdio is reopened (``/proc/self/fd/N``: a file description of our
own) when it is a terminal or pipe, so that making it non-blocking never changes
it for the shell that shares it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import termios
import tty
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream, ByteStream, TaskGroup

TYPE_CHECKING = False  # the exec module costs `run` from a terminal ~3.6 ms, for annotations alone
if TYPE_CHECKING:
    from aiocontain.container import Container
    from aiocontain.execprocess import ExecProcess

DRAIN_TIMEOUT = 2.0  # once the command has exited: how long its last output may take to come through
_CHUNK = 65536


def size() -> tuple[int, int] | None:
    """(rows, cols) of the caller's terminal (stdin, else stdout), None without one."""
    for fd in (0, 1):
        try:
            return termios.tcgetwinsize(fd)
        except (OSError, termios.error):
            continue
    return None


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The caller's terminal in raw mode until the end of the block, whichever way it ends."""
    try:
        saved = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)  # TCSANOW: keys typed ahead are kept, not flushed
    except (OSError, termios.error):
        yield  # not a terminal after all (or gone): nothing to restore
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError, termios.error):  # hung up meanwhile: nothing left to restore
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def relayed(target: Container | ExecProcess, interactive: bool, tg: TaskGroup) -> Iterator[Relay]:
    """The caller's stdio relayed to target's terminal (``run -t``, ``exec -t``), its terminal in raw mode
    meanwhile when stdin is kept and is one: the Relay runs in tg until cancelled; ``finish`` it once the
    command has exited."""
    with contextlib.ExitStack() as raw:
        if interactive and os.isatty(0):
            raw.enter_context(raw_mode(0))  # restored on every way out of this block
        relay = Relay(target, interactive)
        tg.start_soon(relay.run)
        yield relay


class Relay:
    """Copies between the caller's stdio and the container's terminal while the command runs (the container's
    own, or an exec'd command's)."""

    def __init__(self, container: Container | ExecProcess, interactive: bool) -> None:
        console = container.tty
        assert console is not None, "the container has no terminal"
        self._container = container
        self._console: ByteStream = console
        self._interactive = interactive
        self._output_done = anyio.Event()
        self._fds: list[int] = []

    async def run(self) -> None:
        """Relay until cancelled; the output side ends by itself once nothing inside holds the terminal."""
        try:
            # Listening first, then the size once: a resize before we listened is not lost either.
            with anyio.open_signal_receiver(signal.SIGWINCH) as resizes:
                self._resize()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._follow_size, resizes)
                    if self._interactive:
                        tg.start_soon(self._copy_in)
                    await self._copy_out()
        finally:
            for fd in self._fds:
                os.close(fd)

    async def finish(self) -> None:
        """After the command's exit: wait, bounded, for the last of its output."""
        with anyio.move_on_after(DRAIN_TIMEOUT):
            await self._output_done.wait()

    async def _copy_out(self) -> None:
        out: _Fd | None = _Fd(self._reopen(1, os.O_WRONLY))
        try:
            async for chunk in self._console:
                if out is not None:
                    try:
                        await out.write(chunk)
                    except OSError:
                        out = None  # the caller's stdout is gone: still drain, so the command never blocks on it
        except anyio.ClosedResourceError:
            pass  # torn down
        finally:
            self._output_done.set()

    async def _copy_in(self) -> None:
        source = _Fd(self._reopen(0, os.O_RDONLY))
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            while chunk := await source.read():
                await self._console.send(chunk)
        # End of the caller's stdin: left at that, as podman does (the command may still write).

    async def _follow_size(self, resizes: AsyncIterator[int]) -> None:
        async for _ in resizes:
            self._resize()

    def _resize(self) -> None:
        rows_cols = size()
        if rows_cols is not None:
            with contextlib.suppress(OSError, RuntimeError, anyio.ClosedResourceError):  # it has exited meanwhile
                self._container.resize(*rows_cols)

    def _reopen(self, fd: int, flags: int) -> int:
        own = _own_description(fd, flags)
        if own != fd:
            self._fds.append(own)
        return own


def _own_description(fd: int, flags: int) -> int:
    """A terminal or pipe as a file description of our own, non-blocking; anything else as it is."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            return os.open(f"/proc/self/fd/{fd}", flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        pass
    return fd


def terminals(interactive: bool) -> list[int]:
    """The caller's stdio fds that are terminals and that a command without ``-t`` would get: stdin only when
    kept (``-i``). Each is relayed (``Piped``), never handed over."""
    return [fd for fd in (0, 1, 2) if (fd or interactive) and os.isatty(fd)]


def piped_stdio(relayed: Sequence[int], interactive: bool) -> tuple[Any, Any, Any]:
    """stdin, stdout, stderr for a command without ``-t`` (as ``ContainerSpec`` and ``ExecProcess`` take them):
    a pipe for each fd in relayed, the caller's own fd for the rest, /dev/null for a stdin not kept. stdout and
    stderr on one terminal share one pipe, so that their order on it stays the command's."""
    stdin: Any = subprocess.PIPE if 0 in relayed else (None if interactive else subprocess.DEVNULL)
    stdout: Any = subprocess.PIPE if 1 in relayed else None
    stderr: Any = None
    if 2 in relayed:
        stderr = subprocess.STDOUT if 1 in relayed and _same_terminal(1, 2) else subprocess.PIPE
    return stdin, stdout, stderr


def _same_terminal(a: int, b: int) -> bool:
    try:
        return os.fstat(a).st_rdev == os.fstat(b).st_rdev
    except OSError:
        return False


class Piped:
    """Without ``-t``: the caller's terminals (``terminals``) relayed through the pipes the command got in their
    place (``piped_stdio``: the target's streams are those pipes, each to or from the same fd of ours). ``start``
    once the command runs, ``finish`` once it has exited; the copies run in the task group until cancelled, each
    through a file description of its own."""

    def __init__(self) -> None:
        self._outputs: list[anyio.Event] = []

    def start(self, target: Container | ExecProcess, tg: TaskGroup) -> None:
        for fd, stream in ((1, target.stdout), (2, target.stderr)):
            if stream is not None:
                done = anyio.Event()
                self._outputs.append(done)
                tg.start_soon(_copy_out, stream, fd, done)
        if target.stdin is not None:
            tg.start_soon(_copy_in, 0, target.stdin)

    async def finish(self) -> None:
        """After the command's exit: wait, bounded, for the last of its output (not for what it left running)."""
        with anyio.move_on_after(DRAIN_TIMEOUT):
            for done in self._outputs:
                await done.wait()


async def _copy_out(stream: ByteReceiveStream, fd: int, done: anyio.Event) -> None:
    own = _own_description(fd, os.O_WRONLY)
    try:
        await _copy_to_fd(stream, own, done)
    finally:
        if own != fd:
            os.close(own)


async def _copy_in(fd: int, stream: ByteSendStream) -> None:
    own = _own_description(fd, os.O_RDONLY)
    try:
        await _copy_from_fd(own, stream)
    finally:
        if own != fd:
            os.close(own)


async def _copy_to_fd(stream: ByteReceiveStream, fd: int, done: anyio.Event) -> None:
    """Copy stream to the caller's fd until its end (then set done); a caller's fd that is gone still drains it."""
    out: _Fd | None = _Fd(fd)
    try:
        async for chunk in stream:
            if out is not None:
                try:
                    await out.write(chunk)
                except OSError:
                    out = None
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        done.set()


async def _copy_from_fd(fd: int, stream: ByteSendStream) -> None:
    """Copy the caller's fd to stream until its end of file, then close the stream."""
    source = _Fd(fd)
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        while chunk := await source.read():
            await stream.send(chunk)
        await stream.aclose()


class _Fd:
    """Reads and writes one of the caller's fds without blocking the event loop where the kernel can tell
    readiness (terminals, pipes, sockets); a regular file is read and written directly (never waits)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            mode = os.fstat(fd).st_mode
            self._pollable = not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode))
        except OSError:
            self._pollable = False

    async def read(self) -> bytes:
        while True:
            if self._pollable:
                try:
                    await anyio.wait_readable(self.fd)
                except PermissionError:
                    self._pollable = False  # epoll refuses some character devices (/dev/null): they never block
            try:
                return os.read(self.fd, _CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                return b""  # EIO: the caller's terminal was hung up

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
                continue
            view = view[written:]
        if not self._pollable:
            await anyio.lowlevel.checkpoint()
