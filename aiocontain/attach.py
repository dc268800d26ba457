"""``aiocontain.attach``: a handle to a running container of this user that another process runs.

A container started by ``aiocontain run -d``, by another ``aiocontain run`` or by another program that embeds
aiocontain is found by name or id in the records (aiocontain.registry). The handle holds pidfds of its PID 1
and of its monitor, opened and then checked against the recorded start times, so signals reach that process
and no other even if the pid is reused, and ``wait`` is woken by the kernel (the pidfd becomes readable),
never by polling. The container stays the monitor's: the handle neither tears anything down nor keeps the
container alive.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from aiocontain import registry
from aiocontain.errors import AiocontainError

if TYPE_CHECKING:
    from aiocontain.execprocess import ExecProcess

__all__ = ["AttachedContainer", "attach"]


class AttachedContainer:
    """A running container of another process: ``pid``, ``name``, ``id``, ``wait()``, ``kill()``, ``stop()``,
    ``exec()``.

    Use it as a context manager (or call ``close``) to close its pidfds.
    """

    def __init__(self, record: registry.Record, pidfd: int, monitor_pidfd: int | None) -> None:
        self.record = record
        self.id = record.id
        self.name = record.name
        self.pid = record.pid  # the container's PID 1, as this host sees it
        self._pidfd = pidfd
        self._monitor_pidfd = monitor_pidfd
        self._exit_code: int | None = None
        self._exited = False

    def __enter__(self) -> AttachedContainer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._pidfd, self._monitor_pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._pidfd, self._monitor_pidfd = -1, None

    async def wait(self) -> int | None:
        """Wait for the container to exit. Returns its exit code when its monitor recorded one (a container of
        ``run -d``: once its monitor has torn it down), else None (another process's foreground container,
        whose status is that process's)."""
        if not self._exited:
            if self._pidfd < 0:
                raise RuntimeError("the handle is closed")
            await anyio.wait_readable(self._pidfd)
            if self.record.kept and self._monitor_pidfd is not None:
                await anyio.wait_readable(self._monitor_pidfd)  # it records the exit code, then exits
                try:
                    self._exit_code = registry.lookup(self.id).exit_code
                except AiocontainError:
                    self._exit_code = None  # removed meanwhile (aiocontain rm)
            self._exited = True
        return self._exit_code

    def kill(self, signum: int = signal.SIGKILL) -> bool:
        """Send signum to PID 1 (default SIGKILL, which ends every process in it); False once it has exited."""
        if self._pidfd < 0:
            raise RuntimeError("the handle is closed")
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    async def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        tty: bool = False,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> ExecProcess:
        """Run argv in the container as ``aiocontain exec`` does (``Container.exec`` has the details); returns once
        it runs. The process is the caller's to wait for or close (``async with``); it is in the container's PID
        namespace, so it ends with the container whatever the caller does."""
        from aiocontain.execprocess import ExecProcess, for_record

        if self._pidfd < 0:
            raise RuntimeError("the handle is closed")
        if self.record.state() != "running":
            raise AiocontainError(f"container {self.name} is not running", fix="aiocontain ps -a shows its state")
        message = for_record(self.record, argv, env=env, cwd=cwd, user=user, tty=tty)
        return await ExecProcess.start(message, stdin, stdout, stderr)

    async def stop(self, timeout: float | None = None) -> int | None:
        """As ``podman stop``: SIGTERM, then SIGKILL when still running after timeout seconds (default: the
        container's stop timeout); returns as ``wait`` does."""
        self.kill(signal.SIGTERM)
        with anyio.move_on_after(self.record.stop_timeout if timeout is None else timeout):
            return await self.wait()
        self.kill(signal.SIGKILL)
        return await self.wait()


def attach(name_or_id: str) -> AttachedContainer:
    """A handle to the running container of this name or id (AiocontainError when there is none running)."""
    record = registry.lookup(name_or_id)
    pidfd = record.pidfd()
    if pidfd is None:
        raise AiocontainError(f"container {name_or_id} is not running", fix="aiocontain ps lists the running ones")
    return AttachedContainer(record, pidfd, record.monitor_pidfd())
