"""The process umask against the runtime's own files (stdlib only).

The runtime makes its own directories and files as the user: a container's
runtime directory, records, locks, and the sockets its helpers bind. A umask
that denies the owner (any of its 0700 bits, as ``umask 777`` does) makes them
unusable to the runtime itself. The command keeps such a umask's group and
other bits and gives the owner its access back, so that the container then gets
``umask 077`` where the caller had ``777``. An embedding program's umask is its
own and is never changed: a run under one that denies the owner is refused in
one line.
"""

from __future__ import annotations

import os

OWNER = 0o700


def keep_owner_access() -> None:
    """For our commands, single-threaded at their start: clear the owner's bits from the umask."""
    mask = os.umask(0o022)
    os.umask(mask & ~OWNER)


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
