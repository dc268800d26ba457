"""Stage 4, network: start the network driver's host side (slirp4netns) against the child.

Reads ``driver``, ``process`` (PID 1, whose namespaces the helper joins) and
``runtime_dir`` (for the helper's API socket); pushes the driver's cleanup on
``stack``. A helper that exits early fails the run (``fail``),
unless the container is being stopped anyway.
"""

from __future__ import annotations

from aiocontain import events
from aiocontain.errors import AiocontainError
from aiocontain.network import NetworkHost
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    assert ctx.process is not None and ctx.runtime_dir is not None
    driver = ctx.driver

    def failed(error: AiocontainError) -> None:
        if ctx.stopping:
            return  # teardown stopped it
        # The run fails with this error, printed once: the event is its record, not a second line.
        ctx.log.info(events.HELPER_FAILED, helper=driver.name, error=error.message)
        ctx.fail(error)

    host = NetworkHost(pid=ctx.process.pid, runtime_dir=ctx.runtime_dir.path, tg=ctx.tg, failed=failed, log=ctx.log)
    cleanup = await driver.start(host)
    if cleanup is None:
        return False
    ctx.stack.push_async_callback(cleanup)
    return True
