"""Stage 3, cgroup: put the container's PID 1 in a cgroup v2 leaf of its own, with its limits.

Before the release, so the command is limited from its first instruction.
Where the pids controller is delegated and no pids limit was given, the leaf
gets podman's default (``cgroups.limits.DEFAULT_PIDS``).
Where the leaf goes was decided before anything started
(``aiocontain.cgroups.hierarchy.place``); without a usable delegation and
without limits asked for, the stage is skipped. While the container runs, an
inotify watch on memory.events reports each OOM kill as it happens; teardown
kills what is left (cgroup.kill) and removes the leaf.

Reads ``placement``, ``init_pid`` (and ``init``, for PID 1's report should it be
gone); sets ``cgroup``.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from aiocontain import events
from aiocontain.cgroups import Leaf
from aiocontain.errors import CgroupError
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> bool:
    placement = ctx.placement
    if placement is None:
        return False
    assert ctx.init_pid is not None
    limits = ctx.spec.limits.with_defaults(placement.controllers)
    try:
        leaf = Leaf.create(placement, ctx.spec.short_id, limits)
    except OSError as exc:
        raise CgroupError(f"cannot create the container's cgroup in {placement.parent}: {exc.strerror}") from None
    ctx.cgroup = leaf
    ctx.stack.push_async_callback(leaf.remove)
    try:
        leaf.add(ctx.init_pid)
    except ProcessLookupError:
        assert ctx.init is not None
        raise await ctx.init.exit_reason() from None  # it died building its root: say why
    except OSError as exc:
        raise CgroupError(f"cannot move the container into its cgroup {leaf.path}: {exc.strerror}") from None
    controllers = list(placement.controllers)
    ctx.log.debug(events.CGROUP_CREATED, path=str(leaf.path), controllers=controllers, **limits.describe())
    if "memory" in placement.controllers:
        scope = anyio.CancelScope()
        await ctx.tg.start(_watch_oom, ctx, leaf, scope)
        ctx.stack.callback(scope.cancel)
    return True


async def _watch_oom(ctx: StageContext, leaf: Leaf, scope: anyio.CancelScope, *, task_status: TaskStatus[None]) -> None:
    with scope, leaf.watch_memory_events() as watch:
        task_status.started()
        while True:
            await watch.changed()
            leaf.report_oom(ctx.log, ctx.init_pid)
