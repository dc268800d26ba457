"""The parent side: set-up stages, one module each, run in this order by ``Container``.

prepare -> spawn -> idmap -> cgroup -> network -> tap -> prestart -> release;
``Container.wait`` then follows the container to its exit. prepare and prestart
are the plugins' hooks (skipped without plugins). Each stage is ``async def
run(ctx) -> bool | None`` (False: skipped) and pushes what it creates on
``ctx.stack`` for teardown; its docstring says what it reads and sets. Stages
talk to the container's processes only through ``aiocontain.channels`` and the
fork server's ``ForkedProcess``, never through each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiocontain.stages import cgroup, idmap, network, prepare, prestart, release, spawn, tap
from aiocontain.stages.context import StageContext

Stage = Callable[[StageContext], Awaitable[bool | None]]

PIPELINE: tuple[tuple[str, Stage], ...] = (
    ("prepare", prepare.run),
    ("spawn", spawn.run),
    ("idmap", idmap.run),
    ("cgroup", cgroup.run),
    ("network", network.run),
    ("tap", tap.run),
    ("prestart", prestart.run),
    ("release", release.run),
)

__all__ = ["PIPELINE", "Stage", "StageContext"]
