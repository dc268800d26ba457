"""``ForkServer``: one fork server process, owned by the process that started it.

The owner holds one end of a SOCK_SEQPACKET pair; the server holds the other.
Once that reaches end of stream (``close``, or the owner's death), or the
owner's process exits (the server holds its pidfd: a forked copy of the
owner's socket end may linger), the server kills the containers it cloned,
reaps them, removes their cgroups if the owner had named them, and exits. The
owner reaps it in ``close``: no zombie is left.

Two ways to start one:

- ``ForkServer.start()``: a fresh ``python -I -S``; safe from any process
  (threads and running event loops included). ``Container`` uses a process-wide
  one, started on first use (``default``).
- ``ForkServer.fork_here()``: fork this very process, without exec. Only for a
  single-threaded process that has loaded nothing but the standard library: the
  CLI, at start-up, so that it never starts a second interpreter and the server's
  imports run on the other core while the CLI imports anyio.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiocontain import stdfds

if TYPE_CHECKING:
    from aiocontain.errors import AiocontainError
    from aiocontain.forkserver.process import ForkedProcess, Offer
    from aiocontain.forkserver.userns import IdMapping

UNSHARE_TIMEOUT = 10.0  # for the server's first message: a fresh interpreter's start-up under load

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_BOOT = "import sys;sys.path.insert(0,{root!r});from aiocontain.child.forkserver import main;main({fd})"


class ForkServer:
    """A running fork server. ``fork`` gives a container's PID 1; ``close`` ends the server and reaps it."""

    def __init__(self, pid: int, requests: socket.socket, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.owner = os.getpid()
        self._requests = requests
        self._popen = popen  # kept so that subprocess never reaps it behind our back
        self._pidfd = os.pidfd_open(pid)
        self._active = 0
        self._closed = False
        self._retired = False  # died and replaced while its containers were open: closed after the last
        self.mapping: IdMapping | None = None  # its user namespace's, once mapped (before the first fork)
        self._map_error: AiocontainError | None = None
        self._map_lock = threading.Lock()
        # The server's offers of spares (Spare) wait in the request socket until a fork is asked for: then read,
        # and taken or let go, under this lock (event loops in other threads may fork too).
        self._offers_lock = threading.Lock()
        # Mapping waits for the server's start-up and runs two setuid helpers: begun at once, in a thread of
        # its own, it overlaps the owner's own start-up (the CLI's imports) instead of the first container's.
        self._mapper = threading.Thread(target=self._map_quietly, name="aiocontain-fork-server-map", daemon=True)
        self._mapper.start()

    @classmethod
    def start(cls) -> ForkServer:
        """Start a fork server as a fresh ``python -I -S`` (isolated, stdlib only)."""
        stdfds.ensure()  # its socket must not take a closed stdio fd's number: a container would be given it
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOT.format(root=_PACKAGE_ROOT, fd=child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return cls(popen.pid, parent, popen)

    @classmethod
    def fork_here(cls) -> ForkServer:
        """Fork a fork server from this process. Call it single-threaded, before heavy imports."""
        stdfds.ensure()  # as start's
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        owner = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                fd = child.detach()
                parent.detach()
                os.closerange(3, fd)  # whatever the owner inherited is not ours to hold open
                os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
                from aiocontain.child import forkserver

                owner_pidfd = forkserver.prepare(owner)
                requests = socket.socket(fileno=fd)
                forkserver.own_user_namespace(requests)
                forkserver.serve(requests, owner_pidfd)
            finally:
                os._exit(70)
        child.close()
        return cls(pid, parent)

    @property
    def running(self) -> bool:
        """Not closed, its user namespace not failed to map, and the process alive (its pidfd not readable)."""
        return not self._closed and self._map_error is None and not _readable(self._pidfd, 0)

    async def fork(
        self,
        control: socket.socket,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        unshare_net: bool = True,
    ) -> ForkedProcess:
        """Clone a container's PID 1, with control (its end of the control socket) and stdio as for
        ``anyio.open_process``, into new namespaces: a network namespace of its own if unshare_net (the
        Config's must say the same).

        The caller owns the returned process and must ``aclose`` it on every path.
        """
        from aiocontain import messages
        from aiocontain.forkserver.process import ForkedProcess

        if self._closed:
            raise RuntimeError("the fork server is closed")
        if self.mapping is None:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self._map_user_namespace)
        with self._offers_lock:
            # A spare offered for this kind of request takes it from us directly: no hop through the server.
            offer, other = self._read_offers(unshare_net)
            claimed = None
            if offer is not None:
                claimed = ForkedProcess.claim(offer, control, stdin, stdout, stderr, self._released)
            if claimed is None:
                try:
                    fork = messages.Fork(unshare_net)
                    sent = ForkedProcess.send_request(self._requests, control, stdin, stdout, stderr, fork)
                finally:
                    if other is not None:
                        other.let_go()  # after our request: the server's next spare is of its kind
        if claimed is not None:
            process = claimed
        else:
            process = await ForkedProcess.wait_forked(*sent, self._released)
        process.mapping = self.mapping
        self._active += 1
        return process

    def _read_offers(self, unshare_net: bool) -> tuple[Offer | None, Offer | None]:
        """The spares the server offered: (one that has the namespaces asked for, to take; one of another kind,
        to let go once our request is sent). Every other offer read is let go (its spare exits)."""
        from aiocontain import messages
        from aiocontain.forkserver.process import Offer

        offers: list[Offer] = []
        while _readable(self._requests.fileno(), 0):
            try:
                message, fds = messages.recv(self._requests)
            except OSError:
                break  # an offer whose fds were lost (out of fds): the server lets its spare go at our request
            if message is None:
                break  # the server is gone: the Fork request finds it so
            if isinstance(message, messages.Spare) and len(fds) == 3:
                offers.append(Offer(message, fds))
            else:
                messages.close_fds(fds)
        for stale in offers[:-1]:
            stale.let_go()  # the server offers one at a time: an older one is dead already
        offer = offers[-1] if offers else None
        if offer is not None and _readable(offer.pidfd, 0):
            offer.let_go()  # dead: the server reaps it
            offer = None
        if offer is not None and offer.unshare_net != unshare_net:
            return None, offer
        return offer, None

    def _map_quietly(self) -> None:
        try:
            self._map_user_namespace()
        except Exception:  # noqa: BLE001 - kept in _map_error: the first fork raises it
            pass

    def _map_user_namespace(self) -> None:
        """Once, before the first fork (in a worker thread: it waits and runs setuid helpers): wait for the
        server's Unshared and map its user namespace. A failure stays: every later fork raises it too."""
        from aiocontain.errors import AiocontainError

        with self._map_lock:
            if self.mapping is not None:
                return
            if self._map_error is None:
                try:
                    self.mapping = self._map_once()
                except AiocontainError as error:
                    self._map_error = error
                except OSError as exc:
                    self._map_error = AiocontainError(f"cannot map the fork server's user namespace: {exc}")
            if self._map_error is not None:
                failed = self._map_error
                raise AiocontainError(failed.message, fix=failed.fix)  # a fresh one each time: no traceback piles up

    def _map_once(self) -> IdMapping:
        from aiocontain import messages
        from aiocontain.errors import AiocontainError
        from aiocontain.forkserver import userns

        if not _readable(self._requests.fileno(), UNSHARE_TIMEOUT):
            raise AiocontainError("the fork server did not start", fix="aiocontain doctor")
        message, fds = messages.recv(self._requests)
        messages.close_fds(fds)
        if isinstance(message, messages.Failed):
            raise userns.namespace_error(message)
        if not isinstance(message, messages.Unshared):
            raise AiocontainError("the fork server exited at start-up", fix="aiocontain doctor")
        return userns.map_from_outside(self.pid)

    def _released(self) -> None:
        self._active -= 1
        if self._retired and not self._active:
            self.close()  # reap it and close its pidfd: nobody else holds it any more

    def close(self) -> None:
        """End the server and reap it. Refused while containers it cloned are still open."""
        if self._closed:
            return
        if self._active:
            raise RuntimeError(f"{self._active} container process(es) of this fork server are still open")
        self._closed = True
        if self._mapper.is_alive() and threading.current_thread() is not self._mapper:
            from aiocontain.forkserver import userns

            # It uses the request socket, within its own timeouts; bounded here too, so that no way it could be
            # stuck (an embedder's KeyboardInterrupt in an import it waits on) holds the close.
            self._mapper.join(UNSHARE_TIMEOUT + 2 * userns.HELPER_TIMEOUT)
        self._requests.close()  # end of stream: with no child left, the server exits at once
        if os.getpid() == self.owner:
            if self._popen is not None:
                self._popen.wait()
            else:
                os.waitpid(self.pid, 0)
        os.close(self._pidfd)


def _readable(fd: int, timeout: float) -> bool:
    """Whether fd becomes readable within timeout seconds (poll, not select: fds past 1023 are fine)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


_default: ForkServer | None = None
_lock = threading.Lock()


def default() -> ForkServer:
    """This process's fork server, started on first use (again if it died, or after a fork of this process)."""
    global _default
    with _lock:
        server = _default
        if server is not None and server.owner == os.getpid() and server.running:
            return server
        if server is not None and server.owner == os.getpid():
            if server._active:
                server._retired = True  # it died: reaped once its last container is closed
            else:
                server.close()  # it died: reap it
        _default = ForkServer.start()
        return _default


def current() -> ForkServer | None:
    """This process's default fork server if one was started (and not closed), without starting one."""
    with _lock:
        return _default if _default is not None and _default.owner == os.getpid() else None


def install(server: ForkServer) -> None:
    """Make server this process's default (the CLI's, forked at start-up)."""
    global _default
    with _lock:
        _default = server


def close_default() -> None:
    """Close this process's fork server, if it has one (again started on next use). Containers must be done."""
    global _default
    with _lock:
        server, _default = _default, None
    if server is not None and server.owner == os.getpid():
        server.close()
