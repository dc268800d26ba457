"""Stage 7, release: let the child build its root filesystem and exec the command.

Returns once the command runs; a command that cannot be executed raises here
with podman's codes (127 not found, 126 not executable). With ``tty`` the
init's pty master is taken first, from its report socket.
"""

from __future__ import annotations

import errno
import os
import socket

import anyio

from aiocontain import events, messages
from aiocontain.errors import AiocontainError, CommandNotExecutable, CommandNotFound
from aiocontain.forkserver.stdio import PtyStream
from aiocontain.messages import Console, Failed, Release
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
    assert ctx.control is not None and ctx.init_pid is not None and ctx.release_w is not None
    if ctx.spec.tty:
        await _take_console(ctx)
    if ctx.cgroup is not None:
        # First, so that the child knows the leaf to remove should we die right after the release.
        try:
            messages.send(ctx.control, Release(cgroup=str(ctx.cgroup.path)))
        except OSError:
            pass  # the child has exited: PID 1 failed to build its root, and its report says why
    try:
        os.write(ctx.release_w, messages.RELEASE)
    except BrokenPipeError:
        pass  # PID 1 was killed meanwhile: its exit report follows
    os.close(ctx.release_w)
    ctx.release_w = None
    ctx.released = True
    ctx.log.info(events.RELEASED, pid=ctx.init_pid)
    failure = await _read_report(ctx)
    if failure is not None:
        raise _report_error(failure, ctx)
    ctx.started = True
    if ctx.runtime_dir is not None:
        # The container's /etc files are bind-mounted by now and live on without their host path:
        # removing it early means even a SIGKILLed aiocontain leaves nothing behind.
        ctx.runtime_dir.remove()
    ctx.log.info(events.COMMAND_STARTED, pid=ctx.init_pid, command=list(ctx.spec.command))


async def init_failure(ctx: StageContext) -> AiocontainError:
    """Why PID 1 exited before the release (it builds its root before it, and may fail): its report."""
    failure = await _read_report(ctx) if ctx.report_r is not None else None
    return _report_error(failure, ctx) if failure else AiocontainError("the container's init exited during set-up")


async def _take_console(ctx: StageContext) -> None:
    """``tty``: PID 1 sends its pty's master once its root is built, before it waits for the release, so the
    window size is set before the command can read it."""
    message, fds = await _receive_report(ctx)
    if isinstance(message, Console) and len(fds) == 1:
        ctx.console = PtyStream(fds[0])
        ctx.stack.callback(ctx.console.close_fd)
        if ctx.spec.tty_size is not None:
            ctx.console.resize(*ctx.spec.tty_size)
        return
    for fd in fds:
        os.close(fd)
    if isinstance(message, Failed):
        raise _report_error(message, ctx)
    raise AiocontainError("the container's init exited during set-up")


def _report_error(failure: Failed, ctx: StageContext) -> AiocontainError:
    return failure_error(failure, ctx.spec.command[0])


async def _read_report(ctx: StageContext) -> Failed | None:
    """The init's report socket to end of stream: nothing once the command runs (close-on-exec), else a
    Failed. (Also nothing when the init was killed first: its exit status then tells.)"""
    failure: Failed | None = None
    while True:
        message, fds = await _receive_report(ctx)
        for fd in fds:
            os.close(fd)  # nothing else rides on it after the Console
        if message is None:
            break
        if isinstance(message, Failed) and failure is None:
            failure = message
    ctx.close_report()
    return failure


async def _receive_report(ctx: StageContext) -> tuple[messages.Message | None, list[int]]:
    """One datagram from the init's report socket; (None, []) at end of stream."""
    assert ctx.report_r is not None
    fd = ctx.report_r
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
        report.detach()  # the fd stays ctx.report_r's, closed once by the stage context


def failure_error(failure: Failed, command: str) -> AiocontainError:
    if failure.step == messages.STEP_EXEC:
        if failure.errno in (errno.ENOENT, errno.ENOTDIR):
            return CommandNotFound(
                f"{command}: command not found in the container", fix="check the command and the rootfs's PATH"
            )
        return CommandNotExecutable(f"cannot execute {failure.message}")
    return AiocontainError(f"container set-up failed: {failure.message}")
