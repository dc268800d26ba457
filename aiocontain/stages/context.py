"""The state one container's set-up stages share, and the rules for failing it."""

from __future__ import annotations

import signal
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from aiocontain.errors import AiocontainError
from aiocontain.events import EventLog
from aiocontain.spec import ContainerSpec

if TYPE_CHECKING:
    from aiocontain.cgroups import Leaf, Placement
    from aiocontain.channels import ChildChannel, InitChannel
    from aiocontain.forkserver import ForkServer
    from aiocontain.forkserver.process import ForkedProcess
    from aiocontain.forkserver.stdio import PtyStream
    from aiocontain.mounts import Mount
    from aiocontain.network import NetworkDriver
    from aiocontain.plugins import Plugin
    from aiocontain.plugins.api import ContainerHandle
    from aiocontain.runtimedir import RuntimeDir
    from aiocontain.users import ExecUser


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
    container: ContainerHandle | None = None  # the handle the plugins' hooks see
    plugins: list[Plugin] = field(default_factory=list)
    fork_server: ForkServer | None = None
    seccomp: str | None = None  # the compiled filter (BPF, base64) PID 1 installs before exec; None: none
    user: ExecUser | None = None  # --user, resolved in the rootfs's passwd and group before anything started
    cgroup: Leaf | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # from prepare hooks
    mounts: list[Mount] = field(default_factory=list)  # from prepare hooks
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # from prepare hooks: target -> content, mode
    setup_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    runtime_dir: RuntimeDir | None = None  # removed once the command runs (its files are bind-mounted by then)
    process: ForkedProcess | None = None  # PID 1, and the fork server's reply channel about it
    child: ChildChannel | None = None  # the control socket to PID 1, until its Ready
    init: InitChannel | None = None  # PID 1's release pipe and report socket
    init_pid: int | None = None
    console: PtyStream | None = None  # tty: the master of the container's pty
    netlink: socket.socket | None = None
    network: dict[str, Any] = field(default_factory=dict)
    failure: AiocontainError | None = None
    released: bool = False
    started: bool = False
    stopping: bool = False

    def fail(self, error: AiocontainError) -> None:
        """A helper failed: remember the first error, stop set-up and kill the container."""
        if self.failure is None:
            self.failure = error
        self.setup_scope.cancel()
        self.kill()

    async def root_cause(self, error: AiocontainError) -> AiocontainError:
        """The error to report for a set-up that failed with error. PID 1 builds its root before its release and
        may die doing so; what fails after that (slirp4netns, which cannot join namespaces that are gone, a
        cgroup) is its consequence, and PID 1's own report says why: that is the one line then."""
        if self.init is None or self.process is None or self.released or not self.process.has_exited():
            return error
        # Shielded: set-up may be cancelled by now (a helper's failure). Bounded: gone, PID 1's report is at its end.
        with anyio.CancelScope(shield=True), anyio.move_on_after(_REPORT_TIMEOUT):
            failure = await self.init.read_report()
            if failure is not None:
                return self.init.error(failure)
        return error  # killed (by us, for this error), or exited saying nothing: the error stands

    def kill(self, signum: int = signal.SIGKILL) -> bool:
        """Signal the container's PID 1 through its pidfd (no PID reuse race); False if it is gone."""
        return self.process is not None and self.process.send_signal(signum)


_REPORT_TIMEOUT = 1.0
