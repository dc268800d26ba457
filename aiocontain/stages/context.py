"""The state one container's set-up stages share, and the rules for failing it."""

from __future__ import annotations

import math
import os
import signal
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from aiocontain import fdlimit, messages
from aiocontain.errors import AiocontainError
from aiocontain.events import EventLog
from aiocontain.messages import Message
from aiocontain.spec import ContainerSpec

if TYPE_CHECKING:
    from aiocontain.cgroups import Leaf, Placement
    from aiocontain.container import Container
    from aiocontain.forkserver import ForkServer
    from aiocontain.forkserver.process import ForkedProcess
    from aiocontain.forkserver.stdio import PtyStream
    from aiocontain.mounts import Mount
    from aiocontain.network import NetworkDriver
    from aiocontain.plugins import Plugin
    from aiocontain.runtimedir import RuntimeDir


@dataclass
class StageContext:
    """Everything the pipeline has built so far. Each resource is pushed on ``stack`` as it is made,
    so teardown undoes set-up in reverse order on every path."""

    spec: ContainerSpec
    rootfs: Path
    log: EventLog
    tg: TaskGroup
    stack: AsyncExitStack
    driver: NetworkDriver
    placement: Placement | None = None
    init_binary: str | None = None  # --init: the host's static init, run as PID 1
    container: Container | None = None  # the handle the plugins' hooks see
    plugins: list[Plugin] = field(default_factory=list)
    fork_server: ForkServer | None = None
    seccomp: str | None = None  # the compiled filter (BPF, base64) PID 1 installs before exec; None: none
    cgroup: Leaf | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # from prepare hooks
    mounts: list[Mount] = field(default_factory=list)  # from prepare hooks
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # from prepare hooks: target -> content, mode
    setup_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    runtime_dir: RuntimeDir | None = None  # removed once the command runs (its files are bind-mounted by then)
    process: ForkedProcess | None = None
    control: socket.socket | None = None
    idmap_requested: bool = False  # the fork server was asked to write the maps (stage idmap reads its answer)
    init_pid: int | None = None
    pidfd: int | None = None
    release_w: int | None = None  # the init's release pipe: M (mapped: build the root), then R (exec)
    report_r: int | None = None  # the init's report socket: Console (tty), a Failed, end of stream once it runs
    console: PtyStream | None = None  # tty: the master of the container's pty
    netlink: socket.socket | None = None
    network: dict[str, Any] = field(default_factory=dict)
    failure: AiocontainError | None = None
    released: bool = False
    started: bool = False
    stopping: bool = False
    _inbox: Any = None
    _outbox: Any = None
    _drained: bool = False

    def __post_init__(self) -> None:
        self._outbox, self._inbox = anyio.create_memory_object_stream[tuple[Message | None, list[int]]](math.inf)

    async def receive(self) -> tuple[Message | None, list[int]]:
        """The next message from the child; (None, []) once its control socket has closed."""
        try:
            return await self._inbox.receive()  # type: ignore[no-any-return]
        except anyio.EndOfStream:
            return None, []

    async def read_control(self) -> None:
        """Task: move messages from the control socket into the inbox until end of stream."""
        assert self.control is not None
        try:
            while True:
                await anyio.wait_readable(self.control)
                try:
                    item = messages.recv(self.control)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if fdlimit.exhausted(exc):
                        self.fail(fdlimit.exhaustion_error(exc))  # a message and its fds are lost: give up
                        continue
                    item = (None, [])
                if item[0] is None or self._drained:
                    _close_all(item[1])  # nobody will ever receive these fds
                    if item[0] is None:
                        return
                    continue
                self._outbox.send_nowait(item)  # no checkpoint: cancellation cannot drop it, fds and all
        finally:
            self._outbox.close()

    def drain(self) -> None:
        """Teardown: close the fds of messages nobody received (a Ready whose set-up was cancelled)."""
        self._drained = True
        while True:
            try:
                _message, fds = self._inbox.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            _close_all(fds)

    def close_init_pipes(self) -> None:
        """Close what is left of the init's release pipe and report socket (each once: the number may be reused)."""
        if self.release_w is not None:
            os.close(self.release_w)
            self.release_w = None
        self.close_report()

    def close_report(self) -> None:
        if self.report_r is not None:
            fd, self.report_r = self.report_r, None
            _close_notifying(fd)

    def fail(self, error: AiocontainError) -> None:
        """A helper failed: remember the first error, stop set-up and kill the container."""
        if self.failure is None:
            self.failure = error
        self.setup_scope.cancel()
        self.kill()

    def kill(self, signum: int = signal.SIGKILL) -> bool:
        """Signal the container's PID 1 through its pidfd (no PID reuse race); False if it is gone."""
        if self.pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except OSError:  # ProcessLookupError: it has exited
            return False
        return True


def _close_notifying(fd: int) -> None:
    try:
        anyio.notify_closing(fd)  # a task waiting on it wakes with ClosedResourceError
    except RuntimeError:
        pass  # no event loop in this thread: nobody can be waiting
    os.close(fd)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
