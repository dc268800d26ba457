"""Stage 4, network: start the network driver's host side (slirp4netns) against the child.

Reads ``driver``, ``process`` (its namespaces), ``runtime_dir`` (slirp4netns's API
socket); the driver pushes its helper's stop on ``stack`` and fails the run
through ``fail`` should the helper exit early.
"""

from __future__ import annotations

from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    return await ctx.driver.start(ctx)
