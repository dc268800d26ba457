"""The parent side: set-up stages, one module each, run in this order by ``Container``.

spawn -> idmap -> cgroup -> network -> tap -> release; ``wait`` then follows the
container to its exit. Each stage is ``async def run(ctx) -> bool | None``
(False: skipped) and pushes what it creates on ``ctx.stack`` for teardown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiocontain.stages import cgroup, idmap, network, release, spawn, tap
from aiocontain.stages.context import StageContext

Stage = Callable[[StageContext], Awaitable[bool | None]]

PIPELINE: tuple[tuple[str, Stage], ...] = (
    ("spawn", spawn.run),
    ("idmap", idmap.run),
    ("cgroup", cgroup.run),
    ("network", network.run),
    ("tap", tap.run),
    ("release", release.run),
)

__all__ = ["PIPELINE", "Stage", "StageContext"]
