"""Stage 2, idmap: make the invoking user root inside the container.

As podman does: where newuidmap/newgidmap exist and the user has subordinate
ids, map 0 to the user and 1..N to the subordinate range, so that the container
can have more than one user; otherwise a single mapping, with setgroups denied
(the kernel requires that before an unprivileged process writes gid_map).

The mapping begins during spawn (``begin``), as soon as the child says its
namespaces exist, and runs alongside the rest of spawn (the child forking the
init) as a task of the container's task group; this stage waits for it and
raises its error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio

from aiocontain import events, processes, subids
from aiocontain.errors import AiocontainError
from aiocontain.stages.context import StageContext


class IdMapping:
    """The maps being written: ``wait`` returns once written, or raises why they could not be."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            raise self.error


def begin(ctx: StageContext) -> None:
    """Start writing the child's id maps in the container's task group."""
    mapping = ctx.idmap = IdMapping()

    async def write() -> None:
        try:
            await _map(ctx)
        except Exception as exc:  # noqa: BLE001 - raised by the stage, in the pipeline's order
            mapping.error = exc
        finally:
            mapping.done.set()

    ctx.tg.start_soon(write)


async def run(ctx: StageContext) -> None:
    if ctx.idmap is None:
        begin(ctx)
    assert ctx.idmap is not None
    await ctx.idmap.wait()


async def _map(ctx: StageContext) -> None:
    assert ctx.process is not None
    pid, uid, gid = ctx.process.pid, os.getuid(), os.getgid()
    uid_ranges = subids.ranges(uid, Path("/etc/subuid"))
    gid_ranges = subids.ranges(uid, Path("/etc/subgid"))
    helpers = shutil.which("newuidmap"), shutil.which("newgidmap")
    if uid != 0 and uid_ranges and gid_ranges and all(helpers):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_helper, str(helpers[0]), pid, uid, uid_ranges[0])
            tg.start_soon(_helper, str(helpers[1]), pid, gid, gid_ranges[0])
        ctx.log.debug(events.IDMAP_MAPPED, mode="subordinate", uid_range=uid_ranges[0], gid_range=gid_ranges[0])
        return
    proc = Path(f"/proc/{pid}")
    (proc / "setgroups").write_text("deny")
    (proc / "uid_map").write_text(f"0 {uid} 1\n")
    (proc / "gid_map").write_text(f"0 {gid} 1\n")
    ctx.log.debug(events.IDMAP_MAPPED, mode="single")


async def _helper(tool: str, pid: int, outside: int, extra: tuple[int, int]) -> None:
    argv = [tool, str(pid), "0", str(outside), "1", "1", str(extra[0]), str(extra[1])]
    code, stderr = await processes.run(argv)
    if code != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()
        raise AiocontainError(
            f"{os.path.basename(tool)} failed: {detail[-1] if detail else f'exit status {code}'}",
            fix="check the user's ranges in /etc/subuid and /etc/subgid (aiocontain doctor)",
        )
