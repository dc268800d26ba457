"""Stage 2, idmap: make the invoking user root inside the container.

The container's user namespace is nested in the fork server's, which was mapped
once, as podman maps its pause process's (``aiocontain.forkserver.userns``): 0
to the user and 1..N to the subordinate ids where the user has them, otherwise
the user alone. The fork server, root of that parent namespace, writes the
container's maps: the same ids, with no setuid helper per container.

The fork server writes them as it clones PID 1, before it answers the spawn
stage (a spare's before its offer): this stage tells PID 1 (``mapped``), which
builds the container's root while the other stages run. PID 1 nearly always
finds them written first, and builds without waiting for this.

Reads ``process`` and ``init``; sets nothing.
"""

from __future__ import annotations

from aiocontain import events
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
    assert ctx.process is not None and ctx.init is not None
    ctx.init.mapped()
    mapping = ctx.process.mapping
    if mapping is not None:
        ctx.log.debug(events.IDMAP_MAPPED, mode=mapping.mode, uid_range=mapping.uid_range, gid_range=mapping.gid_range)
