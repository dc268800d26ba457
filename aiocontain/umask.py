"""The process umask against the runtime's own files (stdlib only).

The runtime makes its own directories and files as the user: a container's
runtime directory, records, locks, and the sockets its helpers bind. A umask
that denies the owner (any of its 0700 bits, as ``umask 777`` does) makes them
unusable to the runtime itself. The command keeps such a umask's group and
other bits and gives the owner its access back (``aiocontain.command``, before
anything else), so that the container then gets ``umask 077`` where the caller
had ``777``. An embedding program's umask is its own and is never changed: a
run under one that denies the owner is refused in one line (``refusal``).
"""

from __future__ import annotations

from aiocontain.errors import AiocontainError

OWNER = 0o700


def current() -> int | None:
    """This process's umask, read without changing it (/proc, Linux 4.7 on); None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def denies_owner() -> int | None:
    """The umask, where it denies the owner anything; else None."""
    mask = current()
    return mask if mask is not None and mask & OWNER else None


def refusal() -> AiocontainError | None:
    """The one-line error for a permission denied on our own files, where the umask is why; else None."""
    mask = denies_owner()
    if mask is None:
        return None
    return AiocontainError(
        f"this process's umask {mask:04o} denies its owner the runtime's own files", fix="use umask 077 or less"
    )
