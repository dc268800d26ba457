"""Stage 5, tap: wait until the container's network is ready, by netlink events (and slirp4netns's ready fd).

Reads ``driver`` and ``netlink``; sets ``network``, the facts of network.ready.
"""

from __future__ import annotations

from aiocontain import events
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    info = await ctx.driver.wait_ready(ctx.netlink)
    if info is None:
        return False
    ctx.network = info.as_dict()
    ctx.log.info(events.NETWORK_READY, **ctx.network)
    return True
