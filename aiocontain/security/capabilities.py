"""The container's capabilities: podman's default set, changed by ``cap_add``/``cap_drop`` with podman's rules.

Names are taken with or without ``CAP_``, in any case, or ``ALL``, also as a
comma-separated list. The result is
the list of capability numbers PID 1 keeps in its bounding set (``Config.caps``);
the command, executed as uid 0, gets exactly those as permitted and effective.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiocontain.errors import AiocontainError

# Linux's capability numbers (linux/capability.h); a kernel without the later ones just lacks them.
NUMBERS = {
    name: number
    for number, name in enumerate(
        (
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
        )
    )
}

# podman's default_capabilities (containers.conf)
DEFAULT = (
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
)

_ALL = "ALL"


def kept(cap_add: Sequence[str] = (), cap_drop: Sequence[str] = (), privileged: bool = False) -> list[int] | None:
    """The capability numbers to keep, sorted; None for every one the kernel has (``privileged`` and no drop).

    podman's rules: dropping ALL keeps just what is added; adding ALL starts from every capability; a name
    may not be both added and dropped. AiocontainError (one line) for an unknown name.
    """
    adds = _normalize(cap_add, "--cap-add")
    drops = _normalize(cap_drop, "--cap-drop")
    if _ALL in drops:
        if _ALL in adds:
            raise AiocontainError(
                "cannot both add and drop ALL capabilities", fix="use one of --cap-add/--cap-drop ALL"
            )
        return sorted(NUMBERS[name] for name in adds)
    base = set(DEFAULT)
    if privileged or _ALL in adds:
        base = set(NUMBERS)
        adds = []
    for name in adds:
        if name in drops:
            raise AiocontainError(f"capability {name} cannot be both added and dropped", fix="give it only once")
    names = (base - set(drops)) | set(adds)
    if names == set(NUMBERS):
        return None  # also any capability a newer kernel has beyond this table, as podman's ALL
    return sorted(NUMBERS[name] for name in names)


def _normalize(names: Sequence[str], option: str) -> list[str]:
    """Upper case, without CAP_; ALL as is; a comma-separated list as several (podman's flags split them).
    An unknown name is the user's error."""
    normalized = []
    for name in (part for names_given in names for part in names_given.split(",")):
        upper = name.strip().upper()
        short = upper.removeprefix("CAP_")
        if upper == _ALL:
            normalized.append(_ALL)
        elif short in NUMBERS:
            normalized.append(short)
        else:
            raise AiocontainError(
                f"unknown capability {name!r} in {option}", fix="use a name of capabilities(7) such as NET_RAW, or ALL"
            )
    return normalized


def names(numbers: list[int] | None) -> frozenset[str]:
    """``kept``'s result as names like CAP_SYS_ADMIN (what a seccomp profile's includes/excludes name)."""
    if numbers is None:
        return frozenset("CAP_" + name for name in NUMBERS)
    by_number = {number: name for name, number in NUMBERS.items()}
    return frozenset("CAP_" + by_number[number] for number in numbers)
