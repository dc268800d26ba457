"""PID 1's last hardening before exec: the session keyring, the capability sets and no_new_privs.

Called once, after the root is built and the cgroup mounted (both need
CAP_SYS_ADMIN), at the one place before either exec path (the command itself,
or the ``--init`` fork). The seccomp filter goes after ``apply``: it needs
CAP_SYS_ADMIN still effective unless no_new_privs is set, and this leaves the
effective and permitted sets alone. The command gets the kept capabilities
through execve itself: as uid 0 its permitted and effective sets become the
bounding set (the inheritable and ambient sets, cleared here, would add to it).
"""

from __future__ import annotations

import errno
import os

from aiocontain import syscalls
from aiocontain.messages import Config

_PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


def allow_ping(gid_map: str = "/proc/self/gid_map") -> None:
    """Let every group mapped in the container use ICMP echo sockets, so ping needs no CAP_NET_RAW (podman's
    net.ipv4.ping_group_range). Only in a network namespace of the container's own: the sysctl is per
    namespace. The kernel refuses gids that are not mapped, so the range is the ids mapped from 0 on."""
    highest = -1
    with open(gid_map) as lines:
        ranges = sorted((int(inside), int(count)) for inside, _, count in (line.split() for line in lines))
    for inside, count in ranges:
        if inside > highest + 1:
            break  # a hole: the range must be contiguous
        highest = max(highest, inside + count - 1)
    if highest < 0:
        return
    fd = os.open(_PING_GROUP_RANGE, os.O_WRONLY)
    try:
        os.write(fd, f"0 {highest}".encode())
    finally:
        os.close(fd)


def apply(config: Config) -> None:
    """Everything that must hold for the command, except seccomp, which the caller installs right after."""
    join_session_keyring(config.hostname)
    if config.caps is not None:
        keep = set(config.caps)
        cap = 0
        while (present := syscalls.capability_in_bounding_set(cap)) is not None:
            if present and cap not in keep:
                syscalls.drop_bounding_capability(cap)
            cap += 1
    syscalls.clear_ambient_capabilities()
    syscalls.clear_inheritable_capabilities()
    if config.no_new_privs:
        syscalls.set_no_new_privs()


def join_session_keyring(name: str) -> None:
    """A session keyring of the container's own (named _ses.NAME): the inherited one is the host session's,
    whose keys the container would possess and so could read. runc does the same; aiocontain-oci uses it too."""
    try:
        syscalls.join_session_keyring("_ses." + name)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return  # a kernel without keys: nothing to inherit either
        if exc.errno == errno.EDQUOT:
            raise OSError(
                exc.errno,
                "the user's key quota is used up, so the container gets no session keyring of its own "
                "(fix: raise it, e.g. sudo sysctl -w kernel.keys.maxkeys=2000 kernel.keys.maxbytes=200000)",
            ) from None
        raise
