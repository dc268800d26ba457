"""The container's terminal (``-t``): a pty of the container's own devpts, the command's controlling terminal.

PID 1 calls ``open_console`` once the root is built (child/mounts.py mounted a
devpts ``newinstance`` on /dev/pts, with /dev/ptmx a link into it), after its
``setsid``: the slave becomes the session's controlling terminal and PID 1's
stdin, stdout and stderr, which the command inherits, so inside it is
/dev/pts/0 and job control, ``tty`` and TIOCSTI stay within the container. The
master is returned for the runtime, which relays it to the caller's terminal;
PID 1 closes its own copy once sent.
"""

from __future__ import annotations

import fcntl
import os
import struct

from aiocontain import syscalls


def open_console(owner: int | None = None) -> int:
    """Open a pty in the container's devpts, make its slave our controlling terminal and stdio; the master.
    owner: --user's uid, who gets the slave (as under podman), so that the command may reopen /dev/tty."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, syscalls.TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        slave = fcntl.ioctl(master, syscalls.TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.ioctl(slave, syscalls.TIOCSCTTY, 0)  # we lead a session of our own and have no terminal yet
            if owner is not None:
                os.fchown(slave, owner, -1)
            for target in (0, 1, 2):
                os.dup2(slave, target)  # inheritable: the command's stdio
        finally:
            os.close(slave)
    except BaseException:
        os.close(master)
        raise
    return master
