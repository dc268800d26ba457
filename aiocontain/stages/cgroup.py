"""Stage 3, cgroup: put the container in a cgroup v2 leaf with its limits.

Resource limits are not part of the spec yet, so the stage always reports
itself skipped; it keeps its place in the pipeline so that events and plugins
see the same stages now as once limits exist.
"""

from __future__ import annotations

from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    ctx.log.debug("cgroup.skipped", reason="no resource limit requested")
    return False
