"""Starting host processes so that a cancellation can never orphan one."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
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
    """Run a short helper (newuidmap, newgidmap) by absolute path to its end: (exit code, stderr).

    posix_spawn (vfork and exec) and a pidfd for the exit, rather than the event
    loop's subprocess machinery: under asyncio that starts a child-watcher thread
    per process, and the two helpers of every container spent ~4 ms waiting for
    those threads and their locks. The spawn itself runs in a worker thread, as
    vfork holds its caller until the helper has executed. Killed and reaped if
    cancelled.
    """
    read, write = os.pipe()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    dup2 = os.POSIX_SPAWN_DUP2
    spawn = partial(
        os.posix_spawn,
        argv[0],
        list(argv),
        os.environ,
        file_actions=[(dup2, null, 0), (dup2, null, 1), (dup2, write, 2)],
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # as subprocess does: not Python's ignored ones
    )
    try:
        # In a worker thread: vfork holds the caller until the (setuid) helper has executed, which would
        # hold the event loop and serialize the two helpers. Shielded: the pid must not be lost.
        with anyio.CancelScope(shield=True):
            pid = await anyio.to_thread.run_sync(spawn)
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
        os.close(null)
    pidfd = os.pidfd_open(pid)  # not reaped until we wait: the pid is still ours
    try:
        stderr = await _read_to_end(read)
        await anyio.wait_readable(pidfd)  # the kernel says it exited
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        raise
    finally:
        os.close(read)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)  # at once: it has exited, or was just killed
    return os.waitstatus_to_exitcode(status), stderr


async def _read_to_end(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
