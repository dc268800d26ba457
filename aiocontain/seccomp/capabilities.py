"""The container's capability set as podman computes it, for the profile's includes/excludes ``caps``.

Podman's 11 defaults, then ``cap_drop`` and ``cap_add`` (``ALL`` in either);
``privileged`` keeps every capability. A stand-in until the runtime has one
capability set for both the bounding set and the seccomp filter.
"""

from __future__ import annotations

from collections.abc import Iterable

# Capability numbers 0..40, in order (linux/capability.h).
ALL = tuple(
    "CAP_" + name
    for name in [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
)
# podman's default_capabilities (containers.conf)
DEFAULT = frozenset(
    "CAP_" + name
    for name in [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)


def effective(cap_add: Iterable[str], cap_drop: Iterable[str], privileged: bool) -> frozenset[str]:
    """Names like CAP_SYS_ADMIN; the arguments take names with or without CAP_, in any case."""
    if privileged:
        return frozenset(ALL)
    added, dropped = {_name(c) for c in cap_add}, {_name(c) for c in cap_drop}
    caps = set() if "CAP_ALL" in dropped else set(DEFAULT)
    caps -= dropped
    caps |= set(ALL) if "CAP_ALL" in added else added
    if "CAP_ALL" in added:
        caps -= dropped - {"CAP_ALL"}
    return frozenset(caps - {"CAP_ALL"})


def _name(cap: str) -> str:
    cap = cap.strip().upper()
    return cap if cap.startswith("CAP_") else "CAP_" + cap
