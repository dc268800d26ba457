"""One container's cgroup: made with its limits, watched for OOM kills, read for usage, then removed.

A container's group holds its limits; its processes live one level down, in ``container/``, which is also the
root of its cgroup namespace. The group is the user's (the runtime made it as the user), so its files are the
container's root's too: a hierarchy mounted without ``nsdelegate`` lets a process inside write the limits of its
cgroup namespace's root (a nested user and cgroup namespace mounts a writable cgroup2 there, with podman's
seccomp profile). What it can reach that way is ``container/``, never the group above it, whose limits hold.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from aiocontain.cgroups.hierarchy import RUNTIME_LEAF, Placement
from aiocontain.cgroups.limits import Limits, format_size
from aiocontain.cgroups.watch import FileWatch
from aiocontain.child.cgroup import remove_below
from aiocontain.errors import CgroupError

if TYPE_CHECKING:
    from aiocontain.events import EventLog

EMPTY_TIMEOUT = 5.0
PROCESSES = "container"  # the subgroup a container's processes live in, and its cgroup namespace's root


@dataclass(frozen=True)
class ResourceUsage:
    """What the container used, read from its cgroup at exit; None where the kernel does not say."""

    memory_peak: int | None  # bytes (memory.peak, Linux >= 5.19)
    cpu_usec: int | None  # user + system CPU time in microseconds (cpu.stat)
    oom_kills: int  # processes the OOM killer killed (memory.events oom_kill)
    pids_peak: int | None = None  # most processes at once (pids.peak, Linux >= 6.1)

    def fields(self) -> dict[str, int | None]:
        return {
            "memory_peak": self.memory_peak,
            "cpu_usec": self.cpu_usec,
            "oom_kills": self.oom_kills,
            "pids_peak": self.pids_peak,
        }


def prepare(placement: Placement) -> None:
    """Enable the controllers from the delegation root down to the leaves' directory.

    cgroup v2 allows controllers in subtree_control only of a group without
    processes of its own: when the delegation root holds some (aiocontain
    started inside it), they move into a leaf first, as podman and crun do.
    """
    top, parent = placement.delegation_root, placement.parent
    if placement.evict:
        runtime = top / RUNTIME_LEAF
        runtime.mkdir(exist_ok=True)
        for pid in (top / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                _write(runtime / "cgroup.procs", pid)
    parts = parent.relative_to(top).parts
    for group in [top, *(top.joinpath(*parts[: i + 1]) for i in range(len(parts)))]:
        group.mkdir(exist_ok=True)
        enabled = (group / "cgroup.subtree_control").read_text().split()
        wanted = [name for name in placement.controllers if name not in enabled]
        if wanted:
            _write(group / "cgroup.subtree_control", " ".join(f"+{name}" for name in wanted))


class Leaf:
    """The container's own group: ``create``, ``add`` its first process, ``usage`` at exit, ``remove``.

    ``path`` holds the limits and counts everything below it; ``processes`` (``path/container``) is where the
    container's processes are, with the same limits for its own view of them.
    """

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.processes = path / PROCESSES
        self.limits = limits
        self.oom_reported = 0

    @classmethod
    def create(cls, placement: Placement, name: str, limits: Limits) -> Leaf:
        prepare(placement)
        path = placement.parent / name
        path.mkdir()
        leaf = cls(path, limits)
        try:
            _set_limits(path, limits)
            if placement.controllers:  # so that the container's own group shows its limits and usage
                _write(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in placement.controllers))
            leaf.processes.mkdir()
            _set_limits(leaf.processes, limits)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_tree(path)
            raise
        return leaf

    def add(self, pid: int) -> None:
        """Move a process in, below the limits' group; its children are born there."""
        _write(self.processes / "cgroup.procs", str(pid))

    def read(self, filename: str) -> dict[str, int]:
        """A flat-keyed file such as memory.events or cpu.stat; empty when the controller is off."""
        try:
            lines = (self.path / filename).read_text().splitlines()
        except OSError:
            return {}
        return {key: int(value) for key, value in (line.split() for line in lines if len(line.split()) == 2)}

    def _single(self, filename: str) -> int | None:
        try:
            return int((self.path / filename).read_text())
        except (OSError, ValueError):
            return None

    def usage(self) -> ResourceUsage:
        cpu = self.read("cpu.stat")
        return ResourceUsage(
            memory_peak=self._single("memory.peak"),
            cpu_usec=cpu.get("usage_usec"),
            oom_kills=self.read("memory.events").get("oom_kill", 0),
            pids_peak=self._single("pids.peak"),
        )

    def new_oom_kills(self) -> int:
        """OOM kills since the last call: each is reported once, by the watcher or at exit."""
        total = self.read("memory.events").get("oom_kill", 0)
        new, self.oom_reported = max(0, total - self.oom_reported), max(total, self.oom_reported)
        return new

    def report_oom(self, log: EventLog, pid: int | None) -> None:
        """Emit container.oom for the kills not reported yet (the watcher's, or ones read at exit)."""
        from aiocontain import events

        if self.new_oom_kills():
            memory = self.limits.memory
            log.warning(
                events.OOM,
                pid=pid,
                oom_kills=self.oom_reported,
                memory_limit=memory,
                limit=format_size(memory) if memory is not None else None,
            )

    def watch_memory_events(self) -> FileWatch:
        return FileWatch(self.path / "memory.events")

    def populated(self) -> bool:
        return self.read("cgroup.events").get("populated", 0) == 1

    async def remove(self) -> None:
        """Kill whatever is left (cgroup.kill), wait until the group is empty, remove it.

        The one other place that removes a container's cgroup is the fork server, when the runtime died
        (``aiocontain.child.cgroup.remove``): the same three steps, but stdlib-only and blocking (poll's POLLPRI
        instead of inotify through the event loop).
        """
        with FileWatch(self.path / "cgroup.events") as watch, anyio.move_on_after(EMPTY_TIMEOUT):
            if self.populated():
                with contextlib.suppress(OSError):
                    _write(self.path / "cgroup.kill", "1")
            while self.populated():
                await watch.changed()
        try:
            _remove_tree(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            raise CgroupError(f"cannot remove the container's cgroup {self.path}: it still has processes") from None


def _set_limits(group: Path, limits: Limits) -> None:
    optional = limits.optional_files()
    for filename, value in limits.files().items():
        target = group / filename
        if filename in optional and not target.exists():
            continue  # e.g. no swap accounting: the swap allowance nobody asked for is moot
        try:
            _write(target, value)
        except FileNotFoundError:
            raise CgroupError(f"this kernel has no {filename} in {group}", fix="drop the option that sets it") from None
        except OSError as exc:
            raise CgroupError(f"cannot set {filename} to {value}: {exc.strerror}") from None


def _remove_tree(path: Path) -> None:
    """rmdir the group and every group below it, deepest first: the container may have made its own below
    ``container/``. Walked only then: a walk lists each group's dozens of interface files."""
    processes = path / PROCESSES
    try:
        processes.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        remove_below(str(processes))
        processes.rmdir()
    path.rmdir()


def _write(path: Path, value: str) -> None:
    """One write(2) of the whole value: cgroup files take one value a write."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
