"""Stage 2, idmap: make the invoking user root inside the container.

The container's user namespace is nested in the fork server's, which was mapped
once, as podman maps its pause process's (``aiocontain.forkserver.userns``): 0
to the user and 1..N to the subordinate ids where the user has them, otherwise
the user alone. This stage has the fork server, root of that parent namespace,
write the container's maps: the same ids, with no setuid helper per container.

The request goes to the fork server during spawn (``begin``), as soon as the
child says its namespaces exist, so the maps are written while the child forks
the init; this stage reads the answer (it waits on the fork server's channel,
with no task of its own) and raises its error. Once the maps are written it tells
PID 1 (``M`` on its release pipe), which then builds the container's root while
the other stages run; the release stage sends the second byte.
"""

from __future__ import annotations

import os

from aiocontain import events, messages
from aiocontain.stages.context import StageContext


def begin(ctx: StageContext) -> None:
    """Ask the fork server to write the child's id maps; the answer waits on its channel."""
    assert ctx.process is not None
    ctx.process.request_map()
    ctx.idmap_requested = True


async def run(ctx: StageContext) -> None:
    assert ctx.process is not None
    if not ctx.idmap_requested:
        begin(ctx)
    await ctx.process.ids_mapped()
    assert ctx.release_w is not None
    try:
        os.write(ctx.release_w, messages.MAPPED)  # PID 1 may build its root now, while the host side is set up
    except BrokenPipeError:
        pass  # PID 1 is gone: the release reads why
    mapping = ctx.process.mapping
    if mapping is not None:
        ctx.log.debug(events.IDMAP_MAPPED, mode=mapping.mode, uid_range=mapping.uid_range, gid_range=mapping.gid_range)
