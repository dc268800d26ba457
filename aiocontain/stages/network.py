"""Stage 4, network: start the network driver's host side (slirp4netns) against the child."""

from __future__ import annotations

from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    return await ctx.driver.start(ctx)
