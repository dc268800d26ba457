"""A container's cgroup, removed by the fork server once the runtime that made it is gone.

The runtime's own path (``aiocontain.cgroups.leaf.Leaf.remove``) does the same with inotify through its event
loop; this one runs in the fork server, stdlib-only, only when the runtime died and left the leaf behind.
"""

from __future__ import annotations

import os
import select
import time

_EMPTY_TIMEOUT = 5.0


def remove(path: str) -> None:
    """cgroup.kill what is left, wait for cgroup.events to say empty (poll's POLLPRI: no sleeping), rmdir the
    group and every group below it."""
    try:
        kill = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(kill, b"1")
        finally:
            os.close(kill)
        events = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        deadline = time.monotonic() + _EMPTY_TIMEOUT
        while b"populated 1" in os.pread(events, 4096, 0):
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                break
    finally:
        os.close(events)
    try:
        remove_below(path)
        os.rmdir(path)
    except OSError:
        pass


def remove_below(path: str) -> None:
    """rmdir every group below path, deepest first: the ones a container made of its own (a nested cgroup
    namespace's, systemd's inside). Also the runtime's and aiocontain-oci's; stdlib-only, as this module is."""
    for directory, subgroups, _files in os.walk(path, topdown=False):
        for name in subgroups:
            os.rmdir(os.path.join(directory, name))
