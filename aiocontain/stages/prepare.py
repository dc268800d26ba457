"""Stage 0, prepare: the plugins' prepare hooks, before anything is started.

They may set environment variables, add bind mounts and files, or veto the run;
what they ask for is kept on the context for the spawn stage to pass on.

Reads ``plugins`` and ``container``; sets ``extra_env``, ``mounts``, ``files``.
"""

from __future__ import annotations

from aiocontain.errors import AiocontainError
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    if not ctx.plugins:
        return False  # before the plugins' modules are imported: a run without plugins never needs them
    from aiocontain.plugins.api import PrepareContext
    from aiocontain.plugins.hooks import run_hooks

    assert ctx.container is not None
    context = PrepareContext(ctx.container)
    called = await run_hooks(ctx.plugins, "prepare", context, ctx.log)
    ctx.extra_env.update(context.env)
    ctx.mounts.extend(context.mounts)
    ctx.files.update(context.files)
    if context.ports:
        publish = getattr(ctx.driver, "publish", None)
        if publish is None:
            raise AiocontainError(f"--net {ctx.driver.name} cannot publish ports when it starts")
        publish(context.ports)
    return called
