"""PID 1's last steps as the command's user: resource limits (``--ulimit``) and identity (``--user``).

The runtime resolved the user and checked that every id is mapped; here PID 1
sets the supplementary groups, then the gid, then the uid, as runc does. Leaving
uid 0 clears the permitted and effective capability sets (the kernel's rule for
a setresuid that leaves no uid 0, without SECBIT_KEEP_CAPS), and the exec of a
file without capabilities grants none: the command has no capability but its
bounding set, as under podman. The bounding, inheritable and ambient sets were
dealt with before (child/harden.py).
"""

from __future__ import annotations

import os
import resource


def set_limits(rlimits: list[list[int]]) -> None:
    """setrlimit for each [resource, soft, hard]; the runtime checked that none is above our hard limit."""
    for number, soft, hard in rlimits:
        resource.setrlimit(number, (soft, hard))


def switch(user: list[int]) -> None:
    """Become [uid, gid, *groups] for good (real, effective and saved ids)."""
    uid, gid, *groups = user
    try:
        os.setgroups(groups)
    except PermissionError:
        # A single-id mapping denies setgroups; the runtime let only gid 0 through there, which is all we have.
        with open("/proc/self/setgroups") as state:
            if state.read().strip() != "deny" or any(group != 0 for group in groups):
                raise
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def filter_first(user: list[int] | None, seccomp: bool, no_new_privs: bool) -> bool:
    """Whether the seccomp filter must be installed before the switch: installing one needs CAP_SYS_ADMIN unless
    no_new_privs is set, and a non-root user has none left. runc orders them so too; the switch's calls
    (setgroups, setresgid, setresuid) then run under the filter, which podman's profile allows."""
    return user is not None and user[0] != 0 and seccomp and not no_new_privs
