"""A container's runtime directory: its /etc files and slirp4netns's API socket while it is set up.

It lives in ``$XDG_RUNTIME_DIR`` (else the temporary directory) and is removed once
the command runs, or at teardown. A runtime that is SIGKILLed during set-up cannot
remove it, so each directory carries a lock: an exclusive ``flock`` on the directory
itself, held by the runtime for as long as the directory lives. Whoever makes a new
one first (once a process) sweeps the directories of this user whose lock nobody
holds: their owner is dead. The kernel drops a dead process's locks, so no pid file or clock is needed.

The sweeper holds the lock while it removes a directory, and a new directory counts
as made only once its maker holds the lock and finds it still in place, so a sweep
that races a maker's mkdtemp never removes a live directory: the maker tries again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "aiocontain-"
_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_swept: set[str | None] = set()


class RuntimeDir:
    """A locked runtime directory; ``remove`` (idempotent) deletes it and drops the lock."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, base: str | None, name: str) -> RuntimeDir:
        """A fresh directory PREFIX + name + random suffix in base (None: the temporary directory)."""
        if base not in _swept:  # once a process: what a dead runtime left does not pile up between starts
            _swept.add(base)
            sweep(base)
        while True:
            path = tempfile.mkdtemp(prefix=f"{PREFIX}{name}-", dir=base)
            try:
                fd = os.open(path, _FLAGS)
            except FileNotFoundError:
                continue  # swept between mkdtemp and open
            except BaseException:
                os.rmdir(path)  # e.g. out of fds: an unlocked directory must not stay behind
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return cls(Path(path), fd)
            except (BlockingIOError, FileNotFoundError):
                pass  # a sweep holds it, or has removed it
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def remove(self) -> None:
        """Delete it; out of fds, it waits (locked) for the next try in this process (``retry_unremoved``)."""
        if self not in _unremoved:
            _unremoved.append(self)
        retry_unremoved()

    def _removed(self) -> bool:
        if self._lock_fd < 0:
            return True
        shutil.rmtree(self.path, ignore_errors=True)
        if os.path.lexists(self.path):
            # rmtree opens each directory it walks: with the process out of fds (many containers at once),
            # it fails, and the directory would stay until the next process's sweep.
            return False
        os.close(self._lock_fd)  # only now: a sweep must not take it while it is being removed
        self._lock_fd = -1
        return True


# Directories whose removal failed, still locked: each later removal retries them (the fds their own
# containers held are free by then), and a process that exits with some leaves them to the next sweep.
_unremoved: list[RuntimeDir] = []


def retry_unremoved() -> None:
    """Try again every removal that failed for want of fds. A container's teardown calls it last, once its own
    fds are closed: the last container of a burst to end then removes what the others could not."""
    for directory in list(_unremoved):
        if directory._removed():
            _unremoved.remove(directory)


def sweep(base: str | None) -> list[str]:
    """Remove this user's runtime directories in base whose owner died; their names."""
    directory = base or tempfile.gettempdir()
    removed: list[str] = []
    uid = os.getuid()
    try:
        names = [name for name in os.listdir(directory) if name.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, _FLAGS)
        except OSError:
            continue  # gone meanwhile, or not a directory we may open
        try:
            if os.fstat(fd).st_uid == uid and _try_lock(fd):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        finally:
            os.close(fd)  # after the removal: a maker racing us must not take the lock before it is done
    return removed


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its owner lives
    return True
