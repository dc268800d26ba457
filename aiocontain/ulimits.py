"""``--ulimit NAME=SOFT[:HARD]``: resource limits PID 1 sets with setrlimit just before exec.

podman's names and syntax (docker's go-units): ``nofile=1024:2048``, ``core=0``
(hard = soft), ``-1`` for unlimited. An unprivileged user cannot raise a hard limit
(that needs CAP_SYS_RESOURCE over the host), so a value above the runtime's own hard
limit is refused here in one line, where podman's runc fails at start with EPERM.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence

from aiocontain.errors import AiocontainError

INFINITY = resource.RLIM_INFINITY
NAMES: dict[str, int] = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": getattr(resource, "RLIMIT_LOCKS", 10),  # Linux's number; Python's resource module lacks the name
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}


def parse(options: Sequence[str]) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each option, the last one of a name winning; AiocontainError when malformed
    or beyond what this user may set."""
    limits: dict[int, tuple[int, int, int]] = {}
    for option in options:
        name, sep, values = option.partition("=")
        if name not in NAMES:
            raise AiocontainError(
                f"invalid --ulimit {option!r}: unknown limit {name!r}", fix=f"use one of {', '.join(sorted(NAMES))}"
            )
        soft_text, _, hard_text = values.partition(":")
        if not sep or soft_text == "":
            raise AiocontainError(f"invalid --ulimit {option!r}", fix="use NAME=SOFT[:HARD], e.g. nofile=1024:2048")
        soft, hard = _value(option, soft_text), _value(option, hard_text or soft_text)
        if _above(soft, hard):
            raise AiocontainError(
                f"invalid --ulimit {option!r}: the soft limit {soft_text} is above the hard limit {hard_text}",
                fix="give a soft limit no larger than the hard one",
            )
        number = NAMES[name]
        allowed = resource.getrlimit(number)[1]
        if _above(hard, allowed):
            shown = "unlimited" if allowed == INFINITY else str(allowed)
            raise AiocontainError(
                f"--ulimit {option}: the hard limit is above this user's own ({name} {shown}), which only root "
                "of the host may raise",
                fix=f"use at most {name}={shown}:{shown}, or raise the user's hard limit (limits.conf)",
            )
        limits[number] = (number, soft, hard)
    return list(limits.values())


def _value(option: str, text: str) -> int:
    if text == "-1":
        return INFINITY
    if not text.isdigit():
        raise AiocontainError(
            f"invalid --ulimit {option!r}: {text!r} is not a number", fix="give whole numbers, or -1 for unlimited"
        )
    return int(text)


def _above(value: int, limit: int) -> bool:
    """value > limit, with RLIM_INFINITY above everything (it is -1 or the largest number, by platform)."""
    if limit == INFINITY:
        return False
    return value == INFINITY or value > limit
