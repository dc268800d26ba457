"""Starting host processes so that a cancellation can never orphan one."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import Process


async def spawn(argv: Sequence[str], **options: Any) -> Process:
    """``anyio.open_process``, shielded from cancellation.

    Under asyncio a cancellation that lands while the process is being created
    makes asyncio kill it and then await its reaping, and anyio's cancel scopes
    cancel that await too: the child is left unreaped. Creating a process takes
    milliseconds, so the spawn is shielded; the caller owns the process from the
    moment it is returned and must close it on every path.
    """
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(argv, **options)
    return process


async def run(argv: Sequence[str]) -> tuple[int, bytes]:
    """Run a short helper (newuidmap, newgidmap) to its end: (exit code, stderr). Killed if cancelled."""
    process = await spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    async with process:  # closing kills and reaps it on cancellation
        assert process.stderr is not None
        stderr = b"".join([chunk async for chunk in process.stderr])
        return await process.wait(), stderr
