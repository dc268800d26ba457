"""Stage 2, idmap: make the invoking user root inside the container.

As podman does: where newuidmap/newgidmap exist and the user has subordinate
ids, map 0 to the user and 1..N to the subordinate range, so that the container
can have more than one user; otherwise a single mapping, with setgroups denied
(the kernel requires that before an unprivileged process writes gid_map).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio

from aiocontain import events, processes, subids
from aiocontain.errors import AiocontainError
from aiocontain.stages.context import StageContext


async def run(ctx: StageContext) -> None:
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
