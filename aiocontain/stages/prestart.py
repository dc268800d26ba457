"""Stage 6, prestart: the plugins' prestart hooks, once the container exists and before its command starts.

Namespaces, cgroup and network are ready, so a hook can add port forwards
through slirp4netns's API or veto the run; teardown undoes everything either way.

Reads ``plugins``, ``container``, ``init_pid``, ``network``, ``cgroup``, ``driver``; sets nothing.
"""

from __future__ import annotations

from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    if not ctx.plugins:
        return False  # before the plugins' modules are imported: a run without plugins never needs them
    from aiocontain.plugins.api import PrestartContext
    from aiocontain.plugins.hooks import run_hooks

    assert ctx.container is not None and ctx.init_pid is not None
    context = PrestartContext(
        container=ctx.container,
        pid=ctx.init_pid,
        network=dict(ctx.network),
        cgroup=ctx.cgroup.path if ctx.cgroup is not None else None,
        _api=ctx.driver.api,
    )
    return await run_hooks(ctx.plugins, "prestart", context, ctx.log)
