"""Files the runtime keeps in the user's cache directory between runs (compiled seccomp filters, entry points).

What is read back decides what runs (a filter, the plugins imported), and the cache directory is named by the
environment (``XDG_CACHE_HOME``, ``HOME``), which a caller such as ``sudo -E`` may take from another user. So a
file counts only when it is a regular file of the effective user that nobody else may write, and one is written
under a fresh name (``O_EXCL``, ``O_NOFOLLOW``: nothing planted there is written through), then renamed.
Stdlib-only: the CLI's start and ``aiocontain-oci create`` read these.
"""

from __future__ import annotations

import os
import stat


def read(path: str) -> bytes | None:
    """The file's bytes, or None when it is absent, unreadable or not this user's alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, data: bytes) -> None:
    """Write path (mode 0600, its directory 0700) under a temporary name and rename it: a reader sees the old
    file or the new one, never half. Any failure only leaves the cache as it was."""
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
