"""Stage 7, release: let the child build its root filesystem and exec the command.

Returns once the command runs; a command that cannot be executed raises here
with podman's codes (127 not found, 126 not executable).
"""

from __future__ import annotations

import errno
import os
import signal

import anyio

from aiocontain import events, messages
from aiocontain.errors import AiocontainError, CommandNotExecutable, CommandNotFound
from aiocontain.messages import Failed, Release
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
    assert ctx.control is not None and ctx.init_pid is not None and ctx.release_w is not None
    if ctx.spec.terminal_foreground:
        _hand_terminal_to(ctx)
    if ctx.cgroup is not None:
        # First, so that the child knows the leaf to remove should we die right after the release.
        try:
            messages.send(ctx.control, Release(cgroup=str(ctx.cgroup.path)))
        except OSError:
            pass  # the child has exited: PID 1 failed to build its root, and its report says why
    try:
        os.write(ctx.release_w, b"R")
    except BrokenPipeError:
        pass  # PID 1 was killed meanwhile: its exit report follows
    os.close(ctx.release_w)
    ctx.release_w = None
    ctx.released = True
    ctx.log.info(events.RELEASED, pid=ctx.init_pid)
    report = await _read_report(ctx)
    if report:
        raise _report_error(report, ctx)
    ctx.started = True
    if ctx.runtime_dir is not None:
        # The container's /etc files are bind-mounted by now and live on without their host path:
        # removing it early means even a SIGKILLed aiocontain leaves nothing behind.
        ctx.runtime_dir.remove()
    ctx.log.info(events.COMMAND_STARTED, pid=ctx.init_pid, command=list(ctx.spec.command))


async def init_failure(ctx: StageContext) -> AiocontainError:
    """Why PID 1 exited before the release (it builds its root before it, and may fail): its report."""
    report = await _read_report(ctx) if ctx.report_r is not None else b""
    return _report_error(report, ctx) if report else AiocontainError("the container's init exited during set-up")


def _report_error(report: bytes, ctx: StageContext) -> AiocontainError:
    failure = messages.decode(report)
    if isinstance(failure, Failed):
        return failure_error(failure, ctx.spec.command[0])
    return AiocontainError("the container's init sent an unknown report")


async def _read_report(ctx: StageContext) -> bytes:
    """The init's report pipe to end of file: empty once the command runs (close-on-exec), else a Failed.
    (Also empty when the init was killed first: its exit status then tells.)"""
    assert ctx.report_r is not None
    os.set_blocking(ctx.report_r, False)
    report = bytearray()
    while True:
        try:
            chunk = os.read(ctx.report_r, 65536)
        except BlockingIOError:
            await anyio.wait_readable(ctx.report_r)
            continue
        if not chunk:
            break
        report += chunk
    os.close(ctx.report_r)
    ctx.report_r = None
    return bytes(report)


def failure_error(failure: Failed, command: str) -> AiocontainError:
    if failure.step == "exec":
        if failure.errno in (errno.ENOENT, errno.ENOTDIR):
            return CommandNotFound(
                f"{command}: command not found in the container", fix="check the command and the rootfs's PATH"
            )
        return CommandNotExecutable(f"cannot execute {failure.message}")
    return AiocontainError(f"container set-up failed: {failure.message}")


def _hand_terminal_to(ctx: StageContext) -> None:
    """Make the container the terminal's foreground process group, so ^C reaches it, not us."""
    assert ctx.init_pid is not None
    try:
        os.tcsetpgrp(0, ctx.init_pid)
    except OSError:
        return
    ctx.stack.callback(_take_terminal_back)


def _take_terminal_back() -> None:
    try:
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # we are a background group by now
    except ValueError:
        return  # not the main thread: without ignoring SIGTTOU, tcsetpgrp would stop us
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)
