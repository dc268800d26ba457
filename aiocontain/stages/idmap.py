"""Stage 2, idmap: make the invoking user root inside the container.

The container's user namespace is nested in the fork server's, which was mapped
once, as podman maps its pause process's (``aiocontain.forkserver.userns``): 0
to the user and 1..N to the subordinate ids where the user has them, otherwise
the user alone. The fork server, root of that parent namespace, writes the
container's maps: the same ids, with no setuid helper per container.

The fork server writes them as it clones PID 1, before anyone hears of it (a
spare's before its offer), so before the spawn stage sends the Config: PID 1
builds the container's root while the other stages run, and this stage only
says how the ids are mapped.

Reads ``process``; sets nothing.
"""

from __future__ import annotations

from aiocontain import events
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
    assert ctx.process is not None
    mapping = ctx.process.mapping
    if mapping is not None:
        ctx.log.debug(events.IDMAP_MAPPED, mode=mapping.mode, uid_range=mapping.uid_range, gid_range=mapping.gid_range)
