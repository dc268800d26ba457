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

import binascii
import errno
import os

from aiocontain import syscalls
from aiocontain.child import ids
from aiocontain.messages import Config, Exec

_PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


def allow_ping(gid_map: str = "/proc/self/gid_map") -> None:
    """Let every group mapped in the container use ICMP echo sockets, so ping needs no CAP_NET_RAW (podman's
    net.ipv4.ping_group_range). Only in a network namespace of the container's own: the sysctl is per
    namespace. The kernel refuses gids that are not mapped, so the range is the ids mapped from 0 on."""
    highest = -1
    fd = os.open(gid_map, os.O_RDONLY | os.O_CLOEXEC)  # os, not open(): no text layer in a forked child
    try:
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
    finally:
        os.close(fd)
    ranges = sorted((int(fields[0]), int(fields[2])) for fields in map(bytes.split, data.splitlines()) if fields)
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


def lock_down(config: Config | Exec) -> None:
    """Everything between a process in the container and its exec: ``apply``, the rlimits, the user and the seccomp
    filter, in the order that works for every user. PID 1 and an exec'd process (child/join.py) both end so."""
    apply(config)
    ids.set_limits(config.rlimits)
    filter_first = ids.filter_first(config.user, bool(config.seccomp), config.no_new_privs)
    if config.user is not None and not filter_first:
        ids.switch(config.user)
    if config.seccomp:
        # Last, at the one point before every exec path, so it covers --init's PID 1 too. What runs from
        # here to execve (signal resets, the PATH search, a failure report) makes only calls it allows.
        syscalls.set_seccomp_filter(binascii.a2b_base64(config.seccomp))
    if filter_first and config.user is not None:
        ids.switch(config.user)


def apply(config: Config | Exec) -> None:
    """Everything that must hold for the command, except seccomp, which the caller installs right after."""
    join_session_keyring(config.hostname)
    if config.caps is not None:
        keep = set(config.caps)
        for cap in range((_LAST_CAP if _LAST_CAP is not None else _last_capability()) + 1):
            if cap not in keep:
                syscalls.drop_bounding_capability(cap)
    syscalls.clear_ambient_capabilities()
    syscalls.clear_inheritable_capabilities()
    if config.no_new_privs:
        syscalls.set_no_new_privs()


def _last_capability() -> int:
    """The highest capability number this kernel knows (what /proc/sys/kernel/cap_last_cap says)."""
    cap = 0
    while syscalls.capability_in_bounding_set(cap + 1) is not None:
        cap += 1
    return cap


# Read once, where this module is imported (the fork server), not in each container: it is the kernel's.
# Every capability up to it that is not kept is dropped, present or not (dropping one already gone is
# allowed and changes nothing), so the bounding set ends as exactly the kept ones without reading it first.
# Where the importer may not read it (a seccomp filter of its own), each container reads it, and says why not.
try:
    _LAST_CAP: int | None = _last_capability()
except OSError:
    _LAST_CAP = None


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
