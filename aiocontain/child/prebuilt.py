"""A spare's kernel file systems, built before any request: the container's /proc, /sys and /dev, held detached.

A spare (child/forkserver.py) waits for a request with its namespaces made and
mapped. Three parts of a root are the same for every container with a network
namespace of its own and the default masks, whatever its Config says: a proc of
its PID namespace with the masked and read-only paths, a sysfs of its network
namespace with its masked paths, and the /dev tmpfs with its device nodes, pts,
shm and mqueue. The spare builds them then, part by part while no request has
come (before it is offered: a request the server hands it first waits for one
part at most), each over the host's /proc in its own
mount namespace (a path no rootfs, volume or device source lies under), copies
each as a detached tree (open_tree) and unmounts it again, so its view of the host
is as before. ``mounts.build`` then attaches the trees in the root (move_mount):
three calls on the container's path where there were ~35, made while the runtime
finishes its side. A Config they do not fit (``--privileged``, other masks) has
its /proc and /sys built as a fresh clone's are; the /dev tree fits every Config.
"""

from __future__ import annotations

import os

from aiocontain import syscalls as sc
from aiocontain.child import mounts
from aiocontain.security import paths

TYPE_CHECKING = False  # typing is a heavy import for the child
if TYPE_CHECKING:
    from collections.abc import Callable

_SCRATCH = "/proc"  # mounted over while each part is built, then uncovered again


def build(unshare_net: bool, asked: Callable[[], bool]) -> mounts.Trees | None:
    """In a spare, mapped: the trees, each part only while asked() says no request has come (one that comes
    waits for the part under way at most: what is not built then, PID 1 builds as a fresh clone's);
    None where a part cannot be built here. Raises only if the scratch place could not be uncovered: the spare
    must not go on then."""
    parts = [mounts.mount_dev, *((_proc, _sys) if unshare_net else ())]  # a sysfs needs a netns of its own
    built: list[int] = []
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing done here propagates to the host
        for make in parts:
            if asked():
                break
            built.append(_built(make))
    except OSError:
        for fd in built:
            os.close(fd)
        return None
    dev, proc, sys = [*built, -1, -1, -1][:3]
    return mounts.Trees(proc, sys, dev)


def _built(make: Callable[[str], None]) -> int:
    """Mount one part over the scratch place, copy it as a detached tree, uncover the place again."""
    host = os.stat(_SCRATCH).st_dev
    try:
        make(_SCRATCH)
        return sc.clone_tree(_SCRATCH)
    finally:
        _uncover(host)


def _uncover(host: int) -> None:
    """Take off whatever of ours covers the scratch place (with every mount under it), whatever failed."""
    try:
        if os.stat(_SCRATCH).st_dev != host:
            sc.umount2(_SCRATCH, sc.MNT_DETACH)
        covered = os.stat(_SCRATCH).st_dev != host
    except OSError:
        covered = True
    if covered:  # PID 1 would see the wrong /proc: the spare must not go on
        raise RuntimeError(f"{_SCRATCH} is still covered after the prebuilt trees")


def _proc(target: str) -> None:
    sc.mount("proc", target, "proc", mounts.PROC_FLAGS)
    mounts.mask("", _under(target, "/proc", paths.MASKED))
    for path in _under(target, "/proc", paths.READONLY):
        mounts.readonly("", path)


def _sys(target: str) -> None:
    mounts.mount_sys(target)
    mounts.mask("", _under(target, "/sys", paths.MASKED))


def _under(target: str, top: str, found: tuple[str, ...]) -> list[str]:
    """The paths of found under top, moved under target."""
    return [target + path[len(top) :] for path in found if path.startswith(top + "/")]
