"""The runtime's ends of a container's channels, one method per step of the protocol.

``ChildChannel`` is the control socket to PID 1 until its Ready, ``InitChannel``
PID 1's release pipe and report socket (the fork server's reply channel is
``aiocontain.forkserver.process.ForkedProcess``). The stages call these methods,
in the order docs/architecture.md describes, and never read or write the
channels themselves. A message that the protocol does not allow at that step
raises ``UnexpectedMessage``, which names what was expected and what came.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import anyio

from aiocontain import fdlimit, messages
from aiocontain.errors import AiocontainError, CommandNotExecutable, CommandNotFound, SetupError, UnexpectedMessage
from aiocontain.messages import Config, Console, Failed, Message, Ready, close_fds

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from aiocontain.forkserver.stdio import PtyStream

__all__ = ["ChildChannel", "InitChannel", "ReadyFds", "UnexpectedMessage", "failure_error"]

EXITED_DURING_SETUP = "the container process exited during set-up"


class ReadyFds(NamedTuple):
    """What PID 1 hands up with Ready: its pipe ends, and the netlink socket if asked."""

    init: InitChannel
    netlink: socket.socket | None


class ChildChannel:
    """The runtime's end of the control socket: Config, then Ready (PID 1 closes it then).

    A task (``read``) moves every message into an unbounded inbox as soon as it
    arrives, with no checkpoint in between, so a cancelled set-up never drops a
    message and the fds that ride along with it; ``drain`` closes those that
    nobody received.
    """

    def __init__(self, sock: socket.socket, command: str, on_lost: Callable[[AiocontainError], None]) -> None:
        self._sock = sock
        self._command = command  # for PID 1's report, whose channel this one hands up
        self._on_lost = on_lost  # a message and its fds were lost (out of fds): the container cannot go on
        self._outbox: MemoryObjectSendStream[tuple[Message | None, list[int]]]
        self._inbox: MemoryObjectReceiveStream[tuple[Message | None, list[int]]]
        self._outbox, self._inbox = anyio.create_memory_object_stream[tuple[Message | None, list[int]]](math.inf)
        self._drained = False
        self._finished = anyio.Event()  # the reader has seen end of stream

    def send_config(self, config: Config) -> None:
        """Step 1, just after the Fork request: PID 1 (a spare, woken by it) reads the Config as its first
        message; it waits in the socket's buffer until then."""
        try:
            messages.send(self._sock, config)
        except (BrokenPipeError, ConnectionResetError):
            return  # PID 1 is gone already: wait_ready reads its end (or its Failed) and says so in one line
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            size = len(messages.encode(config))
            raise AiocontainError(
                f"the command, environment and options are too large ({size} bytes)",
                fix="pass large data through a file in the rootfs instead of -e or arguments",
            ) from None

    async def read(self) -> None:
        """Task: move messages from the socket into the inbox until end of stream."""
        self._sock.setblocking(False)
        try:
            while True:
                await anyio.wait_readable(self._sock)
                try:
                    item = messages.recv(self._sock)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if fdlimit.exhausted(exc):
                        self._on_lost(fdlimit.exhaustion_error(exc))  # a message and its fds are lost: give up
                        continue
                    item = (None, [])
                if item[0] is None or self._drained:
                    close_fds(item[1])  # nobody will ever receive these fds
                    if item[0] is None:
                        return
                    continue
                self._outbox.send_nowait(item)  # no checkpoint: cancellation cannot drop it, fds and all
        finally:
            self._outbox.close()
            self._finished.set()

    async def wait_ready(self) -> ReadyFds:
        """Step 2: PID 1's namespaces are set up, and it builds its root, then waits for its release before the
        exec: its pipe's end comes up with its report socket (it may have failed to build its root, and been
        reaped, already)."""
        message, fds = await self._receive()
        if not isinstance(message, Ready):
            close_fds(fds)
            raise self._setup_error(message, "Ready")
        if len(fds) < 2:
            close_fds(fds)
            raise SetupError("the container process answered Ready without its pipes")
        init = InitChannel(fds[0], fds[1], self._command)
        netlink = socket.socket(fileno=fds[2]) if len(fds) > 2 else None
        return ReadyFds(init, netlink)

    def shutdown(self) -> None:
        """Teardown: end of stream for PID 1, if it still reads (set-up was cut short before its Ready)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    async def wait_closed(self) -> None:
        """Teardown, after ``shutdown``: until the reader has seen end of stream (ours, at once)."""
        await self._finished.wait()

    def drain(self) -> None:
        """Teardown, once the reader saw end of stream: close the fds of messages nobody received (a Ready
        whose set-up was cancelled)."""
        self._drained = True
        while True:
            try:
                _message, fds = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            close_fds(fds)

    async def _receive(self) -> tuple[Message | None, list[int]]:
        try:
            return await self._inbox.receive()
        except anyio.EndOfStream:
            return None, []

    @staticmethod
    def _setup_error(message: Message | None, expected: str) -> AiocontainError:
        if message is None:
            return SetupError(EXITED_DURING_SETUP)
        if isinstance(message, Failed):
            from aiocontain.forkserver.userns import namespace_error

            return namespace_error(message)
        return UnexpectedMessage("container process", expected, message)


class InitChannel:
    """PID 1's release pipe (write end) and report socket (read end), as handed up with Ready.

    One byte on the pipe: ``release`` (exec).
    On the socket: with a terminal, its master first (``take_console``); then
    ``read_report`` to its end: nothing once the command is executed
    (close-on-exec), else the Failed that says why not.
    """

    def __init__(self, release_w: int, report_r: int, command: str) -> None:
        self._release_w: int | None = release_w
        self._report_r: int | None = report_r
        self._command = command

    async def take_console(self) -> PtyStream:
        """With a terminal: the pty's master, which PID 1 sends once its root is built, before the release."""
        from aiocontain.forkserver.stdio import PtyStream

        message, fds = await self._receive()
        if isinstance(message, Console) and len(fds) == 1:
            return PtyStream(fds[0])
        close_fds(fds)
        if isinstance(message, Failed):
            raise self.error(message)
        if message is None:
            raise SetupError("the container's init exited during set-up")
        raise UnexpectedMessage("container's init", "Console", message)

    def release(self) -> None:
        """The host side is ready: PID 1 hardens itself and executes the command."""
        self._write(messages.RELEASE)
        if self._release_w is not None:
            os.close(self._release_w)
            self._release_w = None

    async def read_report(self) -> Failed | None:
        """Its report, to the end of the stream: None once the command is executed (or when PID 1 was killed
        first: its exit status then tells), else the first Failed."""
        failure: Failed | None = None
        while self._report_r is not None:
            message, fds = await self._receive()
            close_fds(fds)  # nothing else rides on it after the Console
            if message is None:
                break
            if isinstance(message, Failed):
                failure = failure or message
            elif not isinstance(message, Console):  # a Console not taken: PID 1 died before its release
                raise UnexpectedMessage("container's init", "Failed or the end of its report", message)
        self._close_report()
        return failure

    async def exit_reason(self) -> AiocontainError:
        """Why PID 1 exited before its release (it builds its root before it, and may fail): its report."""
        failure = await self.read_report()
        return self.error(failure) if failure else SetupError("the container's init exited during set-up")

    def error(self, failure: Failed) -> AiocontainError:
        """The one line for PID 1's Failed (``failure_error``)."""
        return failure_error(self._command, failure)

    def close(self) -> None:
        """Teardown: close what is left of both (each once: the number may be reused)."""
        if self._release_w is not None:
            os.close(self._release_w)
            self._release_w = None
        self._close_report()

    def _write(self, byte: bytes) -> None:
        assert self._release_w is not None, "PID 1 was released already"
        try:
            os.write(self._release_w, byte)
        except BrokenPipeError:
            pass  # PID 1 is gone: its report, or its exit status, says why

    async def _receive(self) -> tuple[Message | None, list[int]]:
        """One datagram from the report socket; (None, []) at end of stream."""
        fd = self._report_r
        if fd is None:
            return None, []
        report = socket.socket(fileno=fd)
        try:
            report.setblocking(False)
            while True:
                try:
                    return messages.recv(report)
                except BlockingIOError:
                    await anyio.wait_readable(fd)
                except (ConnectionError, ValueError):
                    return None, []  # a reset, or a report that is not a message: no usable report
        finally:
            report.detach()  # the fd stays ours, closed once by _close_report

    def _close_report(self) -> None:
        if self._report_r is not None:
            fd, self._report_r = self._report_r, None
            try:
                anyio.notify_closing(fd)  # a task waiting on it wakes with ClosedResourceError
            except RuntimeError:
                pass  # no event loop in this thread: nobody can be waiting
            os.close(fd)


def failure_error(command: str, failure: Failed) -> AiocontainError:
    """The one line for a Failed from the process that was to execute command (PID 1, or an exec'd process), with
    podman's exit codes for the command: 127 not found, 126 not executable."""
    if failure.step == messages.STEP_EXEC:
        if failure.errno in (errno.ENOENT, errno.ENOTDIR):
            return CommandNotFound(
                f"{command}: command not found in the container", fix="check the command and the rootfs's PATH"
            )
        return CommandNotExecutable(f"cannot execute {failure.message}")
    if failure.step == messages.STEP_WORKDIR:  # podman's 126 too: the command cannot be started there
        return CommandNotExecutable(
            f"the working directory {failure.message}", fix="give -w a directory, or a path that does not exist yet"
        )
    if failure.errno in fdlimit.EXHAUSTED:  # the same limit as ours: said as our own running out is
        return fdlimit.exhaustion_error(OSError(failure.errno, failure.message))
    return SetupError(f"container set-up failed: {failure.message}")
