"""Stage 7, release: let the child build its root filesystem and exec the command.

Returns once the command runs; a command that cannot be executed raises here
with podman's codes (127 not found, 126 not executable).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal

from aiocontain import events, messages
from aiocontain.errors import AiocontainError, CommandNotExecutable, CommandNotFound
from aiocontain.messages import Exited, Failed, Release, Started
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
    assert ctx.control is not None and ctx.init_pid is not None
    if ctx.spec.terminal_foreground:
        _hand_terminal_to(ctx)
    messages.send(ctx.control, Release(cgroup=str(ctx.cgroup.path) if ctx.cgroup is not None else None))
    ctx.released = True
    ctx.log.info(events.RELEASED, pid=ctx.init_pid)
    message, _ = await ctx.receive()
    if isinstance(message, Started):
        ctx.started = True
        if ctx.runtime_dir is not None:
            # The container's /etc files are bind-mounted by now and live on without their host path:
            # removing it early means even a SIGKILLed aiocontain leaves nothing behind.
            shutil.rmtree(ctx.runtime_dir, ignore_errors=True)
        ctx.log.info(events.COMMAND_STARTED, pid=ctx.init_pid, command=list(ctx.spec.command))
        return
    if isinstance(message, Failed):
        raise failure_error(message, ctx.spec.command[0])
    if isinstance(message, Exited):
        raise AiocontainError(f"the container's init was killed (signal {message.signal}) before the command started")
    raise AiocontainError("the container process exited during set-up")


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
