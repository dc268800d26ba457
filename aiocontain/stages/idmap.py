"""Stage 2, idmap: make the invoking user root inside the container.

The container's user namespace is nested in the fork server's, which was mapped
once, as podman maps its pause process's (``aiocontain.forkserver.userns``): 0
to the user and 1..N to the subordinate ids where the user has them, otherwise
the user alone. This stage has the fork server, root of that parent namespace,
write the container's maps: the same ids, with no setuid helper per container.

The mapping begins during spawn (``begin``), as soon as the child says its
namespaces exist, and runs alongside the rest of spawn (the child forking the
init) as a task of the container's task group; this stage waits for it and
raises its error.
"""

from __future__ import annotations

import anyio

from aiocontain import events
from aiocontain.stages.context import StageContext


class IdMapping:
    """The maps being written: ``wait`` returns once written, or raises why they could not be."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise self.error


def begin(ctx: StageContext) -> None:
    """Start writing the child's id maps in the container's task group."""
    mapping = ctx.idmap = IdMapping()

    async def write() -> None:
        try:
            await _map(ctx)
        except Exception as exc:  # noqa: BLE001 - raised by the stage, in the pipeline's order
            mapping.error = exc
        finally:
            mapping.done.set()

    ctx.tg.start_soon(write)


async def run(ctx: StageContext) -> None:
    if ctx.idmap is None:
        begin(ctx)
    assert ctx.idmap is not None
    await ctx.idmap.wait()


async def _map(ctx: StageContext) -> None:
    assert ctx.process is not None
    await ctx.process.map_ids()
    mapping = ctx.process.mapping
    if mapping is not None:
        ctx.log.debug(events.IDMAP_MAPPED, mode=mapping.mode, uid_range=mapping.uid_range, gid_range=mapping.gid_range)
