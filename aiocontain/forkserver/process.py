"""``ForkedProcess``: a container's PID 1, cloned by the fork server, followed from the runtime.

It is the fork server's child, not ours, so anyio's Process cannot follow it.
Instead: its pidfd (sent up with ``Forked``, or with a spare's offer, ``Offer``)
says when it exits and signals it without PID reuse races; the fork server reaps
it and sends its status as ``Reaped`` on the reply channel; PIPE stdio are pipes
the runtime made, read and written as anyio byte streams. A spare the fork server
offered is handed its request here (``claim``), with no answer to wait for.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from aiocontain import fdlimit, messages
from aiocontain.errors import AiocontainError, SetupError
from aiocontain.forkserver.stdio import Stdio
from aiocontain.messages import Failed, Fork, Forked, Reaped, Release, Spare

if TYPE_CHECKING:
    from aiocontain.forkserver.userns import IdMapping

FORK_TIMEOUT = 10.0
REAP_TIMEOUT = 5.0


class ForkedProcess:
    """pid, returncode (as ``subprocess``: -N when killed by signal N), ``wait``, ``kill``, stdio streams."""

    def __init__(
        self, pid: int, pidfd: int, channel: socket.socket, stdio: Stdio, released: Callable[[], None]
    ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.status_lost = False  # the fork server died before it could tell the exit status
        self.mapping: IdMapping | None = None  # how the fork server's user namespace, and so this one's, is mapped
        self.stdin: ByteSendStream | None = stdio.stdin
        self.stdout: ByteReceiveStream | None = stdio.stdout
        self.stderr: ByteReceiveStream | None = stdio.stderr
        self._pidfd = pidfd
        self._channel = channel
        self._released = released
        self.exited = False
        self._lock = anyio.Lock()

    @classmethod
    def claim(
        cls, offer: Offer, control: socket.socket, stdin: Any, stdout: Any, stderr: Any, released: Callable[[], None]
    ) -> ForkedProcess | None:
        """Hand an offered spare the request itself: its control socket and stdio, on the spare's own socket.
        No answer to wait for: the offer carried its pidfd and reply channel, and its maps are written. None
        when the spare cannot take it (it died): the offer is let go, and a Fork request serves instead."""
        try:
            stdio = Stdio.open(stdin, stdout, stderr)
        except BaseException:
            offer.let_go()
            raise
        try:
            messages.send(offer.sock, Fork(), [control.fileno(), *stdio.child_fds])
        except BaseException as exc:
            stdio.close()
            offer.let_go()
            if isinstance(exc, OSError):
                return None  # EPIPE: it died
            raise
        finally:
            stdio.close_child_ends()
        offer.sock.close()  # the spare's now: it reads the request, then closes its end
        offer.channel.setblocking(False)
        return cls(offer.pid, offer.pidfd, offer.channel, stdio, released)

    @classmethod
    def send_request(
        cls, requests: socket.socket, control: socket.socket, stdin: Any, stdout: Any, stderr: Any, fork: Fork
    ) -> tuple[socket.socket, Stdio]:
        """Send a Fork request: (the reply channel, the stdio) for ``wait_forked``."""
        stdio = Stdio.open(stdin, stdout, stderr)
        try:
            channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except BaseException:
            stdio.close_child_ends()  # out of fds here, too: nothing of this request may stay open
            stdio.close()
            raise
        try:
            messages.send(requests, fork, [theirs.fileno(), control.fileno(), *stdio.child_fds])
        except BaseException:
            channel.close()
            stdio.close()
            raise
        finally:
            theirs.close()
            stdio.close_child_ends()
        channel.setblocking(False)
        return channel, stdio

    @classmethod
    async def wait_forked(cls, channel: socket.socket, stdio: Stdio, released: Callable[[], None]) -> ForkedProcess:
        """Wait for the answer to a Fork request, Forked. Shielded: once the request is sent, the answer
        carries a pidfd that must not be lost; the fork server answers within milliseconds."""
        message: messages.Message | None = None
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(FORK_TIMEOUT):
                message, fds = await _receive(channel)
                if isinstance(message, Forked) and len(fds) == 1:
                    return cls(message.pid, fds[0], channel, stdio, released)
                messages.close_fds(fds)
        except BaseException:
            channel.close()
            stdio.close()
            raise
        channel.close()
        stdio.close()
        if isinstance(message, Failed):
            raise _clone_error(message)
        raise AiocontainError("the fork server did not start the container's process", fix="aiocontain doctor")

    def name_cgroup(self, cgroup: str) -> None:
        """Just before the release: tell the fork server the container's cgroup, which it removes should this
        process die (it kills the container then)."""
        try:
            messages.send(self._channel, Release(cgroup=cgroup))
        except OSError:
            pass  # the fork server is gone, and the container with it: its exit status says so

    async def wait_exit(self) -> None:
        """Wait until it has exited: the kernel says so through the pidfd (the fork server reaps it)."""
        if not self.exited:
            await anyio.wait_readable(self._pidfd)
            self.exited = True

    async def wait(self) -> int | None:
        """Wait for the exit, then its status from the fork server.

        None when the status is lost: the fork server died first (``status_lost``).
        """
        async with self._lock:
            await self.wait_exit()
            while self.returncode is None and not self.status_lost:
                message, fds = await _receive(self._channel)
                messages.close_fds(fds)
                if isinstance(message, Reaped):
                    self.returncode = os.waitstatus_to_exitcode(message.status)
                elif message is None:
                    self.status_lost = True
        return self.returncode

    def send_signal(self, signum: int) -> bool:
        """Signal it through its pidfd (no PID reuse race); False once it is gone or closed."""
        if self._pidfd < 0:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except OSError:  # ProcessLookupError: it has exited
            return False
        return True

    def kill(self) -> None:
        """SIGKILL, through the pidfd; nothing if it has exited."""
        self.send_signal(signal.SIGKILL)

    def has_exited(self) -> bool:
        """Whether it has exited, now (its pidfd is readable then): no wait."""
        if self.exited or self._pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    async def aclose(self) -> None:
        """Kill it if it still runs, wait until the fork server has reaped it, close its streams and fds.
        Shielded: it runs on every path. Reaped, not only exited: until then it is a zombie with a pid, which
        a caller who saw the teardown end would find still there."""
        if self._pidfd < 0:
            return
        with anyio.CancelScope(shield=True):
            if not self.exited:
                self.kill()
            with anyio.move_on_after(REAP_TIMEOUT):  # a fork server that stopped answering ends its own way
                await self.wait()
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    await stream.aclose()
        os.close(self._pidfd)
        self._pidfd = -1
        self._channel.close()
        self._released()


class Offer:
    """A spare the fork server offered (``Spare``): its pid, pidfd, the socket it waits on, its reply channel."""

    def __init__(self, message: Spare, fds: list[int]) -> None:
        self.pid = message.pid
        self.unshare_net = message.unshare_net
        self.pidfd, sock, channel = fds
        self.sock = socket.socket(fileno=sock)
        self.channel = socket.socket(fileno=channel)

    def let_go(self) -> None:
        """Not taken: shut its socket down, which ends its wait (it exits; the fork server reaps it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        os.close(self.pidfd)
        self.sock.close()
        self.channel.close()


def _clone_error(failure: Failed) -> AiocontainError:
    """The one line for the fork server's Failed instead of Forked."""
    from aiocontain.forkserver.userns import namespace_error

    if failure.step == messages.STEP_IDMAP:
        return SetupError(f"cannot map the container's user namespace: {failure.message}")
    return namespace_error(failure)  # STEP_NAMESPACES: the host's; out of fds: said as ours; else the set-up's


async def _receive(channel: socket.socket) -> tuple[messages.Message | None, list[int]]:
    """The next message on a non-blocking channel; (None, []) at end of stream."""
    while True:
        await anyio.wait_readable(channel)
        try:
            return messages.recv(channel)
        except BlockingIOError:
            continue
        except OSError as exc:
            if fdlimit.exhausted(exc):
                raise  # not the end of the channel: the pipeline says it in one line
            return None, []
