"""Container names: unique among the user's running containers, as podman's are.

A name is claimed by an exclusive ``flock`` on ``NAME.lock`` in a directory of
the user's runtime directory, held by the runtime for as long as the container
lives; the kernel drops it with a runtime that dies, so no stale name survives
its owner. The holder unlinks the file, under its lock, when it lets the name
go, and a claim counts only once its lock is on the file that the path still
names, so an unlink and a new claim can never leave two holders.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile

from aiocontain.errors import AiocontainError

# Not "aiocontain-...": the runtime-directory sweep (aiocontain.runtimedir) owns that prefix.
DIRECTORY = "aiocontain.names"


def private_directory(name: str, base: str | None = None) -> str:
    """Where this user keeps name: in the runtime directory (base, else $XDG_RUNTIME_DIR), else a directory of
    the user's own in the shared temporary directory (per user, as their containers are)."""
    runtime = base or os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, name) if runtime else os.path.join(tempfile.gettempdir(), f"{name}-{os.getuid()}")


class NameClaim:
    """A held name; ``release`` (idempotent) lets it go."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1


def claim(name: str, base: str | None = None) -> NameClaim:
    """Claim name for a container of this user, or refuse it in one line if a running container has it."""
    directory = private_directory(DIRECTORY, base)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
        raise AiocontainError(
            f"{directory} does not belong to this user, so container names cannot be kept there",
            fix="remove it, or set XDG_RUNTIME_DIR to a directory of your own",
        )
    path = os.path.join(directory, f"{name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AiocontainError(
                f"the name {name!r} is already in use by a running container",
                fix="choose another --name, or stop that container first",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return NameClaim(path, fd)
        except FileNotFoundError:
            pass  # its holder let it go meanwhile: claim it afresh
        os.close(fd)
