"""The runtime's open-file limit: raised once to the hard limit, and its exhaustion said in one line.

Every running container holds about ten of the runtime's file descriptors
(control socket, pidfds, PID 1's pipes, slirp4netns's exit, ready and stderr
pipes, the netlink socket), so the usual soft limit of 1024 stops an embedding
service at ~90 containers at once. Like the Go runtime does for every Go
program, aiocontain raises its process's soft RLIMIT_NOFILE to the hard limit
on first use; beyond that, running out is a clear error, not a traceback.
"""

from __future__ import annotations

import errno
import resource

from aiocontain.errors import AiocontainError

_raised = False


def raise_to_hard_limit() -> None:
    """Once per process: soft RLIMIT_NOFILE := hard (children, the fork server among them, inherit it)."""
    global _raised
    if _raised:
        return
    _raised = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass  # e.g. a hard limit above fs.nr_open: keep the soft one


# ETOOMANYREFS: more fds in flight between the user's processes (sent over unix sockets, not yet received) than
# the sender's RLIMIT_NOFILE, as a burst of containers starting at once passes them to the fork server and on.
EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ETOOMANYREFS)


def exhausted(exc: BaseException) -> bool:
    """Whether exc is running out of file descriptors (the process's, the system's, or those in flight)."""
    return isinstance(exc, OSError) and exc.errno in EXHAUSTED


def exhaustion_error(exc: OSError) -> AiocontainError:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if exc.errno == errno.ENFILE:
        return AiocontainError(
            "the system ran out of open files", fix="raise fs.file-max (sudo sysctl -w fs.file-max=N)"
        )
    return AiocontainError(
        f"too many open files (this process's limit is {soft}, its hard limit {hard}; each running container "
        "holds about ten)",
        fix="raise the hard limit (LimitNOFILE= of the service, or nofile in /etc/security/limits.conf), "
        "or run fewer containers at once",
    )
