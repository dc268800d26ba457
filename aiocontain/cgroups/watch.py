"""Wait for a cgroup interface file to change, without polling.

The kernel reports a change of memory.events and cgroup.events (an OOM kill, a
group becoming empty) as an inotify IN_MODIFY; the inotify fd is awaited
through the event loop like a socket.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import anyio

from aiocontain import syscalls


class FileWatch:
    """``with FileWatch(path) as watch: ... await watch.changed()``; create it before the first read."""

    def __init__(self, path: Path) -> None:
        self._fd = syscalls.inotify_init1()
        try:
            syscalls.inotify_add_watch(self._fd, str(path), syscalls.IN_MODIFY)
        except OSError:
            os.close(self._fd)
            raise

    async def changed(self) -> None:
        """Return after the next change (or one that happened since the last call)."""
        while True:
            await anyio.wait_readable(self._fd)
            try:
                os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            return

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> FileWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
