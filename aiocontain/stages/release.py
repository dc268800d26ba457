"""Stage 7, release: let PID 1 exec the command, and learn that it runs.

PID 1 has built its root since its Ready (spawn stage). With ``tty`` its
pty's master is taken first, and the window size set, so that the command reads
the right size from its start. The fork server is told the container's cgroup
(``name_cgroup``), then PID 1 gets its release byte; its report socket then says
whether the command was executed: a command that cannot be raises here with
podman's codes (127 not found, 126 not executable).

Reads ``child``, ``init``, ``cgroup``, ``runtime_dir``; sets ``console``,
``released``, ``started``.
"""

from __future__ import annotations

from aiocontain import events
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
    assert ctx.process is not None and ctx.init is not None and ctx.init_pid is not None
    if ctx.spec.tty:
        ctx.console = await ctx.init.take_console()
        ctx.stack.callback(ctx.console.close_fd)
        if ctx.spec.tty_size is not None:
            ctx.console.resize(*ctx.spec.tty_size)
    # First, so that the fork server knows the leaf to remove should we die right after the release.
    if ctx.cgroup is not None:
        ctx.process.name_cgroup(str(ctx.cgroup.path))
    ctx.init.release()
    ctx.released = True
    ctx.log.info(events.RELEASED, pid=ctx.init_pid)
    failure = await ctx.init.read_report()
    if failure is not None:
        raise ctx.init.error(failure)
    ctx.started = True
    if ctx.runtime_dir is not None:
        # The container's /etc files are bind-mounted by now and live on without their host path:
        # removing it early means even a SIGKILLed aiocontain leaves nothing behind.
        ctx.runtime_dir.remove()
    ctx.log.info(events.COMMAND_STARTED, pid=ctx.init_pid, command=list(ctx.spec.command))
